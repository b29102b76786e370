"""Box coding and IoU, written once for NumPy and (through ``mrcnn.ops.boxes``) for tensors.

``BoxCoder`` owns everything about box deltas that used to be repeated at each call site:
the encoding ``(dy, dx, log(dh), log(dw))`` of a target box relative to a reference box,
its inverse, the clamp of the log-scales before ``exp`` and the per-coordinate standard
deviations (``RPN_BBOX_STD_DEV`` / ``BBOX_STD_DEV``) that scale the deltas the heads
predict (torchvision's ``BoxCoder``, detectron2's ``Box2BoxTransform``).

The arithmetic is written once against an array namespace (``xp``): this class uses NumPy;
``mrcnn.ops.boxes.BoxCoder`` is the same class with ``keras.ops``, so the data pipeline and
the graph encode boxes with the same operations in the same order.

This module imports NumPy only (``mrcnn.utils`` builds on it and must stay importable
without TensorFlow, Keras or JAX).

Boxes are ``(y1, x1, y2, x2)`` in the last axis; leading axes broadcast.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

# Largest log-scale delta applied to a box (torchvision's BBOX_XFORM_CLIP): a box grows at
# most 1000/16 times, so an untrained or diverging head cannot overflow exp() into inf/NaN.
MAX_LOG_SCALE = math.log(1000.0 / 16)


def _split4(boxes):
    """The four coordinate planes of ``boxes [..., 4]``, each ``[...]``."""
    return boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]


class BoxCoder:
    """Encodes boxes as deltas relative to reference boxes and decodes them back (NumPy).

    ``encode(boxes, targets)`` gives ``(dy, dx, log(dh), log(dw)) / std_dev``, heights being
    ``y2 - y1`` and centres ``y1 + 0.5 * height`` (Matterport's convention, which its
    released weights were trained with). ``decode(boxes, deltas)`` multiplies by
    ``std_dev``, clamps the log-scales at ``max_log_scale`` and applies the deltas.

    Degenerate pairs (zero or negative height/width in either box, e.g. zero padding)
    encode to 0 instead of inf/NaN, so padded rows can be masked by a loss weight without
    poisoning gradients.

    Args:
        std_dev: 4 standard deviations the deltas are divided by when encoding and
            multiplied by when decoding (``Config.RPN_BBOX_STD_DEV`` / ``BBOX_STD_DEV``);
            None: no scaling.
        max_log_scale: the clamp of ``log(dh)``, ``log(dw)`` before decoding
            (``MAX_LOG_SCALE``); None: no clamp (Matterport's ``apply_box_deltas``).
    """

    xp: Any = np  # the array namespace; the graph twin sets keras.ops

    def __init__(self, std_dev: Sequence[float] | np.ndarray | None = None,
                 max_log_scale: float | None = MAX_LOG_SCALE):
        if std_dev is not None:
            std_dev = np.asarray(std_dev, dtype=np.float64).reshape(-1)
            if std_dev.shape != (4,):
                raise ValueError(f"BoxCoder: std_dev needs 4 values (dy, dx, dh, dw), got "
                                 f"{std_dev.tolist()}")
        self.std_dev = std_dev
        self.max_log_scale = None if max_log_scale is None else float(max_log_scale)

    # --- array-type hooks (overridden by the graph twin) -------------------------------

    def _encode_inputs(self, boxes, targets):
        """Float arrays of the promoted dtype (integer boxes: float64)."""
        boxes, targets = np.asarray(boxes), np.asarray(targets)
        dtype = np.result_type(boxes, targets)
        if dtype.kind != "f":
            dtype = np.float64
        return boxes.astype(dtype, copy=False), targets.astype(dtype, copy=False)

    def _decode_inputs(self, boxes, deltas):
        """Float ``boxes`` and ``deltas`` in the dtype of ``boxes``."""
        boxes = np.asarray(boxes)
        if boxes.dtype.kind != "f":
            boxes = boxes.astype(np.float64)
        return boxes, np.asarray(deltas).astype(boxes.dtype, copy=False)

    def _std(self, like):
        """``std_dev`` in the dtype of ``like``."""
        return self.std_dev.astype(like.dtype)

    # --- the arithmetic, once ----------------------------------------------------------

    def encode(self, boxes, targets):
        """Deltas that move ``boxes`` onto ``targets``, divided by ``std_dev``.

        Args:
            boxes: ``[..., 4]`` reference boxes (anchors, ROIs).
            targets: ``[..., 4]`` target boxes, broadcastable to ``boxes``.

        Returns:
            ``[..., 4]`` deltas ``(dy, dx, log(dh), log(dw)) / std_dev``; 0 for degenerate
            pairs. NumPy: the promoted float dtype of the inputs (float64 for integers).
        """
        xp = self.xp
        boxes, targets = self._encode_inputs(boxes, targets)
        y1, x1, y2, x2 = _split4(boxes)
        gy1, gx1, gy2, gx2 = _split4(targets)
        height, width = y2 - y1, x2 - x1
        gt_height, gt_width = gy2 - gy1, gx2 - gx1
        ok = (height > 0) & (width > 0) & (gt_height > 0) & (gt_width > 0)
        # Sanitize before dividing/logging: where() alone would still leak NaN gradients.
        height = xp.where(ok, height, 1.0)
        width = xp.where(ok, width, 1.0)
        gt_height = xp.where(ok, gt_height, 1.0)
        gt_width = xp.where(ok, gt_width, 1.0)
        center_y = y1 + 0.5 * height
        center_x = x1 + 0.5 * width
        gt_center_y = gy1 + 0.5 * gt_height
        gt_center_x = gx1 + 0.5 * gt_width
        deltas = xp.stack([
            (gt_center_y - center_y) / height,
            (gt_center_x - center_x) / width,
            xp.log(gt_height / height),
            xp.log(gt_width / width),
        ], axis=-1)
        deltas = xp.where(xp.expand_dims(ok, -1), deltas, 0.0)
        if self.std_dev is not None:
            deltas = deltas / self._std(deltas)
        return deltas

    def clamp(self, deltas):
        """Clamp the ``(log dh, log dw)`` part of ``deltas [..., 4]`` at ``max_log_scale``.

        Args:
            deltas: ``[..., 4]`` unscaled deltas ``(dy, dx, log(dh), log(dw))``.

        Returns:
            ``[..., 4]`` deltas, log-scales at most ``max_log_scale`` (unchanged if None).
        """
        if self.max_log_scale is None:
            return deltas
        xp = self.xp
        return xp.concatenate(
            [deltas[..., :2], xp.minimum(deltas[..., 2:], self.max_log_scale)], axis=-1)

    def decode(self, boxes, deltas):
        """Boxes moved by ``deltas`` (the inverse of :meth:`encode`).

        Args:
            boxes: ``[..., 4]`` reference boxes.
            deltas: ``[..., 4]`` deltas as predicted (scaled by ``1 / std_dev``),
                broadcastable to ``boxes``.

        Returns:
            ``[..., 4]`` boxes in the dtype of ``boxes`` (float64 for integer boxes).
        """
        xp = self.xp
        boxes, deltas = self._decode_inputs(boxes, deltas)
        if self.std_dev is not None:
            deltas = deltas * self._std(deltas)
        deltas = self.clamp(deltas)
        y1, x1, y2, x2 = _split4(boxes)
        height = y2 - y1
        width = x2 - x1
        center_y = y1 + 0.5 * height + deltas[..., 0] * height
        center_x = x1 + 0.5 * width + deltas[..., 1] * width
        height = height * xp.exp(deltas[..., 2])
        width = width * xp.exp(deltas[..., 3])
        new_y1 = center_y - 0.5 * height
        new_x1 = center_x - 0.5 * width
        return xp.stack([new_y1, new_x1, new_y1 + height, new_x1 + width], axis=-1)

    def get_config(self) -> dict:
        """Plain values that rebuild this coder: ``type(coder)(**coder.get_config())``."""
        return {"std_dev": None if self.std_dev is None else self.std_dev.tolist(),
                "max_log_scale": self.max_log_scale}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(**{self.get_config()})"


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray, areas1: np.ndarray | None = None,
            areas2: np.ndarray | None = None) -> np.ndarray:
    """IoU of matching boxes, broadcasting: the one NumPy IoU.

    ``box_iou(a[:, None], b[None])`` is the ``[N, M]`` pairwise matrix; ``box_iou(box, boxes)``
    one box against many. Areas may be passed in where callers reuse them across calls.

    Args:
        boxes1: ``[..., 4]`` ``(y1, x1, y2, x2)``.
        boxes2: ``[..., 4]``, broadcastable against ``boxes1``.
        areas1, areas2: the boxes' areas ``[...]`` (computed when None).

    Returns:
        float64 IoU of the broadcast shape; 0 where the union has no area (never NaN).
    """
    boxes1, boxes2 = np.asarray(boxes1), np.asarray(boxes2)
    if areas1 is None:
        areas1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    if areas2 is None:
        areas2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    height = (np.minimum(boxes1[..., 2], boxes2[..., 2])
              - np.maximum(boxes1[..., 0], boxes2[..., 0]))
    width = (np.minimum(boxes1[..., 3], boxes2[..., 3])
             - np.maximum(boxes1[..., 1], boxes2[..., 1]))
    intersection = np.maximum(height, 0) * np.maximum(width, 0)
    union = np.asarray(areas1 + np.asarray(areas2) - intersection, dtype=np.float64)
    iou = np.zeros(union.shape)
    np.divide(intersection.astype(np.float64, copy=False), union, out=iou, where=union > 0)
    return iou


def pairwise_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """``[N, M]`` IoU of every box of ``boxes1 [N, 4]`` with every box of ``boxes2 [M, 4]``.

    Args:
        boxes1: ``[N, 4]``.
        boxes2: ``[M, 4]``.

    Returns:
        float64 ``[N, M]`` (zeros of that shape when either set is empty).
    """
    boxes1 = np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)
    boxes2 = np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)
    return box_iou(boxes1[:, None], boxes2[None])
