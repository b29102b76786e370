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


def test_keras_file_with_malformed_shapes_is_refused(tmp_path):
    path = str(tmp_path / "clean.keras")
    anchors_model().save(path)
    crafted = str(tmp_path / "crafted.keras")
    rewrite_layer_config(path, crafted, lambda c: c.update(backbone_shapes=[{"x": 1}]))
    with pytest.raises(Exception, match="backbone_shapes"):
        keras.saving.load_model(crafted, safe_mode=True)
