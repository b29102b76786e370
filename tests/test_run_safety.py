"""A run is never lost: run folders, find_last, NaN stop, integrity, exact resume, fine-tuning.

The folder and file tests use a two-layer Keras model (no Mask R-CNN build); the training
tests use the five-conv tiny model (the NaN test assigns a variable between steps, which
needs TensorFlow's eager variables; the others run on JAX too).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import SimpleNamespace

import h5py
import keras
import numpy as np
import pytest

from mrcnn import runs
from mrcnn.data import load_image_gt
from mrcnn.model import MaskRCNN
from mrcnn.training import NamedCheckpoint, NonFiniteError
from mrcnn.weights import load_weights_by_name, read_weights, save_weights_by_name
from tests.tiny import TinyFastConfig, shapes_dataset

tensorflow_only = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                     reason="assigns variables between steps (TensorFlow)")
LEARNING_RATE = 0.001


def small_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    x = keras.layers.Dense(8, name="dense_a")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="dense_b")(x))


def bare_model(config, model_dir) -> MaskRCNN:
    """A MaskRCNN without its Keras model: enough for the run-folder methods."""
    model = MaskRCNN.__new__(MaskRCNN)
    model.config, model.model_dir = config, str(model_dir)
    model.set_log_dir()
    return model


def write_checkpoint(path: Path, model=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights_by_name(model or small_model(), str(path))
    return path


# ---------------------------------------------------------------------------- run folders

def test_two_fresh_runs_in_the_same_second_get_two_folders(tmp_path):
    config = TinyFastConfig()
    first, second = bare_model(config, tmp_path), bare_model(config, tmp_path)
    second.log_dir = first.log_dir  # same timestamp
    first._claim_run_folder()
    second._claim_run_folder()
    assert first.log_dir != second.log_dir
    assert os.path.isdir(first.log_dir) and os.path.isdir(second.log_dir)
    assert second.checkpoint_path.startswith(second.log_dir + os.sep)
    # Both names parse back as runs of this NAME, the second one newer.
    name = runs.run_name(config.NAME)
    parsed = [runs.parse_run_folder(os.path.basename(m.log_dir), name) for m in (first, second)]
    assert None not in parsed and parsed[0] < parsed[1]


@pytest.mark.parametrize("name", ["balloon.v2", "my run", "UPPER-case_1"])
def test_every_name_resumes(tmp_path, name):
    config = type("Named", (TinyFastConfig,), {"NAME": name})()
    model = bare_model(config, tmp_path)
    model._claim_run_folder()
    checkpoint = write_checkpoint(Path(model.checkpoint_path.format(epoch=7)))
    resumed = bare_model(config, tmp_path)
    resumed.set_log_dir(str(checkpoint))
    assert resumed.epoch == 7 and resumed.log_dir == model.log_dir
    assert runs.find_last(str(tmp_path), name) == str(checkpoint)


def test_find_last_matches_the_name_exactly_and_orders_runs_by_time(tmp_path):
    # String order would pick "_9" over "_10", and "probe_big" for "probe".
    older = write_checkpoint(tmp_path / "probe20260101T120000_9" / "mask_rcnn_probe_0005.h5")
    newer = write_checkpoint(tmp_path / "probe20260101T120000_10" / "mask_rcnn_probe_0002.h5")
    write_checkpoint(tmp_path / "probe_big20260301T120000" / "mask_rcnn_probe_big_0009.h5")
    write_checkpoint(tmp_path / "probe20250101T1200" / "mask_rcnn_probe_0009.h5")  # Matterport
    assert runs.find_last(str(tmp_path), "probe") == str(newer)
    (newer.parent / newer.name).unlink()
    assert runs.find_last(str(tmp_path), "probe") == str(older)
    with pytest.raises(FileNotFoundError, match="prob"):
        runs.find_last(str(tmp_path), "prob")


def test_find_last_skips_nonfinite_and_unreadable_checkpoints(tmp_path):
    run = tmp_path / "probe20260101T120000"
    good = write_checkpoint(run / "mask_rcnn_probe_0001.h5")
    nan_model = small_model()
    nan_model.get_layer("dense_a").kernel.assign(np.full((4, 8), np.nan, np.float32))
    write_checkpoint(run / "mask_rcnn_probe_0002.h5", nan_model)
    truncated = write_checkpoint(run / "mask_rcnn_probe_0003.h5")
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="skipping") as record:
        assert runs.find_last(str(tmp_path), "probe") == str(good)
    messages = " ".join(str(w.message) for w in record)
    assert "0002.h5" in messages and "non-finite" in messages and "0003.h5" in messages


# ------------------------------------------------------------------------------ integrity

def test_corrupted_array_is_caught_and_names_the_layer(tmp_path):
    path = write_checkpoint(tmp_path / "w.h5")
    with h5py.File(path, "r") as f:
        dataset = f["dense_b"]["dense_b/kernel:0"]
        offset = dataset.id.get_offset()
    data = bytearray(path.read_bytes())
    data[offset:offset + 16] = bytes(16)  # the first four floats of dense_b's kernel
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"w\.h5.*dense_b.*CRC-32"):
        load_weights_by_name(small_model(1), str(path))


def test_truncated_file_error_names_the_path(tmp_path):
    path = write_checkpoint(tmp_path / "cut.h5")
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ValueError, match="cut.h5"):
        read_weights(str(path))
    model = bare_model(TinyFastConfig(), tmp_path)
    with pytest.raises(ValueError, match="cut.h5"):
        model.load_weights(str(path))


def test_files_without_checksums_still_load(tmp_path):
    source = small_model(0)
    path = write_checkpoint(tmp_path / "plain.h5", source)
    with h5py.File(path, "r+") as f:  # as Matterport's files: no crc32 attributes
        f.visititems(lambda name, obj: obj.attrs.pop("crc32", None)
                     if isinstance(obj, h5py.Dataset) else None)
    target = small_model(1)
    load_weights_by_name(target, str(path))
    for a, b in zip(source.weights, target.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                      keras.ops.convert_to_numpy(b))


def test_checkpoint_is_never_written_with_nonfinite_weights(tmp_path):
    model = small_model()
    model.get_layer("dense_b").bias.assign(np.array([0.0, np.inf], np.float32))
    callback = NamedCheckpoint(str(tmp_path / "mask_rcnn_x_{epoch:04d}.h5"))
    callback.set_model(model)
    with pytest.raises(NonFiniteError, match=r"epoch 3 .*dense_b.*learning rate.*pixels"):
        callback.on_epoch_end(2)
    assert list(tmp_path.iterdir()) == []


def test_generator_rejects_nonfinite_pixels_naming_the_image():
    dataset = shapes_dataset(2)
    image = dataset.load_image(1).astype(np.float32)
    image[3, 4, 0] = np.nan
    dataset.load_image = lambda image_id: image
    with pytest.raises(ValueError, match=r"1.*non-finite"):
        load_image_gt(dataset, TinyFastConfig(), 1)


# ------------------------------------------------------------------------------- training

class SafeConfig(TinyFastConfig):
    NAME = "safe"
    IMAGES_PER_GPU = 2
    STEPS_PER_EPOCH = 2
    VALIDATION_STEPS = 0
    LR_SCHEDULE = "cosine"
    LR_MIN_FACTOR = 0.05


class LearningRates(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.values = []

    def on_epoch_begin(self, epoch, logs=None):
        self.values.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))


def weights_of(model: MaskRCNN) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(w).copy() for w in model.keras_model.weights]


def run_and_resume(optimizer: str, model_dir: Path) -> SimpleNamespace:
    """Train 3 epochs; then, from the epoch-1 checkpoint alone, resume up to epoch 3."""
    config = type("Safe", (SafeConfig,), {"OPTIMIZER": optimizer})()
    dataset = shapes_dataset(6, seed=3)  # 4 of 6 images per epoch: the order matters
    keras.utils.set_random_seed(0)
    full = MaskRCNN("training", config, str(model_dir))
    full_lrs = LearningRates()
    full.train(dataset, None, LEARNING_RATE, epochs=3, layers="all",
               custom_callbacks=[full_lrs])
    expected = weights_of(full)
    # A crash after epoch 1 leaves its checkpoint only.
    run = Path(full.log_dir)
    for epoch in (2, 3):
        (run / f"mask_rcnn_safe_{epoch:04d}.h5").unlink()
    keras.utils.set_random_seed(123)  # whatever resuming needs must come from the file
    resumed = MaskRCNN("training", config, str(model_dir))
    resumed.load_weights(resumed.find_last())
    loaded_epoch, loaded_dir = resumed.epoch, resumed.log_dir
    resumed_lrs = LearningRates()
    history = resumed.train(dataset, None, LEARNING_RATE, epochs=3, layers="all",
                            custom_callbacks=[resumed_lrs])
    return SimpleNamespace(full=full, resumed=resumed, expected=expected, run=run,
                           dataset=dataset, full_lrs=full_lrs.values,
                           resumed_lrs=resumed_lrs.values, history=history,
                           loaded_epoch=loaded_epoch, loaded_dir=loaded_dir)


def check_exact_resume(result: SimpleNamespace) -> None:
    assert result.loaded_epoch == 1 and result.loaded_dir == result.full.log_dir
    assert result.history.epoch == [1, 2]
    # Cosine over the whole stage (epochs 0..3), down to LR_MIN_FACTOR, resumed or not
    # (the 0.001, 0.0007625, 0.0002875).
    cosine = [LEARNING_RATE * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * e / 3)))
              for e in range(3)]
    np.testing.assert_allclose(result.full_lrs, cosine, rtol=1e-6)
    np.testing.assert_allclose(result.resumed_lrs, cosine[1:], rtol=1e-6)
    assert sorted(p.name for p in result.run.glob("*.h5")) == [
        f"mask_rcnn_safe_{e:04d}.h5" for e in (1, 2, 3)]
    for a, b in zip(result.expected, weights_of(result.resumed)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def sgd_run(tmp_path_factory):
    return run_and_resume("sgd", tmp_path_factory.mktemp("sgd"))


def test_resume_after_epoch_1_equals_the_uninterrupted_run_sgd(sgd_run):
    check_exact_resume(sgd_run)


def test_resume_after_epoch_1_equals_the_uninterrupted_run_adamw(tmp_path):
    check_exact_resume(run_and_resume("adamw", tmp_path))


def test_fine_tuning_starts_a_new_run_and_zero_epochs_is_an_error(sgd_run):
    model, dataset = sgd_run.resumed, sgd_run.dataset
    with pytest.raises(ValueError, match=r"at epoch 3.*epoch to train up to"):
        model.train(dataset, None, LEARNING_RATE, epochs=3, layers="heads")
    first = str(sgd_run.run / "mask_rcnn_safe_0001.h5")
    # Fine-tuning: a head excluded -> a new run from epoch 0, in its own folder.
    model.load_weights(first, by_name=True, exclude=["mrcnn_class_logits"])
    assert model.epoch == 0 and model.log_dir != sgd_run.full.log_dir
    with pytest.raises(ValueError, match=r"epochs=0\).*epoch to train up to"):
        model.train(dataset, None, LEARNING_RATE, epochs=0, layers="heads")
    assert model.train(dataset, None, LEARNING_RATE, epochs=1, layers="heads").epoch == [0]
    assert (Path(model.log_dir) / "mask_rcnn_safe_0001.h5").exists()
    # Resuming the same run: a stage it has finished is skipped, as Matterport's scripts
    # expect when they rerun their stages.
    model.load_weights(str(sgd_run.run / "mask_rcnn_safe_0003.h5"))
    assert model.epoch == 3 and model.log_dir == sgd_run.full.log_dir
    assert model.train(dataset, None, LEARNING_RATE, epochs=1, layers="heads").epoch == []


def test_training_never_writes_over_a_checkpoint_of_a_finished_run(sgd_run):
    model, dataset = sgd_run.resumed, sgd_run.dataset
    second = sgd_run.run / "mask_rcnn_safe_0002.h5"
    before = second.read_bytes()
    # Epoch 1 of a finished 3-epoch run: resuming it would train epoch 2 again.
    model.load_weights(str(sgd_run.run / "mask_rcnn_safe_0001.h5"))
    assert model.epoch == 1 and model.log_dir == sgd_run.full.log_dir
    with pytest.raises(FileExistsError, match=r"mask_rcnn_safe_0002\.h5.*never overwritten"
                                              r".*find_last.*set_log_dir"):
        model.train(dataset, None, LEARNING_RATE, epochs=2, layers="heads")
    assert second.read_bytes() == before
    # What the message says: a new run from these weights.
    model.set_log_dir()
    assert model.train(dataset, None, LEARNING_RATE, epochs=1, layers="heads").epoch == [0]
    assert model.log_dir != sgd_run.full.log_dir and second.read_bytes() == before


def test_checkpoint_callback_refuses_an_existing_file(tmp_path):
    path = write_checkpoint(tmp_path / "mask_rcnn_x_0001.h5", small_model(seed=1))
    before = path.read_bytes()
    callback = NamedCheckpoint(str(tmp_path / "mask_rcnn_x_{epoch:04d}.h5"))
    callback.set_model(small_model(seed=2))
    with pytest.raises(FileExistsError, match="mask_rcnn_x_0001.h5"):
        callback.on_epoch_end(0)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask_rcnn_x_0001.h5"]


@tensorflow_only
def test_nan_stops_training_with_one_message_and_no_checkpoint(sgd_run):
    class PoisonConv1(keras.callbacks.Callback):
        """Puts one NaN into conv1's kernel before step 2 of epoch 2."""

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            if (self.epoch, batch) == (1, 1):
                kernel = self.model.get_layer("tiny_conv1").kernel
                value = keras.ops.convert_to_numpy(kernel).copy()
                value[0, 0, 0, 0] = np.nan
                kernel.assign(value)

    model = sgd_run.resumed
    model.load_weights(str(sgd_run.run / "mask_rcnn_safe_0001.h5"), by_name=True,
                       exclude=["mrcnn_bbox_fc"])  # a new run
    with pytest.raises(NonFiniteError) as error:
        model.train(sgd_run.dataset, None, LEARNING_RATE, epochs=3, layers="all",
                    custom_callbacks=[PoisonConv1()])
    message = str(error.value)
    assert "epoch 2, step 2" in message and "tiny_conv1" in message
    assert "learning rate" in message.lower() and "pixels" in message
    assert [p.name for p in Path(model.log_dir).glob("*.h5")] == ["mask_rcnn_safe_0001.h5"]


def test_run_folder_records_its_config_and_versions(sgd_run):
    import json

    import mrcnn

    files = sorted(p.name for p in sgd_run.run.glob("*.json"))
    assert files == ["config.json"]  # the resumed, identical train() call added nothing
    record = json.loads((sgd_run.run / "config.json").read_text())
    assert record["config"] == sgd_run.full.config.to_json_dict()
    assert record["config"]["NAME"] == "safe" and record["first_epoch"] == 0
    assert record["versions"]["mrcnn"] == mrcnn.__version__
    assert record["versions"]["keras"] == keras.__version__
    backend = keras.backend.backend()
    assert record["versions"]["backend"] == backend and backend in record["versions"]


def test_a_later_stage_with_other_settings_gets_its_own_record(tmp_path):
    import json

    from mrcnn import runs

    config = SafeConfig()
    assert runs.write_run_info(str(tmp_path), config, 0) == str(tmp_path / "config.json")
    assert runs.write_run_info(str(tmp_path), config, 2) is None  # same settings
    other = type("Other", (SafeConfig,), {"LEARNING_RATE": 0.5})()
    path = runs.write_run_info(str(tmp_path), other, 2)
    assert path == str(tmp_path / "config_epoch0002.json")
    assert json.loads(open(path).read())["config"]["LEARNING_RATE"] == 0.5
    assert json.loads((tmp_path / "config.json").read_text())["config"]["LEARNING_RATE"] == \
        config.LEARNING_RATE  # never rewritten
