"""ROI crop-and-resize in pure ``keras.ops``, and the multi-level (pyramid) ROI align.

``tf.image.crop_and_resize`` has no XLA kernel, so this gather-based version is used on every
backend; the TF kernel is only the test oracle. The sampling positions mirror the TF CPU
kernel operation for operation (same float32 expressions); the blend is the same bilinear
weights written as one weighted sum of the four corners (cheaper to differentiate than TF's
lerp form), so float32 results agree to rounding. One deliberate difference: a sample within 2^-18 * (H - 1) pixels outside
the image edge is clamped onto the edge instead of extrapolated (see ``_sample_coords``); TF
extrapolates it or not depending on float rounding.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

from keras import ops

SizeLike = Union[int, Sequence[int]]


def _pair(size: SizeLike) -> Tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _sample_coords(start, end, extent_minus_1, size: int):
    """Sample positions along one axis, as ``tf.image.crop_and_resize``.

    Args:
        start, end: ``[...]`` float32 normalized box edges (``end < start`` flips).
        extent_minus_1: ``[...]`` or scalar float32, ``H - 1`` of each box's image.
        size: python int, number of samples.

    Returns:
        ``(coords, inside)``: ``[..., size]`` float32 positions in pixels clamped to
        ``[0, H - 1]``, and a bool mask of samples inside the image (the others get the
        extrapolation value).
    """
    if size > 1:
        scale = (end - start) * extent_minus_1 / float(size - 1)
        steps = ops.arange(size, dtype="float32")
        coords = ops.expand_dims(start * extent_minus_1, -1) + steps * ops.expand_dims(scale, -1)
    else:
        coords = ops.expand_dims(0.5 * (start + end) * extent_minus_1, -1)
    limit = ops.expand_dims(ops.convert_to_tensor(extent_minus_1, "float32"), -1)
    # TF's kernel tests ``c < 0 || c > H - 1`` on the rounded float, so a sample that is
    # mathematically on the edge (box edge at 0 or 1, flipped boxes) lands either side
    # depending on rounding, and XLA's fused multiply-adds round differently from the C++
    # kernel. A band of ~1e-3 px at H=256 (2^-18 relative) counts as inside, clamped onto the
    # edge: the same answer eager, under XLA and on GPU. Elsewhere the test is TF's.
    tolerance = limit * (2.0**-18)
    inside = (coords >= -tolerance) & (coords <= limit + tolerance)
    return ops.clip(coords, 0.0, limit), inside


def _bilinear_crops(
    flat, base, heights, widths, boxes, crop_size: Tuple[int, int], extrapolation_value
):
    """Bilinear crops from a flattened stack of images with one gather.

    Args:
        flat: ``[P, C]`` pixels of all images, each image stored row-major.
        base: ``[...]`` int32, row of ``flat`` where each box's image starts.
        heights, widths: ``[...]`` int32 (or python ints), size of each box's image.
        boxes: ``[..., 4]`` float32 normalized ``(y1, x1, y2, x2)``.
        crop_size: ``(ch, cw)``.
        extrapolation_value: value for samples outside the image.

    Returns:
        ``[..., ch, cw, C]`` in ``flat``'s dtype.
    """
    crop_h, crop_w = crop_size
    dtype = flat.dtype
    heights_f = ops.cast(heights, "float32") - 1.0
    widths_f = ops.cast(widths, "float32") - 1.0
    in_y, inside_y = _sample_coords(boxes[..., 0], boxes[..., 2], heights_f, crop_h)
    in_x, inside_x = _sample_coords(boxes[..., 1], boxes[..., 3], widths_f, crop_w)

    # floor/ceil corners as the TF kernel; coords are clamped, so every index is legal.
    top, bottom = ops.floor(in_y), ops.ceil(in_y)
    left, right = ops.floor(in_x), ops.ceil(in_x)
    y_lerp = in_y - top
    x_lerp = in_x - left
    top, bottom = ops.cast(top, "int32"), ops.cast(bottom, "int32")
    left, right = ops.cast(left, "int32"), ops.cast(right, "int32")

    row_stride = ops.expand_dims(ops.cast(widths, "int32"), -1)  # [..., 1] (or [1])
    base = ops.expand_dims(ops.expand_dims(ops.cast(base, "int32"), -1), -1)  # [..., 1, 1]
    top_rows = ops.expand_dims(top * row_stride, -1)  # [..., ch, 1]
    bottom_rows = ops.expand_dims(bottom * row_stride, -1)
    left, right = ops.expand_dims(left, -2), ops.expand_dims(right, -2)  # [..., 1, cw]
    corners = ops.stack(
        [
            base + top_rows + left,
            base + top_rows + right,
            base + bottom_rows + left,
            base + bottom_rows + right,
        ]
    )  # [4, ..., ch, cw]
    # The one gather: all four corners of every sample of every box.
    pixels = ops.take(flat, corners, axis=0)  # [4, ..., ch, cw, C]

    # Blend as one weighted sum over the corner axis: the backward pass is then one multiply
    # and the gather's scatter. (The lerp form on slices of ``pixels`` costs four full-size
    # slice gradients plus ~10 crop-size elementwise ops: on a CPU it made the ROI aligns'
    # backward ~5x slower, 19 of a 113 s TF train-step profile.) Weights are computed in
    # float32 and cast for the blend, so fp16/bf16 maps stay fp16/bf16. Samples outside
    # the image get weight 0 (then the extrapolation value, when it is not 0).
    wy1 = ops.expand_dims(y_lerp, -1)  # [..., ch, 1]
    wx1 = ops.expand_dims(x_lerp, -2)  # [..., 1, cw]
    wy0, wx0 = 1.0 - wy1, 1.0 - wx1
    inside = ops.expand_dims(inside_y, -1) & ops.expand_dims(inside_x, -2)  # [..., ch, cw]
    weights = ops.stack([wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1])  # [4, ..., ch, cw]
    weights = ops.where(inside, weights, 0.0)
    crops = ops.sum(pixels * ops.cast(ops.expand_dims(weights, -1), dtype), axis=0)
    if extrapolation_value != 0:
        outside = ops.expand_dims(ops.logical_not(inside), -1)
        crops = ops.where(outside, ops.cast(extrapolation_value, dtype), crops)
    return crops


def crop_and_resize(
    image, boxes, box_indices, crop_size: SizeLike, extrapolation_value: float = 0.0
):
    """``tf.image.crop_and_resize(method="bilinear")`` in pure ``keras.ops``.

    Sample ``i`` of a box spans ``y = y1 * (H - 1) + i * (y2 - y1) * (H - 1) / (ch - 1)``
    (the box center when ``ch == 1``); samples outside ``[0, H - 1]`` take
    ``extrapolation_value``. Flipped boxes (``y1 > y2``) give flipped crops.

    Args:
        image: ``[B, H, W, C]``, static ``H``, ``W``, ``C``; any float dtype.
        boxes: ``[N, 4]`` normalized ``(y1, x1, y2, x2)``.
        box_indices: ``[N]`` int, the image of each box, in ``[0, B)``.
        crop_size: ``ch`` or ``(ch, cw)``.
        extrapolation_value: fill value for samples outside the image.

    Returns:
        ``[N, ch, cw, C]`` crops in the dtype of ``image`` (TF's kernel returns float32).
    """
    image = ops.convert_to_tensor(image)
    _, height, width, channels = image.shape
    flat = ops.reshape(image, (-1, channels))
    boxes = ops.cast(boxes, "float32")
    base = ops.cast(box_indices, "int32") * (height * width)
    return _bilinear_crops(flat, base, height, width, boxes, _pair(crop_size), extrapolation_value)


def roi_pyramid_levels(boxes, image_shape: Sequence[int], min_level: int = 2, max_level: int = 5):
    """Pyramid level of each box, Matterport's formula (FPN paper eq. 1).

    ``level = 4 + round(log2(sqrt(h * w) / (224 / sqrt(H * W))))`` clipped to
    ``[min_level, max_level]``, with ``h, w`` the normalized box size. Boxes of zero or
    negative area (zero padding) go to ``min_level``.

    Args:
        boxes: ``[..., 4]`` normalized ``(y1, x1, y2, x2)``.
        image_shape: ``(H, W)`` of the input image, python ints.
        min_level, max_level: level range of the pyramid.

    Returns:
        ``[...]`` int32 levels.
    """
    boxes = ops.cast(boxes, "float32")
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    positive = area > 0
    image_area = float(image_shape[0] * image_shape[1])
    # log(x) / log(2) and half-to-even round, as Matterport's log2_graph + tf.round.
    ratio = ops.sqrt(ops.where(positive, area, 1.0)) / (224.0 / math.sqrt(image_area))
    level = 4 + ops.cast(ops.round(ops.log(ratio) / math.log(2.0)), "int32")
    level = ops.where(positive, level, min_level)
    return ops.clip(level, min_level, max_level)


def multilevel_roi_align(
    feature_maps: Sequence,
    boxes,
    image_shape: Sequence[int],
    pool_size: SizeLike,
    min_level: int = 2,
):
    """Pyramid ROI align of Mask R-CNN (Matterport's ``PyramidROIAlign``), one gather.

    Each box is assigned a level with :func:`roi_pyramid_levels`, then cropped from that
    level with ``tf.image.crop_and_resize`` semantics (bilinear, normalized coordinates
    scaled by that level's ``Hl - 1``, ``Wl - 1``). The levels are flattened and concatenated
    once (TF Model Garden style) and every sample is gathered by its level offset, so there is
    no per-level mask or re-sort and the output order is the box order. Zero-padded boxes are
    level ``min_level`` crops of the degenerate box (the pixel at the origin); mask them
    downstream. Gradients flow to the feature maps, not to the boxes (as Matterport).

    Args:
        feature_maps: list of ``[B, Hl, Wl, C]`` for levels ``min_level, min_level + 1, ...``
            (P2..P5), static spatial shapes, one dtype.
        boxes: ``[B, N, 4]`` normalized ``(y1, x1, y2, x2)``.
        image_shape: ``(H, W)`` of the input image, python ints.
        pool_size: ``p`` or ``(ph, pw)``.
        min_level: level of ``feature_maps[0]``.

    Returns:
        ``[B, N, ph, pw, C]`` in the dtype of the feature maps.
    """
    feature_maps = [ops.convert_to_tensor(f) for f in feature_maps]
    channels = feature_maps[0].shape[-1]
    heights = [int(f.shape[1]) for f in feature_maps]
    widths = [int(f.shape[2]) for f in feature_maps]
    offsets = [0]
    for h, w in zip(heights, widths):
        offsets.append(offsets[-1] + h * w)
    total = offsets[-1]

    boxes = ops.cast(ops.stop_gradient(boxes), "float32")
    levels = roi_pyramid_levels(boxes, image_shape, min_level, min_level + len(feature_maps) - 1)
    level_index = levels - min_level  # [B, N]
    box_heights = ops.take(ops.convert_to_tensor(heights, "int32"), level_index)
    box_widths = ops.take(ops.convert_to_tensor(widths, "int32"), level_index)
    box_offsets = ops.take(ops.convert_to_tensor(offsets[:-1], "int32"), level_index)

    batch = ops.shape(boxes)[0]
    image_start = ops.expand_dims(ops.arange(batch, dtype="int32") * total, 1)  # [B, 1]
    base = image_start + box_offsets  # [B, N]

    # [B, sum(Hl*Wl), C] -> [B * sum, C]: the whole pyramid as one gatherable table.
    levels_flat = [
        ops.reshape(f, (-1, h * w, channels)) for f, h, w in zip(feature_maps, heights, widths)
    ]
    flat = ops.concatenate(levels_flat, axis=1)
    flat = ops.reshape(flat, (-1, channels))
    return _bilinear_crops(flat, base, box_heights, box_widths, boxes, _pair(pool_size), 0.0)
