"""Hostile and careless input: model files hold values only, downloads are checked, outputs
are never overwritten, and bad inputs fail with errors naming them."""

from __future__ import annotations

import json
import os
import sys
import zipfile

import keras
import numpy as np
import pytest

from mrcnn.anchors import generate_pyramid_anchors, norm_boxes
from mrcnn.rpn import AnchorsLayer

# ---------------------------------------------------------------- model files hold values

ANCHOR_VALUES = dict(rpn_anchor_scales=[8, 16, 32, 64, 128], rpn_anchor_ratios=[0.5, 1, 2],
                     backbone_strides=[4, 8, 16, 32, 64], rpn_anchor_stride=1)


def anchors_model(shape_fn=None, size: int = 64) -> keras.Model:
    image = keras.Input((size, size, 3), name="input_image")
    anchors = AnchorsLayer(compute_backbone_shape=shape_fn, image_shape=(size, size, 3),
                           name="anchors", **ANCHOR_VALUES)(image)
    return keras.Model(image, anchors)


def expected_anchors(shapes, size: int) -> np.ndarray:
    """Independent reference: NumPy anchors of the given level shapes, normalized."""
    pixel = generate_pyramid_anchors(ANCHOR_VALUES["rpn_anchor_scales"],
                                     ANCHOR_VALUES["rpn_anchor_ratios"], np.array(shapes),
                                     ANCHOR_VALUES["backbone_strides"], 1)
    return norm_boxes(pixel, (size, size))


def rewrite_layer_config(path: str, out: str, edit) -> None:
    """Copy a .keras archive, editing the anchors layer's config dict with ``edit``."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                for layer in config["config"]["layers"]:
                    if layer["class_name"].endswith("AnchorsLayer"):
                        edit(layer["config"])
                data = json.dumps(config).encode()
            dst.writestr(item, data)


def odd_shapes(image_shape):
    """A backbone that does not follow ceil(size / stride) (one extra cell per level)."""
    return [[image_shape[0] // s + 1, image_shape[1] // s + 1] for s in (4, 8, 16, 32, 64)]


def test_keras_file_stores_shapes_as_numbers_and_round_trips(tmp_path):
    # A lambda could never be saved by import path; as numbers it does not matter.
    model = anchors_model(lambda shape: odd_shapes(shape))
    image = np.zeros((1, 64, 64, 3), np.float32)
    before = keras.ops.convert_to_numpy(model(image))
    np.testing.assert_allclose(before[0], expected_anchors(odd_shapes((64, 64)), 64),
                               rtol=1e-6)
    path = str(tmp_path / "anchors.keras")
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        text = archive.read("config.json").decode()
    assert "lambda" not in text and "odd_shapes" not in text
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(image)), before)
    # Another size cannot be recovered from numbers that break the stride rule: refused.
    layer = loaded.get_layer("anchors")
    with pytest.raises(ValueError, match=r"64x64.*128x128.*MaskRCNN"):
        layer.backbone_shapes((128, 128))


@pytest.mark.parametrize("target", ["sys.exit", "planted_module.payload"])
def test_keras_file_naming_code_runs_nothing(tmp_path, monkeypatch, target):
    # The planted module lies beside the file, on sys.path: importing it writes a marker.
    marker = tmp_path / "marker.txt"
    (tmp_path / "planted_module.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\ndef payload(shape):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    path = str(tmp_path / "clean.keras")
    anchors_model().save(path)
    crafted = str(tmp_path / "crafted.keras")

    def old_style(config):  # what an older version wrote: an import path, no shapes
        config.pop("backbone_shapes")
        config["compute_backbone_shape"] = target

    rewrite_layer_config(path, crafted, old_style)
    with pytest.warns(UserWarning, match="never runs code"):
        loaded = keras.saving.load_model(crafted, safe_mode=True)
    assert not marker.exists() and "planted_module" not in sys.modules
    # The shapes are recovered from the image size and BACKBONE_STRIDES.
    out = keras.ops.convert_to_numpy(loaded(np.zeros((1, 64, 64, 3), np.float32)))
    strides = ANCHOR_VALUES["backbone_strides"]
    np.testing.assert_allclose(out[0], expected_anchors(
        [[int(np.ceil(64 / s))] * 2 for s in strides], 64), rtol=1e-6)


@pytest.mark.parametrize("shapes", [
    [{"x": 1}],
    "mrcnn.tiny.tiny_backbone_shapes",
    [{"image_size": [64, 64], "feature_shapes": [[16, 16]] * 4}],  # 4 levels, not 5
    [{"image_size": [64, 64], "feature_shapes": [[10**9, 10**9]] * 5}],  # > the image
])
def test_keras_file_with_malformed_shapes_is_refused(tmp_path, shapes):
    path = str(tmp_path / "clean.keras")
    anchors_model().save(path)
    crafted = str(tmp_path / "crafted.keras")
    rewrite_layer_config(path, crafted, lambda c: c.update(backbone_shapes=shapes))
    with pytest.raises(Exception, match="backbone_shapes"):
        keras.saving.load_model(crafted, safe_mode=True)


# ------------------------------------------------------------ outputs are never overwritten

def test_claim_gives_each_caller_its_own_file_and_folder(tmp_path):
    from mrcnn.paths import claim

    target = tmp_path / "out" / "submit.csv"
    first, second = claim(str(target)), claim(str(target))
    assert (first, second) == (str(target), str(tmp_path / "out" / "submit_2.csv"))
    folders = [claim(str(tmp_path / "submit_1"), folder=True) for _ in range(3)]
    assert folders == [str(tmp_path / n) for n in ("submit_1", "submit_1_2", "submit_1_3")]
    assert all(os.path.isdir(f) for f in folders)


def test_publish_never_replaces(tmp_path):
    from mrcnn.paths import publish

    (tmp_path / "final").write_text("first")
    (tmp_path / "part").write_text("second")
    with pytest.raises(FileExistsError, match="final"):
        publish(str(tmp_path / "part"), str(tmp_path / "final"))
    assert (tmp_path / "final").read_text() == "first" and not (tmp_path / "part").exists()


def test_replacing_writes_whole_or_not_at_all(tmp_path):
    from mrcnn.paths import replacing

    target = tmp_path / "results.csv"
    target.write_text("epoch,AP\n1,0.5\n")
    with replacing(str(target)) as f:
        f.write("epoch,AP\n1,0.5\n2,0.6\n")
    assert target.read_text() == "epoch,AP\n1,0.5\n2,0.6\n"
    with pytest.raises(RuntimeError, match="disk full"):
        with replacing(str(target)) as f:
            f.write("epoch,AP\n")
            raise RuntimeError("disk full")
    # The saved file is untouched and no half-written temporary is left beside it.
    assert target.read_text() == "epoch,AP\n1,0.5\n2,0.6\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_nucleus_detect_twice_in_one_second_writes_two_folders(tmp_path, monkeypatch):
    from samples.nucleus import nucleus

    monkeypatch.setattr(nucleus.cli, "timestamp", lambda: "20260101T000000")

    class Empty:
        image_ids = []

    class Model:
        def detect(self, images, verbose=0):
            raise AssertionError("no images")

    first = nucleus.detect(Model(), Empty(), str(tmp_path), overlays=False)
    second = nucleus.detect(Model(), Empty(), str(tmp_path), overlays=False)
    assert first != second
    assert os.path.isfile(os.path.join(first, "submit.csv"))
    assert os.path.isfile(os.path.join(second, "submit.csv"))


def test_export_target_rules(tmp_path):
    from mrcnn.export import _check_export_target

    assert _check_export_target(str(tmp_path / "new"), overwrite=False) is False
    (tmp_path / "empty").mkdir()
    assert _check_export_target(str(tmp_path / "empty"), overwrite=False) is False
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "saved_model.pb").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        _check_export_target(str(earlier), overwrite=False)
    assert _check_export_target(str(earlier), overwrite=True) is True
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="no saved_model.pb"):
        _check_export_target(str(tmp_path / "notes"), overwrite=True)
    (tmp_path / "file").write_text("keep")
    with pytest.raises(FileExistsError, match="not a folder"):
        _check_export_target(str(tmp_path / "file"), overwrite=True)


# ------------------------------------------------------------------ nothing silently wrong

def test_detect_side_conversion_matches_training(tmp_path):
    """Float [0, 1] and uint16 images mold exactly like their uint8 picture."""
    from mrcnn import transform
    from tests.tiny import TinyFastConfig

    config = TinyFastConfig()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    variants = [image, image.astype(np.float32) / 255, image.astype(np.uint16) * 257,
                image.astype(np.float64)]
    resized, metas, _ = transform.resize_inputs(variants, config)
    reference = transform.resize_image(image, min_dim=config.IMAGE_MIN_DIM,
                                       max_dim=config.IMAGE_MAX_DIM,
                                       min_scale=config.IMAGE_MIN_SCALE,
                                       mode=config.IMAGE_RESIZE_MODE)[0]
    for out in resized:
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, reference)
    assert (metas == metas[0]).all()


@pytest.mark.parametrize("bad, fragment", [
    (np.full((8, 8, 3), np.nan, np.float32), "non-finite"),
    (np.zeros((8, 8), np.uint8), r"shape \(8, 8\)"),
    (np.zeros((8, 8, 4), np.uint8), r"\[height, width, 3\]"),
    (np.zeros((0, 8, 3), np.uint8), "empty"),
    (np.array([["a"] * 3] * 4).reshape(2, 2, 3), "dtype"),
])
def test_detect_refuses_bad_images_naming_their_index(bad, fragment):
    from mrcnn.errors import InputError
    from mrcnn.model import MaskRCNN
    from tests.tiny import TinyFastConfig

    model = MaskRCNN.__new__(MaskRCNN)  # refused before the network runs
    model.mode, model.config = "inference", TinyFastConfig()
    good = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(InputError, match=rf"image 1: .*{fragment}"):
        model.detect([good, bad])
    assert model.detect([]) == []


def small_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    x = keras.layers.Dense(3, name="dense_a")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="dense_b")(x))


def test_nonfinite_weights_are_refused_at_load_naming_file_and_layer(tmp_path):
    from mrcnn.errors import InputError
    from mrcnn.weights import load_weights_by_name, save_weights_by_name

    poisoned = small_model(1)
    kernel = poisoned.get_layer("dense_b").kernel
    value = keras.ops.convert_to_numpy(kernel).copy()
    value[0, 0] = np.nan
    kernel.assign(value)
    path = str(tmp_path / "nan.h5")
    save_weights_by_name(poisoned, path)
    target = small_model(2)
    before = [keras.ops.convert_to_numpy(w).copy() for w in target.weights]
    with pytest.raises(InputError, match=r"nan\.h5.*non-finite.*dense_b") as info:
        load_weights_by_name(target, path)
    assert "dense_a" not in str(info.value)
    for a, b in zip(before, target.weights):  # nothing was assigned
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b))


def test_nonfinite_keras3_weights_file_is_refused_by_maskrcnn_load_weights(tmp_path):
    from mrcnn.errors import InputError
    from mrcnn.model import MaskRCNN
    from tests.tiny import TinyFastConfig

    poisoned = small_model(1)
    bias = poisoned.get_layer("dense_a").bias
    bias.assign(np.array([0.0, np.inf, 0.0], np.float32))
    path = str(tmp_path / "inf.weights.h5")
    poisoned.save_weights(path)
    model = MaskRCNN.__new__(MaskRCNN)
    model.config, model.model_dir, model.keras_model = TinyFastConfig(), str(tmp_path), \
        small_model(2)
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.keras_model.weights]
    with pytest.raises(InputError, match=r"inf\.weights\.h5.*non-finite.*1 layer"):
        model.load_weights(path)
    for a, b in zip(before, model.keras_model.weights):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b))


def test_every_weights_read_error_names_the_path(tmp_path, monkeypatch):
    import h5py

    from mrcnn.errors import InputError
    from mrcnn.weights import read_weights, save_weights_by_name

    path = str(tmp_path / "busy.h5")
    save_weights_by_name(small_model(), path)

    def being_rewritten(self, name):  # what h5py raises mid-copy, with no file name
        raise RuntimeError("Unable to synchronously open object (bad object header)")

    monkeypatch.setattr(h5py.Group, "__contains__", being_rewritten)
    with pytest.raises(InputError, match=r"busy\.h5.*RuntimeError.*bad object header"):
        read_weights(path)


def test_check_mask_errors_name_source_id_and_path():
    from mrcnn.data import load_image_gt
    from tests.tiny import TinyFastConfig, shapes_dataset

    dataset = shapes_dataset(2)
    dataset.image_info[1].update(source="mine", id="cat-7", path="/data/cat-7.png")
    dataset.load_mask = lambda image_id: (np.zeros((3, 3, 1), bool), np.array([1]))
    with pytest.raises(ValueError, match=r"image_id=1 \(source 'mine', id 'cat-7', path "
                                         r"'/data/cat-7.png'\).*spatial size"):
        load_image_gt(dataset, TinyFastConfig(), 1)


# ------------------------------------------------------------------------------- Config

def config_class(**attrs):
    from mrcnn.config import Config

    return type("MyConfig", (Config,), {"NUM_CLASSES": 3, **attrs})


def test_config_refuses_background_only():
    from mrcnn.config import Config

    # Set to 1, or inherited from the base Config (which leaves it to the subclass).
    for cls in (config_class(NUM_CLASSES=1), type("MyConfig", (Config,), {})):
        with pytest.raises(ValueError, match=r"MyConfig\.NUM_CLASSES = 1 is invalid.*class 0 "
                                             r"is the background"):
            cls()


def test_config_warns_about_an_overridden_derived_attribute():
    with pytest.warns(UserWarning, match=r"MyConfig\.BATCH_SIZE = 4 is not used.*BATCH_SIZE "
                                         r"= 2 \(IMAGES_PER_GPU \* GPU_COUNT\)"):
        config = config_class(BATCH_SIZE=4)()
    assert config.BATCH_SIZE == 2
    with pytest.warns(UserWarning, match=r"IMAGE_SHAPE = \[10, 10, 3\] is not used.*"
                                         r"\[1024, 1024, 3\]"):
        config_class(IMAGE_SHAPE=[10, 10, 3])()


def test_config_did_you_mean_and_own_attributes():
    import warnings

    with pytest.warns(UserWarning, match=r"MyConfig\.LEARNING_RAT is not a Config setting "
                                         r"\(did you mean LEARNING_RATE\?\)"):
        config = config_class(LEARNING_RAT=0.1)()
    assert config.LEARNING_RATE == 0.001 and config.LEARNING_RAT == 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # A matching derived value, a name of the user's own, and a listed near-miss: quiet.
        config_class(BATCH_SIZE=2, DATASET_ROOT="/data")()
        config_class(LEARNING_RAT=0.1, OWN_SETTINGS=("LEARNING_RAT",))()
