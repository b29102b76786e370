"""The graph layers of mrcnn against independent NumPy references, and the layer names.

Each layer is called eagerly (TensorFlow backend) on small hand-made or seeded random inputs
and compared with a NumPy re-computation built from ``mrcnn.utils`` (Matterport's NumPy
helpers) or written out here. The pure-ops kernels themselves (crop-and-resize, NMS) are
compared with the TensorFlow kernels in ``test_ops.py``.
"""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn import utils
from mrcnn.backbone import resnet_graph
from mrcnn.config import Config
from mrcnn.data import compose_image_meta
from mrcnn.detection import DetectionLayer
from mrcnn.detection_targets import DetectionTargetLayer, positive_slots
from mrcnn.losses import (
    mrcnn_bbox_loss,
    mrcnn_class_loss,
    mrcnn_mask_loss,
    rpn_bbox_loss,
    rpn_class_loss,
)
from mrcnn.norm import FrozenBatchNormalization
from mrcnn.proposals import ProposalLayer
from mrcnn.roi_align import PyramidROIAlign
from mrcnn.training import LAYER_REGEX, set_trainable
from mrcnn.weights import weighted_layers
from tests.tiny import TinyFastConfig


class LayerConfig(Config):
    """Small settings for the layer tests; the two STD_DEVs differ on purpose."""
    NAME = "layers"
    NUM_CLASSES = 4
    IMAGES_PER_GPU = 2
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    PRE_NMS_LIMIT = 60
    RPN_NMS_THRESHOLD = 0.5
    RPN_BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])
    BBOX_STD_DEV = np.array([0.2, 0.15, 0.3, 0.25])
    TRAIN_ROIS_PER_IMAGE = 16
    ROI_POSITIVE_RATIO = 0.33
    MAX_GT_INSTANCES = 6
    MINI_MASK_SHAPE = (16, 16)
    DETECTION_MAX_INSTANCES = 8
    DETECTION_MIN_CONFIDENCE = 0.5
    DETECTION_NMS_THRESHOLD = 0.3


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _random_boxes(rng, n, low=0.05, high=0.35, lo=0.0, hi=1.0):
    """n normalized boxes with sides in [low, high] inside [lo, hi]."""
    h = rng.uniform(low, high, n)
    w = rng.uniform(low, high, n)
    y1 = rng.uniform(lo, hi - h)
    x1 = rng.uniform(lo, hi - w)
    return np.stack([y1, x1, y1 + h, x1 + w], axis=1).astype(np.float32)


def _jitter(rng, box, n, amount):
    """n copies of box with each edge moved by up to amount * box size."""
    h, w = box[2] - box[0], box[3] - box[1]
    noise = rng.uniform(-amount, amount, (n, 4)) * np.array([h, w, h, w])
    return (box[None] + noise).astype(np.float32)


def _crop_and_resize_np(image, box, size):
    """Bilinear ``tf.image.crop_and_resize`` of one 2-D image in float64 (written from its
    documented semantics: sample i at y1 * (H - 1) + i * (y2 - y1) * (H - 1) / (size - 1),
    samples outside [0, H - 1] give 0)."""
    height, width = image.shape
    y1, x1, y2, x2 = (float(v) for v in box)
    out = np.zeros(size)
    ys = y1 * (height - 1) + np.arange(size[0]) * (y2 - y1) * (height - 1) / (size[0] - 1)
    xs = x1 * (width - 1) + np.arange(size[1]) * (x2 - x1) * (width - 1) / (size[1] - 1)
    for i, y in enumerate(ys):
        if y < 0 or y > height - 1:
            continue
        y0, yy1 = int(np.floor(y)), int(np.ceil(y))
        for j, x in enumerate(xs):
            if x < 0 or x > width - 1:
                continue
            x0, xx1 = int(np.floor(x)), int(np.ceil(x))
            top = image[y0, x0] + (image[y0, xx1] - image[y0, x0]) * (x - x0)
            bottom = image[yy1, x0] + (image[yy1, xx1] - image[yy1, x0]) * (x - x0)
            out[i, j] = top + (bottom - top) * (y - y0)
    return out


# ------------------------------------------------------------------------ ProposalLayer

def _proposal_reference(probs, deltas, anchors, config, count, threshold, std_dev=None):
    """Matterport's proposal steps in NumPy with utils' NMS."""
    std_dev = config.RPN_BBOX_STD_DEV if std_dev is None else std_dev
    out = np.zeros((probs.shape[0], count, 4), np.float32)
    kept = []
    for b in range(probs.shape[0]):
        scores = probs[b, :, 1]
        order = np.argsort(-scores, kind="stable")[:config.PRE_NMS_LIMIT]
        boxes = utils.apply_box_deltas(anchors[b, order], deltas[b, order] * std_dev)
        boxes = np.clip(boxes, 0.0, 1.0)
        keep = utils.non_max_suppression(boxes, scores[order], threshold)[:count]
        out[b, :len(keep)] = boxes[keep]
        kept.append(len(keep))
    return out, kept


def test_proposal_layer_matches_numpy_nms():
    config = LayerConfig()
    rng = np.random.default_rng(0)
    batch, num_anchors, count = 2, 200, 40
    # Anchors in clusters (so that NMS removes many) and some past the image edge (so that
    # clipping matters).
    centers = rng.uniform(0.1, 0.9, (batch, 5, 2))
    pick = rng.integers(0, 5, (batch, num_anchors))
    size = rng.uniform(0.1, 0.3, (batch, num_anchors, 2))
    c = (np.take_along_axis(centers, pick[..., None], axis=1)
         + rng.normal(0, 0.04, (batch, num_anchors, 2)))
    anchors = np.concatenate([c - size / 2, c + size / 2], axis=-1).astype(np.float32)
    fg = rng.uniform(0, 1, (batch, num_anchors)).astype(np.float32)
    probs = np.stack([1 - fg, fg], axis=-1)
    deltas = rng.normal(0, 1, (batch, num_anchors, 4)).astype(np.float32)

    layer = ProposalLayer(count, config.RPN_NMS_THRESHOLD, config=config)
    out = _np(layer([probs, deltas, anchors]))
    ref, kept = _proposal_reference(probs, deltas, anchors, config, count,
                                    config.RPN_NMS_THRESHOLD)
    assert out.shape == (batch, count, 4)
    # The case exercises padding, clipping and the pre-NMS limit.
    assert all(0 < k < count for k in kept), kept
    assert all(((ref[b, :k] == 0) | (ref[b, :k] == 1)).any() for b, k in enumerate(kept))
    no_limit = config.PRE_NMS_LIMIT
    try:
        config.PRE_NMS_LIMIT = num_anchors
        unlimited, _ = _proposal_reference(probs, deltas, anchors, config, count, 0.5)
    finally:
        config.PRE_NMS_LIMIT = no_limit
    assert not np.allclose(unlimited, ref)
    wrong_std, _ = _proposal_reference(probs, deltas, anchors, config, count, 0.5,
                                       std_dev=config.BBOX_STD_DEV)
    assert not np.allclose(wrong_std, ref)

    np.testing.assert_allclose(out, ref, atol=1e-6)
    for b, k in enumerate(kept):
        assert (out[b, k:] == 0).all()  # zero padding after the kept boxes
        assert (out[b, :k] >= 0).all() and (out[b, :k] <= 1).all()


def test_proposal_layer_clamps_huge_deltas():
    config = LayerConfig()
    anchors = np.array([[[0.4, 0.4, 0.5, 0.5], [0.1, 0.1, 0.2, 0.3]]], np.float32)
    probs = np.array([[[0.1, 0.9], [0.2, 0.8]]], np.float32)
    deltas = np.array([[[0, 0, 1e4, 1e4], [0, 0, -1e4, 50.0]]], np.float32)
    out = _np(ProposalLayer(4, 0.7, config=config)([probs, deltas, anchors]))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0, 0], [0, 0, 1, 1])  # grown past the image, clipped


# --------------------------------------------------------------------- PyramidROIAlign

def test_pyramid_roi_align_levels_and_crops():
    rng = np.random.default_rng(1)
    image_h, image_w, stride, channels, pool = 512, 768, 4, 3, 7
    maps = [rng.normal(size=(2, image_h // s, image_w // s, channels)).astype(np.float32)
            for s in (4, 8, 16, 32)]
    boxes = np.stack([_random_boxes(rng, 24, 0.02, 0.9) for _ in range(2)])
    boxes[1, -2:] = 0  # padding rows
    layer = PyramidROIAlign((pool, pool), image_stride=stride)
    out = _np(layer([boxes] + maps))
    assert out.shape == (2, 24, pool, pool, channels)
    # Matterport's call form passes the image meta second; it changes nothing.
    meta = np.zeros((2, LayerConfig().IMAGE_META_SIZE), np.float32)
    np.testing.assert_array_equal(_np(layer([boxes, meta] + maps)), out)

    # Matterport: level = 4 + round(log2(sqrt(h * w) / (224 / sqrt(image_area)))), in 2..5.
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    with np.errstate(divide="ignore"):
        raw = np.log2(np.sqrt(h * w) / (224.0 / np.sqrt(image_h * image_w)))
    real = h * w > 0
    assert (np.abs(raw[real] - np.floor(raw[real]) - 0.5) > 1e-3).all()  # no rounding ties
    levels = np.clip(4 + np.round(raw), 2, 5)
    assert set(levels[real].astype(int)) == {2, 3, 4, 5}
    for b in range(2):
        for n in range(24):
            if not real[b, n]:
                continue
            fm = maps[int(levels[b, n]) - 2]
            ref = tf.image.crop_and_resize(fm[b:b + 1], boxes[b, n:n + 1], [0], (pool, pool))
            np.testing.assert_allclose(out[b, n], ref[0], atol=1e-5)
            # Sensitivity: the neighbouring level gives another crop.
            other = maps[int(levels[b, n]) - 2 + (1 if levels[b, n] < 5 else -1)]
            wrong = tf.image.crop_and_resize(other[b:b + 1], boxes[b, n:n + 1], [0],
                                             (pool, pool))
            assert not np.allclose(out[b, n], wrong[0], atol=1e-3)


# ----------------------------------------------------------------- DetectionTargetLayer

def _ellipse_masks(rng, size, count):
    """count filled ellipses (one per channel) inside a size x size image."""
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((size, size, count), bool)
    for i in range(count):
        cy, cx = rng.uniform(0.25 * size, 0.75 * size, 2)
        ry, rx = rng.uniform(0.1 * size, 0.22 * size, 2)
        masks[..., i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return masks


def _detection_target_case(use_mini_mask):
    """Three images: three objects + a crowd; one object; only a crowd."""
    config = LayerConfig()
    config.USE_MINI_MASK = use_mini_mask
    rng = np.random.default_rng(2)
    size, g, n = 64, config.MAX_GT_INSTANCES, 48
    full = np.zeros((3, size, size, g), bool)
    class_ids = np.zeros((3, g), np.int32)
    boxes = np.zeros((3, g, 4), np.float32)
    proposals = np.zeros((3, n, 4), np.float32)

    # Image 0: objects in three quadrants, a crowd region in the fourth.
    quadrants = [(0, 0), (0, 32), (32, 0), (32, 32)]
    for i, (qy, qx) in enumerate(quadrants):
        full[0, qy:qy + 32, qx:qx + 32, i] = _ellipse_masks(rng, 32, 1)[..., 0]
    class_ids[0, :4] = [1, 2, 3, -2]
    props = []
    for i in range(4):
        px = utils.extract_bboxes(full[0, ..., i:i + 1])[0]
        boxes[0, i] = utils.norm_boxes(px[None], (size, size))[0]
        props.append(_jitter(rng, boxes[0, i], 4, 0.12))  # mostly IoU >= 0.5
    crowd = boxes[0, 3]
    ch, cw = crowd[2] - crowd[0], crowd[3] - crowd[1]
    # Two boxes grazing the crowd (0.001 < IoU < 0.5): excluded from the negatives.
    props.append(np.array([[crowd[0] + 0.8 * ch, crowd[1] + 0.8 * cw,
                            crowd[0] + 1.3 * ch, crowd[1] + 1.3 * cw],
                           [crowd[0] - 0.3 * ch, crowd[1] + 0.2 * cw,
                            crowd[0] + 0.25 * ch, crowd[1] + 0.9 * cw]], np.float32))
    props.append(_random_boxes(rng, 20, 0.05, 0.3))
    props = np.concatenate(props)
    proposals[0, :len(props)] = props

    # Image 1: one object.
    full[1, ..., 0] = _ellipse_masks(rng, size, 1)[..., 0]
    class_ids[1, 0] = 2
    boxes[1, 0] = utils.norm_boxes(utils.extract_bboxes(full[1, ..., :1]), (size, size))[0]
    # Shifted sideways by d * width, a box has IoU (1 - d) / (1 + d) with the GT: one on
    # each side of the 0.5 threshold (0.55 positive, 0.45 negative).
    shifted = []
    for d in (0.29, 0.379):
        shift = np.array([0, d, 0, d]) * (boxes[1, 0, 3] - boxes[1, 0, 1])
        shifted.append(boxes[1, 0] + shift)
    props = np.concatenate([_jitter(rng, boxes[1, 0], 1, 0.05), np.float32(shifted),
                            _random_boxes(rng, 25)])
    proposals[1, :len(props)] = props

    # Image 2: only a crowd box.
    full[2, 10:40, 10:40, 0] = True
    class_ids[2, 0] = -1
    boxes[2, 0] = utils.norm_boxes(utils.extract_bboxes(full[2, ..., :1]), (size, size))[0]
    proposals[2, :30] = _random_boxes(rng, 30)

    if use_mini_mask:
        masks = np.zeros((3, *config.MINI_MASK_SHAPE, g), bool)
        for b in range(3):
            count = int((class_ids[b] != 0).sum())
            px = utils.extract_bboxes(full[b, ..., :count])
            masks[b, ..., :count] = utils.minimize_mask(px, full[b, ..., :count],
                                                        config.MINI_MASK_SHAPE)
    else:
        masks = full
    return config, proposals, class_ids, boxes, masks, full


def _check_detection_targets(config, proposals, class_ids, gt_boxes, gt_masks, full, outputs):
    rois, target_ids, target_deltas, target_masks = (_np(o) for o in outputs)
    t, p = config.TRAIN_ROIS_PER_IMAGE, positive_slots(config)
    assert rois.shape == (3, t, 4) and target_ids.shape == (3, t)
    assert target_deltas.shape == (3, t, 4)
    assert target_masks.shape == (3, p, *config.MASK_SHAPE)
    ambiguous = checked = 0
    for b in range(3):
        real_gt = np.where(class_ids[b] > 0)[0]
        crowd_gt = np.where(class_ids[b] < 0)[0]
        cands = proposals[b][np.any(proposals[b] != 0, axis=1)]
        cands = np.concatenate([cands, gt_boxes[b, real_gt]])  # TRAIN_ROIS_INCLUDE_GT
        iou = utils.compute_overlaps(cands, gt_boxes[b, real_gt]) if len(real_gt) else \
            np.zeros((len(cands), 0))
        best = iou.max(axis=1) if len(real_gt) else np.full(len(cands), -1.0)
        crowd_iou = (utils.compute_overlaps(cands, gt_boxes[b, crowd_gt]).max(axis=1)
                     if len(crowd_gt) else np.zeros(len(cands)))
        n_pos_cands = int((best >= 0.5).sum())
        n_neg_cands = int(((best < 0.5) & (crowd_iou < 0.001)).sum())
        num_pos = min(p, n_pos_cands)
        num_neg = min(n_neg_cands, int(num_pos / config.ROI_POSITIVE_RATIO) - num_pos)

        real = np.any(rois[b] != 0, axis=1)
        # Positives fill the first slots, negatives the slots after P, zeros elsewhere.
        assert real[:num_pos].all() and not real[num_pos:p].any()
        assert real[p:p + num_neg].all() and not real[p + num_neg:].any()
        if num_pos:
            share = num_pos / (num_pos + num_neg)
            assert share <= config.ROI_POSITIVE_RATIO + 1.0 / (num_pos + num_neg)
        assert not (target_ids[b][~real]).any() and not target_deltas[b][~real].any()
        assert not target_masks[b][~real[:p]].any()

        sampled = rois[b][real]
        assert len(np.unique(sampled, axis=0)) == len(sampled)
        for roi in sampled:  # every ROI is a candidate
            assert np.abs(cands - roi).max(axis=1).min() < 1e-6
        for slot in range(num_pos):
            roi = rois[b, slot]
            overlaps = utils.compute_overlaps(roi[None], gt_boxes[b, real_gt])[0]
            gt = real_gt[np.argmax(overlaps)]
            assert overlaps.max() >= 0.5
            assert target_ids[b, slot] == class_ids[b, gt] > 0
            decoded = utils.apply_box_deltas(roi[None],
                                             target_deltas[b, slot][None] * config.BBOX_STD_DEV)
            np.testing.assert_allclose(decoded[0], gt_boxes[b, gt], atol=1e-5)
            # Mask target: the GT mask cropped to the ROI, resized, rounded (Matterport).
            if config.USE_MINI_MASK:
                gy1, gx1, gy2, gx2 = gt_boxes[b, gt]
                gh, gw = gy2 - gy1, gx2 - gx1
                frame = [(roi[0] - gy1) / gh, (roi[1] - gx1) / gw,
                         (roi[2] - gy1) / gh, (roi[3] - gx1) / gw]
                values = _crop_and_resize_np(gt_masks[b, ..., gt].astype(float), frame,
                                             config.MASK_SHAPE)
                # The mini mask stands for the full one: same shape, up to resampling.
                exact = np.round(_crop_and_resize_np(full[b, ..., gt].astype(float), roi,
                                                      config.MASK_SHAPE))
                mini = np.round(values)
                iou = (mini * exact).sum() / np.maximum(mini, exact).sum()
                assert iou > 0.75
            else:
                values = _crop_and_resize_np(gt_masks[b, ..., gt].astype(float), roi,
                                             config.MASK_SHAPE)
            clear = np.abs(values - 0.5) > 1e-4  # float32 vs float64 at exact halves
            ambiguous += int((~clear).sum())
            checked += clear.size
            np.testing.assert_array_equal(target_masks[b, slot][clear], np.round(values)[clear])
            assert target_masks[b, slot].any()
        for slot in range(p, p + num_neg):
            roi = rois[b, slot]
            if len(real_gt):
                assert utils.compute_overlaps(roi[None], gt_boxes[b, real_gt]).max() < 0.5
            if len(crowd_gt):
                assert utils.compute_overlaps(roi[None], gt_boxes[b, crowd_gt]).max() < 0.001
        yield b, num_pos, num_neg, n_pos_cands, n_neg_cands, (crowd_iou >= 0.5).sum(), \
            ((crowd_iou > 0.001) & (crowd_iou < 0.5)).sum()
    assert ambiguous < 0.01 * checked


@pytest.mark.parametrize("use_mini_mask", [False, True])
def test_detection_target_layer_invariants(use_mini_mask):
    config, proposals, class_ids, boxes, masks, full = _detection_target_case(use_mini_mask)
    layer = DetectionTargetLayer(config, seed=3)
    for _ in range(2):  # two different random samplings
        outputs = layer([proposals, class_ids, boxes, masks])
        stats = list(_check_detection_targets(config, proposals, class_ids, boxes, masks,
                                              full, outputs))
        # The case covers: more positive candidates than slots and crowd overlaps (image
        # 0), a negative count set by the positives (image 1), nothing sampled (image 2).
        _, pos0, neg0, pos_cands0, _, crowd_hits, crowd_grazes = stats[0]
        assert pos0 == positive_slots(config) < pos_cands0 and crowd_hits >= 2
        assert crowd_grazes >= 2 and neg0 == 10
        _, pos1, neg1, _, neg_cands1, _, _ = stats[1]
        assert pos1 == 3 and neg1 == int(pos1 / config.ROI_POSITIVE_RATIO) - pos1 < neg_cands1
        assert stats[2][1:3] == (0, 0)


def test_detection_target_masks_round_half_to_even():
    # A mask of alternating columns sampled exactly halfway between columns gives 0.5:
    # Matterport's tf.round makes that background. One proposal and no GT among the
    # candidates: fewer candidates than ROI slots must still work.
    config = LayerConfig()
    config.USE_MINI_MASK = False
    mask = np.zeros((1, 28, 28, config.MAX_GT_INSTANCES), bool)
    mask[0, :, ::2, 0] = True
    gt_boxes = np.zeros((1, config.MAX_GT_INSTANCES, 4), np.float32)
    gt_boxes[0, 0] = [0, 0, 1, 1]
    class_ids = np.zeros((1, config.MAX_GT_INSTANCES), np.int32)
    class_ids[0, 0] = 1
    proposals = np.array([[[0, 0, 1, 0.5]]], np.float32)  # IoU 0.5 with the GT: positive
    config.TRAIN_ROIS_INCLUDE_GT = False
    rois, ids, _, masks = (_np(o) for o in DetectionTargetLayer(config, seed=0)(
        [proposals, class_ids, gt_boxes, mask]))
    np.testing.assert_array_equal(rois[0, 0], proposals[0, 0])
    assert ids[0, 0] == 1
    # Samples x = j / 2: even j on a column (value of that column), odd j halfway (0.5 -> 0).
    j = np.arange(28)
    expected = np.where(j % 2 == 0, (j // 2) % 2 == 0, False).astype(np.float32)
    np.testing.assert_array_equal(masks[0, 0], np.broadcast_to(expected, (28, 28)))


# ------------------------------------------------------------------------ DetectionLayer

def _detection_reference(rois, probs, deltas, window, config):
    """Matterport's refine_detections in NumPy: per-class utils.non_max_suppression.
    DETECTION_SCORE_MODE "foreground": the best non-background class, whatever BG's score."""
    if getattr(config, "DETECTION_SCORE_MODE", "argmax") == "foreground":
        class_ids = probs[:, 1:].argmax(axis=1) + 1
        scores = probs[:, 1:].max(axis=1)
    else:
        class_ids = probs.argmax(axis=1)
        scores = probs.max(axis=1)
    d = deltas[np.arange(len(rois)), class_ids] * config.BBOX_STD_DEV
    boxes = utils.apply_box_deltas(rois, d)
    wy1, wx1, wy2, wx2 = window
    boxes = np.stack([np.clip(boxes[:, 0], wy1, wy2), np.clip(boxes[:, 1], wx1, wx2),
                      np.clip(boxes[:, 2], wy1, wy2), np.clip(boxes[:, 3], wx1, wx2)], axis=1)
    keep = np.where((class_ids > 0) & (scores >= config.DETECTION_MIN_CONFIDENCE)
                    & np.any(rois != 0, axis=1))[0]
    selected = []
    for c in np.unique(class_ids[keep]):
        ix = keep[class_ids[keep] == c]
        selected += list(ix[utils.non_max_suppression(boxes[ix], scores[ix],
                                                      config.DETECTION_NMS_THRESHOLD)])
    selected = np.array(selected, int)
    selected = selected[np.argsort(-scores[selected], kind="stable")]
    selected = selected[:config.DETECTION_MAX_INSTANCES]
    out = np.zeros((config.DETECTION_MAX_INSTANCES, 6), np.float32)
    out[:len(selected), :4] = boxes[selected]
    out[:len(selected), 4] = class_ids[selected]
    out[:len(selected), 5] = scores[selected]
    return out, len(selected)


@pytest.mark.parametrize("mode", ["argmax", "foreground"])
def test_detection_layer_matches_per_class_nms(mode):
    config = LayerConfig()
    config.DETECTION_SCORE_MODE = mode
    rng = np.random.default_rng(4)
    batch, n, c = 2, 40, config.NUM_CLASSES
    # Image 64x64 with a window (image content) in rows 8..56.
    pixel_window = np.array([8, 0, 56, 64])
    metas = np.stack([compose_image_meta(i, (48, 64, 3), (64, 64, 3), pixel_window, 1.0,
                                         np.ones(c)) for i in range(batch)]).astype(np.float32)
    window = utils.norm_boxes(pixel_window, (64, 64))
    # Clustered ROIs inside the window so that same-class boxes overlap.
    centers = rng.uniform(0.3, 0.7, (batch, 5, 2))
    pick = rng.integers(0, 5, (batch, n))
    cy = np.take_along_axis(centers[..., 0], pick, 1) + rng.normal(0, 0.04, (batch, n))
    cx = np.take_along_axis(centers[..., 1], pick, 1) + rng.normal(0, 0.04, (batch, n))
    half = rng.uniform(0.05, 0.12, (batch, n, 2))
    rois = np.stack([cy - half[..., 0], cx - half[..., 1], cy + half[..., 0],
                     cx + half[..., 1]], axis=-1).astype(np.float32)
    rois[1, 6:] = 0  # padding ROIs
    logits = rng.normal(0, 1.5, (batch, n, c))
    probs = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    deltas = rng.normal(0, 0.5, (batch, n, c, 4)).astype(np.float32)

    out = _np(DetectionLayer(config)([rois, probs, deltas, metas]))
    assert out.shape == (batch, config.DETECTION_MAX_INSTANCES, 6)
    counts = []
    for b in range(batch):
        ref, count = _detection_reference(rois[b], probs[b], deltas[b], window, config)
        counts.append(count)
        np.testing.assert_array_equal(out[b, :, 4], ref[:, 4])
        np.testing.assert_allclose(out[b, :, 5], ref[:, 5], rtol=1e-6)
        np.testing.assert_allclose(out[b, :, :4], ref[:, :4], atol=1e-5)
        assert (out[b, count:] == 0).all()
    # The case exercises truncation at DETECTION_MAX_INSTANCES and zero padding, and the
    # confidence threshold and the NMS both remove detections.
    assert counts[0] == config.DETECTION_MAX_INSTANCES and 0 < counts[1] < counts[0]
    untruncated = LayerConfig()
    untruncated.DETECTION_SCORE_MODE = mode
    untruncated.DETECTION_MAX_INSTANCES = n
    _, full_count = _detection_reference(rois[0], probs[0], deltas[0], window, untruncated)
    for attr, value in (("DETECTION_MIN_CONFIDENCE", 0.0), ("DETECTION_NMS_THRESHOLD", 1.0)):
        setattr(untruncated, attr, value)
        _, count = _detection_reference(rois[0], probs[0], deltas[0], window, untruncated)
        assert count > full_count, attr
        setattr(untruncated, attr, getattr(config, attr))


def test_foreground_score_mode_keeps_what_argmax_keeps_and_rois_likelier_background():
    # Two classes (BG, object): an ROI with P(object) 0.3 is dropped by Matterport's argmax
    # and kept by "foreground" at DETECTION_MIN_CONFIDENCE 0.2; the confident ROI is kept by
    # both with the same box and score.
    config = LayerConfig()
    config.NUM_CLASSES = 2
    config.DETECTION_MIN_CONFIDENCE = 0.2
    meta = compose_image_meta(0, (64, 64, 3), (64, 64, 3), np.array([0, 0, 64, 64]), 1.0,
                              np.ones(2))[None].astype(np.float32)
    rois = np.array([[[0.1, 0.1, 0.3, 0.3], [0.6, 0.6, 0.9, 0.9]]], np.float32)
    probs = np.array([[[0.1, 0.9], [0.7, 0.3]]], np.float32)
    deltas = np.zeros((1, 2, 2, 4), np.float32)
    out = {}
    for mode in ("argmax", "foreground"):
        config.DETECTION_SCORE_MODE = mode
        out[mode] = _np(DetectionLayer(config)([rois, probs, deltas, meta]))[0]
    np.testing.assert_allclose(out["argmax"][0], [0.1, 0.1, 0.3, 0.3, 1, 0.9], atol=1e-6)
    assert (out["argmax"][1:] == 0).all()
    np.testing.assert_allclose(out["foreground"][:2], [[0.1, 0.1, 0.3, 0.3, 1, 0.9],
                                                      [0.6, 0.6, 0.9, 0.9, 1, 0.3]], atol=1e-6)
    # Saved before the setting existed: loads as "argmax".
    legacy = DetectionLayer(bbox_std_dev=[0.1, 0.1, 0.2, 0.2], detection_min_confidence=0.2,
                            detection_max_instances=config.DETECTION_MAX_INSTANCES,
                            detection_nms_threshold=0.3)
    assert legacy.get_config()["detection_score_mode"] == "argmax"
    np.testing.assert_allclose(_np(legacy([rois, probs, deltas, meta]))[0], out["argmax"],
                               atol=1e-6)


# ---------------------------------------------------------------------------- Losses

def _smooth_l1(diff):
    diff = np.abs(diff)
    return np.where(diff < 1, 0.5 * diff ** 2, diff - 0.5)


def _log_softmax(logits):
    logits = logits - logits.max(axis=-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


def test_rpn_losses_match_numpy():
    rng = np.random.default_rng(5)
    batch, anchors, slots = 2, 50, 8
    match = rng.choice([-1, 0, 0, 1], (batch, anchors, 1)).astype(np.int32)
    match[0, :, 0][np.where(match[0, :, 0] == 1)[0][5:]] = 0  # image 0: 5 positives
    match[1, :, 0][np.where(match[1, :, 0] == 1)[0][3:]] = 0  # image 1: 3 positives
    logits = rng.normal(size=(batch, anchors, 2)).astype(np.float32)
    pred = rng.normal(size=(batch, anchors, 4)).astype(np.float32)
    # Targets of the positives in anchor order, padding rows full of garbage.
    target = rng.normal(0, 3, (batch, slots, 4)).astype(np.float32)

    m = match[..., 0]
    ce = -_log_softmax(logits)[..., 1] * (m == 1) - _log_softmax(logits)[..., 0] * (m == -1)
    expected = ce[m != 0].mean()
    np.testing.assert_allclose(_np(rpn_class_loss(match, logits)), expected, rtol=1e-5)

    per_coord = []
    for b in range(batch):
        pos = np.where(m[b] == 1)[0]
        per_coord.append(_smooth_l1(target[b, :len(pos)] - pred[b, pos]))
    expected = np.concatenate(per_coord).mean()
    np.testing.assert_allclose(_np(rpn_bbox_loss(target, match, pred)), expected, rtol=1e-5)

    for loss in (rpn_class_loss(match, keras.ops.cast(logits, "bfloat16")),
                 rpn_bbox_loss(target, match, keras.ops.cast(pred, "bfloat16"))):
        assert keras.backend.standardize_dtype(loss.dtype) == "float32"

    neutral = np.zeros_like(match)
    assert _np(rpn_class_loss(neutral, logits)) == 0
    assert _np(rpn_bbox_loss(target, neutral, pred)) == 0


def test_mrcnn_losses_match_numpy():
    rng = np.random.default_rng(6)
    batch, rois_n, classes, mask = 2, 12, 5, 6
    target_ids = rng.integers(0, classes, (batch, rois_n)).astype(np.int32)
    target_ids[:, 9:] = 0  # negatives / padding
    rois = rng.uniform(0.1, 0.9, (batch, rois_n, 4)).astype(np.float32)
    rois[1, 10:] = 0  # padding ROIs
    logits = rng.normal(0, 2, (batch, rois_n, classes)).astype(np.float32)
    # Image 0 from a source with all classes, image 1 from one with classes 0..2 only.
    active = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.float32)
    assert (logits[1].argmax(-1) >= 3).any()  # some predictions of inactive classes

    ce = -np.take_along_axis(_log_softmax(logits), target_ids[..., None], -1)[..., 0]
    weight = (np.take_along_axis(active, logits.argmax(-1), 1)
              * np.any(rois != 0, axis=-1))
    expected = (ce * weight).sum() / weight.sum()
    got = _np(mrcnn_class_loss(target_ids, logits, active, rois))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Not the plain mean: the inactive predictions and padding really are left out.
    assert abs(got - ce.mean()) > 1e-3

    target_bbox = rng.normal(0, 1, (batch, rois_n, 4)).astype(np.float32)
    target_bbox[target_ids == 0] = 100.0  # never read
    pred_bbox = rng.normal(0, 1, (batch, rois_n, classes, 4)).astype(np.float32)
    pos = target_ids > 0
    chosen = np.take_along_axis(pred_bbox, target_ids[..., None, None], 2)[:, :, 0]
    expected = _smooth_l1(target_bbox - chosen)[pos].mean()
    np.testing.assert_allclose(_np(mrcnn_bbox_loss(target_bbox, target_ids, pred_bbox)),
                               expected, rtol=1e-5)

    p = 6
    target_masks = rng.integers(0, 2, (batch, p, mask, mask)).astype(np.float32)
    pred_masks = rng.uniform(0, 1, (batch, p, mask, mask, classes)).astype(np.float32)
    pred_masks[0, 0, 0, 0, :] = [0, 1, 0, 1, 0]  # saturated: Keras' epsilon clipping
    ids = target_ids[:, :p]
    chosen = np.take_along_axis(pred_masks, ids[:, :, None, None, None], 4)[..., 0]
    chosen = np.clip(chosen, 1e-7, 1 - 1e-7)
    bce = -(target_masks * np.log(chosen) + (1 - target_masks) * np.log(1 - chosen))
    expected = bce[ids > 0].mean()
    np.testing.assert_allclose(_np(mrcnn_mask_loss(target_masks, ids, pred_masks)), expected,
                               rtol=1e-5)

    # Mixed precision: bfloat16 predictions give float32 losses of about the same value.
    bf16 = {
        "mrcnn_class_loss": mrcnn_class_loss(target_ids, keras.ops.cast(logits, "bfloat16"),
                                             active, rois),
        "mrcnn_bbox_loss": mrcnn_bbox_loss(target_bbox, target_ids,
                                           keras.ops.cast(pred_bbox, "bfloat16")),
        "mrcnn_mask_loss": mrcnn_mask_loss(target_masks, ids,
                                           keras.ops.cast(pred_masks, "bfloat16")),
    }
    full = {"mrcnn_class_loss": got,
            "mrcnn_bbox_loss": mrcnn_bbox_loss(target_bbox, target_ids, pred_bbox),
            "mrcnn_mask_loss": mrcnn_mask_loss(target_masks, ids, pred_masks)}
    for name, value in bf16.items():
        assert keras.backend.standardize_dtype(value.dtype) == "float32", name
        np.testing.assert_allclose(_np(value), _np(full[name]), rtol=0.02, err_msg=name)

    # Nothing positive (an image without instances): zero, not NaN.
    zeros = np.zeros_like(target_ids)
    assert _np(mrcnn_bbox_loss(target_bbox, zeros, pred_bbox)) == 0
    assert _np(mrcnn_mask_loss(target_masks, zeros[:, :p], pred_masks)) == 0
    assert _np(mrcnn_class_loss(zeros, logits, active, np.zeros_like(rois))) == 0


# ------------------------------------------------------------------------- Layer names

def _matterport_resnet_names(architecture):
    """Conv and BN layer names of Matterport's resnet_graph, in creation order."""
    blocks = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}[architecture]
    names = ["conv1", "bn_conv1"]
    for stage, count in zip((2, 3, 4, 5), blocks):
        for i in range(count):
            block = chr(ord("a") + i)
            for branch in ("2a", "2b", "2c") + (("1",) if i == 0 else ()):
                names += [f"res{stage}{block}_branch{branch}", f"bn{stage}{block}_branch{branch}"]
    return names


@pytest.fixture(scope="module")
def resnet50_frozen_bn():
    image = keras.Input((None, None, 3))
    outputs = resnet_graph(image, "resnet50", norm="frozen_bn")
    return keras.Model(image, outputs[1:])


def test_resnet_layer_names_are_matterport(resnet50_frozen_bn):
    names = list(weighted_layers(resnet50_frozen_bn))
    # Same names (the order of a functional model's layers is its topological order).
    assert sorted(names) == sorted(_matterport_resnet_names("resnet50"))
    assert len(names) == 2 * 53 and "res5c_branch2c" in names
    shapes = {layer.name: [tuple(w.shape) for w in layer.weights]
              for layer in resnet50_frozen_bn.layers}
    assert shapes["conv1"] == [(7, 7, 3, 64), (64,)]
    assert shapes["res2a_branch1"] == [(1, 1, 64, 256), (256,)]
    assert shapes["res4f_branch2b"] == [(3, 3, 256, 256), (256,)]
    assert shapes["bn5c_branch2c"] == [(2048,)] * 4
    # ResNet-101 (res4b..res4w) is checked with the COCO-sized model below.


def test_frozen_batchnorm_is_frozen_and_in_inference_mode(resnet50_frozen_bn):
    bns = [layer for layer in resnet50_frozen_bn.layers
           if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 53 and all(isinstance(b, FrozenBatchNormalization) for b in bns)
    set_trainable(resnet50_frozen_bn, ".*")  # "all" unfreezes every other layer
    for bn in bns:
        bn.trainable = True
        assert not bn.trainable and not bn.trainable_weights
    trainable = {id(w) for w in resnet50_frozen_bn.trainable_weights}
    assert not any(id(w) in trainable for bn in bns for w in bn.weights)
    assert resnet50_frozen_bn.get_layer("conv1").trainable

    bn = bns[0]
    rng = np.random.default_rng(7)
    bn.set_weights([rng.uniform(0.5, 2, 64), rng.normal(size=64), rng.normal(size=64),
                    rng.uniform(0.5, 2, 64)])
    before = [w.copy() for w in bn.get_weights()]
    x = rng.normal(3, 2, (2, 5, 5, 64)).astype(np.float32)
    train_out = _np(bn(x, training=True))
    gamma, beta, mean, var = before
    expected = gamma * (x - mean) / np.sqrt(var + bn.epsilon) + beta
    np.testing.assert_allclose(train_out, expected, rtol=1e-4, atol=1e-4)
    for w, b in zip(bn.get_weights(), before):
        np.testing.assert_array_equal(w, b)  # moving statistics untouched


def test_layer_presets_on_resnet_names(resnet50_frozen_bn):
    names = [layer.name for layer in resnet50_frozen_bn.layers if layer.weights]
    gn_names = ["gn_conv1", "gn3a_branch2a", "gn5c_branch2c", "gn2a_branch1"]
    heads = re.compile(LAYER_REGEX["heads"])
    assert not any(heads.fullmatch(n) for n in names + gn_names)
    for preset, first_stage in (("3+", 3), ("4+", 4), ("5+", 5)):
        regex = re.compile(LAYER_REGEX[preset])
        for name in names + gn_names:
            match = re.match(r"(?:res|bn|gn)(\d)", name)
            stage = int(match.group(1)) if match else 1  # conv1, bn_conv1, gn_conv1
            assert bool(regex.fullmatch(name)) == (stage >= first_stage), (preset, name)
        assert regex.fullmatch("mrcnn_mask_conv1") and regex.fullmatch("fpn_c5p5")
        assert regex.fullmatch("rpn_conv_shared")


def _matterport_head_layers(norm_prefix):
    return (["fpn_c5p5", "fpn_c4p4", "fpn_c3p3", "fpn_c2p2", "fpn_p2", "fpn_p3", "fpn_p4",
             "fpn_p5", "rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred",
             "mrcnn_class_conv1", f"mrcnn_class_{norm_prefix}1", "mrcnn_class_conv2",
             f"mrcnn_class_{norm_prefix}2", "mrcnn_class_logits", "mrcnn_bbox_fc",
             "mrcnn_mask_deconv", "mrcnn_mask"]
            + [f"mrcnn_mask_conv{i}" for i in range(1, 5)]
            + [f"mrcnn_mask_{norm_prefix}{i}" for i in range(1, 5)])


def test_coco_model_matches_matterport_size_and_names():
    """Matterport's COCO model (ResNet-101, 81 classes) has 64,158,584 parameters."""
    from mrcnn.model import MaskRCNN

    class CocoLike(Config):
        NAME = "coco"
        NUM_CLASSES = 81
        IMAGES_PER_GPU = 1

    model = MaskRCNN("inference", CocoLike(), "/tmp/unused").keras_model
    assert model.count_params() == 64_158_584
    layers = weighted_layers(model)
    assert set(_matterport_head_layers("bn")) | set(_matterport_resnet_names("resnet101")) \
        == set(layers)
    assert isinstance(model.get_layer("rpn_model"), keras.Model)
    rpn = model.get_layer("rpn_model")
    assert [tuple(w.shape) for w in rpn.get_layer("rpn_class_raw").weights] == \
        [(1, 1, 512, 6), (6,)]
    assert [tuple(w.shape) for w in layers["mrcnn_bbox_fc"].weights] == [(1024, 324), (324,)]
    assert [tuple(w.shape) for w in layers["mrcnn_mask"].weights] == [(1, 1, 256, 81), (81,)]
    for name in ("mrcnn_detection", "ROI", "mrcnn_class", "mrcnn_bbox", "fpn_p6"):
        model.get_layer(name)


def test_group_norm_names_and_4conv1fc_box_head():
    from mrcnn.model import MaskRCNN

    class Gn4Conv(TinyFastConfig):
        BOX_HEAD = "4conv1fc"

    config = Gn4Conv()
    model = MaskRCNN("inference", config, "/tmp/unused").keras_model
    layers = weighted_layers(model)
    for name in ("fpn_c5p5_gn", "fpn_p2_gn", "mrcnn_mask_gn4", "mrcnn_class_fc",
                 *(f"mrcnn_class_conv{i}" for i in range(1, 5)),
                 *(f"mrcnn_class_gn{i}" for i in range(1, 5))):
        assert name in layers, name
    assert not any("_bn" in n for n in layers)
    assert isinstance(layers["mrcnn_class_gn1"], keras.layers.GroupNormalization)
    assert [tuple(w.shape) for w in layers["mrcnn_class_conv4"].weights] == \
        [(3, 3, 256, 256), (256,)]
    out = model.output  # built symbolically: every layer ran on the graph's shapes
    assert tuple(out["mrcnn_class"].shape) == (None, config.POST_NMS_ROIS_INFERENCE, 4)
    assert tuple(out["mrcnn_bbox"].shape) == (None, config.POST_NMS_ROIS_INFERENCE, 4, 4)

    image = keras.Input((64, 64, 3))
    gn = keras.Model(image, resnet_graph(image, "resnet50", norm="gn", gn_groups=16)[1:])
    expected = [n if not n.startswith("bn") else "gn" + n[2:]
                for n in _matterport_resnet_names("resnet50")]
    assert sorted(weighted_layers(gn)) == sorted(expected)


@pytest.mark.parametrize("kernel", [7, 1])
def test_box_head_fc_conv_as_matmul_equals_keras_conv(kernel):
    """mrcnn_class_conv1/conv2 (a kernel covering the input) run as a matmul: the output and
    the gradients equal Keras' Conv2D with the same weights; other shapes use Keras' code."""
    from mrcnn.box_head import Conv2D

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(5, kernel, kernel, 16)), tf.float32)
    mine = Conv2D(8, kernel, padding="valid", activation="relu")
    ref = keras.layers.Conv2D(8, kernel, padding="valid", activation="relu")
    mine.build(x.shape)
    ref.build(x.shape)
    ref.set_weights([rng.normal(size=w.shape).astype("float32") for w in ref.get_weights()])
    mine.set_weights(ref.get_weights())
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        out_mine, out_ref = mine(x), ref(x)
        loss_mine, loss_ref = tf.reduce_sum(out_mine ** 2), tf.reduce_sum(out_ref ** 2)
    np.testing.assert_allclose(out_mine.numpy(), out_ref.numpy(), rtol=1e-5, atol=1e-4)
    assert out_mine.shape == (5, 1, 1, 8)
    for a, b in zip(tape.gradient(loss_mine, [x, *mine.trainable_weights]),
                    tape.gradient(loss_ref, [x, *ref.trainable_weights])):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-3)
    # A kernel smaller than the input is an ordinary convolution.
    big = tf.constant(rng.normal(size=(2, kernel + 2, kernel + 2, 16)), tf.float32)
    np.testing.assert_allclose(mine(big).numpy(), ref(big).numpy(), rtol=1e-5, atol=1e-4)
    assert type(mine).__name__ == "Conv2D" and mine.get_config() == ref.get_config() | {
        "name": mine.name}
