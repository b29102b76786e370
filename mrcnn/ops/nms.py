"""Batched, padded, static-shape non-max suppression.

Three implementations with one contract:

- :func:`nms_padded_tiled`: ``keras.ops`` only, the tiled algorithm of TF's padded kernel
  (sort, tiles of 512 boxes, fixed-point suppression inside a tile, earlier tiles suppress
  later ones). The kernel of every backend but TensorFlow.
- :func:`nms_padded_pure`: ``keras.ops`` only. A ``while_loop`` over the output slots; each
  step takes the argmax of the remaining scores and suppresses against one row of IoU, so the
  work per step is ``[B, N]`` and memory is ``O(B * N)`` (no ``N x N`` matrix). Kept as the
  simplest reference; it is 5x slower than the tiled kernel at the proposal layer's size
  (B=2, N=6000, M=2000) and wins only below a millisecond (M=100, N=1000) on a CPU, where one
  step is cheap; on an accelerator each of its M steps is a kernel launch (bench/nms_speed.py).
- :func:`nms_padded_tf`: ``tf.image.non_max_suppression_padded`` (tiled, compiles under
  ``jit_compile=True``), wrapped so that it returns exactly what the pure versions return.

:func:`non_max_suppression_padded` dispatches: the TF kernel on the TensorFlow backend, the
tiled ``keras.ops`` version elsewhere (JAX, PyTorch).

Contract (all paths, bit-for-bit the same selections):

- Greedy NMS: repeatedly select the highest-scoring remaining box whose score is
  ``> score_threshold``, then drop every remaining box whose IoU with it is ``> iou_threshold``.
  Ties in score go to the lower index.
- Coordinates may come in either order per box (``y1 > y2`` is fine); any consistent units.
- IoU is ``inter / (area_a + area_b - inter + 1e-8)``, the formula of
  ``tf.image.non_max_suppression_padded``. The epsilon only matters for boxes whose area is
  near 1e-8 (tiny boxes in normalized coordinates), which then suppress slightly less.
- Padding convention: a box whose four coordinates are all ``<= 0`` (in particular the
  all-zero padding box) is ignored: never selected, never suppresses. The TF kernel decides
  validity by ``any(coordinate > 0)``; the pure version follows it. Boxes clipped to a
  ``[0, 0, 1, 1]`` (or pixel) window only hit this when they collapse onto the origin.
- Output: ``indices [B, max_output_size]`` int32 in selection (descending score) order and
  ``valid [B, max_output_size]`` bool. Valid entries form a prefix; padded slots hold index 0
  and ``valid=False``.

Differences from ``tf.image.non_max_suppression`` (the unpadded V3 kernel): that kernel uses the
exact IoU (no epsilon, zero-area boxes have IoU 0) and selects all-zero boxes like any other.
Raw ``tf.image.non_max_suppression_padded`` suppresses at ``IoU >= threshold``; the wrapper
passes the next float32 above the threshold so both paths suppress at ``IoU > threshold``.
"""

from __future__ import annotations

from typing import Tuple

import keras
import numpy as np
from keras import ops

_IOU_EPSILON = 1e-8  # tf.image.non_max_suppression_padded's union epsilon


def _canonicalize(boxes):
    """``[..., 4]`` boxes in any corner order -> float32 ``(ymin, xmin, ymax, xmax)``."""
    boxes = ops.cast(boxes, "float32")
    y1, x1, y2, x2 = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
    return ops.stack(
        [ops.minimum(y1, y2), ops.minimum(x1, x2), ops.maximum(y1, y2), ops.maximum(x1, x2)],
        axis=-1,
    )


def _is_real_box(boxes):
    """``[..., 4] -> [...]`` bool: not padding, i.e. some coordinate is > 0 (TF's rule)."""
    return ops.any(boxes > 0, axis=-1)


def gather_padded(values, indices):
    """Batched gather: ``out[b, m] = values[b, indices[b, m]]``.

    Args:
        values: ``[B, N, ...]``.
        indices: ``[B, M]`` integer, each in ``[0, N)`` (padded slots of NMS point at 0).

    Returns:
        ``[B, M, ...]`` with the dtype of ``values``.
    """
    values = ops.convert_to_tensor(values)
    indices = ops.cast(indices, "int32")
    shape = ops.shape(values)
    batch, n = shape[0], shape[1]
    # Flatten the batch into the gathered axis: one plain take, no batch_dims support needed.
    offsets = ops.expand_dims(ops.arange(batch, dtype="int32") * ops.cast(n, "int32"), 1)
    flat = ops.reshape(values, (-1,) + tuple(values.shape[2:]))
    return ops.take(flat, indices + offsets, axis=0)


def _candidates(boxes, scores, score_threshold: float):
    """The common start of the ``keras.ops`` kernels (no gradients flow through NMS).

    Returns:
        canonical boxes ``[B, N, 4]``, float32 scores ``[B, N]`` and the candidates ``[B, N]``:
        score ``> score_threshold`` and a real (non-degenerate) box.
    """
    boxes = _canonicalize(ops.stop_gradient(boxes))
    scores = ops.cast(ops.stop_gradient(scores), "float32")
    return boxes, scores, (scores > np.float32(score_threshold)) & _is_real_box(boxes)


def nms_padded_pure(
    boxes,
    scores,
    max_output_size: int,
    iou_threshold: float = 0.5,
    score_threshold: float = float("-inf"),
) -> Tuple[object, object]:
    """Greedy NMS with static output shape, ``keras.ops`` only (see module docstring).

    Runs at most ``max_output_size`` steps of ``[B, N]`` work and stops early once every
    image has no candidates left. Gradients are stopped: the result is a selection.

    Args:
        boxes: ``[B, N, 4]`` boxes ``(y1, x1, y2, x2)``.
        scores: ``[B, N]`` scores.
        max_output_size: python int, the number of output slots.
        iou_threshold: suppress boxes with IoU ``>`` this against a selected box.
        score_threshold: only boxes with score ``>`` this are selected.

    Returns:
        ``indices [B, max_output_size]`` int32 and ``valid [B, max_output_size]`` bool.
    """
    boxes, scores, candidate = _candidates(boxes, scores, score_threshold)
    batch, n = ops.shape(scores)[0], scores.shape[1]
    neg_inf = float("-inf")
    remaining = ops.where(candidate, scores, neg_inf)
    areas = _areas(boxes)
    threshold = np.float32(iou_threshold)
    positions = ops.expand_dims(ops.arange(n, dtype="int32"), 0)

    def cond(step, remaining, indices, valid):
        return ops.logical_and(step < max_output_size, ops.any(remaining > neg_inf))

    def body(step, remaining, indices, valid):
        best = ops.cast(ops.argmax(remaining, axis=1), "int32")  # [B]; first max on ties
        best_col = ops.expand_dims(best, 1)
        found = ops.take_along_axis(remaining, best_col, axis=1) > neg_inf  # [B, 1]
        best_box = gather_padded(boxes, best_col)  # [B, 1, 4]
        best_area = ops.take_along_axis(areas, best_col, axis=1)  # [B, 1]
        iou = _pairwise_iou(best_box, boxes, best_area, areas)[:, 0]  # one IoU row, [B, N]
        suppress = (iou > threshold) | (positions == best_col)
        remaining = ops.where(suppress, neg_inf, remaining)
        indices = ops.slice_update(indices, (0, step), ops.where(found, best_col, 0))
        valid = ops.slice_update(valid, (0, step), found)
        return step + 1, remaining, indices, valid

    init = (
        ops.convert_to_tensor(0, "int32"),
        remaining,
        ops.zeros((batch, max_output_size), "int32"),
        ops.zeros((batch, max_output_size), "bool"),
    )
    _, _, indices, valid = ops.while_loop(cond, body, init)
    return indices, valid


def _areas(boxes):
    """``[..., 4]`` canonical boxes -> ``[...]`` areas, ``(ymax - ymin) * (xmax - xmin)``."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _pairwise_iou(rows, cols, row_areas, col_areas):
    """``[B, R, 4] x [B, C, 4] -> [B, R, C]`` IoU in the TF padded kernel's exact float order.

    ``inter / (((area_r + area_c) - inter) + 1e-8)``, intersection width before height, so
    that every kernel here computes bit-identical IoUs (ties at the threshold agree).
    """
    ry1, rx1, ry2, rx2 = (rows[..., i, None] for i in range(4))  # [B, R, 1]
    cy1, cx1, cy2, cx2 = (cols[:, None, :, i] for i in range(4))  # [B, 1, C]
    inter = ops.maximum(ops.minimum(rx2, cx2) - ops.maximum(rx1, cx1), 0.0) * ops.maximum(
        ops.minimum(ry2, cy2) - ops.maximum(ry1, cy1), 0.0
    )
    union = row_areas[..., None] + col_areas[:, None, :] - inter + _IOU_EPSILON
    return inter / union


def nms_padded_tiled(
    boxes,
    scores,
    max_output_size: int,
    iou_threshold: float = 0.5,
    score_threshold: float = float("-inf"),
    tile_size: int = 512,
) -> Tuple[object, object]:
    """Greedy NMS with static output shape, tiled, ``keras.ops`` only (see module docstring).

    The algorithm of ``tf.image.non_max_suppression_padded`` (and TF Model Garden's
    ``sorted_non_max_suppression_padded``), written in ``keras.ops`` so that every backend
    gets it: sort the candidates by score, cut them into tiles of ``tile_size`` boxes, and for
    each tile in order (a) drop the boxes that overlap a box kept in an earlier tile (those
    decisions are final), (b) resolve the tile against itself by iterating
    ``keep = candidate & ~any_j<i(keep_j & IoU_ji > t)`` to its fixed point. The fixed point is
    unique and is the greedy answer (entry ``i`` only depends on entries before it), so the
    iteration is exact, not a heuristic. The loop stops as soon as every image has
    ``max_output_size`` boxes. Work is ``[B, tile, tile]`` per tile pair instead of the
    per-slot loop's ``max_output_size`` sequential ``[B, N]`` steps: a few dozen large steps
    rather than thousands of small ones, which is what accelerators (and XLA on CPU) want.

    Args:
        boxes: ``[B, N, 4]`` boxes ``(y1, x1, y2, x2)``.
        scores: ``[B, N]`` scores.
        max_output_size: python int, the number of output slots.
        iou_threshold: suppress boxes with IoU ``>`` this against a selected box.
        score_threshold: only boxes with score ``>`` this are selected.
        tile_size: boxes per tile (512, as the TF kernel); smaller ``N`` uses one tile.

    Returns:
        ``indices [B, max_output_size]`` int32 and ``valid [B, max_output_size]`` bool.
    """
    boxes, scores, candidate = _candidates(boxes, scores, score_threshold)
    batch, n = ops.shape(scores)[0], scores.shape[1]
    threshold = np.float32(iou_threshold)
    # Sort candidates by score, ties to the lower index (top_k's order, as the TF kernel).
    # -0.0 and 0.0 must tie: normalize the sign of zero before the sort.
    key = ops.where(candidate, ops.where(scores == 0.0, 0.0, scores), float("-inf"))
    _, order = ops.top_k(key, k=n)
    order = ops.cast(order, "int32")
    boxes = gather_padded(boxes, order)
    candidate = ops.take_along_axis(candidate, order, axis=1)

    tile = min(int(tile_size), n)
    num_tiles = -(-n // tile)
    pad = num_tiles * tile - n
    if pad:
        boxes = ops.pad(boxes, ((0, 0), (0, pad), (0, 0)))
        candidate = ops.pad(candidate, ((0, 0), (0, pad)))
        order = ops.pad(order, ((0, 0), (0, pad)))
    boxes = ops.reshape(boxes, (batch, num_tiles, tile, 4))
    areas = _areas(boxes)
    keep = ops.reshape(candidate, (batch, num_tiles, tile))
    # earlier[j, i]: box j comes before box i in the tile, so j may suppress i.
    earlier = np.arange(tile)[:, None] < np.arange(tile)[None, :]

    def tile_of(x, t):
        return ops.take(x, t, axis=1)

    def process_tile(t, keep, count):
        t_boxes, t_areas = tile_of(boxes, t), tile_of(areas, t)
        t_keep = tile_of(keep, t)

        # (a) Against the kept boxes of the earlier tiles.
        def cross_body(s, t_keep):
            iou = _pairwise_iou(tile_of(boxes, s), t_boxes, tile_of(areas, s), t_areas)
            hit = ops.any((iou > threshold) & tile_of(keep, s)[:, :, None], axis=1)
            return s + 1, t_keep & ~hit

        _, t_keep = ops.while_loop(lambda s, _: s < t, lambda s, k: cross_body(s, k),
                                   (ops.convert_to_tensor(0, "int32"), t_keep))
        # (b) Within the tile: iterate to the (unique) greedy fixed point.
        iou = _pairwise_iou(t_boxes, t_boxes, t_areas, t_areas)
        can_suppress = (iou > threshold) & earlier[None]
        start = t_keep

        def self_body(current, _):
            new = start & ~ops.any(can_suppress & current[:, :, None], axis=1)
            return new, ops.any(new != current)

        t_keep, _ = ops.while_loop(lambda c, changed: changed, self_body,
                                   (t_keep, ops.convert_to_tensor(True)))
        keep = ops.slice_update(keep, (0, t, 0), t_keep[:, None, :])
        count = count + ops.sum(ops.cast(t_keep, "int32"), axis=1)
        return t + 1, keep, count

    def cond(t, keep, count):
        return ops.logical_and(t < num_tiles, ops.any(count < max_output_size))

    init = (ops.convert_to_tensor(0, "int32"), keep, ops.zeros((batch,), "int32"))
    _, keep, _ = ops.while_loop(cond, process_tile, init)
    # Tiles left unprocessed by the early exit come after max_output_size selections of every
    # image, so the first max_output_size kept positions are the answer regardless.
    keep = ops.reshape(keep, (batch, num_tiles * tile))
    total = num_tiles * tile
    k = min(max_output_size, total)
    rank = ops.where(keep, float(total) - ops.arange(total, dtype="float32"), 0.0)
    first, positions = ops.top_k(rank, k=k)  # kept positions in sorted (selection) order
    valid = first > 0.0
    indices = ops.where(valid, ops.take_along_axis(order, ops.cast(positions, "int32"), axis=1), 0)
    if k < max_output_size:
        indices = ops.pad(indices, ((0, 0), (0, max_output_size - k)))
        valid = ops.pad(valid, ((0, 0), (0, max_output_size - k)))
    return ops.cast(indices, "int32"), valid


def nms_padded_tf(
    boxes,
    scores,
    max_output_size: int,
    iou_threshold: float = 0.5,
    score_threshold: float = float("-inf"),
) -> Tuple[object, object]:
    """Same contract as :func:`nms_padded_pure`, on ``tf.image.non_max_suppression_padded``.

    TensorFlow backend only. Boxes are canonicalized per box here (the TF op only checks the
    first box's orientation); padding boxes (all ``<= 0``) and boxes failing the score
    threshold are zeroed, so they can neither be selected nor suppress (the op would let an
    all-negative box suppress without selecting it); and the IoU threshold is nudged to the
    next float32 so that the op's ``IoU >= t'`` means ``IoU > t``.
    """
    import tensorflow as tf

    boxes = tf.stop_gradient(_canonicalize(boxes))
    scores = tf.stop_gradient(tf.cast(scores, tf.float32))
    # Non-candidates become all-zero boxes, which the op neither selects nor lets suppress.
    # (The op itself only filters scores when score_threshold != -inf, so -inf/NaN scores
    # would otherwise be selectable.)
    score_threshold = np.float32(score_threshold)
    candidate = _is_real_box(boxes) & (scores > score_threshold)
    boxes = tf.where(candidate[..., None], boxes, tf.zeros_like(boxes))
    threshold = float(np.nextafter(np.float32(iou_threshold), np.float32(np.inf)))
    indices, num_valid = tf.image.non_max_suppression_padded(
        boxes,
        scores,
        max_output_size,
        iou_threshold=threshold,
        score_threshold=float(score_threshold),
        pad_to_max_output_size=True,
        canonicalized_coordinates=True,
    )
    valid = tf.range(max_output_size)[None, :] < num_valid[:, None]
    return tf.cast(indices, tf.int32), valid


def non_max_suppression_padded(
    boxes,
    scores,
    max_output_size: int,
    iou_threshold: float = 0.5,
    score_threshold: float = float("-inf"),
) -> Tuple[object, object]:
    """Batched greedy NMS with padded output; the fastest XLA-compilable kernel per backend.

    TensorFlow backend: :func:`nms_padded_tf`; other backends: :func:`nms_padded_tiled`. Both
    return the same selections (see the module docstring for the exact contract).

    Args:
        boxes: ``[B, N, 4]`` boxes ``(y1, x1, y2, x2)``; all-``<= 0`` rows are padding.
        scores: ``[B, N]`` scores.
        max_output_size: python int, the number of output slots ``M``.
        iou_threshold: python float; suppress boxes with IoU ``>`` this.
        score_threshold: python float; only boxes with score ``>`` this are selected.

    Returns:
        ``indices [B, M]`` int32, selected box indices in descending score order, padded with
        0; ``valid [B, M]`` bool, True for the first ``num_selected`` slots.
    """
    if keras.backend.backend() == "tensorflow":
        return nms_padded_tf(boxes, scores, max_output_size, iou_threshold, score_threshold)
    return nms_padded_tiled(boxes, scores, max_output_size, iou_threshold, score_threshold)
