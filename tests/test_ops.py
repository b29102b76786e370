"""mrcnn.ops against their references: TF kernels, NumPy brute force, XLA, and JAX."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn import ops as mo

REPO = Path(__file__).resolve().parents[1]
RNG_SEED = 1234


def _xla(fn):
    return tf.function(fn, jit_compile=True)


def _graph_nms(fn, boxes, scores, *args):
    """Runs an NMS in a (non-XLA) tf.function: eager while_loops dispatch op by op, slowly."""
    return [t.numpy() for t in tf.function(lambda b, s: fn(b, s, *args))(boxes, scores)]


# ---------------------------------------------------------------------------- fixtures

def _crop_case(seed=0):
    """Image batch and boxes exercising outside, flipped, degenerate and edge boxes."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(3, 13, 17, 4)).astype("float32")
    boxes = rng.uniform(-0.3, 1.3, size=(60, 4)).astype("float32")  # ~half flipped per axis
    boxes[:8] = [
        [0.0, 0.0, 1.0, 1.0],  # exactly the image
        [1.0, 1.0, 0.0, 0.0],  # flipped image
        [0.2, 0.3, 0.2, 0.3],  # a point
        [0.0, 0.0, 0.0, 0.0],  # zero padding
        [0.5, 0.0, 0.5, 1.0],  # a line
        [-0.5, -0.5, -0.1, -0.1],  # fully outside
        [0.1, 0.2, 0.6, 0.9],  # fully inside
        [0.9, 0.8, 0.3, 0.1],  # flipped inside
    ]
    box_indices = rng.integers(0, 3, size=60).astype("int32")
    box_indices[:3] = [2, 1, 2]
    return image, boxes, box_indices


def _pyramid(seed=0, batch=2, image_shape=(128, 192), channels=3):
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=(batch, image_shape[0] // s, image_shape[1] // s, channels))
        .astype("float32")
        for s in (4, 8, 16, 32)
    ]


def _level_boxes(seed=0, batch=2, n=40, image_shape=(128, 192)):
    """Boxes covering all four levels (side (224 / sqrt(H * W)) * 2^(level - 4)), plus padding."""
    rng = np.random.default_rng(seed)
    base = 224.0 / np.sqrt(image_shape[0] * image_shape[1])
    sides = (base * 2.0 ** np.arange(-2, 2)).astype("float32")[rng.integers(0, 4, size=(batch, n))]
    sides *= rng.uniform(0.9, 1.1, size=(batch, n)).astype("float32")
    centers = rng.uniform(0.0, 1.0, size=(batch, n, 2)).astype("float32")
    aspect = rng.uniform(0.7, 1.4, size=(batch, n)).astype("float32")
    h, w = sides * np.sqrt(aspect), sides / np.sqrt(aspect)
    boxes = np.stack(
        [centers[..., 0] - h / 2, centers[..., 1] - w / 2, centers[..., 0] + h / 2,
         centers[..., 1] + w / 2],
        -1,
    ).astype("float32")
    boxes[:, -5:] = 0.0  # zero-padded rows
    return boxes


def _nms_case(seed, batch=2, n=300, clustered=True):
    """Pixel boxes, clustered so that plenty of suppression happens; random corner order."""
    rng = np.random.default_rng(seed)
    extent = 60.0 if clustered else 400.0
    yx = rng.uniform(0, extent, size=(batch, n, 2))
    hw = rng.uniform(4, 40, size=(batch, n, 2))
    boxes = np.concatenate([yx, yx + hw], -1)
    flip = rng.random((batch, n)) < 0.2
    boxes[flip] = boxes[flip][:, [2, 3, 0, 1]]
    scores = rng.uniform(size=(batch, n))
    return boxes.astype("float32"), scores.astype("float32")


def _numpy_nms(boxes, scores, max_output, iou_threshold, score_threshold):
    """Textbook greedy NMS with exact IoU, one image."""
    lo, hi = np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])
    b = np.concatenate([lo, hi], 1).astype("float64")
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] > score_threshold]
    keep = []
    while order and len(keep) < max_output:
        i = order.pop(0)
        keep.append(i)
        ih = np.maximum(np.minimum(b[i, 2], b[order, 2]) - np.maximum(b[i, 0], b[order, 0]), 0)
        iw = np.maximum(np.minimum(b[i, 3], b[order, 3]) - np.maximum(b[i, 1], b[order, 1]), 0)
        inter = ih * iw
        iou = inter / (area[i] + area[order] - inter)
        order = [j for j, o in zip(order, iou) if o <= iou_threshold]
    return np.array(keep, "int64")


def _tf_crop(image, boxes, box_indices, size, **kw):
    size = (size, size) if isinstance(size, int) else size
    out = tf.image.crop_and_resize(image, boxes, box_indices, size, method="bilinear", **kw)
    return out.numpy()


def _reference_multilevel(feature_maps, boxes, image_shape, pool):
    """Per box: tf.image.crop_and_resize on the level given by Matterport's NumPy formula."""
    h, w = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = 224.0 / np.sqrt(image_shape[0] * image_shape[1])
        lvl = 4 + np.round(np.log2(np.sqrt(h * w) / scale))
    levels = np.clip(np.nan_to_num(lvl, nan=2, neginf=2), 2, 5).astype("int32")
    batch, n = boxes.shape[:2]
    out = np.zeros((batch, n, pool, pool, feature_maps[0].shape[-1]), "float32")
    for b in range(batch):
        for i, fm in enumerate(feature_maps):
            crops = _tf_crop(fm, boxes[b], np.full(n, b, "int32"), pool)
            sel = levels[b] == i + 2
            out[b, sel] = crops[sel]
    return out, levels


# ---------------------------------------------------------------------------- crop_and_resize

@pytest.mark.parametrize("size", [1, 7, 14, (3, 9)])
def test_crop_and_resize_matches_tf(size):
    image, boxes, box_indices = _crop_case()
    ref = _tf_crop(image, boxes, box_indices, size)
    out = np.asarray(mo.crop_and_resize(image, boxes, box_indices, size))
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    # The case must exercise extrapolation and interior samples from several images.
    assert (ref == 0).any() and (ref != 0).mean() > 0.3


def test_crop_and_resize_extrapolation_value_and_batch_index():
    image, boxes, box_indices = _crop_case(seed=1)
    ref = _tf_crop(image, boxes, box_indices, 5, extrapolation_value=-7.5)
    out = np.asarray(mo.crop_and_resize(image, boxes, box_indices, 5, extrapolation_value=-7.5))
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    assert (ref == -7.5).any()
    # Crops of the same box from a different image must differ (batch index is honored).
    other = np.asarray(mo.crop_and_resize(image, boxes[6:7], np.array([0], "int32"), 5))
    again = np.asarray(mo.crop_and_resize(image, boxes[6:7], np.array([2], "int32"), 5))
    ref = _tf_crop(image, boxes[6:7], np.array([2], "int32"), 5)
    np.testing.assert_allclose(again, ref, atol=1e-5)
    assert np.abs(other - again).max() > 0.1


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_crop_and_resize_low_precision(dtype):
    image, boxes, box_indices = _crop_case()
    ref = _tf_crop(image, boxes, box_indices, 7)
    out = mo.crop_and_resize(tf.cast(image, dtype), boxes, box_indices, 7)
    assert out.dtype == tf.as_dtype(dtype)
    tol = 5e-2 if dtype == "bfloat16" else 1e-2
    np.testing.assert_allclose(tf.cast(out, "float32").numpy(), ref, atol=tol * 4, rtol=tol)


def test_crop_and_resize_xla_matches_eager():
    image, boxes, box_indices = _crop_case()
    fn = lambda i, b, x: mo.crop_and_resize(i, b, x, 7)  # noqa: E731
    eager = np.asarray(fn(image, boxes, box_indices))
    compiled = _xla(fn)(image, boxes, box_indices).numpy()
    # XLA fuses multiply-adds: rounding differs, edge samples must not flip.
    np.testing.assert_allclose(compiled, eager, atol=5e-5, rtol=0)
    # Whole-image boxes at full size are the identity / the 180-degree rotation.
    whole = np.array([[0, 0, 1, 1], [1, 1, 0, 0]], "float32")
    full = _xla(lambda i, b: mo.crop_and_resize(i, b, np.array([1, 2], "int32"), (13, 17)))
    out = full(image, whole).numpy()
    np.testing.assert_allclose(out[0], image[1], atol=1e-6)
    np.testing.assert_allclose(out[1], image[2, ::-1, ::-1], atol=1e-6)


# ---------------------------------------------------------------------------- multilevel

def test_roi_pyramid_levels_formula():
    boxes = _level_boxes()
    image_shape = (128, 192)
    _, ref_levels = _reference_multilevel(_pyramid(), boxes, image_shape, 2)
    levels = np.asarray(mo.roi_pyramid_levels(boxes, image_shape))
    np.testing.assert_array_equal(levels, ref_levels)
    assert set(np.unique(levels)) == {2, 3, 4, 5}
    assert (levels[:, -5:] == 2).all()  # padding goes to the lowest level, no NaN


@pytest.mark.parametrize("pool", [7, 14])
def test_multilevel_roi_align_matches_per_box_crop(pool):
    image_shape = (128, 192)  # non-square: catches H/W mix-ups per level
    feature_maps = _pyramid(image_shape=image_shape)
    boxes = _level_boxes()
    ref, levels = _reference_multilevel(feature_maps, boxes, image_shape, pool)
    assert set(np.unique(levels[:, :-5])) == {2, 3, 4, 5}
    out = np.asarray(mo.multilevel_roi_align(feature_maps, boxes, image_shape, pool))
    assert out.shape == (2, boxes.shape[1], pool, pool, 3)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


def test_multilevel_roi_align_xla_and_gradients():
    image_shape = (128, 192)
    feature_maps = [tf.constant(f) for f in _pyramid(image_shape=image_shape)]
    boxes = tf.constant(_level_boxes())
    fn = lambda fms, b: mo.multilevel_roi_align(fms, b, image_shape, 7)  # noqa: E731
    eager = fn(feature_maps, boxes).numpy()
    np.testing.assert_allclose(_xla(fn)(feature_maps, boxes).numpy(), eager, atol=5e-5, rtol=0)

    with tf.GradientTape() as tape:
        tape.watch(feature_maps)
        tape.watch(boxes)
        loss = tf.reduce_sum(fn(feature_maps, boxes) ** 2)
    grads = tape.gradient(loss, feature_maps + [boxes])
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads[:4])
    assert all(float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads[:4])  # every level is used
    assert grads[4] is None  # boxes are a stop_gradient input, as in Matterport


# ---------------------------------------------------------------------------- NMS

NMS_CASES = [
    # seed, batch, n, max_output, iou, score_threshold, clustered
    (0, 2, 300, 100, 0.5, float("-inf"), True),
    (1, 2, 300, 100, 0.7, 0.6, True),  # score threshold leaves fewer than max_output
    (2, 1, 500, 40, 0.3, float("-inf"), False),
    (3, 3, 200, 250, 0.5, 0.2, True),  # max_output > N: long padded tail
]


@pytest.mark.parametrize("seed,batch,n,max_output,iou,score_threshold,clustered", NMS_CASES)
def test_nms_matches_references(seed, batch, n, max_output, iou, score_threshold, clustered):
    boxes, scores = _nms_case(seed, batch, n, clustered)
    args = (max_output, iou, score_threshold)
    pure_idx, pure_valid = _graph_nms(mo.nms_padded_pure, boxes, scores, *args)
    tf_idx, tf_valid = _graph_nms(mo.nms_padded_tf, boxes, scores, *args)
    assert pure_idx.shape == (batch, max_output) and pure_idx.dtype == np.int32
    assert pure_valid.shape == (batch, max_output) and pure_valid.dtype == bool
    np.testing.assert_array_equal(pure_idx, tf_idx)
    np.testing.assert_array_equal(pure_valid, tf_valid)
    # The tiled kernel, with tiles small enough that several of them suppress each other.
    tiled = lambda b, s, *a: mo.nms_padded_tiled(b, s, *a, tile_size=64)  # noqa: E731
    tiled_idx, tiled_valid = _graph_nms(tiled, boxes, scores, *args)
    assert tiled_idx.dtype == np.int32 and tiled_valid.dtype == bool
    np.testing.assert_array_equal(tiled_idx, tf_idx)
    np.testing.assert_array_equal(tiled_valid, tf_valid)
    for b in range(batch):
        ref = tf.image.non_max_suppression(boxes[b], scores[b], *args).numpy()
        brute = _numpy_nms(boxes[b], scores[b], max_output, iou, score_threshold)
        np.testing.assert_array_equal(ref, brute)
        k = len(ref)
        assert k < min(n, max_output) or k == max_output
        np.testing.assert_array_equal(pure_idx[b, :k], ref)
        assert pure_valid[b, :k].all() and not pure_valid[b, k:].any()
        assert (pure_idx[b, k:] == 0).all()
        # Suppression really happened (the test would not see a no-op NMS otherwise).
        assert not np.array_equal(ref, np.argsort(-scores[b])[:k])


def test_nms_padding_rows_and_non_finite_scores():
    boxes, scores = _nms_case(5, batch=2, n=120)
    boxes[:, :10] = 0.0  # zero padding with high scores: ignored
    scores[:, :10] = 2.0
    scores[:, 10:20] = -np.inf  # never selected, even with no score threshold
    for fn in (mo.nms_padded_pure, mo.nms_padded_tf, mo.nms_padded_tiled):
        idx, valid = (np.asarray(t) for t in fn(boxes, scores, 200, 0.5))  # eager works too
        for b in range(2):
            sel = idx[b][valid[b]]
            assert not np.isin(sel, np.arange(20)).any()
            ref = _numpy_nms(boxes[b, 20:], scores[b, 20:], 200, 0.5, float("-inf")) + 20
            np.testing.assert_array_equal(sel, ref)


@pytest.mark.parametrize("fn", [mo.nms_padded_pure, mo.nms_padded_tf, mo.nms_padded_tiled])
def test_nms_iou_threshold_is_strict(fn):
    # IoU([0,0,10,10], [0,0,10,20]) is exactly 0.5 in float32: kept at 0.5, dropped below.
    boxes = np.array([[[0, 0, 10, 10], [0, 0, 10, 20], [30, 30, 40, 40]]], "float32")
    scores = np.array([[0.9, 0.8, 0.7]], "float32")
    for iou, expected in [(0.5, [0, 1, 2]), (0.4999, [0, 2])]:
        ref = tf.image.non_max_suppression(boxes[0], scores[0], 4, iou).numpy()
        np.testing.assert_array_equal(ref, expected)
        idx, valid = fn(boxes, scores, 4, iou)
        np.testing.assert_array_equal(np.asarray(idx)[0], expected + [0] * (4 - len(expected)))
        np.testing.assert_array_equal(np.asarray(valid)[0], np.arange(4) < len(expected))


def test_nms_dispatch_and_xla():
    boxes, scores = _nms_case(7, batch=2, n=400)
    graph = _graph_nms(mo.non_max_suppression_padded, boxes, scores, 200, 0.6, 0.5)
    assert 0 < graph[1].sum(axis=1).min() and graph[1].sum(axis=1).max() < 200
    for fn in (mo.non_max_suppression_padded, mo.nms_padded_pure, mo.nms_padded_tiled):
        compiled = _xla(lambda b, s, fn=fn: fn(b, s, 200, 0.6, 0.5))(boxes, scores)
        for got, want in zip(compiled, graph):
            np.testing.assert_array_equal(got.numpy(), want)


def _hard_nms_case(seed):
    """Random NMS inputs with tied scores, padding rows, tiny boxes and random sizes.

    Returns boxes, scores and the keyword arguments of one call (several tiles of 32-128).
    """
    rng = np.random.default_rng(seed)
    batch, n = int(rng.integers(1, 4)), int(rng.integers(200, 700))
    boxes, scores = _nms_case(seed, batch, n)
    scores = np.round(scores * 10) / 10  # many ties: the lower index goes first
    boxes[rng.random((batch, n)) < 0.05] = 0.0  # padding rows anywhere
    tiny = rng.random((batch, n)) < 0.1  # areas ~1e-8: the IoU epsilon matters
    boxes[tiny] = boxes[tiny][:, [0, 1, 0, 1]] / 1e3 + np.array([0, 0, 1e-4, 1e-4], "float32")
    kwargs = dict(max_output_size=int(rng.integers(n // 4, n + 50)),
                  iou_threshold=float(rng.choice([0.3, 0.5, 0.6])),
                  score_threshold=float(rng.choice([-np.inf, 0.35])))
    return boxes, scores, kwargs, int(rng.choice([32, 64, 128]))


@pytest.mark.parametrize("seed", range(6))
def test_nms_tiled_matches_tf_kernel_on_hard_cases(seed):
    boxes, scores, kwargs, tile = _hard_nms_case(seed)
    want = _graph_nms(lambda b, s: mo.nms_padded_tf(b, s, **kwargs), boxes, scores)
    tiled = lambda b, s: mo.nms_padded_tiled(b, s, **kwargs, tile_size=tile)  # noqa: E731
    for got in (_graph_nms(tiled, boxes, scores), [t.numpy() for t in _xla(tiled)(boxes, scores)]):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    # Not a trivial case: something is selected and something is suppressed.
    assert want[1].any()
    real = (np.abs(boxes).sum(-1) > 0) & (scores > kwargs["score_threshold"])
    ranked = [np.argsort(-np.where(real[b], scores[b], -np.inf), kind="stable")
              for b in range(len(boxes))]
    assert any(not np.array_equal(want[0][b][want[1][b]], ranked[b][:want[1][b].sum()])
               for b in range(len(boxes)))


def test_gather_padded():
    values = np.arange(2 * 5 * 3).reshape(2, 5, 3).astype("float32")
    indices = np.array([[4, 0, 2], [1, 1, 3]], "int32")
    expected = np.take_along_axis(values, indices[..., None], axis=1)
    np.testing.assert_array_equal(np.asarray(mo.gather_padded(values, indices)), expected)


# ---------------------------------------------------------------------------- conv transpose

def _deconv_case(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3, 5, 6, 8)).astype("float32")
    kernel = rng.normal(size=(2, 3, 4, 8)).astype("float32")  # [kh, kw, out, in], kh != kw
    out = np.zeros((3, 10, 18, 4), "float32")
    for a in range(2):  # each kernel tap fills its own output phase: no overlap
        for b in range(3):
            out[:, a::2, b::3] = np.einsum("nijk,ck->nijc", x, kernel[a, b])
    return x, kernel, out


def test_nonoverlapping_conv_transpose_matches_numpy_and_keras():
    x, kernel, ref = _deconv_case()
    np.testing.assert_allclose(np.asarray(mo.nonoverlapping_conv_transpose(x, kernel)), ref,
                               atol=1e-5)
    layer = keras.layers.Conv2DTranspose(4, (2, 3), strides=(2, 3), use_bias=False)
    layer.build(x.shape)
    layer.set_weights([kernel])
    np.testing.assert_allclose(np.asarray(layer(x)), ref, atol=1e-5)  # the layout Keras uses


# ---------------------------------------------------------------------------- boxes

def _numpy_iou(a, b):
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            ih = max(min(p[2], q[2]) - max(p[0], q[0]), 0)
            iw = max(min(p[3], q[3]) - max(p[1], q[1]), 0)
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - ih * iw
            out[i, j] = ih * iw / union if union > 0 else 0.0
    return out


def _random_boxes(rng, shape):
    yx = rng.uniform(0, 50, size=shape + (2,))
    hw = rng.uniform(1, 30, size=shape + (2,))
    return np.concatenate([yx, yx + hw], -1).astype("float32")


def test_overlaps_vs_bruteforce():
    rng = np.random.default_rng(RNG_SEED)
    a, b = _random_boxes(rng, (2, 12)), _random_boxes(rng, (2, 9))
    a[:, -2:] = 0.0  # padded rows
    b[:, -1] = 0.0
    a[0, 0] = [5, 5, 5, 20]  # zero area, overlapping others
    out = np.asarray(mo.overlaps(a, b))
    assert out.shape == (2, 12, 9) and np.isfinite(out).all()
    for i in range(2):
        np.testing.assert_allclose(out[i], _numpy_iou(a[i], b[i]), atol=1e-6)
    assert (out[:, -2:] == 0).all() and (out[:, :, -1] == 0).all()
    assert (out > 0.05).any()
    np.testing.assert_allclose(_xla(mo.overlaps)(a, b).numpy(), out, atol=1e-6)


def test_apply_deltas_refinement_round_trip():
    rng = np.random.default_rng(RNG_SEED)
    boxes, gt = _random_boxes(rng, (3, 20)), _random_boxes(rng, (3, 20))
    deltas = np.asarray(mo.box_refinement(boxes, gt))
    # Matterport's NumPy formula for the deltas.
    h, w = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    gh, gw = gt[..., 2] - gt[..., 0], gt[..., 3] - gt[..., 1]
    ref = np.stack(
        [
            (gt[..., 0] + 0.5 * gh - boxes[..., 0] - 0.5 * h) / h,
            (gt[..., 1] + 0.5 * gw - boxes[..., 1] - 0.5 * w) / w,
            np.log(gh / h),
            np.log(gw / w),
        ],
        -1,
    )
    np.testing.assert_allclose(deltas, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(mo.apply_box_deltas(boxes, deltas)), gt, atol=1e-4)
    np.testing.assert_allclose(_xla(mo.apply_box_deltas)(boxes, deltas).numpy(), gt, atol=1e-4)
    # Degenerate (padded) pairs: zeros, and no NaN gradient.
    pad = tf.constant(np.zeros((2, 4), "float32"))
    real = tf.constant(gt[0, :2])
    with tf.GradientTape() as tape:
        tape.watch([pad, real])
        d = mo.box_refinement(tf.stack([pad[0], real[0]]), tf.stack([real[1], pad[1]]))
        total = tf.reduce_sum(d)
    np.testing.assert_array_equal(d.numpy(), 0.0)
    grads = tape.gradient(total, [pad, real])
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)


def test_clamp_deltas_bounds_only_the_log_scales():
    # Large log scales (an untrained head) are cut at log(1000 / 16), as torchvision's
    # BBOX_XFORM_CLIP; shifts and smaller or negative scales pass unchanged.
    deltas = np.array([[[9.0, -9.0, 10.0, -10.0], [0.1, 0.2, 3.0, 4.5]]], np.float32)
    out = np.asarray(mo.clamp_deltas(deltas))
    expected = deltas.copy()
    expected[..., 2:] = np.minimum(expected[..., 2:], np.log(1000.0 / 16))
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert mo.MAX_LOG_SCALE == pytest.approx(np.log(1000.0 / 16))
    boxes = np.array([[[0.4, 0.4, 0.6, 0.6]] * 2], np.float32)
    assert np.isfinite(np.asarray(mo.apply_box_deltas(boxes, mo.clamp_deltas(deltas * 100)))
                       ).all()


def test_clip_norm_denorm():
    rng = np.random.default_rng(RNG_SEED)
    boxes = rng.uniform(-0.5, 1.5, size=(2, 10, 4)).astype("float32")
    clipped = np.asarray(mo.clip_boxes(boxes, np.array([0.0, 0.1, 1.0, 0.9], "float32")))
    lo, hi = np.array([0.0, 0.1, 0.0, 0.1]), np.array([1.0, 0.9, 1.0, 0.9])
    np.testing.assert_allclose(clipped, np.clip(boxes, lo, hi))
    window = np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], "float32")[:, None]  # per image
    np.testing.assert_allclose(
        np.asarray(mo.clip_boxes(boxes, window)),
        np.clip(boxes, window[..., [0, 1, 0, 1]], window[..., [2, 3, 2, 3]]),
    )

    pixels = np.array([[[0, 0, 128, 192], [10, 20, 30, 40]]], "float32")
    shape = (128, 192)
    scale, shift = np.array([127, 191, 127, 191], "float32"), np.array([0, 0, 1, 1], "float32")
    normed = np.asarray(mo.norm_boxes(pixels, shape))
    np.testing.assert_allclose(normed, (pixels - shift) / scale, rtol=1e-6)
    np.testing.assert_allclose(normed[0, 0], [0, 0, 1, 1], atol=1e-6)
    back = np.asarray(mo.denorm_boxes(normed, shape))
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, pixels.astype("int32"))
    shapes = np.array([[128, 192], [64, 96]])
    batched = np.asarray(mo.norm_boxes(np.concatenate([pixels, pixels]), shapes))
    expected = (pixels[0] - shift) / np.array([63, 95, 63, 95])
    np.testing.assert_allclose(batched[1], expected, rtol=1e-6)


# ---------------------------------------------------------------------------- JAX

_JAX_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import jax, jax.numpy as jnp
    import keras
    assert keras.backend.backend() == "jax"
    from mrcnn import ops as mo

    d = dict(np.load(sys.argv[1]))
    fms = [d[f"fm{i}"] for i in range(4)]
    shape = tuple(int(v) for v in d["image_shape"])
    crop_fn = jax.jit(lambda i, b, x: mo.crop_and_resize(i, b, x, 7))
    crop = crop_fn(d["image"], d["boxes"], d["box_indices"])
    np.testing.assert_allclose(np.asarray(crop), d["crop"], atol=5e-5, rtol=0)
    ml = jax.jit(lambda f, b: mo.multilevel_roi_align(f, b, shape, 7))(fms, d["level_boxes"])
    np.testing.assert_allclose(np.asarray(ml), d["multilevel"], atol=5e-5, rtol=0)
    nms = jax.jit(lambda b, s: mo.non_max_suppression_padded(b, s, 100, 0.5, 0.2))
    idx, valid = nms(d["nms_boxes"], d["nms_scores"])
    np.testing.assert_array_equal(np.asarray(idx), d["nms_idx"])
    np.testing.assert_array_equal(np.asarray(valid), d["nms_valid"])
    for i in range(int(d["hard_count"])):
        kw = dict(zip(("max_output_size", "iou_threshold", "score_threshold", "tile_size"),
                      d[f"hard_args{i}"].tolist()))
        kw["max_output_size"], kw["tile_size"] = int(kw["max_output_size"]), int(kw["tile_size"])
        hard = jax.jit(lambda b, s: mo.nms_padded_tiled(b, s, **kw))
        idx, valid = hard(d[f"hard_boxes{i}"], d[f"hard_scores{i}"])
        np.testing.assert_array_equal(np.asarray(idx), d[f"hard_idx{i}"])
        np.testing.assert_array_equal(np.asarray(valid), d[f"hard_valid{i}"])
    deconv = jax.jit(mo.nonoverlapping_conv_transpose)(d["deconv_x"], d["deconv_kernel"])
    np.testing.assert_allclose(np.asarray(deconv), d["deconv"], atol=1e-5)
    iou = jax.jit(mo.overlaps)(d["nms_boxes"][:, :20], d["nms_boxes"][:, :30])
    np.testing.assert_allclose(np.asarray(iou), d["iou"], atol=1e-6)
    deltas = jax.jit(mo.box_refinement)(d["nms_boxes"][0], d["nms_boxes"][1])
    np.testing.assert_allclose(np.asarray(deltas), d["deltas"], atol=1e-5)

    # A training step differentiates through ROI align and past NMS (indices only).
    def loss(f, boxes, scores):
        keep, ok = mo.non_max_suppression_padded(boxes, scores, 20, 0.5)
        rois = mo.gather_padded(boxes / 100.0, keep) * ok[..., None]
        return jnp.sum(mo.multilevel_roi_align(f, rois, shape, 7) ** 2)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(fms, d["nms_boxes"], d["nms_scores"])
    assert all(np.isfinite(np.asarray(g)).all() for g in grads[0])
    assert float(jnp.abs(grads[0][0]).sum()) > 0
    print("JAX OK")
    """
)


def test_jax_backend_matches_tensorflow(tmp_path):
    image, boxes, box_indices = _crop_case()
    image_shape = (128, 192)
    fms = _pyramid(image_shape=image_shape)
    level_boxes = _level_boxes()
    nms_boxes, nms_scores = _nms_case(11, batch=2, n=300)
    idx, valid = mo.non_max_suppression_padded(nms_boxes, nms_scores, 100, 0.5, 0.2)
    data = dict(
        image=image, boxes=boxes, box_indices=box_indices,
        crop=_tf_crop(image, boxes, box_indices, 7),
        level_boxes=level_boxes, image_shape=np.array(image_shape),
        multilevel=np.asarray(mo.multilevel_roi_align(fms, level_boxes, image_shape, 7)),
        nms_boxes=nms_boxes, nms_scores=nms_scores,
        nms_idx=np.asarray(idx), nms_valid=np.asarray(valid),
        iou=np.asarray(mo.overlaps(nms_boxes[:, :20], nms_boxes[:, :30])),
        deltas=np.asarray(mo.box_refinement(nms_boxes[0], nms_boxes[1])),
        **{f"fm{i}": f for i, f in enumerate(fms)},
    )  # fmt: skip
    data["deconv_x"], data["deconv_kernel"], data["deconv"] = _deconv_case()
    hard_seeds = range(10, 14)
    data["hard_count"] = np.array(len(hard_seeds))
    for i, seed in enumerate(hard_seeds):  # the tiled kernel on JAX against the TF kernel
        boxes, scores, kwargs, tile = _hard_nms_case(seed)
        idx, valid = mo.nms_padded_tf(boxes, scores, **kwargs)
        data.update({f"hard_boxes{i}": boxes, f"hard_scores{i}": scores,
                     f"hard_idx{i}": np.asarray(idx), f"hard_valid{i}": np.asarray(valid),
                     f"hard_args{i}": np.array([*kwargs.values(), tile], "float64")})
    path = tmp_path / "ops_case.npz"
    np.savez(path, **data)
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", _JAX_SCRIPT, str(path)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "JAX OK" in proc.stdout
