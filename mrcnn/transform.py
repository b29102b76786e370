"""Image <-> model-input geometry: resize, pad, crop, mold, image meta, unmold, mask paste.

The one home of the host-side pre- and post-processing around the graph, side by side as
in torchvision's ``models/detection/transform.py``::

    image --resize_image--> resized + (window, scale, padding, crop)
          --mold_image----> float32 model input        (mean pixel subtracted)
          --compose_image_meta--> input_image_meta      (layout: META_LAYOUT)
    detections + mask-head output --unmold_detections--> boxes and full masks of the
          original image (paste_masks).

OpenCV does the resizing (``cv2.resize`` releases the GIL, so DataGenerator worker threads
scale with cores). Matterport's geometry is kept exactly: the scale, window, padding and
crop are computed as Matterport did. Pixel values are bilinear with half-pixel centres, as
``skimage.transform.resize(order=1, anti_aliasing=False)`` gave, except that results are
rounded rather than truncated and the outermost ring of an up-scaled image is not darkened
by skimage's border handling (mean absolute difference < 1 on uint8 images). Masks use
nearest neighbour with skimage's pixel-centre alignment, reproduced exactly by index
arrays.

Matterport's names stay importable where users know them: ``utils.resize_image``,
``utils.resize_mask``, ``utils.unmold_mask``, ``modellib.mold_image``,
``modellib.compose_image_meta``, ``modellib.parse_image_meta`` and the ``MaskRCNN``
methods ``mold_inputs``/``unmold_detections`` are thin wrappers over this module.

NumPy and OpenCV only (no Keras, TensorFlow or JAX import, no ``mrcnn.config`` import), so
``config`` can take the meta size from here.
"""

from __future__ import annotations

import functools
import mmap
from typing import Any, Sequence

import numpy as np

from mrcnn.dataset import as_model_image

############################################################
#  Image meta layout
############################################################

# The flat ``input_image_meta`` row, in order: (name, width). The last field takes the
# remaining NUM_CLASSES columns. compose/parse (NumPy and graph) all read this table.
META_LAYOUT: tuple[tuple[str, int | None], ...] = (
    ("image_id", 1),
    ("original_image_shape", 3),
    ("image_shape", 3),
    ("window", 4),
    ("scale", 1),
    ("active_class_ids", None),
)
# Columns before the active class ids.
META_FIXED_SIZE = sum(width for _, width in META_LAYOUT if width is not None)


def image_meta_size(num_classes: int) -> int:
    """Length of an image meta row (``Config.IMAGE_META_SIZE``).

    Args:
        num_classes: number of classes including background.

    Returns:
        META_FIXED_SIZE + num_classes.
    """
    return META_FIXED_SIZE + int(num_classes)


def _meta_slices() -> dict[str, slice | int]:
    """Column index (scalars) or slice (vectors) of each meta field."""
    out: dict[str, slice | int] = {}
    start = 0
    for name, width in META_LAYOUT:
        if width is None:
            out[name] = slice(start, None)
        elif width == 1:
            out[name] = start
        else:
            out[name] = slice(start, start + width)
        start += width or 0
    return out


META_SLICES = _meta_slices()


def compose_image_meta(
    image_id: int,
    original_image_shape: Sequence[int],
    image_shape: Sequence[int],
    window: Sequence[int],
    scale: float,
    active_class_ids: Sequence[int],
) -> np.ndarray:
    """Pack the attributes of an image into one flat array (the model's ``input_image_meta``).

    Args:
        image_id: internal image id in the dataset.
        original_image_shape: [H, W, C] before resizing or padding.
        image_shape: [H, W, C] of the image fed to the model (after resizing and padding).
        window: (y1, x1, y2, x2) in pixels of the real image inside the padded one.
        scale: scale factor applied to the original image.
        active_class_ids: [NUM_CLASSES] 1 for the classes of the image's source, else 0.
            Needed when training on several datasets whose classes differ.

    Returns:
        float64 array [image_meta_size(NUM_CLASSES)] (= config.IMAGE_META_SIZE).
    """
    values = dict(image_id=image_id, original_image_shape=original_image_shape,
                  image_shape=image_shape, window=window, scale=scale,
                  active_class_ids=active_class_ids)
    # float64 keeps large image ids and odd scales exact; the model input casts to float32.
    return np.concatenate([np.asarray(values[name], dtype=np.float64).ravel()
                           for name, _ in META_LAYOUT])


def parse_image_meta(meta: np.ndarray) -> dict[str, np.ndarray]:
    """Unpack image metadata made by ``compose_image_meta`` (NumPy version).

    Args:
        meta: [batch, IMAGE_META_SIZE] (a single [IMAGE_META_SIZE] row is accepted too and
            gives un-batched values).

    Returns:
        dict with ``image_id`` int32 [B], ``original_image_shape`` int32 [B, 3],
        ``image_shape`` int32 [B, 3], ``window`` int32 [B, 4] (y1, x1, y2, x2),
        ``scale`` float32 [B] and ``active_class_ids`` int32 [B, NUM_CLASSES].
    """
    meta = np.asarray(meta)
    single = meta.ndim == 1
    if single:
        meta = meta[np.newaxis]
    parts = parse_image_meta_graph(meta)
    # Round before the cast: a computed window such as 6.9999995 must become 7.
    out = {name: (value.astype(np.float32) if name == "scale"
                  else np.rint(value).astype(np.int32))
           for name, value in parts.items()}
    if single:
        out = {key: value[0] for key, value in out.items()}
    return out


def parse_image_meta_graph(meta: Any) -> dict[str, Any]:
    """Split image meta tensors [B, META] into their parts (any backend's tensors).

    Plain slicing, so it works on NumPy arrays and on TensorFlow, JAX or Torch tensors
    inside the graph.

    Args:
        meta: [B, META] float tensor.

    Returns:
        dict of image_id [B], original_image_shape [B, 3], image_shape [B, 3],
        window [B, 4] (pixels of the molded image), scale [B], active_class_ids [B, C].
    """
    return {name: meta[:, index] for name, index in META_SLICES.items()}


############################################################
#  Molding (mean pixel)
############################################################


def mold_image(images: np.ndarray, config: Any) -> np.ndarray:
    """Subtract the mean pixel: uint8 RGB images -> float32 model input.

    Args:
        images: [..., H, W, C] images (any numeric dtype).
        config: provides ``MEAN_PIXEL`` [C].

    Returns:
        float32 array of the same shape.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        out = np.empty(images.shape, np.float32)
        subtract_mean(images, config.MEAN_PIXEL, out)
        return out
    return images.astype(np.float32) - np.asarray(config.MEAN_PIXEL, np.float32)


def unmold_image(normalized_images: np.ndarray, config: Any) -> np.ndarray:
    """Inverse of ``mold_image``: add the mean pixel back and return uint8 images.

    Unlike Matterport's plain ``astype`` this rounds and clips, so that
    ``unmold_image(mold_image(x))`` gives ``x`` back exactly.

    Args:
        normalized_images: [..., H, W, C] molded images.
        config: provides ``MEAN_PIXEL`` [C].

    Returns:
        uint8 array of the same shape.
    """
    restored = np.asarray(normalized_images, np.float64) + np.asarray(config.MEAN_PIXEL)
    return np.clip(np.rint(restored), 0, 255).astype(np.uint8)


############################################################
#  Resizing
############################################################

# OpenCV 5 takes at most 128 channels per call (4.x: 512); wider arrays go in chunks.
_CV2_MAX_CHANNELS = 128
# dtypes cv2.resize interpolates bilinearly; others go through float64.
_CV2_LINEAR_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


def _cv2():
    import cv2  # lazy: keeps `import mrcnn.config` light

    return cv2


@functools.lru_cache(maxsize=4096)
def _edge_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fade of the first and last output pixels whose source lies beyond the input edge.

    When scaling up, the outermost output pixels sample up to half an input pixel beyond
    the edge. skimage (``mode="constant"``, what the weights were trained with) blends
    those samples with zeros; OpenCV repeats the edge pixel. Multiplying that thin band
    by ``1 - overshoot`` (per axis; bilinear is separable) gives skimage's values back.

    Returns:
        (head, tail): weights of the first ``len(head)`` and last ``len(tail)`` pixels.
    """
    src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    weights = 1.0 - np.clip(np.maximum(-src, src - (in_size - 1)), 0.0, 1.0)
    faded = np.flatnonzero(weights < 1.0)
    head = faded[faded < out_size // 2]
    tail = faded[faded >= out_size // 2]
    return weights[:head.shape[0]], weights[out_size - tail.shape[0]:]


def _fade_edges(image: np.ndarray, in_hw: Sequence[int]) -> None:
    """Apply ``_edge_weights`` in place to the border bands of an up-scaled image."""
    integer = np.issubdtype(image.dtype, np.integer)
    for axis in (0, 1):
        head, tail = _edge_weights(int(in_hw[axis]), image.shape[axis])
        for weights, index in ((head, slice(0, head.shape[0])),
                               (tail, slice(image.shape[axis] - tail.shape[0], None))):
            if not weights.shape[0]:
                continue
            band = image[index] if axis == 0 else image[:, index]
            shape = [1] * image.ndim
            shape[axis] = -1
            faded = band * weights.reshape(shape)
            band[...] = np.rint(faded) if integer else faded


def resize_bilinear(image: np.ndarray, out_hw: Sequence[int]) -> np.ndarray:
    """Bilinear resize with half-pixel centres and no anti-aliasing, as skimage's.

    ``cv2.resize(INTER_LINEAR)`` plus the zero-blended border of
    ``skimage.transform.resize(order=1, mode="constant", anti_aliasing=False)`` when
    scaling up (``_edge_weights``).

    Args:
        image: [H, W] or [H, W, C] array of any real dtype and any channel count.
        out_hw: (height, width) of the result, each >= 1.

    Returns:
        [out_h, out_w(, C)] array of the input dtype (integer results rounded; dtypes
        OpenCV cannot interpolate go through float64 and are cast back, truncating).
    """
    cv2 = _cv2()
    image = np.asarray(image)
    in_hw = image.shape[:2]
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    dtype = image.dtype
    work = image if dtype in _CV2_LINEAR_DTYPES else image.astype(np.float64)
    if image.ndim == 2:
        out = cv2.resize(work, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    else:
        channels = image.shape[2]
        out = np.empty((out_h, out_w, channels), dtype=work.dtype)
        for start in range(0, channels, _CV2_MAX_CHANNELS):
            chunk = np.ascontiguousarray(work[:, :, start:start + _CV2_MAX_CHANNELS])
            resized = cv2.resize(chunk, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
            # cv2 drops a trailing channel axis of 1.
            out[:, :, start:start + chunk.shape[2]] = resized.reshape(out_h, out_w, -1)
    _fade_edges(out, in_hw)
    return out.astype(dtype, copy=False)


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output pixel for nearest-neighbour resampling.

    Pixel centres are aligned the way ``skimage.transform.resize`` aligns them, so a
    resized mask lands exactly where the resized image content is.

    Args:
        in_size: input length (pixels).
        out_size: output length (pixels); 0 gives an empty index array.

    Returns:
        int64 [out_size] indices into the input axis.
    """
    if out_size <= 0:
        return np.zeros([0], dtype=np.int64)
    centers = (np.arange(out_size) + 0.5) * (in_size / out_size)
    return np.clip(np.floor(centers).astype(np.int64), 0, max(in_size - 1, 0))


def _resized_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """Matterport's resized size, at least one pixel per side (very elongated images)."""
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_image(
    image: np.ndarray,
    min_dim: int | None = None,
    max_dim: int | None = None,
    min_scale: float | None = None,
    mode: str = "square",
    rng: Any = None,
) -> tuple[np.ndarray, tuple[int, int, int, int], float, list[tuple[int, int]], tuple | None]:
    """Resize an image keeping its aspect ratio, then pad or crop it as ``mode`` says.

    The scale is ``max(1, min_dim / min(h, w))`` (images are only scaled up to reach
    ``min_dim``), raised to ``min_scale`` if that is larger; in "square" mode it is then
    lowered so that the long side does not exceed ``max_dim``. The resized size is
    ``round(h * scale), round(w * scale)``, at least 1.

    Modes:
        "none": no resizing or padding; the image is returned as is.
        "square": resize, then zero-pad (centred) to [max_dim, max_dim].
        "pad64": resize, then zero-pad (centred) height and width up to multiples of 64.
            ``min_dim`` must be a multiple of 64.
        "crop": resize, then take a random [min_dim, min_dim] crop. The position comes from
            ``rng`` (default ``np.random``, so seed NumPy to reproduce it). Training-time
            only.

    Args:
        image: [height, width, channels] (or [height, width]) array.
        min_dim: minimum size of the short side (see above).
        max_dim: maximum size of the long side ("square" mode).
        min_scale: lower bound on the scale.
        mode: one of "none", "square", "pad64", "crop".
        rng: ``np.random.RandomState`` for the crop position (default: ``np.random``).

    Returns:
        image: the resized image, same dtype as the input (bilinear, ``cv2.INTER_LINEAR``;
            integer results rounded).
        window: (y1, x1, y2, x2) of the image inside the padded result (exclusive end).
        scale: the scale factor applied.
        padding: [(top, bottom), (left, right), (0, 0)] padding added.
        crop: (y, x, h, w) of the crop in the resized image for "crop" mode, else None.
    """
    image = np.asarray(image)
    h, w = image.shape[:2]
    window = (0, 0, h, w)
    scale: float = 1
    padding = [(0, 0), (0, 0), (0, 0)]
    crop = None

    if mode not in ("none", "square", "pad64", "crop"):
        raise ValueError(f"Mode {mode!r} not supported; use 'none', 'square', 'pad64' or 'crop'")
    if mode == "none":
        return image, window, scale, padding, crop
    if mode == "square" and not max_dim:
        raise ValueError("resize_image: 'square' mode needs max_dim")
    if mode == "crop" and not min_dim:
        raise ValueError("resize_image: 'crop' mode needs min_dim")
    if mode == "pad64" and (not min_dim or min_dim % 64 != 0):
        raise ValueError(
            f"resize_image: 'pad64' mode needs min_dim to be a multiple of 64, got {min_dim}"
        )

    if min_dim:
        scale = max(1, min_dim / min(h, w))
    if min_scale and scale < min_scale:
        scale = min_scale
    if max_dim and mode == "square":
        image_max = max(h, w)
        if round(image_max * scale) > max_dim:
            scale = max_dim / image_max

    if scale != 1:
        image = resize_bilinear(image, _resized_size(h, w, scale))

    h, w = image.shape[:2]
    if mode in ("square", "pad64"):
        if mode == "square":
            pad_h, pad_w = max_dim - h, max_dim - w
        else:
            pad_h, pad_w = (-h) % 64, (-w) % 64
        top_pad, left_pad = pad_h // 2, pad_w // 2
        padding = [(top_pad, pad_h - top_pad), (left_pad, pad_w - left_pad), (0, 0)]
        # One allocation and one copy (np.pad does the same work in several passes).
        padded = np.zeros((h + pad_h, w + pad_w) + image.shape[2:], dtype=image.dtype)
        padded[top_pad:top_pad + h, left_pad:left_pad + w] = image
        image = padded
        window = (top_pad, left_pad, h + top_pad, w + left_pad)
    else:  # crop
        if h < min_dim or w < min_dim:
            raise ValueError(
                f"resize_image: resized image {h}x{w} is smaller than the crop size {min_dim}"
            )
        random = np.random if rng is None else rng
        y = int(random.randint(0, h - min_dim + 1))
        x = int(random.randint(0, w - min_dim + 1))
        crop = (y, x, min_dim, min_dim)
        image = np.ascontiguousarray(image[y : y + min_dim, x : x + min_dim])
        window = (0, 0, min_dim, min_dim)
    return image, window, scale, padding, crop


def any_over_width(mask: np.ndarray) -> np.ndarray:
    """``mask.any(axis=1)`` for [H, W, N] masks, 5-15x faster when N is small.

    NumPy reduces a middle axis one short N-vector at a time; folding the width in halves
    ORs long contiguous [H, W/2 * N] blocks instead.

    Args:
        mask: bool [H, W, N].

    Returns:
        bool [H, N]: which rows contain each instance.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.shape[1] == 0:
        return np.zeros((mask.shape[0],) + mask.shape[2:], dtype=bool)
    acc = mask
    while acc.shape[1] > 1:
        half = acc.shape[1] // 2
        folded = acc[:, :half] | acc[:, half:2 * half]
        if acc.shape[1] % 2:
            folded[:, 0] |= acc[:, -1]
        acc = folded
    return np.array(acc[:, 0])


def resize_mask(
    mask: np.ndarray,
    scale: float,
    padding: Sequence[tuple[int, int]],
    crop: tuple | None = None,
) -> np.ndarray:
    """Apply ``resize_image``'s geometry (scale, then crop or pad) to masks.

    Nearest neighbour with skimage's pixel-centre alignment (``nearest_indices``); each
    instance is gathered over its own box only.

    Args:
        mask: [height, width, N] masks (of the original image).
        scale: the ``scale`` returned by ``resize_image``.
        padding: the ``padding`` returned by ``resize_image``.
        crop: the ``crop`` returned by ``resize_image`` ("crop" mode), else None.

    Returns:
        bool masks with the same height and width as the resized image.
    """
    mask = np.asarray(mask).astype(bool, copy=False)
    if mask.ndim == 2:
        return resize_mask(mask[:, :, None], scale, padding, crop)[:, :, 0]
    return _resize_mask(mask, scale, padding, crop, drop_empty=False)[0]


def resize_mask_nonempty(
    mask: np.ndarray,
    scale: float,
    padding: Sequence[tuple[int, int]],
    crop: tuple | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``resize_mask`` without the instances that end up empty (e.g. cropped away).

    Cheaper than resizing all and dropping channels afterwards (selecting channels of a
    [H, W, N] array moves every pixel).

    Args:
        mask: [height, width, N] masks (of the original image).
        scale, padding, crop: as returned by ``resize_image``.

    Returns:
        masks: bool [h, w, K], the K instances with pixels left, in order.
        kept: int64 [K] their indices in the input.
    """
    return _resize_mask(np.asarray(mask).astype(bool, copy=False), scale, padding, crop,
                        drop_empty=True)


def _resize_mask(mask: np.ndarray, scale: float, padding: Sequence[tuple[int, int]],
                 crop: tuple | None, drop_empty: bool) -> tuple[np.ndarray, np.ndarray]:
    """Body of ``resize_mask`` / ``resize_mask_nonempty`` for [H, W, N] bool masks."""
    h, w, count = mask.shape
    out_h, out_w = _resized_size(h, w, scale)
    rows, cols = nearest_indices(h, out_h), nearest_indices(w, out_w)
    if crop is not None:
        y, x, ch, cw = crop
        rows, cols = rows[y : y + ch], cols[x : x + cw]
        top = left = 0
        out_shape = (rows.shape[0], cols.shape[0])
    else:
        pad = [tuple(p) for p in padding][:2]
        (top, bottom), (left, right) = pad + [(0, 0)] * (2 - len(pad))
        out_shape = (out_h + top + bottom, out_w + left + right)
    if not count:
        return np.zeros(out_shape + (0,), dtype=bool), np.zeros([0], np.int64)
    # Instance by instance over its own box: instances are small next to the image, so
    # gathering only their boxes beats one gather of the whole [H, W, N] array (which
    # moves N bytes per pixel) by 5-10x, and the zeros of the result are never touched.
    row_any, col_any = any_over_width(mask), mask.any(axis=0)  # [h, N], [w, N]
    present = row_any.any(axis=0)
    first_row, last_row = row_any.argmax(axis=0), h - row_any[::-1].argmax(axis=0)
    first_col, last_col = col_any.argmax(axis=0), w - col_any[::-1].argmax(axis=0)
    # Output pixels whose source lies in the box (rows/cols are sorted).
    oy1, oy2 = np.searchsorted(rows, first_row), np.searchsorted(rows, last_row)
    ox1, ox2 = np.searchsorted(cols, first_col), np.searchsorted(cols, last_col)
    blocks = {}
    for i in np.flatnonzero(present & (oy2 > oy1) & (ox2 > ox1)):
        block = mask[np.ix_(rows[oy1[i]:oy2[i]], cols[ox1[i]:ox2[i]], [i])][:, :, 0]
        if block.any() or not drop_empty:
            blocks[i] = block
    kept = np.fromiter(blocks, np.int64, len(blocks)) if drop_empty else np.arange(count)
    out = np.zeros(out_shape + (kept.shape[0],), dtype=bool)
    for k, i in enumerate(kept):
        if i in blocks:
            out[top + oy1[i]:top + oy2[i], left + ox1[i]:left + ox2[i], k] = blocks[i]
    return out, kept


############################################################
#  Mask head output <-> full masks
############################################################


def mold_mask(mask: np.ndarray, mask_shape: Sequence[int]) -> np.ndarray:
    """Resize full masks to ``mask_shape`` (bilinear, thresholded at 0.5).

    Args:
        mask: [height, width] or [height, width, N] masks.
        mask_shape: (height, width) of the result, e.g. config.MASK_SHAPE.

    Returns:
        bool [mask_h, mask_w] or [mask_h, mask_w, N].
    """
    mask = np.asarray(mask)
    shape = tuple(int(s) for s in mask_shape[:2])
    return resize_bilinear(mask.astype(np.float32), shape) >= 0.5


def _zeros_untouched(shape: Sequence[int]) -> np.ndarray:
    """bool zeros whose pages cost nothing until written (anonymous mmap when large).

    ``np.zeros`` may come from malloc's heap (glibc raises its mmap threshold up to
    32 MiB as programs run) and then memsets every byte: 5 ms for 100 masks of a
    640x480 image, of which the boxes cover a few percent.
    """
    size = int(np.prod(shape))
    if size < (4 << 20):
        return np.zeros(shape, dtype=bool)
    return np.frombuffer(mmap.mmap(-1, size), dtype=bool).reshape(shape)


def paste_masks(masks: np.ndarray, boxes: np.ndarray, image_shape: Sequence[int],
                threshold: float = 0.5) -> np.ndarray:
    """Paste mask-head outputs into full-image masks, one ``cv2.warpAffine`` per instance.

    Each mask is resampled bilinearly onto its box with half-pixel centres and a zero
    border (what ``skimage.transform.resize(mode="constant")`` gave for integer boxes),
    straight into the part of the box inside the image, then thresholded. Boxes may have
    fractional coordinates (detectron2's sub-pixel paste): every pixel whose centre falls
    in the box samples the mask where that centre lies, so a box is not first rounded to
    whole pixels, which on objects a dozen pixels across costs mask IoU.

    Args:
        masks: [N, mask_h, mask_w] float masks in 0..1.
        boxes: [N, (y1, x1, y2, x2)] boxes in image pixels (y2, x2 exclusive; integer or
            fractional; they may cross the image border).
        image_shape: shape of the image; the first two entries are used.
        threshold: a pixel is in the mask when its resampled value is >= threshold.

    Returns:
        bool [height, width, N] (a view of an [N, height, width] array: pages outside the
        boxes are never written, so large images with many detections stay cheap). Empty
        boxes give empty masks; parts of a box outside the image are dropped.
    """
    cv2 = _cv2()
    height, width = int(image_shape[0]), int(image_shape[1])
    masks = np.asarray(masks, dtype=np.float32)
    boxes = np.asarray(boxes).reshape(-1, 4).astype(np.float64)
    full = _zeros_untouched((boxes.shape[0], height, width))
    if not boxes.shape[0]:
        return np.moveaxis(full, 0, -1)
    mask_h, mask_w = masks.shape[1:3]
    # The pixels the box touches (equal to the box for integer boxes), inside the image.
    regions = np.concatenate([np.floor(boxes[:, :2]), np.ceil(boxes[:, 2:])], axis=1)
    regions = np.clip(regions, 0, [height, width, height, width]).astype(np.int64)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    for i, ((y1, x1, y2, x2), (ty1, tx1, ty2, tx2)) in enumerate(
            zip(boxes.tolist(), regions.tolist())):
        if y2 <= y1 or x2 <= x1 or ty2 <= ty1 or tx2 <= tx1:
            continue
        # Source pixel of output pixel v of the region: (v + t1 - b1 + 0.5) / s - 0.5.
        sy, sx = (y2 - y1) / mask_h, (x2 - x1) / mask_w
        matrix = np.array([[1 / sx, 0, (tx1 - x1 + 0.5) / sx - 0.5],
                           [0, 1 / sy, (ty1 - y1 + 0.5) / sy - 0.5]])
        small = cv2.warpAffine(masks[i], matrix, (tx2 - tx1, ty2 - ty1), flags=flags,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        full[i, ty1:ty2, tx1:tx2] = small >= threshold
    return np.moveaxis(full, 0, -1)


def unmold_mask(mask: np.ndarray, bbox: Sequence[float], image_shape: Sequence[int]) -> np.ndarray:
    """Turn one mask-head output into a full-image mask.

    Args:
        mask: [mask_h, mask_w] float mask in 0..1 (one class channel of the mask head).
        bbox: (y1, x1, y2, x2) box of the instance in the image: integer pixels
            (Matterport), or fractional ones for a sub-pixel paste (``paste_masks``).
        image_shape: shape of the image; the first two entries are used.

    Returns:
        bool [height, width]: the mask resized to the box (bilinear) and thresholded at
        0.5. The parts of the box outside the image are dropped.
    """
    bbox = np.asarray(bbox[:4], dtype=np.float64)
    return np.ascontiguousarray(paste_masks(np.asarray(mask)[None], bbox[None],
                                            image_shape)[:, :, 0])


############################################################
#  Inference: images in, detections out
############################################################


def subtract_mean(image: np.ndarray, mean_pixel: Sequence[float], out: np.ndarray) -> None:
    """``out[...] = image - mean_pixel`` in float32 (``mold_image`` into a given buffer).

    ``cv2.subtract`` converts and subtracts in one pass, 7x faster than NumPy's mixed-type
    subtraction; NumPy serves what OpenCV cannot take (more than 4 channels, other
    dtypes).

    Args:
        image: [H, W, C] image.
        mean_pixel: [C] values to subtract (config.MEAN_PIXEL).
        out: float32 [H, W, C] destination (may be a view into a batch).
    """
    mean = np.asarray(mean_pixel, np.float32).reshape(-1)
    channels = image.shape[2] if image.ndim == 3 else 1
    if channels <= 4 and image.dtype in (np.uint8, np.uint16, np.int16, np.float32):
        cv2 = _cv2()
        scalar = tuple(float(v) for v in np.broadcast_to(mean, (channels,))) + (0.0,) * (
            4 - channels)
        result = cv2.subtract(image, scalar, dst=out, dtype=cv2.CV_32F)
        if result is not out:  # OpenCV could not write in place (e.g. an odd layout)
            out[...] = result.reshape(out.shape)
        return
    np.subtract(image, mean, out=out, casting="unsafe")


def resize_inputs(images: Sequence[np.ndarray], config: Any
                  ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Resize images for inference, each as it would be alone (not molded yet).

    Args:
        images: list of [H, W, C] images.
        config: provides IMAGE_MIN_DIM, IMAGE_MAX_DIM, IMAGE_MIN_SCALE, IMAGE_RESIZE_MODE,
            IMAGE_CHANNEL_COUNT and NUM_CLASSES.

    Returns:
        resized: list of [h_i, w_i, C] images (``resize_image``'s output).
        metas: float64 [N, IMAGE_META_SIZE]; each image_shape is that image's molded shape,
            its size rounded up to multiples of 64 (the backbone needs them; "none" mode
            pads at the bottom/right).
        windows: int [N, 4] (y1, x1, y2, x2) of each image in its molded image.

    Images are checked and their pixels converted to uint8 as for training
    (``dataset.as_model_image``: floats in [0, 1] x 255, uint16 / 65535 x 255, ...).

    Raises:
        InputError: naming the image's index: not [H, W, IMAGE_CHANNEL_COUNT], empty, not
            numbers, or NaN/inf pixels.
    """
    resized, metas, windows = [], [], []
    for index, image in enumerate(images):
        image = as_model_image(image, f"image {index}", config.IMAGE_CHANNEL_COUNT)
        out, window, scale, _padding, _crop = resize_image(
            image, min_dim=config.IMAGE_MIN_DIM, min_scale=config.IMAGE_MIN_SCALE,
            max_dim=config.IMAGE_MAX_DIM, mode=config.IMAGE_RESIZE_MODE)
        h, w = out.shape[:2]
        molded_shape = (-(-h // 64) * 64, -(-w // 64) * 64, out.shape[2])
        resized.append(out)
        windows.append(window)
        metas.append(compose_image_meta(0, image.shape, molded_shape, window, scale,
                                        np.zeros([config.NUM_CLASSES], dtype=np.int32)))
    if not resized:
        return [], np.zeros([0, image_meta_size(config.NUM_CLASSES)]), np.zeros([0, 4], int)
    return resized, np.stack(metas), np.asarray(windows)


def mold_batch(resized: Sequence[np.ndarray], shape: Sequence[int], config: Any) -> np.ndarray:
    """Mold resized images into one zero-padded float32 batch (padding bottom/right).

    Args:
        resized: [h_i, w_i, C] images no larger than ``shape``.
        shape: (H, W) of the batch.
        config: provides MEAN_PIXEL.

    Returns:
        float32 [N, H, W, C].
    """
    height, width = int(shape[0]), int(shape[1])
    channels = resized[0].shape[2]
    batch = np.empty((len(resized), height, width, channels), np.float32)
    for i, image in enumerate(resized):
        h, w = image.shape[:2]
        subtract_mean(image, config.MEAN_PIXEL, batch[i, :h, :w])
        batch[i, h:] = 0
        batch[i, :h, w:] = 0
    return batch


def mold_inputs(images: Sequence[np.ndarray], config: Any
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize and mold images into one batch (Matterport's ``MaskRCNN.mold_inputs``).

    Images of different molded sizes ("pad64" / "none" modes) are zero-padded at the
    bottom/right to the largest one, and their metas give that shape. To detect each
    image as it is detected alone, run each molded shape as its own batch instead
    (``resize_inputs``, ``group_by_shape``, ``mold_batch``: what ``detect`` does).

    Args:
        images: list of [H, W, C] images.
        config: the inference ``Config``.

    Returns:
        molded_images: float32 [N, H, W, C].
        image_metas: float64 [N, IMAGE_META_SIZE].
        windows: int [N, 4].
    """
    resized, metas, windows = resize_inputs(images, config)
    shapes = metas[:, META_SLICES["image_shape"]]
    shape = shapes.max(axis=0)
    metas[:, META_SLICES["image_shape"]] = shape
    return mold_batch(resized, shape, config), metas, windows


def group_by_shape(shapes: Sequence[Sequence[int]]) -> list[list[int]]:
    """Indices of equal shapes, grouped, in order of first appearance.

    Args:
        shapes: one shape per image (e.g. the image_shape column of the metas).

    Returns:
        list of index lists covering range(len(shapes)).
    """
    groups: dict[tuple, list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(tuple(int(v) for v in shape), []).append(i)
    return list(groups.values())


def unmold_detections(
    detections: np.ndarray,
    mrcnn_mask: np.ndarray,
    original_image_shape: Sequence[int],
    image_shape: Sequence[int],
    window: Sequence[int],
    subpixel: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Convert one image's padded detections to original-image boxes and full masks.

    Args:
        detections: [D, (y1, x1, y2, x2, class_id, score)] normalized to the molded image;
            zero class ids mark padding (the first one ends the list).
        mrcnn_mask: [D, h, w, num_classes] mask-head output.
        original_image_shape: [H, W, C] before resizing.
        image_shape: [h, w, C] of the molded image.
        window: [4] pixel window of the image inside the molded image.
        subpixel: paste each mask onto its box before rounding (``Config.MASK_PASTE =
            "subpixel"``); False pastes onto the rounded box, as Matterport did
            ("integer"). The boxes returned are rounded either way.

    Returns:
        boxes [N, 4] int32 pixels, class_ids [N] int32, scores [N], masks bool [H, W, N].
        Boxes of zero area (after rounding) are dropped.
    """
    detections = np.asarray(detections)
    zero_ix = np.flatnonzero(detections[:, 4] == 0)
    n = zero_ix[0] if zero_ix.shape[0] > 0 else detections.shape[0]
    boxes = detections[:n, :4]
    class_ids = detections[:n, 4].astype(np.int32)
    scores = detections[:n, 5]
    masks = np.asarray(mrcnn_mask)[np.arange(n), :, :, class_ids]

    # Boxes are normalized to the molded image: map them to the window, then to the
    # original image (utils.norm_boxes / denorm_boxes conventions).
    # Same float32/float64 steps as Matterport's norm_boxes -> shift/scale -> denorm_boxes,
    # so boxes round identically.
    h, w = float(image_shape[0]), float(image_shape[1])
    window_n = ((np.asarray(window, np.float64) - [0, 0, 1, 1])
                / [h - 1, w - 1, h - 1, w - 1]).astype(np.float32)
    shift = window_n[[0, 1, 0, 1]]
    extent = (window_n[2:] - window_n[:2])[[0, 1, 0, 1]]
    oh, ow = float(original_image_shape[0]), float(original_image_shape[1])
    boxes = (boxes - shift) / extent
    exact = boxes * np.array([oh - 1, ow - 1, oh - 1, ow - 1]) + np.array([0.0, 0.0, 1.0, 1.0])
    boxes = np.around(exact).astype(np.int32)

    keep = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0
    boxes, class_ids, scores, masks = boxes[keep], class_ids[keep], scores[keep], masks[keep]
    full_masks = paste_masks(masks, exact[keep] if subpixel else boxes, original_image_shape)
    return boxes, class_ids, scores, full_masks
