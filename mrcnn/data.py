"""Training data pipeline: image metadata, ground truth, RPN targets and the ``PyDataset``.

How one training example is made (``DataGenerator.load_batch``)::

    Dataset.load_image / load_mask
      -> load_image_gt: check, resize (Config.IMAGE_RESIZE_MODE), augment (albumentations),
         drop vanished instances, cap at MAX_GT_INSTANCES, pad to IMAGE_SHAPE, boxes,
         mini masks, image meta
      -> build_rpn_targets: anchor labels and box deltas for the RPN
      -> molded, zero-padded arrays in the order of the training model's inputs.

Names, signatures and semantics follow Matterport's ``mrcnn/model.py`` (``load_image_gt``,
``build_rpn_targets``, ``data_generator``, ``compose_image_meta``, ...), so notebooks that
call them through ``import mrcnn.model as modellib`` keep working. Everything here is
NumPy; Keras is imported only for ``keras.utils.PyDataset``, so the module works with any
Keras backend (TensorFlow, JAX, PyTorch).

Randomness: ``resize_image``'s crop, the MAX_GT_INSTANCES subset, the RPN anchor sampling
and the random ROIs draw from ``np.random`` (seed it to reproduce them, as with
Matterport); the epoch order of ``DataGenerator`` comes from its own seeded generator;
albumentations transforms use their own generator (``A.Compose(..., seed=...)``).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from typing import Any, Callable, Iterator, Sequence

import keras
import numpy as np

from mrcnn import utils
from mrcnn.anchors import compute_backbone_shapes, pyramid_anchors

# albumentations 2.x checks PyPI for a newer version on import. Training machines are often
# offline, so opt out unless the user decided otherwise. Set here (not when augmenting)
# because users import albumentations themselves to build their transforms.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

logger = logging.getLogger(__name__)

# RPN anchor labels (Matterport's convention).
POSITIVE, NEGATIVE, NEUTRAL = 1, -1, 0
RPN_POSITIVE_IOU = 0.7
RPN_NEGATIVE_IOU = 0.3
# Anchors that overlap a crowd box by at least this IoU are never negatives.
CROWD_IOU = 0.001
# IoU that splits sampled ROIs into foreground and background (build_detection_targets).
ROI_FOREGROUND_IOU = 0.5


############################################################
#  Image metadata and molding
############################################################


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
        float64 array [1 + 3 + 3 + 4 + 1 + NUM_CLASSES] (= config.IMAGE_META_SIZE).
    """
    parts = [
        [image_id],
        list(original_image_shape),
        list(image_shape),
        list(window),
        [scale],
        list(active_class_ids),
    ]
    # float64 keeps large image ids and odd scales exact; the model input casts to float32.
    return np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in parts])


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

    def ints(values: np.ndarray) -> np.ndarray:
        # Round before the cast: a computed window such as 6.9999995 must become 7.
        return np.rint(values).astype(np.int32)

    out = {
        "image_id": ints(meta[:, 0]),
        "original_image_shape": ints(meta[:, 1:4]),
        "image_shape": ints(meta[:, 4:7]),
        "window": ints(meta[:, 7:11]),
        "scale": meta[:, 11].astype(np.float32),
        "active_class_ids": ints(meta[:, 12:]),
    }
    if single:
        out = {key: value[0] for key, value in out.items()}
    return out


def mold_image(images: np.ndarray, config: Any) -> np.ndarray:
    """Subtract the mean pixel: uint8 RGB images -> float32 model input.

    Args:
        images: [..., H, W, C] images (any numeric dtype).
        config: provides ``MEAN_PIXEL`` [C].

    Returns:
        float32 array of the same shape.
    """
    return np.asarray(images).astype(np.float32) - np.asarray(config.MEAN_PIXEL, np.float32)


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
#  Ground truth of one image
############################################################


def describe_image(dataset: Any, image_id: int) -> str:
    """Name an image for error messages: internal id plus its source and source id."""
    try:
        info = dataset.image_info[image_id]
        return (f"image_id={image_id} (source {info.get('source')!r}, "
                f"id {info.get('id')!r})")
    except Exception:  # the id itself may be what is broken
        return f"image_id={image_id!r}"


def _transform_name(transform: Any) -> str:
    """Short name of an albumentations transform, e.g. ``Compose([HorizontalFlip, Rotate])``."""
    children = getattr(transform, "transforms", None)
    if children is not None:
        try:
            inner = ", ".join(_transform_name(t) for t in children)
            return f"{type(transform).__name__}([{inner}])"
        except TypeError:
            pass
    return type(transform).__name__


def _validate_mask(dataset: Any, image_id: int, image: np.ndarray, mask: np.ndarray,
                   class_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check ``load_mask``'s output against the image; bool [H, W, N] and int32 [N] out."""
    check = getattr(utils, "check_mask", None)
    if check is not None:
        return check(mask, class_ids, image_id, image.shape,
                     num_classes=getattr(dataset, "num_classes", None))
    # Fallback when utils has no validator: the few checks the pipeline relies on.
    mask, class_ids = np.asarray(mask), np.asarray(class_ids).astype(np.int32).reshape(-1)
    if mask.ndim != 3 or mask.shape[-1] != class_ids.shape[0]:
        raise ValueError(f"load_mask(image_id={image_id!r}): expected masks [H, W, N] and "
                         f"class_ids [N], got {mask.shape} and {class_ids.shape}")
    if mask.shape[-1] == 0:
        return np.zeros(image.shape[:2] + (0,), bool), class_ids
    if mask.shape[:2] != image.shape[:2]:
        raise ValueError(f"load_mask(image_id={image_id!r}): mask size {mask.shape[:2]} "
                         f"differs from the image size {image.shape[:2]}")
    return mask.astype(bool), class_ids


def _apply_augmentation(augmentation: Callable, image: np.ndarray, mask: np.ndarray,
                        where: str) -> tuple[np.ndarray, np.ndarray]:
    """Run an albumentations transform on the image and its instance masks together.

    Masks go in as ``masks`` [N, H, W] (one array per instance), so each instance keeps its
    own channel, geometric transforms move them with the image and pixel-level transforms
    leave them alone.
    """
    name = _transform_name(augmentation)
    count = mask.shape[-1]
    data = {"image": image}
    if count:
        # albumentations cannot stack an empty mask list, so zero instances pass no masks.
        data["masks"] = np.ascontiguousarray(np.moveaxis(mask, -1, 0).astype(np.uint8))
    result = augmentation(**data)
    if not isinstance(result, dict) or "image" not in result:
        raise TypeError(f"augmentation {name} must be an albumentations transform: called as "
                        f"transform(image=..., masks=...) it must return a dict with 'image', "
                        f"got {type(result).__name__}")
    new_image = np.asarray(result["image"])
    if new_image.shape != image.shape:
        raise ValueError(
            f"{where}: augmentation {name} changed the image shape from {image.shape} to "
            f"{new_image.shape}. The model's input shape is fixed by the Config, so the "
            "transform must keep it (crop and resize back, e.g. A.RandomSizedCrop with "
            "size=(height, width), or let IMAGE_RESIZE_MODE='crop' do the cropping).")
    if new_image.dtype != image.dtype:
        if image.dtype == np.uint8:
            new_image = np.clip(np.rint(new_image), 0, 255)
        new_image = new_image.astype(image.dtype)
    if not count:
        return new_image, mask
    new_masks = np.asarray(result.get("masks"))
    if new_masks.shape != (count,) + image.shape[:2]:
        raise ValueError(f"{where}: augmentation {name} returned masks of shape "
                         f"{new_masks.shape}, expected {(count,) + image.shape[:2]}")
    return new_image, np.moveaxis(new_masks, 0, -1) > 0


def _pad_to_image_shape(image: np.ndarray, mask: np.ndarray, config: Any,
                        where: str) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad image and masks at the bottom/right to config.IMAGE_SHAPE (training shape)."""
    target_h, target_w = int(config.IMAGE_SHAPE[0]), int(config.IMAGE_SHAPE[1])
    h, w = image.shape[:2]
    if h > target_h or w > target_w:
        raise ValueError(
            f"{where}: after resizing (IMAGE_RESIZE_MODE={config.IMAGE_RESIZE_MODE!r}) the "
            f"image is {h}x{w}, larger than the training shape config.IMAGE_SHAPE "
            f"{target_h}x{target_w}. Use IMAGE_RESIZE_MODE 'square' or 'crop', or raise "
            "IMAGE_MAX_DIM.")
    if (h, w) == (target_h, target_w):
        return image, mask
    # Bottom/right padding leaves pixel coordinates, boxes and the window unchanged.
    pad = [(0, target_h - h), (0, target_w - w)]
    image = np.pad(image, pad + [(0, 0)] * (image.ndim - 2))
    mask = np.pad(mask, pad + [(0, 0)])
    return image, mask


def load_image_gt(
    dataset: Any,
    config: Any,
    image_id: int,
    augmentation: Callable | None = None,
    use_mini_mask: bool = False,
    *,
    augment: bool = False,
    fixed_shape: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load an image and its ground truth, resized as the Config says.

    Steps: ``load_image`` + ``load_mask`` (validated by ``utils.check_mask``), resize with
    IMAGE_MIN_DIM / IMAGE_MAX_DIM / IMAGE_MIN_SCALE / IMAGE_RESIZE_MODE, optional
    augmentation, drop instances whose mask vanished (crop or augmentation; an image may
    end up with zero instances, which is valid), keep a random MAX_GT_INSTANCES subset when
    there are more (with a warning), optionally pad to IMAGE_SHAPE, boxes from the masks,
    optionally mini masks.

    Args:
        dataset: a prepared ``utils.Dataset``.
        config: a ``Config``.
        image_id: internal image id.
        augmentation: an albumentations transform (``A.Compose([...])`` or a single one),
            applied to the image and its masks together after resizing. Geometric
            transforms move the masks, pixel-level ones change the image only. It must keep
            the image shape. (A bool here is taken as Matterport's old ``augment``.)
        use_mini_mask: return masks cropped to their box and resized to MINI_MASK_SHAPE.
        augment: deprecated (Matterport): flip left/right with probability 0.5.
        fixed_shape: training mode: zero-pad the image and masks at the bottom/right to
            ``config.IMAGE_SHAPE`` (window unchanged; matters for modes "none" and "pad64")
            and raise if the resized image is larger. ``DataGenerator`` sets it; the default
            keeps Matterport's behaviour (the image as ``resize_image`` returns it), which
            inference configs and notebooks rely on.

    Returns:
        image: [H, W, C] resized image (dtype of ``load_image``, uint8 normally).
        image_meta: float64 [IMAGE_META_SIZE], see ``compose_image_meta``.
        class_ids: int32 [N] (negative ids are crowd instances).
        bbox: int32 [N, (y1, x1, y2, x2)], from the returned full masks.
        mask: bool [H, W, N], or [MINI_MASK_SHAPE[0], MINI_MASK_SHAPE[1], N] with
            ``use_mini_mask``.

    Raises:
        ValueError: bad ``load_image``/``load_mask`` output, a shape-changing augmentation
            or (``fixed_shape``) an image larger than IMAGE_SHAPE; messages name the image.
    """
    if isinstance(image_id, np.integer):  # ids from dataset.image_ids; plain int in messages
        image_id = int(image_id)
    where = describe_image(dataset, image_id)
    if isinstance(augmentation, bool):  # Matterport's positional order had augment first
        augment, augmentation = augment or augmentation, None

    # Shape checked, non-uint8 pixels converted as Dataset.load_image converts files.
    image = utils.as_model_image(dataset.load_image(image_id), where, config.IMAGE_CHANNEL_COUNT)
    mask, class_ids = dataset.load_mask(image_id)
    mask, class_ids = _validate_mask(dataset, image_id, image, mask, class_ids)
    original_shape = image.shape

    image, window, scale, padding, crop = utils.resize_image(
        image,
        min_dim=config.IMAGE_MIN_DIM,
        min_scale=config.IMAGE_MIN_SCALE,
        max_dim=config.IMAGE_MAX_DIM,
        mode=config.IMAGE_RESIZE_MODE)
    if mask.shape[-1]:
        mask = utils.resize_mask(mask, scale, padding, crop)
    else:
        mask = np.zeros(image.shape[:2] + (0,), dtype=bool)

    if augment:
        warnings.warn("load_image_gt(augment=True) is deprecated; pass an albumentations "
                      "transform, e.g. augmentation=A.HorizontalFlip(p=0.5)",
                      DeprecationWarning, stacklevel=2)
        if np.random.randint(0, 2):
            image, mask = np.fliplr(image), np.fliplr(mask)
    if augmentation is not None:
        image, mask = _apply_augmentation(augmentation, image, mask, where)

    # Cropping and augmentation can push instances out of the image entirely.
    present = mask.any(axis=(0, 1))
    mask, class_ids = mask[:, :, present], class_ids[present]

    if class_ids.shape[0] > config.MAX_GT_INSTANCES:
        count = class_ids.shape[0]
        keep = np.sort(np.random.choice(count, config.MAX_GT_INSTANCES, replace=False))
        warnings.warn(f"{where} has {count} instances, more than config.MAX_GT_INSTANCES = "
                      f"{config.MAX_GT_INSTANCES}; training on a random subset of "
                      f"{config.MAX_GT_INSTANCES}. Raise MAX_GT_INSTANCES to use them all.",
                      stacklevel=2)
        mask, class_ids = mask[:, :, keep], class_ids[keep]

    if fixed_shape:
        image, mask = _pad_to_image_shape(image, mask, config, where)

    bbox = utils.extract_bboxes(mask)

    # Classes of the image's source: the loss ignores predictions of other sources' classes.
    active_class_ids = np.zeros([config.NUM_CLASSES], dtype=np.int32)
    source = dataset.image_info[image_id]["source"]
    source_class_ids = np.asarray(dataset.source_class_ids[source], dtype=np.int64)
    if source_class_ids.size and source_class_ids.max() >= config.NUM_CLASSES:
        raise ValueError(f"{where}: the dataset has class ids up to {source_class_ids.max()} "
                         f"but config.NUM_CLASSES = {config.NUM_CLASSES}; set NUM_CLASSES to "
                         f"dataset.num_classes ({getattr(dataset, 'num_classes', '?')})")
    active_class_ids[source_class_ids] = 1

    if use_mini_mask:
        mask = utils.minimize_mask(bbox, mask, config.MINI_MASK_SHAPE)

    image_meta = compose_image_meta(image_id, original_shape, image.shape, window, scale,
                                    active_class_ids)
    return image, image_meta, class_ids.astype(np.int32), bbox.astype(np.int32), mask


############################################################
#  RPN targets
############################################################


def _box_areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _anchor_box_overlaps(anchors: np.ndarray, boxes: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-anchor best IoU and box, and each box's best anchors, without the [A, G] matrix.

    At 1024px there are ~260k anchors, and a box overlaps only the few whose rows cross
    its rows. Anchors are bucketed by height and sorted by top edge, so for each box a
    binary search finds the candidates (top in (box_y1 - bucket's max height, box_y2)) and
    IoU is computed for those only: O(A) memory and ~8x faster than the dense matrix
    (100 boxes at 1024px: ~0.1 s instead of ~0.9 s).

    Args:
        anchors: float64 [A, 4].
        boxes: float64 [G, 4].

    Returns:
        iou_max: [A] best IoU of each anchor (0 when G == 0).
        iou_argmax: [A] index of that box (the first one on ties, as np.argmax over the
            dense matrix; 0 when all IoUs are 0).
        best_anchors: sorted anchor indices that reach the best IoU of some box (all
            anchors tied for it), only for boxes whose best IoU is above 0.
    """
    num_anchors = anchors.shape[0]
    iou_max = np.zeros([num_anchors])
    iou_argmax = np.zeros([num_anchors], dtype=np.int64)
    best_hits = np.zeros([num_anchors], dtype=bool)
    if boxes.shape[0] == 0 or num_anchors == 0:
        return iou_max, iou_argmax, np.zeros([0], dtype=np.int64)
    ay1, ax1, ay2, ax2 = (np.ascontiguousarray(anchors[:, i]) for i in range(4))
    anchor_areas = (ay2 - ay1) * (ax2 - ax1)
    heights = ay2 - ay1

    # Buckets of similar height (4 per octave), each sorted by top edge.
    bucket = np.floor(4 * np.log2(np.maximum(heights, 1e-3))).astype(np.int64)
    order = np.lexsort((ay1, bucket))
    starts = np.flatnonzero(np.r_[True, bucket[order][1:] != bucket[order][:-1]])
    ends = np.r_[starts[1:], num_anchors]
    tops = ay1[order]
    # Candidate slice [low, high) of `order` for every (bucket, box); the 1e-6 margin only
    # adds candidates, so float rounding of y2 - y1 cannot drop a touching anchor.
    ranges = []
    for start, end in zip(starts, ends):
        max_height = heights[order[start:end]].max()
        low = start + np.searchsorted(tops[start:end], boxes[:, 0] - max_height - 1e-6,
                                      side="right")
        high = start + np.searchsorted(tops[start:end], boxes[:, 2] + 1e-6, side="left")
        ranges.append((low, high))

    box_areas = _box_areas(boxes)
    for g, (y1, x1, y2, x2) in enumerate(boxes):
        idx = np.concatenate([order[low[g]:high[g]] for low, high in ranges])
        if idx.shape[0] == 0:
            continue
        height = np.minimum(ay2[idx], y2) - np.maximum(ay1[idx], y1)
        width = np.minimum(ax2[idx], x2) - np.maximum(ax1[idx], x1)
        intersection = np.maximum(height, 0) * np.maximum(width, 0)
        union = anchor_areas[idx] + box_areas[g] - intersection
        iou = np.zeros_like(intersection)
        np.divide(intersection, union, out=iou, where=union > 0)
        better = iou > iou_max[idx]  # strict: earlier boxes win ties, like np.argmax
        iou_max[idx[better]] = iou[better]
        iou_argmax[idx[better]] = g
        top = iou.max()
        if top > 0:
            best_hits[idx[iou == top]] = True
    return iou_max, iou_argmax, np.flatnonzero(best_hits)


def build_rpn_targets(
    image_shape: Sequence[int],
    anchors: np.ndarray,
    gt_class_ids: np.ndarray,
    gt_boxes: np.ndarray,
    config: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Label anchors positive / negative / neutral and compute the positives' box deltas.

    Matterport's rules: an anchor is positive when its IoU with a GT box is >= 0.7 or it is
    the best anchor of some GT box (all anchors tied for the best; only if that IoU is > 0,
    which Matterport did not check), negative when its best IoU is < 0.3 and it overlaps
    no crowd box (negative class id) by IoU >= 0.001. Crowd boxes are never targets. Then
    at most RPN_TRAIN_ANCHORS_PER_IMAGE // 2 positives are kept (random subset, the rest
    become neutral) and negatives fill up to RPN_TRAIN_ANCHORS_PER_IMAGE. Sampling uses
    ``np.random``. With no GT boxes every anchor is a candidate negative.

    Args:
        image_shape: [H, W, C] of the model input (unused; kept for Matterport's signature).
        anchors: [A, (y1, x1, y2, x2)] in pixels.
        gt_class_ids: [N] class ids; negative ids mark crowd boxes.
        gt_boxes: [N, (y1, x1, y2, x2)] in pixels.
        config: provides RPN_TRAIN_ANCHORS_PER_IMAGE and RPN_BBOX_STD_DEV.

    Returns:
        rpn_match: int32 [A], 1 positive, -1 negative, 0 neutral.
        rpn_bbox: float32 [RPN_TRAIN_ANCHORS_PER_IMAGE, (dy, dx, log(dh), log(dw))] divided
            by RPN_BBOX_STD_DEV; row i belongs to the i-th positive anchor in ascending
            anchor index order (the RPN box loss relies on this order); other rows zero.
    """
    del image_shape
    anchors = np.asarray(anchors, dtype=np.float64).reshape(-1, 4)
    gt_class_ids = np.asarray(gt_class_ids).reshape(-1)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    total = int(config.RPN_TRAIN_ANCHORS_PER_IMAGE)
    rpn_match = np.zeros([anchors.shape[0]], dtype=np.int32)
    rpn_bbox = np.zeros([total, 4], dtype=np.float32)

    crowd = gt_class_ids < 0
    if crowd.any():
        crowd_iou, _, _ = _anchor_box_overlaps(anchors, gt_boxes[crowd])
        not_crowded = crowd_iou < CROWD_IOU
        gt_boxes = gt_boxes[~crowd]
    else:
        not_crowded = np.ones([anchors.shape[0]], dtype=bool)

    iou_max, iou_argmax, best_anchors = _anchor_box_overlaps(anchors, gt_boxes)
    # Order matters: best anchors override negatives, and positives override both.
    rpn_match[(iou_max < RPN_NEGATIVE_IOU) & not_crowded] = NEGATIVE
    rpn_match[best_anchors] = POSITIVE
    rpn_match[iou_max >= RPN_POSITIVE_IOU] = POSITIVE

    # Balance the sample: at most half positives, negatives fill the rest.
    positives = np.flatnonzero(rpn_match == POSITIVE)
    extra = positives.shape[0] - total // 2
    if extra > 0:
        rpn_match[np.random.choice(positives, extra, replace=False)] = NEUTRAL
    negatives = np.flatnonzero(rpn_match == NEGATIVE)
    extra = negatives.shape[0] - (total - int(np.sum(rpn_match == POSITIVE)))
    if extra > 0:
        rpn_match[np.random.choice(negatives, extra, replace=False)] = NEUTRAL

    positives = np.flatnonzero(rpn_match == POSITIVE)  # ascending anchor order
    if positives.shape[0]:
        anchor = anchors[positives]
        gt = gt_boxes[iou_argmax[positives]]
        a_h, a_w = anchor[:, 2] - anchor[:, 0], anchor[:, 3] - anchor[:, 1]
        gt_h, gt_w = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
        deltas = np.stack([
            ((gt[:, 0] + 0.5 * gt_h) - (anchor[:, 0] + 0.5 * a_h)) / a_h,
            ((gt[:, 1] + 0.5 * gt_w) - (anchor[:, 1] + 0.5 * a_w)) / a_w,
            np.log(gt_h / a_h),
            np.log(gt_w / a_w),
        ], axis=1)
        rpn_bbox[:positives.shape[0]] = deltas / np.asarray(config.RPN_BBOX_STD_DEV)
    return rpn_match, rpn_bbox


############################################################
#  Random ROIs and detection targets (inspection / debugging)
############################################################


def _random_boxes(region: Sequence[int], count: int, image_hw: Sequence[int]) -> np.ndarray:
    """``count`` random boxes of at least 1 pixel inside ``region`` (y1, x1, y2, x2)."""
    height, width = int(image_hw[0]), int(image_hw[1])

    def coordinate_pairs(low: int, high: int, limit: int) -> np.ndarray:
        # Make the range hold two values at least, so a non-empty box exists.
        if high - low < 2:
            low, high = max(0, min(low, limit - 2)), min(limit, max(high, low + 2))
        pairs = np.random.randint(low, high, (count, 2))
        equal = pairs[:, 0] == pairs[:, 1]
        while equal.any():  # redraw degenerate pairs (Matterport drew twice as many)
            pairs[equal] = np.random.randint(low, high, (int(equal.sum()), 2))
            equal = pairs[:, 0] == pairs[:, 1]
        return np.sort(pairs, axis=1)

    ys = coordinate_pairs(int(region[0]), int(region[2]), height)
    xs = coordinate_pairs(int(region[1]), int(region[3]), width)
    return np.stack([ys[:, 0], xs[:, 0], ys[:, 1], xs[:, 1]], axis=1).astype(np.int32)


def generate_random_rois(
    image_shape: Sequence[int],
    count: int,
    gt_class_ids: np.ndarray,
    gt_boxes: np.ndarray,
) -> np.ndarray:
    """Random ROIs, mostly around the GT boxes (Matterport's debugging stand-in for the RPN).

    90% of the ROIs are split evenly among the GT boxes, each drawn inside its box grown by
    its own size on every side; the rest are drawn anywhere in the image. Uses ``np.random``.

    Args:
        image_shape: [H, W, ...] of the image.
        count: number of ROIs.
        gt_class_ids: [N] class ids (unused; kept for Matterport's signature).
        gt_boxes: [N, (y1, x1, y2, x2)] in pixels.

    Returns:
        int32 [count, (y1, x1, y2, x2)] in pixels, every ROI at least 1 pixel tall and wide.
    """
    del gt_class_ids
    height, width = int(image_shape[0]), int(image_shape[1])
    gt_boxes = np.asarray(gt_boxes).reshape(-1, 4).astype(np.int64)
    rois = np.zeros([count, 4], dtype=np.int32)
    per_box = int(0.9 * count / gt_boxes.shape[0]) if gt_boxes.shape[0] else 0
    for i, (y1, x1, y2, x2) in enumerate(gt_boxes if per_box else []):
        h, w = y2 - y1, x2 - x1
        region = (max(y1 - h, 0), max(x1 - w, 0), min(y2 + h, height), min(x2 + w, width))
        rois[i * per_box:(i + 1) * per_box] = _random_boxes(region, per_box, (height, width))
    remaining = count - per_box * gt_boxes.shape[0]
    if remaining > 0:  # Matterport's rois[-remaining:] broke for remaining == 0
        rois[count - remaining:] = _random_boxes((0, 0, height, width), remaining,
                                                 (height, width))
    return rois


def build_detection_targets(
    rpn_rois: np.ndarray,
    gt_class_ids: np.ndarray,
    gt_boxes: np.ndarray,
    gt_masks: np.ndarray,
    config: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sample ROIs and build the targets of the classifier and mask heads (NumPy).

    The graph computes these targets itself during training; this NumPy version serves
    the inspection notebook (``data_generator(..., detection_targets=True)``). ROIs with
    IoU > 0.5 with a (non-crowd) GT box are foreground, < 0.5 background; up to
    TRAIN_ROIS_PER_IMAGE * ROI_POSITIVE_RATIO foreground ROIs are kept, background fills
    the rest, and when there are too few ROIs, kept ones are repeated. Images without
    instances give background-only targets (Matterport asserted).

    Args:
        rpn_rois: [R, (y1, x1, y2, x2)] proposals in pixels (R > 0).
        gt_class_ids: [N] int class ids (crowds, i.e. negative ids, are ignored).
        gt_boxes: [N, (y1, x1, y2, x2)] in pixels.
        gt_masks: bool [H, W, N] full masks, or mini masks when config.USE_MINI_MASK.
        config: a ``Config``.

    Returns:
        rois: [TRAIN_ROIS_PER_IMAGE, 4] (dtype of ``rpn_rois``) in pixels.
        class_ids: int32 [TRAIN_ROIS_PER_IMAGE], 0 for background.
        bboxes: float32 [TRAIN_ROIS_PER_IMAGE, NUM_CLASSES, (dy, dx, log(dh), log(dw))],
            the deltas in the slot of the ROI's class, divided by BBOX_STD_DEV.
        masks: float32 [TRAIN_ROIS_PER_IMAGE, MASK_SHAPE[0], MASK_SHAPE[1], NUM_CLASSES],
            the GT mask cropped to the ROI and resized (bilinear), in its class's slot.
    """
    rpn_rois = np.asarray(rpn_rois)
    if rpn_rois.ndim != 2 or rpn_rois.shape[0] == 0:
        raise ValueError(f"build_detection_targets needs rpn_rois [R > 0, 4], got "
                         f"{rpn_rois.shape}")
    gt_class_ids = np.asarray(gt_class_ids).reshape(-1).astype(np.int32)
    gt_boxes = np.asarray(gt_boxes).reshape(-1, 4).astype(np.int32)
    gt_masks = np.asarray(gt_masks).astype(bool)
    instances = np.flatnonzero(gt_class_ids > 0)
    gt_class_ids, gt_boxes = gt_class_ids[instances], gt_boxes[instances]
    gt_masks = gt_masks[:, :, instances]

    total = int(config.TRAIN_ROIS_PER_IMAGE)
    overlaps = utils.compute_overlaps(rpn_rois, gt_boxes)  # [R, N]
    if gt_boxes.shape[0]:
        roi_argmax = overlaps.argmax(axis=1)
        roi_max = overlaps[np.arange(rpn_rois.shape[0]), roi_argmax]
    else:
        roi_argmax = np.zeros([rpn_rois.shape[0]], dtype=np.int64)
        roi_max = np.zeros([rpn_rois.shape[0]])

    fg_ids = np.flatnonzero(roi_max > ROI_FOREGROUND_IOU)
    bg_ids = np.flatnonzero(roi_max < ROI_FOREGROUND_IOU)
    fg_count = int(total * config.ROI_POSITIVE_RATIO)
    keep_fg = (np.random.choice(fg_ids, fg_count, replace=False)
               if fg_ids.shape[0] > fg_count else fg_ids)
    remaining = total - keep_fg.shape[0]
    keep_bg = (np.random.choice(bg_ids, remaining, replace=False)
               if bg_ids.shape[0] > remaining else bg_ids)
    keep = np.concatenate([keep_fg, keep_bg]).astype(np.int64)
    remaining = total - keep.shape[0]
    if remaining > 0:
        # Too few ROIs: repeat background ones (or whatever there is).
        pool = keep_bg if keep_bg.shape[0] else keep if keep.shape[0] else np.arange(
            rpn_rois.shape[0])
        keep = np.concatenate([keep, np.random.choice(pool, remaining, replace=True)])

    rois = rpn_rois[keep]
    is_fg = roi_max[keep] > ROI_FOREGROUND_IOU
    assignment = roi_argmax[keep]
    class_ids = np.zeros([total], dtype=np.int32)
    bboxes = np.zeros([total, config.NUM_CLASSES, 4], dtype=np.float32)
    masks = np.zeros([total, config.MASK_SHAPE[0], config.MASK_SHAPE[1], config.NUM_CLASSES],
                     dtype=np.float32)
    positive = np.flatnonzero(is_fg)
    if positive.shape[0] == 0:
        return rois, class_ids, bboxes, masks

    class_ids[positive] = gt_class_ids[assignment[positive]]
    deltas = utils.box_refinement(rois[positive], gt_boxes[assignment[positive]])
    bboxes[positive, class_ids[positive]] = deltas / np.asarray(config.BBOX_STD_DEV,
                                                                np.float32)
    if config.USE_MINI_MASK:
        full_masks = utils.expand_mask(gt_boxes, gt_masks, config.IMAGE_SHAPE)
    else:
        full_masks = gt_masks
    for i in positive:
        y1, x1, y2, x2 = (int(v) for v in rois[i])
        crop = full_masks[y1:y2, x1:x2, assignment[i]]
        if crop.size == 0:
            continue
        masks[i, :, :, class_ids[i]] = utils.resize(crop.astype(np.float32),
                                                     config.MASK_SHAPE[:2])
    return rois, class_ids, bboxes, masks


############################################################
#  Data generator
############################################################


class DataGenerator(keras.utils.PyDataset):
    """Batches of training inputs for ``model.fit`` (a ``keras.utils.PyDataset``).

    ``self[idx]`` returns ``(inputs,)`` where ``inputs`` is the tuple of the training
    model's inputs, zero padded to static shapes (B = batch size, A = number of anchors,
    G = MAX_GT_INSTANCES)::

        input_image        float32 [B, H, W, C]  molded (mean pixel subtracted)
        input_image_meta   float32 [B, IMAGE_META_SIZE]
        input_rpn_match    int32   [B, A, 1]     1 / -1 / 0
        input_rpn_bbox     float32 [B, RPN_TRAIN_ANCHORS_PER_IMAGE, 4]
        input_gt_class_ids int32   [B, G]
        input_gt_boxes     float32 [B, G, 4]     pixels (y1, x1, y2, x2)
        input_gt_masks     bool    [B, mh, mw, G] MINI_MASK_SHAPE or IMAGE_SHAPE[:2]

    With ``random_rois`` (and ``detection_targets``) the batch also carries Matterport's
    debugging extras and becomes ``(inputs, outputs)``, see ``load_batch``.

    The last batch of an epoch is filled up with images from the start of the epoch's
    order, so every batch has the same shape (a new shape would retrace the model).

    Broken images: if loading an image fails (any exception in ``load_image``,
    ``load_mask``, the mask check, resizing, augmentation or the targets), a warning naming
    the image and the error is logged and another random image takes its place, so one bad
    file does not end a long training run. After ``max_consecutive_failures`` failures in a
    row for one batch slot, a ``RuntimeError`` carrying the last error is raised, so a
    broken dataset (or a wrong Config) still fails loudly.

    Args:
        dataset: a prepared ``utils.Dataset``.
        config: a ``Config``.
        shuffle: shuffle the image order at the start and after every epoch.
        augmentation: albumentations transform applied to images and masks.
        random_rois: if > 0, also generate this many random ROIs per image (debugging).
        detection_targets: with ``random_rois``, also build the heads' targets (debugging).
        no_augmentation_sources: dataset sources whose images are never augmented.
        batch_size: images per batch (default ``config.BATCH_SIZE``).
        seed: seed of the generator that shuffles and picks substitute images.
        steps: batches per epoch (default: one pass over the images, the last batch
            wrapping around). ``MaskRCNN.train`` passes STEPS_PER_EPOCH: Keras 3 keeps one
            iterator over a PyDataset across epochs, so when ``len()`` and
            ``steps_per_epoch`` differ, epochs silently run short.
        **pydataset_kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size`` of
            ``PyDataset`` (defaults: config.DATA_WORKERS, config.DATA_USE_MULTIPROCESSING).
    """

    max_consecutive_failures = 10

    def __init__(
        self,
        dataset: Any,
        config: Any,
        shuffle: bool = True,
        augmentation: Callable | None = None,
        random_rois: int = 0,
        detection_targets: bool = False,
        no_augmentation_sources: Sequence[str] | None = None,
        batch_size: int | None = None,
        seed: int | None = None,
        steps: int | None = None,
        **pydataset_kwargs: Any,
    ) -> None:
        pydataset_kwargs.setdefault("workers", int(getattr(config, "DATA_WORKERS", 1)))
        pydataset_kwargs.setdefault("use_multiprocessing",
                                    bool(getattr(config, "DATA_USE_MULTIPROCESSING", False)))
        super().__init__(**pydataset_kwargs)
        self.dataset = dataset
        self.config = config
        self.image_ids = np.copy(np.asarray(dataset.image_ids))
        if self.image_ids.shape[0] == 0:
            raise ValueError("DataGenerator: the dataset has no images (did you call "
                             "dataset.prepare()?)")
        self.shuffle = shuffle
        self.augmentation = augmentation
        self.no_augmentation_sources = set(no_augmentation_sources or ())
        self.random_rois = int(random_rois or 0)
        self.detection_targets = bool(detection_targets)
        if self.detection_targets and not self.random_rois:
            warnings.warn("detection_targets=True has no effect without random_rois > 0 "
                          "(as in Matterport)", stacklevel=2)
        self.batch_size = int(batch_size or config.BATCH_SIZE)
        if steps is not None and int(steps) < 1:
            raise ValueError(f"DataGenerator: steps must be >= 1, got {steps}")
        self.steps = int(steps) if steps is not None else None
        self.use_mini_mask = bool(config.USE_MINI_MASK)
        self._augment = False  # Matterport's deprecated fliplr flag (data_generator only)

        self.image_shape = tuple(int(s) for s in config.IMAGE_SHAPE)
        self.backbone_shapes = compute_backbone_shapes(config, self.image_shape)
        # Pixel anchors, the same (cached) array the model's AnchorsLayer normalizes.
        self.anchors = pyramid_anchors(config, self.image_shape, normalized=False)

        self._rng = np.random.default_rng(seed)
        self.order = self._new_order()

    # -- epoch order ---------------------------------------------------------------------
    def _new_order(self) -> np.ndarray:
        if self.shuffle:
            return self._rng.permutation(self.image_ids)
        return self.image_ids.copy()

    def __len__(self) -> int:
        if self.steps is not None:
            return self.steps
        return math.ceil(self.image_ids.shape[0] / self.batch_size)

    def on_epoch_end(self) -> None:
        """Reshuffle the image order (Keras calls this after every epoch)."""
        # A new array, assigned at once, so readers never see a half-shuffled order.
        self.order = self._new_order()

    def batch_image_ids(self, idx: int) -> np.ndarray:
        """Image ids of batch ``idx`` of the current epoch (wrapping around at the end)."""
        start = idx * self.batch_size
        return np.take(self.order, np.arange(start, start + self.batch_size), mode="wrap")

    def __getitem__(self, idx: int) -> tuple:
        if not 0 <= idx < len(self):
            raise IndexError(f"batch index {idx} out of range [0, {len(self)})")
        inputs, outputs = self.load_batch(self.batch_image_ids(idx))
        if outputs:
            return tuple(inputs), tuple(outputs)
        return (tuple(inputs),)

    # -- one image -----------------------------------------------------------------------
    def _augmentation_for(self, image_id: int) -> Callable | None:
        if self.augmentation is None or not self.no_augmentation_sources:
            return self.augmentation
        source = self.dataset.image_info[image_id]["source"]
        return None if source in self.no_augmentation_sources else self.augmentation

    def load_example(self, image_id: int) -> dict[str, Any]:
        """Ground truth and targets of one image (no error handling).

        Returns:
            dict with image, image_meta, gt_class_ids, gt_boxes, gt_masks (see
            ``load_image_gt``), rpn_match, rpn_bbox, and with random_rois also rpn_rois
            and (detection_targets) rois, mrcnn_class_ids, mrcnn_bbox, mrcnn_mask.
        """
        config = self.config
        image, image_meta, gt_class_ids, gt_boxes, gt_masks = load_image_gt(
            self.dataset, config, image_id, augmentation=self._augmentation_for(image_id),
            use_mini_mask=self.use_mini_mask, augment=self._augment, fixed_shape=True)
        rpn_match, rpn_bbox = build_rpn_targets(image.shape, self.anchors, gt_class_ids,
                                                gt_boxes, config)
        example = dict(image=image, image_meta=image_meta, gt_class_ids=gt_class_ids,
                       gt_boxes=gt_boxes, gt_masks=gt_masks, rpn_match=rpn_match,
                       rpn_bbox=rpn_bbox)
        if self.random_rois:
            example["rpn_rois"] = generate_random_rois(image.shape, self.random_rois,
                                                       gt_class_ids, gt_boxes)
            if self.detection_targets:
                (example["rois"], example["mrcnn_class_ids"], example["mrcnn_bbox"],
                 example["mrcnn_mask"]) = build_detection_targets(
                    example["rpn_rois"], gt_class_ids, gt_boxes, gt_masks, config)
        return example

    def _load_example_or_substitute(self, image_id: int) -> dict[str, Any]:
        """``load_example``, replacing a failing image by a random other one (see class doc)."""
        failures = 0
        while True:
            try:
                return self.load_example(image_id)
            except Exception as err:  # user dataset code can raise anything
                failures += 1
                where = describe_image(self.dataset, image_id)
                if failures > self.max_consecutive_failures:
                    raise RuntimeError(
                        f"DataGenerator: {failures} images in a row failed to load; the "
                        f"last was {where}: {type(err).__name__}: {err}") from err
                logger.warning("Skipping %s, it failed to load: %s: %s. Using a random "
                               "other image instead.", where, type(err).__name__, err)
                image_id = int(self._rng.choice(self.image_ids))

    # -- batches -------------------------------------------------------------------------
    def load_batch(self, image_ids: Sequence[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Build Matterport's ``(inputs, outputs)`` pair for some images.

        Args:
            image_ids: internal image ids, one per batch slot.

        Returns:
            inputs: [images, image_meta, rpn_match, rpn_bbox, gt_class_ids, gt_boxes,
                gt_masks] (see the class doc), then with random_rois ``rpn_rois`` int32
                [B, random_rois, 4], then with detection_targets ``rois`` int32
                [B, TRAIN_ROIS_PER_IMAGE, 4].
            outputs: [] or, with detection_targets, [mrcnn_class_ids int32 [B, T, 1],
                mrcnn_bbox float32 [B, T, NUM_CLASSES, 4], mrcnn_mask float32
                [B, T, MASK_SHAPE[0], MASK_SHAPE[1], NUM_CLASSES]].
        """
        config = self.config
        batch = len(image_ids)
        max_gt = int(config.MAX_GT_INSTANCES)
        mask_hw = (tuple(int(s) for s in config.MINI_MASK_SHAPE) if self.use_mini_mask
                   else self.image_shape[:2])
        images = np.zeros((batch,) + self.image_shape, dtype=np.float32)
        image_meta = np.zeros([batch, config.IMAGE_META_SIZE], dtype=np.float32)
        rpn_match = np.zeros([batch, self.anchors.shape[0], 1], dtype=np.int32)
        rpn_bbox = np.zeros([batch, config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4], dtype=np.float32)
        gt_class_ids = np.zeros([batch, max_gt], dtype=np.int32)
        gt_boxes = np.zeros([batch, max_gt, 4], dtype=np.float32)
        gt_masks = np.zeros((batch,) + mask_hw + (max_gt,), dtype=bool)
        extras: dict[str, list[np.ndarray]] = {}

        for b, image_id in enumerate(image_ids):
            ex = self._load_example_or_substitute(int(image_id))
            count = ex["gt_class_ids"].shape[0]  # <= MAX_GT_INSTANCES (load_image_gt)
            images[b] = mold_image(ex["image"], config)
            image_meta[b] = ex["image_meta"]
            rpn_match[b, :, 0] = ex["rpn_match"]
            rpn_bbox[b] = ex["rpn_bbox"]
            gt_class_ids[b, :count] = ex["gt_class_ids"]
            gt_boxes[b, :count] = ex["gt_boxes"]
            gt_masks[b, :, :, :count] = ex["gt_masks"]
            for key in ("rpn_rois", "rois", "mrcnn_class_ids", "mrcnn_bbox", "mrcnn_mask"):
                if key in ex:
                    extras.setdefault(key, []).append(ex[key])

        inputs = [images, image_meta, rpn_match, rpn_bbox, gt_class_ids, gt_boxes, gt_masks]
        outputs: list[np.ndarray] = []
        if "rpn_rois" in extras:
            inputs.append(np.stack(extras["rpn_rois"]))
            if "rois" in extras:
                inputs.append(np.stack(extras["rois"]))
                # Matterport: Keras wanted targets with the outputs' rank, hence [B, T, 1].
                outputs = [np.stack(extras["mrcnn_class_ids"])[..., np.newaxis],
                           np.stack(extras["mrcnn_bbox"]),
                           np.stack(extras["mrcnn_mask"])]
        return inputs, outputs


def data_generator(
    dataset: Any,
    config: Any,
    shuffle: bool = True,
    augment: bool = False,
    augmentation: Callable | None = None,
    random_rois: int = 0,
    batch_size: int = 1,
    detection_targets: bool = False,
    no_augmentation_sources: Sequence[str] | None = None,
) -> Iterator[tuple[list[np.ndarray], list[np.ndarray]]]:
    """Matterport's endless Python generator of training batches.

    Kept for notebooks and scripts written for Matterport; training uses
    ``DataGenerator`` (a ``PyDataset``), which this wraps, so batches are identical.

    Args:
        dataset: a prepared ``utils.Dataset``.
        config: a ``Config``.
        shuffle: reshuffle the images every epoch.
        augment: deprecated fliplr augmentation (use ``augmentation``).
        augmentation: albumentations transform.
        random_rois: if > 0, add this many random ROIs per image to the inputs.
        batch_size: images per batch.
        detection_targets: with random_rois, add the heads' targets.
        no_augmentation_sources: sources whose images are never augmented.

    Yields:
        ``(inputs, outputs)`` lists, see ``DataGenerator.load_batch``.
    """
    generator = DataGenerator(dataset, config, shuffle=shuffle, augmentation=augmentation,
                              random_rois=random_rois, detection_targets=detection_targets,
                              no_augmentation_sources=no_augmentation_sources,
                              batch_size=batch_size, workers=0, use_multiprocessing=False)
    if augment:
        warnings.warn("data_generator(augment=True) is deprecated; pass an albumentations "
                      "transform, e.g. augmentation=A.HorizontalFlip(p=0.5)",
                      DeprecationWarning, stacklevel=2)
        generator._augment = True
    while True:
        for idx in range(len(generator)):
            yield generator.load_batch(generator.batch_image_ids(idx))
        generator.on_epoch_end()
