"""Tests for the NumPy utilities in mrcnn.utils (geometry, resizing, anchors, metrics)."""

import subprocess
import sys

import numpy as np
import pytest
import skimage.transform
from hypothesis import given, settings, strategies as st

from mrcnn import utils

# Derandomized so every run checks the same examples (deterministic CI); no example database.
FEW = settings(max_examples=25, deadline=None, derandomize=True, database=None)


# ----------------------------------------------------------------------------- helpers


def rect_mask(shape, box):
    """bool [H, W] with the exclusive-end box (y1, x1, y2, x2) set."""
    m = np.zeros(shape, dtype=bool)
    y1, x1, y2, x2 = box
    m[y1:y2, x1:x2] = True
    return m


def ellipse_mask(shape, center, radii):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - center[0]) / radii[0]) ** 2 + ((xx - center[1]) / radii[1]) ** 2 <= 1.0


def brute_iou(a, b):
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@st.composite
def boxes_strategy(draw, min_n=0, max_n=8):
    n = draw(st.integers(min_n, max_n))
    out = []
    for _ in range(n):
        y1 = draw(st.integers(0, 40))
        x1 = draw(st.integers(0, 40))
        h = draw(st.integers(1, 25))
        w = draw(st.integers(1, 25))
        out.append([y1, x1, y1 + h, x1 + w])
    return np.array(out, dtype=np.float64).reshape(-1, 4)


# ----------------------------------------------------------------------------- import hygiene


def test_utils_imports_no_tensorflow_keras_or_jax():
    code = (
        "import mrcnn.utils, sys; "
        "bad = [m for m in ('tensorflow', 'jax', 'keras') if m in sys.modules]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- boxes


def test_extract_bboxes_exclusive_end_and_empty():
    mask = np.zeros((20, 30, 3), dtype=bool)
    mask[2:5, 3:9, 0] = True
    mask[7, 10, 2] = True
    boxes = utils.extract_bboxes(mask)
    assert boxes.dtype == np.int32
    np.testing.assert_array_equal(boxes, [[2, 3, 5, 9], [0, 0, 0, 0], [7, 10, 8, 11]])
    assert utils.extract_bboxes(np.zeros((5, 5, 0), bool)).shape == (0, 4)


@FEW
@given(boxes_strategy(min_n=1), boxes_strategy())
def test_compute_iou_and_overlaps_match_brute_force(b1, b2):
    expected = np.array([[brute_iou(a, b) for b in b2] for a in b1]).reshape(len(b1), len(b2))
    np.testing.assert_allclose(utils.compute_overlaps(b1, b2), expected, atol=1e-9)
    if len(b2):
        area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
        area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
        np.testing.assert_allclose(
            utils.compute_iou(b2[0], b1, area2[0], area1), expected[:, 0], atol=1e-9
        )


def test_compute_overlaps_empty_shapes():
    assert utils.compute_overlaps(np.zeros((0, 4)), np.zeros((3, 4))).shape == (0, 3)
    assert utils.compute_overlaps(np.zeros((2, 4)), np.zeros((0, 4))).shape == (2, 0)
    assert utils.compute_overlaps_masks(np.zeros((4, 4, 0)), np.zeros((4, 4, 2))).shape == (0, 2)
    assert utils.compute_overlaps_masks(np.zeros((4, 4, 3)), np.zeros((4, 4, 0))).shape == (3, 0)


@FEW
@given(st.integers(0, 4), st.integers(0, 4), st.integers(0, 2**31 - 1))
def test_compute_overlaps_masks_matches_brute_force(n1, n2, seed):
    rng = np.random.default_rng(seed)
    m1 = rng.random((12, 10, n1)) > 0.6
    m2 = rng.random((12, 10, n2)) > 0.6
    expected = np.zeros((n1, n2))
    for i in range(n1):
        for j in range(n2):
            inter = np.logical_and(m1[..., i], m2[..., j]).sum()
            union = np.logical_or(m1[..., i], m2[..., j]).sum()
            expected[i, j] = inter / union if union else 0.0
    np.testing.assert_allclose(utils.compute_overlaps_masks(m1, m2), expected, atol=1e-6)


def brute_nms(boxes, scores, threshold):
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    kept = []
    for i in order:
        if all(brute_iou(boxes[i], boxes[k]) <= threshold for k in kept):
            kept.append(i)
    return kept


@FEW
@given(boxes_strategy(min_n=1, max_n=12), st.sampled_from([0.1, 0.3, 0.5, 0.7]),
       st.integers(0, 2**31 - 1))
def test_non_max_suppression_matches_brute_force(boxes, threshold, seed):
    scores = np.random.default_rng(seed).permutation(len(boxes)).astype(np.float32) / len(boxes)
    keep = utils.non_max_suppression(boxes, scores, threshold)
    assert keep.dtype == np.int32
    assert keep.tolist() == brute_nms(boxes, scores, threshold)


def test_non_max_suppression_hand_case_and_empty():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9]])
    scores = np.array([0.9, 0.95, 0.5, 0.1])
    # box 1 wins; box 0 (IoU 0.81) and box 3 (IoU 0.8) are suppressed; box 2 is separate.
    assert utils.non_max_suppression(boxes, scores, 0.5).tolist() == [1, 2]
    assert utils.non_max_suppression(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)


@FEW
@given(boxes_strategy(min_n=1), boxes_strategy(min_n=1))
def test_box_refinement_apply_box_deltas_round_trip(boxes, gt):
    n = min(len(boxes), len(gt))
    boxes, gt = boxes[:n], gt[:n]
    deltas = utils.box_refinement(boxes, gt)
    np.testing.assert_allclose(utils.apply_box_deltas(boxes, deltas), gt, atol=1e-3)


def test_box_refinement_hand_values():
    box = np.array([[0, 0, 10, 20]])
    gt = np.array([[5, 10, 25, 50]])  # h 20, w 40, centre (15, 30) vs h 10, w 20, centre (5, 10)
    np.testing.assert_allclose(
        utils.box_refinement(box, gt), [[1.0, 1.0, np.log(2), np.log(2)]], rtol=1e-6
    )


def test_norm_denorm_boxes():
    shape = (100, 200)
    boxes = np.array([[0, 0, 100, 200], [10, 20, 50, 80]])
    normed = utils.norm_boxes(boxes, shape)
    assert normed.dtype == np.float32
    np.testing.assert_allclose(normed[0], [0, 0, 1, 1])
    np.testing.assert_allclose(normed[1], [10 / 99, 20 / 199, 49 / 99, 79 / 199], rtol=1e-6)
    back = utils.denorm_boxes(normed, shape)
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, boxes)


def test_trim_zeros():
    x = np.array([[1, 2, 3, 4], [0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(utils.trim_zeros(x), [[1, 2, 3, 4], [0, 1, 0, 0]])


# ----------------------------------------------------------------------------- resizing


def expected_scale(h, w, min_dim, max_dim, min_scale, mode):
    """Matterport's scale rule, re-derived."""
    scale = max(1, min_dim / min(h, w)) if min_dim else 1
    if min_scale and scale < min_scale:
        scale = min_scale
    if mode == "square" and max_dim and round(max(h, w) * scale) > max_dim:
        scale = max_dim / max(h, w)
    return scale


def assert_close_to_skimage(out: np.ndarray, reference: np.ndarray) -> None:
    """OpenCV resizing (transform.py) rounds where skimage + astype truncated."""
    assert out.shape == reference.shape
    diff = np.abs(out.astype(np.int64) - reference.astype(np.int64))
    assert diff.mean() <= 1.0 and diff.max() <= 2


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(
    h=st.integers(10, 150),
    w=st.integers(10, 150),
    mode=st.sampled_from(["none", "square", "pad64", "crop"]),
    min_dim=st.sampled_from([64, 128]),
    min_scale=st.sampled_from([None, 0, 1.5]),
    channels=st.sampled_from([1, 3]),
    seed=st.integers(0, 2**31 - 1),
)
def test_resize_image_geometry_and_content(h, w, mode, min_dim, min_scale, channels, seed):
    max_dim = 160
    rng = np.random.default_rng(seed)
    image = rng.integers(1, 256, size=(h, w, channels), dtype=np.uint8)
    np.random.seed(seed % 1000)
    out, window, scale, padding, crop = utils.resize_image(
        image, min_dim=min_dim, max_dim=max_dim, min_scale=min_scale, mode=mode
    )
    assert out.dtype == np.uint8
    if mode == "none":
        np.testing.assert_array_equal(out, image)
        assert window == (0, 0, h, w) and scale == 1 and crop is None
        return
    assert scale == pytest.approx(expected_scale(h, w, min_dim, max_dim, min_scale, mode))

    rh, rw = round(h * scale), round(w * scale)
    if scale != 1:
        # Matterport's resize() wrapper settings: bilinear, zero 'constant' border, no
        # anti-aliasing; the float result is cast back (truncated) to the input dtype.
        resized = skimage.transform.resize(
            image, (rh, rw), order=1, mode="constant", cval=0, clip=True,
            preserve_range=True, anti_aliasing=False,
        ).astype(np.uint8)
    else:
        resized = image
    if mode == "crop":
        assert out.shape == (min_dim, min_dim, channels)
        assert window == (0, 0, min_dim, min_dim)
        assert padding == [(0, 0), (0, 0), (0, 0)]
        y, x, ch, cw = crop
        assert (ch, cw) == (min_dim, min_dim)
        assert 0 <= y <= rh - min_dim and 0 <= x <= rw - min_dim
        assert_close_to_skimage(out, resized[y : y + ch, x : x + cw])
        # Same seed, same crop: callers can make it reproducible.
        np.random.seed(seed % 1000)
        assert utils.resize_image(image, min_dim=min_dim, max_dim=max_dim,
                                  min_scale=min_scale, mode=mode)[4] == crop
        return

    assert crop is None
    if mode == "square":
        assert out.shape == (max_dim, max_dim, channels)
    else:
        assert out.shape[0] % 64 == 0 and out.shape[1] % 64 == 0
        assert out.shape[0] - rh < 64 and out.shape[1] - rw < 64
    (top, bottom), (left, right), extra = padding
    assert extra == (0, 0)
    # Centred padding, Matterport split: the smaller half on top/left.
    assert top == (top + bottom) // 2 and left == (left + right) // 2
    assert window == (top, left, top + rh, left + rw)
    assert out.shape[0] == top + rh + bottom and out.shape[1] == left + rw + right
    y1, x1, y2, x2 = window
    assert_close_to_skimage(out[y1:y2, x1:x2], resized)
    # Padding is zeros (the input has no zeros, so the window is where the content is).
    nonzero = out.any(axis=2)
    np.testing.assert_array_equal(np.argwhere(nonzero).min(0), [y1, x1])
    np.testing.assert_array_equal(np.argwhere(nonzero).max(0) + 1, [y2, x2])


def test_resize_image_matterport_example_values():
    image = np.zeros((480, 640, 3), np.uint8)
    out, window, scale, padding, _ = utils.resize_image(image, 800, 1024, mode="square")
    assert out.shape == (1024, 1024, 3)
    assert scale == pytest.approx(1.6)
    assert window == (128, 0, 896, 1024)
    assert padding == [(128, 128), (0, 0), (0, 0)]


def test_resize_image_errors():
    image = np.zeros((50, 60, 3), np.uint8)
    with pytest.raises(ValueError, match="multiple of 64"):
        utils.resize_image(image, min_dim=100, mode="pad64")
    with pytest.raises(ValueError, match="not supported"):
        utils.resize_image(image, min_dim=64, mode="bogus")
    with pytest.raises(ValueError, match="max_dim"):
        utils.resize_image(image, min_dim=64, mode="square")


@FEW
@given(
    h=st.integers(30, 120),
    w=st.integers(30, 120),
    mode=st.sampled_from(["square", "pad64", "crop"]),
    data=st.data(),
)
def test_resize_mask_follows_image_geometry(h, w, mode, data):
    y1 = data.draw(st.integers(0, h - 10))
    x1 = data.draw(st.integers(0, w - 10))
    y2 = data.draw(st.integers(y1 + 5, h))
    x2 = data.draw(st.integers(x1 + 5, w))
    image = np.zeros((h, w, 3), np.uint8)
    mask = np.stack([rect_mask((h, w), (y1, x1, y2, x2)), np.zeros((h, w), bool)], axis=-1)
    np.random.seed(data.draw(st.integers(0, 1000)))
    out, window, scale, padding, crop = utils.resize_image(
        image, min_dim=128, max_dim=192, mode=mode
    )
    resized = utils.resize_mask(mask, scale, padding, crop)
    assert resized.dtype == bool
    assert resized.shape == out.shape[:2] + (2,)
    assert not resized[..., 1].any()
    # Where the rectangle should land: scaled, then shifted by the padding or the crop.
    oy, ox = (window[0], window[1]) if crop is None else (-crop[0], -crop[1])
    expect = np.array([y1 * scale + oy, x1 * scale + ox, y2 * scale + oy, x2 * scale + ox])
    expect = np.clip(expect, [0, 0, 0, 0], [out.shape[0], out.shape[1]] * 2)
    if expect[2] - expect[0] < 2 or expect[3] - expect[1] < 2:
        return  # rectangle cropped away (or nearly)
    got = utils.extract_bboxes(resized[..., :1])[0]
    np.testing.assert_allclose(got, expect, atol=1.0)
    # It stays inside the window.
    ys, xs = np.nonzero(resized[..., 0])
    assert ys.min() >= window[0] and ys.max() < window[2]
    assert xs.min() >= window[1] and xs.max() < window[3]


def test_resize_mask_agrees_with_resized_image_pixels():
    # A white rectangle in the image and the same rectangle as a mask must coincide after
    # resizing, up to the one-pixel fuzzy border of bilinear interpolation.
    h, w = 37, 53
    box = (5, 7, 30, 41)
    image = np.zeros((h, w, 3), np.uint8)
    image[rect_mask((h, w), box)] = 255
    mask = rect_mask((h, w), box)[..., None]
    out, window, scale, padding, crop = utils.resize_image(image, 100, 160, mode="square")
    resized = utils.resize_mask(mask, scale, padding, crop)[..., 0]
    bright = out[..., 0] > 127
    assert (bright != resized).sum() <= 0.05 * resized.sum()
    np.testing.assert_allclose(
        utils.extract_bboxes(resized[..., None])[0],
        utils.extract_bboxes(bright[..., None])[0],
        atol=1,
    )


# ----------------------------------------------------------------------------- mini masks


@pytest.mark.parametrize(
    "maker",
    [
        lambda s: rect_mask(s, (10, 20, 60, 45)),
        lambda s: rect_mask(s, (3, 3, 15, 90)),
        lambda s: ellipse_mask(s, (50, 40), (25, 18)),
        lambda s: ellipse_mask(s, (30, 70), (12, 20)),
    ],
)
def test_minimize_expand_round_trip(maker):
    shape = (100, 100)
    masks = np.stack([maker(shape), ellipse_mask(shape, (70, 70), (15, 15))], axis=-1)
    boxes = utils.extract_bboxes(masks)
    mini = utils.minimize_mask(boxes, masks, (56, 56))
    assert mini.shape == (56, 56, 2) and mini.dtype == bool
    full = utils.expand_mask(boxes, mini, shape + (3,))
    assert full.shape == (100, 100, 2) and full.dtype == bool
    iou = utils.compute_overlaps_masks(full, masks)
    assert np.all(np.diag(iou) > 0.9), np.diag(iou)


def test_minimize_mask_is_rounded_bilinear_resize_of_the_crop():
    mask = ellipse_mask((80, 90), (40, 45), (22, 30))[..., None]
    box = utils.extract_bboxes(mask)
    mini = utils.minimize_mask(box, mask, (28, 28))[..., 0]
    y1, x1, y2, x2 = box[0]
    expected = skimage.transform.resize(
        mask[y1:y2, x1:x2, 0].astype(float), (28, 28), order=1, mode="constant",
        anti_aliasing=False,
    )
    np.testing.assert_array_equal(mini, np.around(expected).astype(bool))


def test_minimize_mask_empty_box_names_instance():
    masks = np.zeros((20, 20, 2), bool)
    masks[2:8, 2:8, 0] = True
    boxes = utils.extract_bboxes(masks)
    with pytest.raises(ValueError, match="instance 1"):
        utils.minimize_mask(boxes, masks, (14, 14))


def test_mini_masks_with_zero_instances():
    masks = np.zeros((20, 20, 0), bool)
    boxes = utils.extract_bboxes(masks)
    assert utils.minimize_mask(boxes, masks, (14, 14)).shape == (14, 14, 0)
    assert utils.expand_mask(boxes, np.zeros((14, 14, 0), bool), (20, 20)).shape == (20, 20, 0)


class _MaskConfig:
    MASK_SHAPE = (28, 28)


def test_mold_and_unmold_mask():
    full = rect_mask((100, 100), (0, 0, 50, 100))[..., None]
    molded = utils.mold_mask(full, _MaskConfig())
    assert molded.shape == (28, 28, 1) and molded.dtype == bool
    assert molded[:13, :, 0].all() and not molded[15:, :, 0].any()

    small = np.zeros((28, 28), np.float32)
    small[:, :14] = 0.9  # left half confident
    small[:, 14:] = 0.4  # right half below the 0.5 threshold
    out = utils.unmold_mask(small, (10, 20, 30, 60), (50, 80, 3))
    assert out.shape == (50, 80) and out.dtype == bool
    np.testing.assert_array_equal(out, rect_mask((50, 80), (10, 20, 30, 40)))
    # A box hanging over the image border is clipped, not an error.
    edge = utils.unmold_mask(np.ones((28, 28)), (40, 70, 60, 90), (50, 80))
    np.testing.assert_array_equal(edge, rect_mask((50, 80), (40, 70, 50, 80)))


# ----------------------------------------------------------------------------- anchors


def test_generate_anchors_order_and_values():
    ratios = [0.5, 1, 2]
    anchors = utils.generate_anchors(32, ratios, (3, 4), feature_stride=8, anchor_stride=1)
    assert anchors.shape == (3 * 4 * 3, 4)
    # Hand computation: ratio r gives height 32/sqrt(r), width 32*sqrt(r), centre at the
    # cell's top-left corner times the stride.
    def box(cy, cx, r):
        hh, hw = 16 / np.sqrt(r), 16 * np.sqrt(r)
        return [cy - hh, cx - hw, cy + hh, cx + hw]

    np.testing.assert_allclose(anchors[0], box(0, 0, 0.5))
    np.testing.assert_allclose(anchors[1], [-16, -16, 16, 16])
    np.testing.assert_allclose(anchors[2], box(0, 0, 2))
    # Ratios inner, then x, then y (row-major positions).
    for iy in range(3):
        for ix in range(4):
            for ir, r in enumerate(ratios):
                k = (iy * 4 + ix) * 3 + ir
                np.testing.assert_allclose(anchors[k], box(iy * 8, ix * 8, r))


def test_generate_anchors_anchor_stride():
    anchors = utils.generate_anchors(16, [1], (5, 5), feature_stride=4, anchor_stride=2)
    assert anchors.shape == (9, 4)  # positions 0, 2, 4 in each direction
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    np.testing.assert_allclose(centers[:4], [[0, 0], [0, 8], [0, 16], [8, 0]])


def test_generate_pyramid_anchors_count_and_levels():
    scales = (32, 64, 128, 256, 512)
    strides = [4, 8, 16, 32, 64]
    ratios = [0.5, 1, 2]
    image = 256
    shapes = np.array([[image // s, image // s] for s in strides])
    anchors = utils.generate_pyramid_anchors(scales, ratios, shapes, strides, 1)
    counts = [(image // s) ** 2 * len(ratios) for s in strides]
    assert anchors.shape == (sum(counts), 4)
    start = 0
    for scale, stride, count, shape in zip(scales, strides, counts, shapes):
        level = anchors[start : start + count]
        np.testing.assert_allclose(
            level, utils.generate_anchors(scale, ratios, shape, stride, 1)
        )
        # Square anchor at position (0, 0) of this level.
        np.testing.assert_allclose(level[1], [-scale / 2, -scale / 2, scale / 2, scale / 2])
        start += count


# ----------------------------------------------------------------------------- metrics


def _instances(shape, boxes):
    boxes = np.array(boxes, dtype=np.int32).reshape(-1, 4)
    masks = np.zeros(shape + (len(boxes),), bool)
    for i, b in enumerate(boxes):
        masks[..., i] = rect_mask(shape, b)
    return boxes, masks


SHAPE = (64, 64)
GT_BOXES, GT_MASKS = _instances(SHAPE, [[2, 2, 20, 20], [30, 30, 50, 60]])
GT_IDS = np.array([1, 2])


def test_compute_ap_perfect_prediction():
    ap, precisions, recalls, overlaps = utils.compute_ap(
        GT_BOXES, GT_IDS, GT_MASKS, GT_BOXES, GT_IDS, np.array([0.9, 0.8]), GT_MASKS
    )
    assert ap == pytest.approx(1.0)
    np.testing.assert_allclose(recalls, [0, 0.5, 1, 1])
    np.testing.assert_allclose(np.diag(overlaps), [1, 1])


def test_compute_ap_one_of_two_found():
    ap, _, _, _ = utils.compute_ap(
        GT_BOXES, GT_IDS, GT_MASKS, GT_BOXES[:1], GT_IDS[:1], np.array([0.9]), GT_MASKS[..., :1]
    )
    assert ap == pytest.approx(0.5)


def test_compute_ap_false_positive_ranked_first():
    # Ranking: FP (0.95), TP gt0 (0.9), TP gt1 (0.8); 2 ground-truth instances.
    # precision per rank = 0/1, 1/2, 2/3; recall = 0, 0.5, 1.
    # Envelope: the best precision at recall >= r is 2/3 everywhere, so
    # AP = 0.5 * 2/3 + 0.5 * 2/3 = 2/3.
    fp_box, fp_mask = _instances(SHAPE, [[55, 0, 64, 10]])
    boxes = np.concatenate([fp_box, GT_BOXES])
    masks = np.concatenate([fp_mask, GT_MASKS], axis=-1)
    ap, precisions, recalls, _ = utils.compute_ap(
        GT_BOXES, GT_IDS, GT_MASKS, boxes, np.array([1, 1, 2]), np.array([0.95, 0.9, 0.8]), masks
    )
    assert ap == pytest.approx(2 / 3)
    np.testing.assert_allclose(recalls, [0, 0, 0.5, 1, 1])


def test_compute_ap_tp_fp_tp():
    # TP (0.9), FP (0.8), TP (0.7): precisions 1, 1/2, 2/3; recalls 0.5, 0.5, 1.
    # AP = 0.5 * 1 + 0.5 * 2/3 = 5/6.
    fp_box, fp_mask = _instances(SHAPE, [[55, 0, 64, 10]])
    boxes = np.concatenate([GT_BOXES[:1], fp_box, GT_BOXES[1:]])
    masks = np.concatenate([GT_MASKS[..., :1], fp_mask, GT_MASKS[..., 1:]], axis=-1)
    ap, _, _, _ = utils.compute_ap(
        GT_BOXES, GT_IDS, GT_MASKS, boxes, np.array([1, 1, 2]), np.array([0.9, 0.8, 0.7]), masks
    )
    assert ap == pytest.approx(5 / 6)


def test_compute_ap_wrong_class_is_not_a_match():
    ap, _, _, _ = utils.compute_ap(
        GT_BOXES, GT_IDS, GT_MASKS, GT_BOXES, np.array([2, 1]), np.array([0.9, 0.8]), GT_MASKS
    )
    assert ap == 0.0


def test_compute_ap_edge_cases():
    no_boxes, no_masks = np.zeros((0, 4), np.int32), np.zeros(SHAPE + (0,), bool)
    no_ids, no_scores = np.zeros(0, np.int32), np.zeros(0, np.float32)
    with np.errstate(all="raise"):
        # No predictions: AP 0 when ground truth exists.
        ap, _, _, overlaps = utils.compute_ap(
            GT_BOXES, GT_IDS, GT_MASKS, no_boxes, no_ids, no_scores, no_masks
        )
        assert ap == 0.0 and overlaps.shape == (0, 2)
        # Neither ground truth nor predictions.
        ap, _, _, _ = utils.compute_ap(
            no_boxes, no_ids, no_masks, no_boxes, no_ids, no_scores, no_masks
        )
        assert ap == 0.0
        # Predictions but no ground truth: every prediction is a false positive.
        ap, _, _, _ = utils.compute_ap(
            no_boxes, no_ids, no_masks, GT_BOXES, GT_IDS, np.array([0.9, 0.8]), GT_MASKS
        )
        assert ap == 0.0


def test_compute_ap_trims_zero_padding():
    pad_boxes = np.concatenate([GT_BOXES, np.zeros((3, 4), np.int32)])
    pad_masks = np.concatenate([GT_MASKS, np.zeros(SHAPE + (3,), bool)], axis=-1)
    pad_ids = np.concatenate([GT_IDS, [0, 0, 0]])
    ap, _, _, _ = utils.compute_ap(
        pad_boxes, pad_ids, pad_masks, pad_boxes, pad_ids, np.array([0.9, 0.8, 0, 0, 0]), pad_masks
    )
    assert ap == pytest.approx(1.0)


def test_compute_matches_sorts_predictions_by_score():
    # Predictions given in increasing score order: [gt1 copy (0.3), gt0 copy (0.6), FP (0.9)].
    fp_box, fp_mask = _instances(SHAPE, [[55, 0, 64, 10]])
    boxes = np.concatenate([GT_BOXES[1:], GT_BOXES[:1], fp_box])
    masks = np.concatenate([GT_MASKS[..., 1:], GT_MASKS[..., :1], fp_mask], axis=-1)
    gt_match, pred_match, overlaps = utils.compute_matches(
        GT_BOXES, GT_IDS, GT_MASKS, boxes, np.array([2, 1, 1]), np.array([0.3, 0.6, 0.9]), masks
    )
    # Sorted order: FP, gt0 copy, gt1 copy.
    np.testing.assert_array_equal(pred_match, [-1, 0, 1])
    np.testing.assert_array_equal(gt_match, [1, 2])
    np.testing.assert_allclose(overlaps, [[0, 0], [1, 0], [0, 1]])


def test_compute_matches_higher_score_takes_the_gt():
    # Two predictions on the same gt: the higher-scored one matches, the other is a FP.
    gt_box, gt_mask = _instances(SHAPE, [[10, 10, 30, 30]])
    preds, pred_masks = _instances(SHAPE, [[10, 10, 30, 28], [10, 10, 30, 30]])
    gt_match, pred_match, _ = utils.compute_matches(
        gt_box, np.array([1]), gt_mask, preds, np.array([1, 1]), np.array([0.9, 0.5]), pred_masks
    )
    np.testing.assert_array_equal(pred_match, [0, -1])
    np.testing.assert_array_equal(gt_match, [0])


def test_compute_ap_range(capsys):
    ap = utils.compute_ap_range(
        GT_BOXES, GT_IDS, GT_MASKS, GT_BOXES, GT_IDS, np.array([0.9, 0.8]), GT_MASKS
    )
    assert ap == pytest.approx(1.0)
    printed = capsys.readouterr().out
    assert "AP @0.50" in printed and "AP @0.95" in printed and "AP @0.50-0.95" in printed
    # A prediction with mask IoU 0.81 counts at thresholds 0.50..0.80 (7 of 10).
    gt_box, gt_mask = _instances(SHAPE, [[0, 0, 10, 10]])
    pred_box, pred_mask = _instances(SHAPE, [[0, 0, 9, 9]])
    ap = utils.compute_ap_range(
        gt_box, np.array([1]), gt_mask, pred_box, np.array([1]), np.array([1.0]), pred_mask,
        iou_thresholds=np.arange(0.5, 1.0, 0.05), verbose=0,
    )
    assert ap == pytest.approx(0.7)


def test_compute_recall():
    preds = np.array([[2, 2, 20, 20], [2, 2, 19, 20], [0, 40, 10, 50]])
    recall, positive_ids = utils.compute_recall(preds, GT_BOXES, 0.5)
    assert recall == pytest.approx(0.5)
    np.testing.assert_array_equal(positive_ids, [0, 1])
    recall, positive_ids = utils.compute_recall(np.zeros((0, 4)), GT_BOXES, 0.5)
    assert recall == 0.0 and positive_ids.size == 0
