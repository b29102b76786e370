"""Weights and inference: save/load round trip, Matterport HDF5 files, detect, run_graph.

The Matterport-format file is written here with h5py following the Keras 2 HDF5 weights
convention of ``mask_rcnn_coco.h5`` (root ``layer_names``, one group per layer with its
``weight_names``, variables named ``<layer>/<variable>:0``, nested ``rpn_model``), not with
``mrcnn.weights``' own writer.
"""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest

from mrcnn import utils
from mrcnn.model import MaskRCNN
from mrcnn.weights import weighted_layers
from tests.tiny import (TinyConfig, TinyFastConfig, force_detections, shapes_dataset,
                        unrounded_boxes)

EXCLUDE = ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask"]


class WeightsConfig(TinyFastConfig):
    NAME = "weightstest"
    IMAGES_PER_GPU = 2


def _images():
    """Three images of other sizes than the 64 x 64 molded shape (wide, tall, small)."""
    dataset = shapes_dataset(3, size=128, seed=5)
    return [dataset.load_image(0)[:48, :80], dataset.load_image(1)[:100, :60],
            dataset.load_image(2)[:30, :30]]


def _get(keras_model):
    return {name: [keras.ops.convert_to_numpy(w).copy() for w in layer.weights]
            for name, layer in weighted_layers(keras_model).items()}


@pytest.fixture(scope="module")
def trained_like(tmp_path_factory):
    """An inference model whose class head always says class 1 and whose masks fill their
    boxes, so that detect() has detections to check; its weights saved to a file."""
    keras.utils.set_random_seed(0)
    model = MaskRCNN("inference", WeightsConfig(), str(tmp_path_factory.mktemp("logs")))
    force_detections(model.keras_model)
    path = str(tmp_path_factory.mktemp("weights") / "saved.h5")
    model.save_weights(path)
    images = _images()
    return model, path, images, model.detect(images)


def test_detect_returns_original_image_coordinates(trained_like):
    model, _, images, results = trained_like
    config = model.config
    graph = model.run_graph(images, [("detections", "mrcnn_detection"), ("masks", "mrcnn_mask")])
    assert len(results) == len(images)
    total = 0
    for image, result, detections, head_masks in zip(images, results, graph["detections"],
                                                      graph["masks"]):
        h, w = image.shape[:2]
        rois, class_ids, scores, masks = (result[k] for k in ("rois", "class_ids", "scores",
                                                              "masks"))
        n = len(class_ids)
        total += n
        assert rois.shape == (n, 4) and rois.dtype == np.int32
        assert scores.shape == (n,) and class_ids.dtype == np.int32
        assert masks.shape == (h, w, n) and masks.dtype == bool
        assert (class_ids == 1).all() and (scores > 0.9).all()
        # Reference mapping: the normalized box in the 64 x 64 molded image, in pixels,
        # minus the window's offset, divided by the resize scale.
        _, window, scale, _, _ = utils.resize_image(
            image, min_dim=config.IMAGE_MIN_DIM, max_dim=config.IMAGE_MAX_DIM,
            mode=config.IMAGE_RESIZE_MODE)
        assert window[0] > 0 or window[1] > 0 or scale != 1  # really resized / padded
        real = detections[detections[:, 4] > 0]
        assert len(real) == n
        np.testing.assert_array_equal(class_ids, real[:, 4])
        np.testing.assert_allclose(scores, real[:, 5], rtol=1e-6)
        molded = real[:, :4] * (np.asarray(config.IMAGE_SHAPE)[[0, 1, 0, 1]] - 1) + [0, 0, 1, 1]
        expected = (molded - np.array(window)[[0, 1, 0, 1]]) / scale
        np.testing.assert_allclose(rois, expected, atol=2.0)
        assert (rois[:, :2] >= 0).all() and (rois[:, 2] <= h).all() and (rois[:, 3] <= w).all()
        # Masks are full-image and are the mask head's output (about 1 everywhere: "all
        # object") pasted onto the box as predicted, before rounding (MASK_PASTE =
        # "subpixel"): Matterport's denorm_boxes without its rounding (paste_masks is
        # checked against a scipy reference in test_transform). The head's own values, not
        # ones: a box edge on the image border half-covers the last pixel, which a mask of
        # 1 - 5e-5 leaves out (0.49998 < 0.5) and a mask of exactly 1 keeps.
        exact = unrounded_boxes(real, window, config.IMAGE_SHAPE, image.shape)
        np.testing.assert_array_equal(np.round(exact).astype(np.int32), rois)
        for i, box in enumerate(exact):
            want = utils.unmold_mask(head_masks[i, :, :, class_ids[i]], box, image.shape)
            assert want[int(np.ceil(box[0])):int(box[2]), int(np.ceil(box[1])):int(box[3])].all()
            np.testing.assert_array_equal(masks[..., i], want)
    assert total > 0


def test_detect_leaves_the_pixel_anchors_in_model_anchors(trained_like):
    # Matterport's inspect notebooks call build_rpn_targets(image.shape, model.anchors, ...)
    # after detect(); model.anchors must be the molded shape's pixel anchors.
    from mrcnn import model as modellib

    model, _, images, _ = trained_like
    config = model.config
    shape = tuple(int(v) for v in config.IMAGE_SHAPE)  # square mode: every image molds to it
    expected = utils.generate_pyramid_anchors(
        config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS,
        modellib.compute_backbone_shapes(config, shape), config.BACKBONE_STRIDES,
        config.RPN_ANCHOR_STRIDE)
    model.anchors = None
    model.detect(images[:1])
    np.testing.assert_allclose(model.anchors, expected, atol=1e-4)
    gt_boxes = np.array([[8, 8, 40, 36]], np.float64)
    rpn_match, rpn_bbox = modellib.build_rpn_targets(shape, model.anchors, np.array([1]),
                                                     gt_boxes, config)
    assert rpn_match.shape == (len(expected),) and (rpn_match == 1).sum() >= 1


def test_run_graph_returns_the_requested_tensors(trained_like):
    model, _, images, _ = trained_like
    keras_model = model.keras_model
    outputs = model.run_graph(images, [
        ("rpn_class", keras_model.get_layer("rpn_class").output),  # a Keras tensor
        ("proposals", "ROI"),  # a layer / output name
        ("p2", "fpn_p2"),
    ])
    assert list(outputs) == ["rpn_class", "proposals", "p2"]
    anchors = model.get_anchors((64, 64, 3))
    assert outputs["rpn_class"].shape == (3, len(anchors), 2)
    np.testing.assert_allclose(outputs["rpn_class"].sum(-1), 1.0, rtol=1e-5)
    assert outputs["proposals"].shape == (3, model.config.POST_NMS_ROIS_INFERENCE, 4)
    assert outputs["p2"].shape[:3] == (3, 16, 16)
    # The third image ran in a batch padded with copies of itself: same as on its own.
    alone = model.run_graph(images[2:], [("proposals", "ROI")])
    np.testing.assert_array_equal(alone["proposals"][0], outputs["proposals"][2])


def test_save_then_load_into_fresh_model_gives_identical_detections(trained_like, tmp_path):
    model, path, images, results = trained_like
    keras.utils.set_random_seed(1)
    fresh = MaskRCNN("inference", WeightsConfig(), str(tmp_path))
    before = _get(fresh.keras_model)
    saved = _get(model.keras_model)
    assert any(not np.array_equal(before[k][0], saved[k][0]) for k in saved)
    fresh.load_weights(path)
    loaded = _get(fresh.keras_model)
    assert set(loaded) == set(saved)
    for name in saved:
        for a, b in zip(saved[name], loaded[name]):
            np.testing.assert_array_equal(a, b, err_msg=name)
    again = fresh.detect(images)
    for r1, r2 in zip(results, again):
        for key in ("rois", "class_ids", "scores", "masks"):
            np.testing.assert_array_equal(r1[key], r2[key], err_msg=key)


def test_xla_detect_matches_graph_detect(trained_like, tmp_path):
    model, path, images, results = trained_like

    class XlaConfig(WeightsConfig):
        JIT_COMPILE = True

    xla = MaskRCNN("inference", XlaConfig(), str(tmp_path))
    xla.load_weights(path)
    for r1, r2 in zip(results, xla.detect(images)):
        np.testing.assert_array_equal(r1["class_ids"], r2["class_ids"])
        np.testing.assert_allclose(r1["scores"], r2["scores"], rtol=1e-4)
        np.testing.assert_allclose(r1["rois"], r2["rois"], atol=1)
        assert r1["masks"].shape == r2["masks"].shape


# ----------------------------------------------------------- Matterport / Keras 2 HDF5

# Variable names of the Keras 2 layers in Matterport's model, in Keras 2's order.
KERAS2_VARIABLES = {
    "Conv2D": ["kernel", "bias"],
    "Conv2DTranspose": ["kernel", "bias"],
    "Dense": ["kernel", "bias"],
    "FrozenBatchNormalization": ["gamma", "beta", "moving_mean", "moving_variance"],
}


class MatterportNamesConfig(TinyConfig):
    """ResNet-50 with (frozen) BatchNorm: every layer name is one of mask_rcnn_coco.h5."""
    NAME = "matterportnames"
    NORM = "frozen_bn"
    IMAGES_PER_GPU = 1


def _write_keras2_file(path, entries, weightless=("input_image", "zero_padding2d_1")):
    """Write a Keras 2 ``model.save_weights`` HDF5 file.

    Args:
        path: destination.
        entries: list of (group name, [(variable name "layer/var:0", array), ...]).
        weightless: names of layers without weights (listed with empty weight_names).
    """
    with h5py.File(path, "w") as f:
        names = list(weightless) + [name for name, _ in entries]
        f.attrs["layer_names"] = np.array([n.encode("utf8") for n in names])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.1.6"
        for name in weightless:
            f.create_group(name).attrs["weight_names"] = np.array([], dtype="S1")
        for name, variables in entries:
            group = f.create_group(name)
            group.attrs["weight_names"] = np.array([v.encode("utf8") for v, _ in variables])
            for variable, value in variables:
                group.create_dataset(variable, data=value)


@pytest.fixture(scope="module")
def matterport_model():
    keras.utils.set_random_seed(2)
    return MaskRCNN("inference", MatterportNamesConfig(), "/tmp/unused")


def test_load_matterport_hdf5_by_name_with_exclude(matterport_model, tmp_path):
    model = matterport_model
    rng = np.random.default_rng(3)
    rpn = model.keras_model.get_layer("rpn_model")
    rpn_inner = {layer.name for layer in rpn.layers if layer.weights}
    entries, rpn_vars, expected = [], [], {}
    for name, layer in weighted_layers(model.keras_model).items():
        variables = KERAS2_VARIABLES[type(layer).__name__]
        shapes = [tuple(w.shape) for w in layer.weights]
        assert len(variables) == len(shapes), name
        if name in EXCLUDE:  # the file's classes differ (81 in COCO): other shapes
            shapes = [s[:-1] + (81 * (4 if name == "mrcnn_bbox_fc" else 1),) for s in shapes]
        values = [rng.normal(size=s).astype(np.float32) for s in shapes]
        if type(layer).__name__ == "FrozenBatchNormalization":
            values[3] = np.abs(values[3]) + 0.5  # a variance
        expected[name] = values
        named = [(f"{name}/{v}:0", a) for v, a in zip(variables, values)]
        if name in rpn_inner:
            rpn_vars += named  # Keras 2 stores a nested model's weights in its own group
        else:
            entries.append((name, named))
    assert {"conv1", "bn_conv1", "res2a_branch2a", "bn5c_branch2c", "fpn_c5p5",
            "mrcnn_mask_bn4"} <= set(expected)
    entries.append(("rpn_model", rpn_vars))
    entries.append(("some_other_layer", [("some_other_layer/kernel:0",
                                          np.ones((3, 3), np.float32))]))
    path = str(tmp_path / "mask_rcnn_matterport.h5")
    _write_keras2_file(path, entries)

    before = _get(model.keras_model)
    model.load_weights(path, by_name=True, exclude=EXCLUDE)
    after = _get(model.keras_model)
    for name, values in expected.items():
        if name in EXCLUDE:
            for a, b in zip(before[name], after[name]):
                np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            for a, b in zip(values, after[name]):
                np.testing.assert_array_equal(a, b, err_msg=name)
    assert model.epoch == 0  # not one of our checkpoint names


def test_load_shape_mismatch_names_layer_and_shapes(matterport_model, tmp_path):
    model = matterport_model
    keras_model = model.keras_model
    fpn_shapes = [tuple(w.shape) for w in keras_model.get_layer("fpn_c5p5").weights]
    logits_shapes = [tuple(w.shape) for w in keras_model.get_layer("mrcnn_class_logits").weights]
    fc = logits_shapes[0][0]
    path = str(tmp_path / "coco_heads.h5")
    _write_keras2_file(path, [
        ("fpn_c5p5", [(f"fpn_c5p5/{v}:0", np.full(s, 7.0, np.float32))
                      for v, s in zip(["kernel", "bias"], fpn_shapes)]),
        ("mrcnn_class_logits", [("mrcnn_class_logits/kernel:0", np.zeros((fc, 81), np.float32)),
                                ("mrcnn_class_logits/bias:0", np.zeros(81, np.float32))]),
    ])
    before = _get(keras_model)
    with pytest.raises(ValueError) as info:
        model.load_weights(path, by_name=True)
    message = str(info.value)
    assert "mrcnn_class_logits" in message
    assert str((fc, 81)) in message and str(logits_shapes[0]) in message
    assert "fpn_c5p5" not in message
    after = _get(keras_model)
    np.testing.assert_array_equal(before["fpn_c5p5"][0], after["fpn_c5p5"][0])  # nothing set
    # With the mismatching layer excluded the rest loads; without by_name, missing layers
    # are an error.
    model.load_weights(path, by_name=True, exclude=["mrcnn_class_logits"])
    assert (keras.ops.convert_to_numpy(keras_model.get_layer("fpn_c5p5").weights[0]) == 7).all()
    with pytest.raises(ValueError, match="missing"):
        model.load_weights(path)


def test_by_name_load_warns_about_layers_left_alone(tmp_path):
    """A GroupNorm model loading a BatchNorm file: convs load, the norm layers cannot, and
    the user is told so (with the NORM hint) instead of silently keeping random norms."""
    from mrcnn.weights import load_weights_by_name, save_weights_by_name

    def small(norm_layer):
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(4, 3, name="res2a_branch2a")(inputs)
        return keras.Model(inputs, norm_layer(x))

    bn_model = small(keras.layers.BatchNormalization(name="bn2a_branch2a"))
    gn_model = small(keras.layers.GroupNormalization(2, name="gn2a_branch2a"))
    path = str(tmp_path / "bn.h5")
    save_weights_by_name(bn_model, path)
    with pytest.warns(UserWarning, match=r"1 weighted layer\(s\).*gn2a_branch2a.*NORM="):
        loaded = load_weights_by_name(gn_model, path)
    assert loaded == ["res2a_branch2a"]
    np.testing.assert_array_equal(gn_model.get_layer("res2a_branch2a").get_weights()[0],
                                  bn_model.get_layer("res2a_branch2a").get_weights()[0])
