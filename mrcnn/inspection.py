"""Matterport's debugging paths of the data pipeline, for the inspection notebooks.

Random ROIs around the objects (a stand-in for the RPN), the heads' targets computed in
NumPy (the graph computes its own during training), and ``data_generator``, Matterport's
endless generator of batches that can carry both. Training never uses them; they are
re-exported from ``mrcnn.model`` under Matterport's names (``modellib.data_generator``,
``modellib.build_detection_targets``, ``modellib.generate_random_rois``).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from mrcnn import utils
from mrcnn.box_coder import BoxCoder
from mrcnn.data import DataGenerator

# IoU that splits sampled ROIs into foreground and background (build_detection_targets).
ROI_FOREGROUND_IOU = 0.5


def _random_boxes(region: Sequence[int], count: int, image_hw: Sequence[int],
                  random: Any = np.random) -> np.ndarray:
    """``count`` random boxes of at least 1 pixel inside ``region`` (y1, x1, y2, x2)."""
    height, width = int(image_hw[0]), int(image_hw[1])

    def coordinate_pairs(low: int, high: int, limit: int) -> np.ndarray:
        # Make the range hold two values at least, so a non-empty box exists.
        if high - low < 2:
            low, high = max(0, min(low, limit - 2)), min(limit, max(high, low + 2))
        pairs = random.randint(low, high, (count, 2))
        equal = pairs[:, 0] == pairs[:, 1]
        while equal.any():  # redraw degenerate pairs (Matterport drew twice as many)
            pairs[equal] = random.randint(low, high, (int(equal.sum()), 2))
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
    rng: np.random.RandomState | None = None,
) -> np.ndarray:
    """Random ROIs, mostly around the GT boxes (Matterport's debugging stand-in for the RPN).

    90% of the ROIs are split evenly among the GT boxes, each drawn inside its box grown by
    its own size on every side; the rest are drawn anywhere in the image. Uses ``rng``
    (default ``np.random``).

    Args:
        image_shape: [H, W, ...] of the image.
        count: number of ROIs.
        gt_class_ids: [N] class ids (unused; kept for Matterport's signature).
        gt_boxes: [N, (y1, x1, y2, x2)] in pixels.
        rng: ``np.random.RandomState`` (default: the global ``np.random``).

    Returns:
        int32 [count, (y1, x1, y2, x2)] in pixels, every ROI at least 1 pixel tall and wide.
    """
    del gt_class_ids
    random = np.random if rng is None else rng
    height, width = int(image_shape[0]), int(image_shape[1])
    gt_boxes = np.asarray(gt_boxes).reshape(-1, 4).astype(np.int64)
    rois = np.zeros([count, 4], dtype=np.int32)
    per_box = int(0.9 * count / gt_boxes.shape[0]) if gt_boxes.shape[0] else 0
    for i, (y1, x1, y2, x2) in enumerate(gt_boxes if per_box else []):
        h, w = y2 - y1, x2 - x1
        region = (max(y1 - h, 0), max(x1 - w, 0), min(y2 + h, height), min(x2 + w, width))
        rois[i * per_box:(i + 1) * per_box] = _random_boxes(region, per_box, (height, width),
                                                            random)
    remaining = count - per_box * gt_boxes.shape[0]
    if remaining > 0:  # Matterport's rois[-remaining:] broke for remaining == 0
        rois[count - remaining:] = _random_boxes((0, 0, height, width), remaining,
                                                 (height, width), random)
    return rois


def build_detection_targets(
    rpn_rois: np.ndarray,
    gt_class_ids: np.ndarray,
    gt_boxes: np.ndarray,
    gt_masks: np.ndarray,
    config: Any,
    rng: np.random.RandomState | None = None,
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
        rng: ``np.random.RandomState`` for the sampling (default: the global ``np.random``).

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
    random = np.random if rng is None else rng
    keep_fg = (random.choice(fg_ids, fg_count, replace=False)
               if fg_ids.shape[0] > fg_count else fg_ids)
    remaining = total - keep_fg.shape[0]
    keep_bg = (random.choice(bg_ids, remaining, replace=False)
               if bg_ids.shape[0] > remaining else bg_ids)
    keep = np.concatenate([keep_fg, keep_bg]).astype(np.int64)
    remaining = total - keep.shape[0]
    if remaining > 0:
        # Too few ROIs: repeat background ones (or whatever there is).
        pool = keep_bg if keep_bg.shape[0] else keep if keep.shape[0] else np.arange(
            rpn_rois.shape[0])
        keep = np.concatenate([keep, random.choice(pool, remaining, replace=True)])

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
    bboxes[positive, class_ids[positive]] = BoxCoder(config.BBOX_STD_DEV).encode(
        rois[positive].astype(np.float32), gt_boxes[assignment[positive]].astype(np.float32))
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


class InspectionGenerator(DataGenerator):
    """``DataGenerator`` batches with Matterport's debugging extras.

    With ``random_rois`` the inputs also carry ``rpn_rois`` int32 [B, random_rois, 4]; with
    ``detection_targets`` too, the inputs carry ``rois`` int32 [B, TRAIN_ROIS_PER_IMAGE, 4]
    and the batch becomes ``(inputs, outputs)`` with outputs [mrcnn_class_ids int32
    [B, T, 1], mrcnn_bbox float32 [B, T, NUM_CLASSES, 4], mrcnn_mask float32
    [B, T, MASK_SHAPE[0], MASK_SHAPE[1], NUM_CLASSES]].

    Args:
        dataset, config: see ``DataGenerator``.
        random_rois: if > 0, generate this many random ROIs per image.
        detection_targets: with ``random_rois``, also build the heads' targets.
        **kwargs: the other ``DataGenerator`` arguments.
    """

    def __init__(self, dataset: Any, config: Any, random_rois: int = 0,
                 detection_targets: bool = False, **kwargs: Any) -> None:
        super().__init__(dataset, config, **kwargs)
        self.random_rois = int(random_rois or 0)
        self.detection_targets = bool(detection_targets)
        if self.detection_targets and not self.random_rois:
            warnings.warn("detection_targets=True has no effect without random_rois > 0 "
                          "(as in Matterport)", stacklevel=2)

    def load_example(self, image_id: int, rng: np.random.RandomState | None = None
                     ) -> dict[str, Any]:
        """``DataGenerator.load_example`` plus rpn_rois and (detection_targets) rois,
        mrcnn_class_ids, mrcnn_bbox, mrcnn_mask."""
        ex = super().load_example(image_id, rng)
        if self.random_rois:
            ex["rpn_rois"] = generate_random_rois(ex["image"].shape, self.random_rois,
                                                  ex["gt_class_ids"], ex["gt_boxes"], rng=rng)
            if self.detection_targets:
                (ex["rois"], ex["mrcnn_class_ids"], ex["mrcnn_bbox"],
                 ex["mrcnn_mask"]) = build_detection_targets(
                    ex["rpn_rois"], ex["gt_class_ids"], ex["gt_boxes"], ex["gt_masks"],
                    self.config, rng=rng)
        return ex

    def batch_extras(self, examples: list[dict[str, Any]]
                     ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """rpn_rois (and rois) appended to the inputs; the heads' targets as outputs."""
        if not self.random_rois:
            return [], []
        inputs = [np.stack([ex["rpn_rois"] for ex in examples])]
        if not self.detection_targets:
            return inputs, []
        inputs.append(np.stack([ex["rois"] for ex in examples]))
        # Matterport: Keras wanted targets with the outputs' rank, hence [B, T, 1].
        outputs = [np.stack([ex["mrcnn_class_ids"] for ex in examples])[..., np.newaxis],
                   np.stack([ex["mrcnn_bbox"] for ex in examples]),
                   np.stack([ex["mrcnn_mask"] for ex in examples])]
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
    ``DataGenerator`` (a ``PyDataset``), which this wraps (as ``InspectionGenerator``), so
    batches are identical.

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
        ``(inputs, outputs)`` lists, see ``InspectionGenerator``.
    """
    generator = InspectionGenerator(dataset, config, shuffle=shuffle, augmentation=augmentation,
                                    random_rois=random_rois,
                                    detection_targets=detection_targets,
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
