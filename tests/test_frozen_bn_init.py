"""Frozen BatchNorm from random initialization (Matterport's TRAIN_BN=False, no weights).

Frozen BN is an identity map at initialization, so the initializers alone must keep the
network's scale: each residual branch ends in a zero conv (the blocks start as identities)
and the box-delta predictors start at zero. Before, a ResNet-50 on 128 px shapes started at a
total loss of ~9e4 (rpn_bbox_loss ~4e4). These tests check the properties analytically.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

import mrcnn.model as modellib
from mrcnn.data import DataGenerator
from mrcnn.training import warn_frozen_bn_from_scratch
from tests.tiny import TinyConfig, TinyFastConfig, shapes_dataset


class FrozenBNConfig(TinyConfig):
    """64 px ResNet-50 with Matterport's frozen BN, few ROIs."""
    NAME = "frozenbn"
    NORM = "frozen_bn"
    TRAIN_ROIS_PER_IMAGE = 16


def _smooth_l1(x):
    x = np.abs(x)
    return np.where(x < 1, 0.5 * x * x, x - 0.5)


def mrcnn_bbox_loss_bound(std_dev, iou: float = 0.5) -> float:
    """Largest per-coordinate smooth-L1 target of a ROI with IoU >= ``iou`` to its GT box.

    With I the intersection height, IoU <= I / max(h_roi, h_gt) (the intersection width is
    at most either width), so I >= iou * max(h) and h_gt / h_roi lies in [iou, 1 / iou]:
    |dh| = |log(h_gt / h_roi)| <= log(1 / iou). The centers are at most (h_roi + h_gt) / 2 - I
    apart, which relative to h_roi is at most 1 - iou (for iou >= 1/2). Same for x / w. The
    targets are these divided by BBOX_STD_DEV, and with zero predicted deltas the loss is
    their mean smooth L1.
    """
    limits = np.array([1 - iou, 1 - iou, np.log(1 / iou), np.log(1 / iou)]) / np.asarray(
        std_dev, float)
    return float(_smooth_l1(limits).mean())


@pytest.fixture(scope="module")
def first_step():
    config = FrozenBNConfig()
    keras.utils.set_random_seed(3)
    model = modellib.MaskRCNN("training", config, "unused_logs")
    np.random.seed(3)
    (inputs,) = DataGenerator(shapes_dataset(4), config, shuffle=False)[0]
    net = model.keras_model
    probe = keras.Model(net.inputs, {
        **net.output, "res4a_out": net.get_layer("res4a_out").output,
        "res4f_out": net.get_layer("res4f_out").output})
    outputs = probe(list(inputs), training=True)
    losses = {k: float(keras.ops.convert_to_numpy(v))
              for k, v in net.loss_terms(list(inputs), outputs).items()}
    outputs = {k: keras.ops.convert_to_numpy(v) for k, v in outputs.items()}
    return config, model, dict(zip(net.mrcnn_input_names, inputs)), outputs, losses


def test_residual_branches_end_in_zero_convs(first_step):
    config, model, *_ = first_step
    net = model.keras_model
    last_convs = [layer for layer in net.layers if layer.name.endswith("_branch2c")
                  and layer.name.startswith("res")]
    assert len(last_convs) == 16  # ResNet-50: 3 + 4 + 6 + 3 blocks
    for layer in last_convs:
        assert not np.any(keras.ops.convert_to_numpy(layer.kernel)), layer.name
    # The other convs keep He initialization (nonzero).
    assert np.any(keras.ops.convert_to_numpy(net.get_layer("res4b_branch2a").kernel))


def test_identity_blocks_start_as_identities(first_step):
    # Zero last conv -> frozen BN maps 0 to 0 -> relu(x + 0) = x, as x is a ReLU output.
    *_, outputs, _ = first_step
    assert np.abs(outputs["res4a_out"]).max() > 0
    np.testing.assert_array_equal(outputs["res4f_out"], outputs["res4a_out"])


def test_first_step_losses_are_bounded(first_step):
    config, _, inputs, outputs, losses = first_step
    assert all(np.isfinite(v) for v in losses.values()), losses
    # The RPN deltas start at zero, so the loss is the smooth L1 of the targets themselves.
    assert not np.any(outputs["rpn_bbox"])
    match = inputs["input_rpn_match"][..., 0]
    positives = (match == 1).sum(axis=1)
    assert positives.sum() > 0
    total = sum(_smooth_l1(inputs["input_rpn_bbox"][b, :n]).sum()
                for b, n in enumerate(positives))
    expected = total / (4 * positives.sum())
    np.testing.assert_allclose(losses["rpn_bbox_loss"], expected, rtol=1e-5)
    # Head deltas start near zero (N(0, 0.001) weights): the loss is bounded by the IoU >= 0.5
    # geometry of positive ROIs plus the largest predicted delta (smooth L1 is 1-Lipschitz).
    largest = float(np.abs(outputs["mrcnn_bbox"]).max())
    assert 0 < largest < 0.5
    assert 0 <= losses["mrcnn_bbox_loss"] <= mrcnn_bbox_loss_bound(config.BBOX_STD_DEV) + largest


def test_bound_holds_on_random_box_pairs():
    # The geometric bound of mrcnn_bbox_loss_bound, checked on random boxes with IoU >= 0.5.
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (20000, 2))
    roi = np.concatenate([a, a + rng.uniform(0.05, 0.5, (20000, 2))], axis=1)
    gt = roi + rng.normal(0, 0.08, roi.shape)
    gt[:, 2:] = np.maximum(gt[:, 2:], gt[:, :2] + 0.01)
    inter = (np.clip(np.minimum(roi[:, 2:], gt[:, 2:]) - np.maximum(roi[:, :2], gt[:, :2]), 0,
                     None)).prod(axis=1)
    area = lambda b: (b[:, 2:] - b[:, :2]).prod(axis=1)  # noqa: E731
    iou = inter / (area(roi) + area(gt) - inter)
    roi, gt = roi[iou >= 0.5], gt[iou >= 0.5]
    assert len(roi) > 1000
    h, gh = roi[:, 2:] - roi[:, :2], gt[:, 2:] - gt[:, :2]
    d_center = np.abs((gt[:, :2] + gt[:, 2:] - roi[:, :2] - roi[:, 2:]) / 2) / h
    d_size = np.abs(np.log(gh / h))
    assert d_center.max() <= 0.5 and d_size.max() <= np.log(2)


def test_warns_once_from_scratch_and_not_after_loading(first_step):
    config, model, *_ = first_step
    with pytest.warns(UserWarning, match="NORM = 'gn'"):
        assert warn_frozen_bn_from_scratch(model.keras_model, config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert warn_frozen_bn_from_scratch(model.keras_model, config)  # once per model
        # GroupNorm / trained BN: nothing to warn about.
        gn = TinyFastConfig()
        assert not warn_frozen_bn_from_scratch(model.keras_model, gn)
    assert not [w for w in caught if "frozen_bn" in str(w.message)]


def test_no_warning_when_weights_were_loaded(tmp_path):
    config = TinyFastConfig()
    config.NORM = "frozen_bn"  # the box head's two BN layers are frozen BN
    model = modellib.MaskRCNN("training", config, str(tmp_path))
    bn = model.keras_model.get_layer("mrcnn_class_bn1")
    with pytest.warns(UserWarning, match="frozen_bn"):
        assert warn_frozen_bn_from_scratch(model.keras_model, config)
    # Pretrained statistics (as load_weights would set them): no longer from scratch.
    bn.moving_variance.assign(np.full(bn.moving_variance.shape, 2.0, np.float32))
    other = modellib.MaskRCNN("training", config, str(tmp_path))
    other.keras_model.get_layer("mrcnn_class_bn1").set_weights(bn.get_weights())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not warn_frozen_bn_from_scratch(other.keras_model, config)
    assert not [w for w in caught if "frozen_bn" in str(w.message)]
