"""Anchor boxes: generation per pyramid level, the pyramid's shapes, and the anchors of an
image size (cached).

Anchors depend only on the (static) image shape and the Config, so they are computed with
NumPy once per shape; ``mrcnn.rpn.AnchorsLayer`` puts them in the graph as a constant (no
input, no Lambda, no variable) and the data pipeline matches ground truth against the same
cached array. NumPy only; Matterport's ``utils.generate_anchors`` and
``utils.generate_pyramid_anchors`` are re-exported from ``mrcnn.utils``.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from mrcnn.utils import norm_boxes


def generate_anchors(
    scales: float | Sequence[float],
    ratios: Sequence[float],
    shape: Sequence[int],
    feature_stride: int,
    anchor_stride: int,
) -> np.ndarray:
    """Anchors of one feature-map level.

    Ordering (the model's RPN outputs rely on it): feature-map positions row-major (y
    outer, x inner); at each position one anchor per (ratio, scale) pair, ratios outer.
    Anchor centres sit at ``position * feature_stride`` (Matterport's convention).

    Args:
        scales: anchor side length(s) in pixels, e.g. 32.
        ratios: width / height ratios, e.g. [0.5, 1, 2].
        shape: (height, width) of the feature map.
        feature_stride: image pixels per feature-map cell.
        anchor_stride: place anchors at every ``anchor_stride``-th cell.

    Returns:
        float [num_anchors, (y1, x1, y2, x2)] in image pixels.
    """
    scales_g, ratios_g = np.meshgrid(np.asarray(scales, dtype=np.float64).ravel(),
                                     np.asarray(ratios, dtype=np.float64).ravel())
    scales_g, ratios_g = scales_g.ravel(), ratios_g.ravel()  # ratio-major, scale-minor
    heights = scales_g / np.sqrt(ratios_g)
    widths = scales_g * np.sqrt(ratios_g)
    ys = np.arange(0, shape[0], anchor_stride) * feature_stride
    xs = np.arange(0, shape[1], anchor_stride) * feature_stride
    cy, cx = np.meshgrid(ys, xs, indexing="ij")  # [Ny, Nx], x varies fastest
    cy = cy.reshape(-1, 1).astype(np.float64)
    cx = cx.reshape(-1, 1).astype(np.float64)
    boxes = np.stack(
        [cy - 0.5 * heights, cx - 0.5 * widths, cy + 0.5 * heights, cx + 0.5 * widths],
        axis=-1,
    )  # [positions, anchors per position, 4]
    return boxes.reshape(-1, 4)


def generate_pyramid_anchors(
    scales: Sequence[float],
    ratios: Sequence[float],
    feature_shapes: Sequence[Sequence[int]],
    feature_strides: Sequence[int],
    anchor_stride: int,
) -> np.ndarray:
    """Anchors for all pyramid levels, concatenated level by level.

    Args:
        scales: one anchor scale per level, e.g. (32, 64, 128, 256, 512).
        ratios: width / height ratios shared by all levels.
        feature_shapes: [levels, (height, width)] feature-map shapes.
        feature_strides: one stride per level, e.g. (4, 8, 16, 32, 64).
        anchor_stride: see ``generate_anchors``.

    Returns:
        float [num_anchors, (y1, x1, y2, x2)] in image pixels; level 0 first, each level
        ordered as in ``generate_anchors``.
    """
    anchors = [
        generate_anchors(scales[i], ratios, feature_shapes[i], feature_strides[i], anchor_stride)
        for i in range(len(scales))
    ]
    return np.concatenate(anchors, axis=0)


def compute_backbone_shapes(config, image_shape) -> np.ndarray:
    """[height, width] of each pyramid level (P2..P6) for an input image shape.

    Args:
        config: a ``Config``.
        image_shape: (H, W[, C]) of the molded input image.

    Returns:
        int array [5, 2].
    """
    if callable(config.BACKBONE):
        return np.asarray(config.COMPUTE_BACKBONE_SHAPE(image_shape))
    return np.array([[int(np.ceil(image_shape[0] / stride)),
                      int(np.ceil(image_shape[1] / stride))]
                     for stride in config.BACKBONE_STRIDES])


@functools.lru_cache(maxsize=16)
def _anchors_cached(scales: tuple, ratios: tuple, strides: tuple, anchor_stride: int,
                    backbone_shapes: tuple, image_hw: tuple) -> tuple[np.ndarray, np.ndarray]:
    pixel = generate_pyramid_anchors(list(scales), list(ratios), np.array(backbone_shapes),
                                     list(strides), anchor_stride)
    normalized = norm_boxes(pixel, image_hw).astype(np.float32)
    pixel.setflags(write=False)
    normalized.setflags(write=False)
    return pixel, normalized


def pyramid_anchors(config, image_shape, normalized: bool = True) -> np.ndarray:
    """Anchor boxes of every pyramid level for an image shape, in the RPN's order.

    Args:
        config: a ``Config``.
        image_shape: (H, W[, C]) of the molded image.
        normalized: return normalized coordinates (what the graph uses) instead of pixels.

    Returns:
        float array [A, (y1, x1, y2, x2)] (read-only; copy before changing it).
    """
    hw = (int(image_shape[0]), int(image_shape[1]))
    shapes = compute_backbone_shapes(config, hw)
    pixel, norm = _anchors_cached(
        tuple(config.RPN_ANCHOR_SCALES), tuple(float(r) for r in config.RPN_ANCHOR_RATIOS),
        tuple(config.BACKBONE_STRIDES), int(config.RPN_ANCHOR_STRIDE),
        tuple(map(tuple, shapes.tolist())), hw)
    return norm if normalized else pixel
