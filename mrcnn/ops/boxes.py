"""Box arithmetic on tensors (``keras.ops``), the graph twins of ``mrcnn.utils``: box coding
(``BoxCoder``, the ``keras.ops`` twin of ``mrcnn.box_coder.BoxCoder``; Matterport's
``box_refinement`` / ``apply_box_deltas`` wrap it), clipping, IoU and (de)normalization.

All boxes are ``(y1, x1, y2, x2)`` in the last axis. Functions broadcast over any leading
axes, keep static shapes and compile under XLA on every backend.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import keras
from keras import ops

from mrcnn import box_coder
from mrcnn.box_coder import MAX_LOG_SCALE  # noqa: F401  (re-exported)

ShapeLike = Union[Sequence[int], Any]  # (h, w) python ints or a tensor


def _split4(boxes):
    """Returns the four coordinate planes of ``boxes [..., 4]``, each ``[...]``."""
    return boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]


class BoxCoder(box_coder.BoxCoder):
    """``mrcnn.box_coder.BoxCoder`` on tensors (``keras.ops``): the same arithmetic.

    Encoding computes in float32; decoding keeps the dtype of the boxes. Both broadcast over
    leading axes, keep static shapes and compile under XLA.

    Args:
        std_dev: 4 standard deviations (``Config.RPN_BBOX_STD_DEV`` / ``BBOX_STD_DEV``) or
            None.
        max_log_scale: clamp of the decoded log-scales (``MAX_LOG_SCALE``) or None.
    """

    xp = ops

    def _encode_inputs(self, boxes, targets):
        return ops.cast(boxes, "float32"), ops.cast(targets, "float32")

    def _decode_inputs(self, boxes, deltas):
        boxes = ops.convert_to_tensor(boxes)
        return boxes, ops.cast(deltas, boxes.dtype)

    def _std(self, like):
        return self.std_dev.astype(keras.backend.standardize_dtype(like.dtype))


# Plain deltas (no std-dev scaling), as Matterport's graph functions.
_PLAIN = BoxCoder()
_UNCLAMPED = BoxCoder(max_log_scale=None)


def apply_box_deltas(boxes, deltas):
    """Applies refinement deltas to boxes (Matterport's ``apply_box_deltas_graph``).

    Args:
        boxes: ``[..., 4]`` float boxes ``(y1, x1, y2, x2)``.
        deltas: ``[..., 4]`` ``(dy, dx, log(dh), log(dw))``, broadcastable to ``boxes``.

    Returns:
        ``[..., 4]`` refined boxes, dtype of ``boxes``. The log-scales are not clamped
        (``BoxCoder.decode`` clamps).
    """
    return _UNCLAMPED.decode(boxes, deltas)


def clamp_deltas(deltas):
    """Clamp the (log dh, log dw) part of deltas ``[..., 4]`` at ``MAX_LOG_SCALE``.

    Args:
        deltas: ``[..., 4]`` ``(dy, dx, log(dh), log(dw))``.

    Returns:
        ``[..., 4]`` deltas with the log scales at most ``MAX_LOG_SCALE``.
    """
    return _PLAIN.clamp(deltas)


def clip_boxes(boxes, window):
    """Clips boxes to a window (Matterport's ``clip_boxes_graph``).

    Args:
        boxes: ``[..., 4]`` boxes ``(y1, x1, y2, x2)``.
        window: ``[4]`` or ``[..., 4]`` broadcastable to ``boxes``: ``(wy1, wx1, wy2, wx2)``.

    Returns:
        ``[..., 4]`` clipped boxes, dtype of ``boxes``.
    """
    boxes = ops.convert_to_tensor(boxes)
    window = ops.cast(window, boxes.dtype)
    wy1, wx1, wy2, wx2 = _split4(window)
    y1, x1, y2, x2 = _split4(boxes)
    # min-then-max, as Matterport: a box fully outside collapses onto the window edge.
    y1 = ops.maximum(ops.minimum(y1, wy2), wy1)
    x1 = ops.maximum(ops.minimum(x1, wx2), wx1)
    y2 = ops.maximum(ops.minimum(y2, wy2), wy1)
    x2 = ops.maximum(ops.minimum(x2, wx2), wx1)
    return ops.stack([y1, x1, y2, x2], axis=-1)


def box_refinement(box, gt_box):
    """Deltas that turn ``box`` into ``gt_box`` (Matterport's ``box_refinement_graph``).

    The inverse of :func:`apply_box_deltas`, ``BoxCoder().encode``: degenerate pairs (zero
    or negative height/width in either box, e.g. zero padding) give deltas of 0 instead of
    inf/NaN.

    Args:
        box: ``[..., 4]`` boxes ``(y1, x1, y2, x2)``.
        gt_box: ``[..., 4]`` target boxes, broadcastable to ``box``.

    Returns:
        ``[..., 4]`` float32 deltas ``(dy, dx, log(dh), log(dw))``.
    """
    return _PLAIN.encode(box, gt_box)


def overlaps(boxes1, boxes2):
    """Pairwise IoU, batched (Matterport's ``overlaps_graph`` generalized).

    Boxes are assumed ordered (``y1 <= y2``, ``x1 <= x2``). A pair whose union has no area
    (e.g. two zero-padding boxes) has IoU 0, never NaN.

    Args:
        boxes1: ``[..., N, 4]``.
        boxes2: ``[..., M, 4]``; leading axes broadcast against ``boxes1``'s.

    Returns:
        ``[..., N, M]`` IoU in the promoted float dtype of the inputs.
    """
    boxes1 = ops.convert_to_tensor(boxes1)
    boxes2 = ops.convert_to_tensor(boxes2)
    dtype = keras.backend.result_type(boxes1.dtype, boxes2.dtype)
    if "float" not in dtype:
        dtype = "float32"  # integer pixel boxes: IoU is a fraction
    boxes1 = ops.cast(boxes1, dtype)
    boxes2 = ops.cast(boxes2, dtype)
    a = ops.expand_dims(boxes1, -2)  # [..., N, 1, 4]
    b = ops.expand_dims(boxes2, -3)  # [..., 1, M, 4]
    inter_h = ops.maximum(ops.minimum(a[..., 2], b[..., 2]) - ops.maximum(a[..., 0], b[..., 0]), 0)
    inter_w = ops.maximum(ops.minimum(a[..., 3], b[..., 3]) - ops.maximum(a[..., 1], b[..., 1]), 0)
    intersection = inter_h * inter_w
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - intersection
    positive = union > 0
    return ops.where(positive, intersection / ops.where(positive, union, 1), 0)


def _norm_scale(shape, dtype):
    """``[h-1, w-1, h-1, w-1]`` for ``shape (h, w)``; ``[..., 1, 4]`` for batched shapes."""
    shape = ops.cast(shape, dtype)
    h, w = shape[..., 0], shape[..., 1]
    scale = ops.stack([h, w, h, w], axis=-1) - 1.0
    if len(scale.shape) > 1:
        # Batched shapes [B, 2] pair with boxes [B, N, 4].
        scale = ops.expand_dims(scale, -2)
    return scale


def norm_boxes(boxes, shape: ShapeLike):
    """Pixel boxes to normalized coordinates (Matterport's ``norm_boxes_graph``).

    Pixel box ``(y1, x1, y2, x2)`` has ``(y2, x2)`` outside the box; normalized boxes have
    ``(0, 0, 1, 1)`` spanning the image: ``(boxes - [0, 0, 1, 1]) / [h-1, w-1, h-1, w-1]``.

    Args:
        boxes: ``[..., 4]`` pixel boxes.
        shape: ``(height, width)``: python ints, a ``[2]`` tensor, or ``[B, 2]`` for boxes
            ``[B, N, 4]``.

    Returns:
        ``[..., 4]`` float32 normalized boxes.
    """
    boxes = ops.cast(boxes, "float32")
    shift = ops.convert_to_tensor([0.0, 0.0, 1.0, 1.0], "float32")
    return (boxes - shift) / _norm_scale(shape, "float32")


def denorm_boxes(boxes, shape: ShapeLike):
    """Normalized boxes to pixel coordinates (Matterport's ``denorm_boxes_graph``).

    Args:
        boxes: ``[..., 4]`` normalized boxes.
        shape: ``(height, width)``: python ints, a ``[2]`` tensor, or ``[B, 2]`` for boxes
            ``[B, N, 4]``.

    Returns:
        ``[..., 4]`` int32 pixel boxes, rounded (half to even, as ``tf.round``).
    """
    boxes = ops.cast(boxes, "float32")
    shift = ops.convert_to_tensor([0.0, 0.0, 1.0, 1.0], "float32")
    return ops.cast(ops.round(boxes * _norm_scale(shape, "float32") + shift), "int32")
