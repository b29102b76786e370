"""Saving and serving: ``.keras`` round trips and the SavedModel a TensorFlow-only client runs.

The inference model is made to detect (its class head always says class 1 and its masks
fill their boxes, as in test_weights.py), so the comparisons have detections to compare.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from mrcnn import utils
from mrcnn.data import DataGenerator
from mrcnn.model import MaskRCNN
from mrcnn.training import MaskRCNNTrainModel
from tests.tiny import TinyFastConfig, force_detections, shapes_dataset

tensorflow_only = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                     reason="SavedModel export runs on TensorFlow here "
                                            "(see README_runsafe.md for JAX)")


class ExportConfig(TinyFastConfig):
    NAME = "exporttest"
    IMAGES_PER_GPU = 2


def images() -> list[np.ndarray]:
    """Three uint8 images of the served size (64 x 64: IMAGE_SHAPE)."""
    dataset = shapes_dataset(3, seed=7)
    return [dataset.load_image(i) for i in range(3)]


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = MaskRCNN("inference", ExportConfig(), str(tmp_path_factory.mktemp("logs")))
    force_detections(model.keras_model)
    results = model.detect(images())
    assert all(len(r["class_ids"]) > 0 for r in results)
    return model, results


def assert_same_detections(expected: list[dict], actual: list[dict]) -> None:
    for r1, r2 in zip(expected, actual):
        for key in ("rois", "class_ids", "masks"):
            np.testing.assert_array_equal(r1[key], r2[key], err_msg=key)
        np.testing.assert_allclose(r1["scores"], r2["scores"], rtol=1e-5, atol=1e-6)


def test_inference_model_round_trips_through_dot_keras(detector, tmp_path):
    model, results = detector
    path = str(tmp_path / "inference.keras")
    model.keras_model.save(path)
    loaded = keras.models.load_model(path)
    # Every custom layer came back from its plain-value config.
    for name in ("anchors", "ROI", "mrcnn_detection", "roi_align_classifier"):
        assert type(loaded.get_layer(name)) is type(model.keras_model.get_layer(name))
        assert loaded.get_layer(name).get_config() == \
            model.keras_model.get_layer(name).get_config()
    clone = MaskRCNN.__new__(MaskRCNN)
    clone.mode, clone.config, clone.keras_model, clone._predictors = (
        "inference", model.config, loaded, {})
    assert_same_detections(results, clone.detect(images()))


def test_training_model_round_trips_through_dot_keras(tmp_path):
    keras.utils.set_random_seed(0)
    config = ExportConfig()
    model = MaskRCNN("training", config, str(tmp_path))
    path = str(tmp_path / "training.keras")
    model.keras_model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, MaskRCNNTrainModel)
    assert loaded.mrcnn_input_names == model.keras_model.mrcnn_input_names
    assert loaded.config.LOSS_WEIGHTS == config.LOSS_WEIGHTS
    for a, b in zip(model.keras_model.weights, loaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                      keras.ops.convert_to_numpy(b))
    batch = DataGenerator(shapes_dataset(2), config, shuffle=False)[0][0]
    # The RPN outputs do not depend on the random ROI sampling: they must be equal.
    out1, out2 = model.keras_model(list(batch)), loaded(list(batch))
    for name in ("rpn_class_logits", "rpn_bbox"):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(out1[name]),
                                   keras.ops.convert_to_numpy(out2[name]), rtol=1e-6, atol=1e-6)


CLIENT = textwrap.dedent(
    """
    import json, sys
    sys.modules["mrcnn"] = None  # the client has TensorFlow only
    import numpy as np
    import tensorflow as tf
    served = tf.saved_model.load(sys.argv[1])
    out = served.serve(tf.constant(np.load(sys.argv[2])))
    np.savez(sys.argv[3], **{k: v.numpy() for k, v in out.items()})
    try:
        import mrcnn  # noqa: F401
        print("MRCNN IMPORTED")
    except ImportError:
        print("NO MRCNN")
    """
)


@tensorflow_only
def test_saved_model_serves_the_same_detections_without_mrcnn(detector, tmp_path):
    model, results = detector
    path = model.export(str(tmp_path / "served"))
    batch = np.stack(images())
    np.save(tmp_path / "images.npy", batch)
    # -I: isolated (no PYTHONPATH, no user site, no cwd on sys.path), from another folder.
    proc = subprocess.run(
        [sys.executable, "-I", "-c", CLIENT, path, str(tmp_path / "images.npy"),
         str(tmp_path / "out.npz")], cwd=tmp_path, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NO MRCNN" in proc.stdout
    out = np.load(tmp_path / "out.npz")
    assert out["boxes"].dtype == np.int32 and out["masks"].shape[1:] == (
        model.config.DETECTION_MAX_INSTANCES, *model.config.MASK_SHAPE)
    served = []
    for i, image in enumerate(batch):
        n = int(out["num_detections"][i])
        boxes = out["boxes"][i, :n]
        # detect() pastes onto the boxes before rounding (MASK_PASTE = "subpixel").
        exact = out["boxes_float"][i, :n]
        np.testing.assert_array_equal(np.round(exact).astype(np.int32), boxes)
        full = [utils.unmold_mask(m, b, image.shape) for m, b in zip(out["masks"][i, :n], exact)]
        served.append({"rois": boxes, "class_ids": out["class_ids"][i, :n],
                       "scores": out["scores"][i, :n],
                       "masks": np.stack(full, -1) if full else np.zeros((64, 64, 0), bool)})
    assert_same_detections(results, served)


@tensorflow_only
def test_export_never_replaces_an_earlier_one_unless_asked(detector, tmp_path):
    model, _ = detector
    path = tmp_path / "served"
    model.export(str(path), batch_size=1)
    before = {p: p.stat().st_mtime_ns for p in path.rglob("*")}
    inode = (path / "saved_model.pb").stat().st_ino
    with pytest.raises(FileExistsError, match=r"served is not empty.*overwrite=True"):
        model.export(str(path), batch_size=2)
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*")} == before
    model.export(str(path), batch_size=2, overwrite=True)
    # Replaced: a new saved_model.pb (different inode), not the old one left in place.
    assert (path / "saved_model.pb").stat().st_ino != inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]  # no temporary left


def test_export_needs_a_size_the_backbone_takes(detector, tmp_path):
    model, _ = detector
    with pytest.raises(ValueError, match="multiples of 64"):
        model.export(str(tmp_path / "bad"), image_size=(100, 64))


def test_layers_accept_plain_values_or_matterports_config():
    from mrcnn.proposals import ProposalLayer

    config = ExportConfig()
    plain = ProposalLayer(10, 0.7, pre_nms_limit=config.PRE_NMS_LIMIT,
                          rpn_bbox_std_dev=config.RPN_BBOX_STD_DEV)
    legacy = ProposalLayer(10, 0.7, config=config)
    assert plain.get_config() == {**legacy.get_config(), "name": plain.name}
    assert json.loads(json.dumps(plain.get_config())) == plain.get_config()
    with pytest.raises(TypeError, match="pre_nms_limit"):
        ProposalLayer(10, 0.7)
