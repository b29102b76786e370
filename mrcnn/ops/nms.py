"""Batched, padded, static-shape non-max suppression.

Two implementations with one contract:

- :func:`nms_padded_pure`: ``keras.ops`` only. A ``while_loop`` over the output slots; each
  step takes the argmax of the remaining scores and suppresses against one row of IoU, so the
  work per step is ``[B, N]`` and memory is ``O(B * N)`` (no ``N x N`` matrix).
- :func:`nms_padded_tf`: ``tf.image.non_max_suppression_padded`` (tiled, compiles under
  ``jit_compile=True``), wrapped so that it returns exactly what the pure version returns.

:func:`non_max_suppression_padded` dispatches: the TF kernel on the TensorFlow backend, the pure
version elsewhere (JAX, PyTorch).

Contract (both paths, bit-for-bit the same selections):

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
    boxes = _canonicalize(ops.stop_gradient(boxes))
    scores = ops.cast(ops.stop_gradient(scores), "float32")
    batch, n = ops.shape(scores)[0], scores.shape[1]
    neg_inf = float("-inf")
    candidate = (scores > np.float32(score_threshold)) & _is_real_box(boxes)
    remaining = ops.where(candidate, scores, neg_inf)
    ymin, xmin, ymax, xmax = (boxes[..., i] for i in range(4))
    areas = (ymax - ymin) * (xmax - xmin)
    threshold = np.float32(iou_threshold)
    positions = ops.expand_dims(ops.arange(n, dtype="int32"), 0)

    def cond(step, remaining, indices, valid):
        return ops.logical_and(step < max_output_size, ops.any(remaining > neg_inf))

    def body(step, remaining, indices, valid):
        best = ops.cast(ops.argmax(remaining, axis=1), "int32")  # [B]; first max on ties
        best_col = ops.expand_dims(best, 1)
        found = ops.take_along_axis(remaining, best_col, axis=1) > neg_inf  # [B, 1]
        best_box = gather_padded(boxes, best_col)  # [B, 1, 4]
        by1, bx1, by2, bx2 = (best_box[..., i] for i in range(4))  # [B, 1] each
        # One IoU row in TF-padded order: ((area_a + area_b) - inter) + eps.
        inter = ops.maximum(ops.minimum(bx2, xmax) - ops.maximum(bx1, xmin), 0.0) * ops.maximum(
            ops.minimum(by2, ymax) - ops.maximum(by1, ymin), 0.0
        )
        union = (by2 - by1) * (bx2 - bx1) + areas - inter + _IOU_EPSILON
        suppress = (inter / union > threshold) | (positions == best_col)
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

    TensorFlow backend: :func:`nms_padded_tf`; other backends: :func:`nms_padded_pure`. Both
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
    return nms_padded_pure(boxes, scores, max_output_size, iou_threshold, score_threshold)
