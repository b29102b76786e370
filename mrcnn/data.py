"""Training data pipeline: image metadata, ground truth, RPN targets and the ``PyDataset``.

How one training example is made (``DataGenerator.load_batch``)::

    Dataset.load_image / load_mask
      -> load_image_gt: check, resize (Config.IMAGE_RESIZE_MODE), augment
         (albumentations or imgaug, ``mrcnn.augment``), drop vanished instances, cap at
         MAX_GT_INSTANCES, pad to IMAGE_SHAPE, boxes, mini masks, image meta
      -> build_rpn_targets: anchor labels and box deltas for the RPN
      -> molded, zero-padded arrays in the order of the training model's inputs.

Names, signatures and semantics follow Matterport's ``mrcnn/model.py`` (``load_image_gt``,
``build_rpn_targets``, ``compose_image_meta``, ...), so notebooks that call them through
``import mrcnn.model as modellib`` keep working; Matterport's debugging paths
(``data_generator``, random ROIs, ``build_detection_targets``) are in ``mrcnn.inspection``.
Everything here is NumPy; Keras is imported only for ``keras.utils.PyDataset``, so the
module works with any Keras backend (TensorFlow, JAX, PyTorch).

Randomness: ``resize_image``'s crop, the MAX_GT_INSTANCES subset and the RPN anchor
sampling draw from an ``rng`` argument, by default ``np.random`` (seed it to
reproduce them, as with Matterport). ``DataGenerator`` passes each batch its own
``RandomState`` seeded by (seed, epoch, batch index), so worker threads reproduce a seeded
run: an imgaug augmenter is seeded per image from that state (``mrcnn.augment``);
albumentations transforms use their own generator (``A.Compose(..., seed=...)``).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
import weakref
from typing import Any, Sequence

import keras
import numpy as np

from mrcnn import inputs as inputs_spec
from mrcnn import transform, utils
from mrcnn.anchors import compute_backbone_shapes, pyramid_anchors
from mrcnn.augment import apply_augmentation, check_augmentation
from mrcnn.box_coder import BoxCoder, box_iou
from mrcnn.dataset import as_model_image, check_mask, describe_image

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


############################################################
#  Image metadata and molding
############################################################


# The meta layout and molding live in mrcnn.transform; Matterport's names stay here (and
# in mrcnn.model).
compose_image_meta = transform.compose_image_meta
parse_image_meta = transform.parse_image_meta
mold_image = transform.mold_image
unmold_image = transform.unmold_image


############################################################
#  Ground truth of one image
############################################################


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
    augmentation: Any = None,
    use_mini_mask: bool = False,
    *,
    augment: bool = False,
    fixed_shape: bool = False,
    rng: np.random.RandomState | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load an image and its ground truth, resized as the Config says.

    Steps: ``load_image`` + ``load_mask`` (validated by ``check_mask``), resize with
    IMAGE_MIN_DIM / IMAGE_MAX_DIM / IMAGE_MIN_SCALE / IMAGE_RESIZE_MODE, optional
    augmentation, drop instances whose mask vanished (crop or augmentation; an image may
    end up with zero instances, which is valid), keep a random MAX_GT_INSTANCES subset when
    there are more (with a warning), optionally pad to IMAGE_SHAPE, boxes from the masks,
    optionally mini masks.

    Args:
        dataset: a prepared ``utils.Dataset``.
        config: a ``Config``.
        image_id: internal image id.
        augmentation: an albumentations transform (``A.Compose([...])`` or a single one)
            or an imgaug augmenter (Matterport's semantics, see
            ``mrcnn.augment.apply_augmentation``), applied to the image and its masks
            together after resizing. Geometric transforms move the masks, pixel-level ones
            change the image only. It must keep the image shape. (A bool here is taken as
            Matterport's old ``augment``.)
        use_mini_mask: return masks cropped to their box and resized to MINI_MASK_SHAPE.
        augment: deprecated (Matterport): flip left/right with probability 0.5.
        fixed_shape: training mode: zero-pad the image and masks at the bottom/right to
            ``config.IMAGE_SHAPE`` (window unchanged; matters for modes "none" and "pad64")
            and raise if the resized image is larger. ``DataGenerator`` sets it; the default
            keeps Matterport's behaviour (the image as ``resize_image`` returns it), which
            inference configs and notebooks rely on.
        rng: ``np.random.RandomState`` for the crop, the deprecated flip, the seed of an
            imgaug augmenter's copy and the MAX_GT_INSTANCES subset (default: the global
            ``np.random``, and an imgaug augmenter's own random state, as Matterport).
            ``DataGenerator`` passes one per batch so that worker threads stay reproducible.

    Returns:
        image: [H, W, C] resized image (dtype of ``load_image``, uint8 normally).
        image_meta: float64 [IMAGE_META_SIZE], see ``compose_image_meta``.
        class_ids: int32 [N] (negative ids are crowd instances).
        bbox: int32 [N, (y1, x1, y2, x2)], from the returned full masks.
        mask: bool [H, W, N], or [MINI_MASK_SHAPE[0], MINI_MASK_SHAPE[1], N] with
            ``use_mini_mask``.

    Raises:
        TypeError: ``augmentation`` is neither albumentations nor imgaug (before loading).
        ValueError: bad ``load_image``/``load_mask`` output, a shape-changing augmentation
            or (``fixed_shape``) an image larger than IMAGE_SHAPE; messages name the image.
    """
    if isinstance(image_id, np.integer):  # ids from dataset.image_ids; plain int in messages
        image_id = int(image_id)
    where = describe_image(dataset, image_id)
    random = np.random if rng is None else rng
    if isinstance(augmentation, bool):  # Matterport's positional order had augment first
        augment, augmentation = augment or augmentation, None
    check_augmentation(augmentation, "load_image_gt(augmentation=...)")

    # Shape checked, NaN/inf rejected, non-uint8 pixels converted as Dataset.load_image
    # converts files.
    image = as_model_image(dataset.load_image(image_id), where, config.IMAGE_CHANNEL_COUNT)
    mask, class_ids = dataset.load_mask(image_id)
    mask, class_ids = check_mask(mask, class_ids, image_id, image.shape,
                                 num_classes=getattr(dataset, "num_classes", None), where=where)
    original_shape = image.shape

    image, window, scale, padding, crop = transform.resize_image(
        image,
        min_dim=config.IMAGE_MIN_DIM,
        min_scale=config.IMAGE_MIN_SCALE,
        max_dim=config.IMAGE_MAX_DIM,
        mode=config.IMAGE_RESIZE_MODE,
        rng=rng)
    if mask.shape[-1]:
        # Instances cropped away are dropped here already (cheaper than afterwards).
        mask, kept = transform.resize_mask_nonempty(mask, scale, padding, crop)
        class_ids = class_ids[kept]
    else:
        mask = np.zeros(image.shape[:2] + (0,), dtype=bool)

    if augment:
        warnings.warn("load_image_gt(augment=True) is deprecated; pass an albumentations "
                      "transform, e.g. augmentation=A.HorizontalFlip(p=0.5)",
                      DeprecationWarning, stacklevel=2)
        if random.randint(0, 2):
            image, mask = np.fliplr(image), np.fliplr(mask)
    if augmentation is not None:
        image, mask = apply_augmentation(augmentation, image, mask, where, rng)
        # Augmentation can push instances out of the image entirely (resizing and
        # cropping have dropped theirs already).
        present = mask.any(axis=0).any(axis=0)  # 40x faster than any(axis=(0, 1))
        if not present.all():  # np.take: boolean indexing of the last axis is ~5x slower
            kept = np.flatnonzero(present)
            mask, class_ids = np.take(mask, kept, axis=2), class_ids[kept]

    if class_ids.shape[0] > config.MAX_GT_INSTANCES:
        count = class_ids.shape[0]
        keep = np.sort(random.choice(count, config.MAX_GT_INSTANCES, replace=False))
        warnings.warn(f"{where} has {count} instances, more than config.MAX_GT_INSTANCES = "
                      f"{config.MAX_GT_INSTANCES}; training on a random subset of "
                      f"{config.MAX_GT_INSTANCES}. Raise MAX_GT_INSTANCES to use them all.",
                      stacklevel=2)
        mask, class_ids = np.take(mask, keep, axis=2), class_ids[keep]

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


def _expand_ranges(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ``arange(starts[i], stops[i])`` for all i, with the owner i of each."""
    counts = np.maximum(stops - starts, 0)
    owner = np.repeat(np.arange(starts.shape[0]), counts)
    first = np.cumsum(counts) - counts
    return starts[owner] + (np.arange(owner.shape[0]) - first[owner]), owner


class AnchorIndex:
    """Anchors grouped for fast "which anchors touch this box" queries (built once).

    Anchors of one size (an FPN level and ratio) are sorted by rows (top edge), then by
    left edge, so the anchors that intersect a box are a few contiguous runs found by
    binary search, for all boxes at once. Matching then costs O(anchors near the boxes),
    not O(all anchors x boxes): ~260k anchors at 1024 px and 100 boxes take a few ms.
    Works for any anchor set (no grid assumed).

    Args:
        anchors: float [A, (y1, x1, y2, x2)] in pixels.
    """

    def __init__(self, anchors: np.ndarray) -> None:
        anchors = np.asarray(anchors, dtype=np.float64).reshape(-1, 4)
        self.anchors = anchors
        self.areas = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
        heights, widths = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
        # Group by size, 4 buckets per octave of height and of width (one level and ratio
        # of a pyramid is one group; arbitrary anchors give few groups too); each group
        # searches with its largest height and width, so candidates are a superset.
        buckets = np.floor(4 * np.log2(np.maximum(np.stack([heights, widths], 1), 1e-3)))
        _, group = np.unique(buckets, axis=0, return_inverse=True)
        group = group.reshape(-1)
        count = int(group.max()) + 1 if group.shape[0] else 0
        self.group_heights = np.zeros([count])
        self.group_widths = np.zeros([count])
        np.maximum.at(self.group_heights, group, heights)
        np.maximum.at(self.group_widths, group, widths)
        self.group_area_min = np.full([count], np.inf)
        self.group_area_max = np.zeros([count])
        np.minimum.at(self.group_area_min, group, self.areas)
        np.maximum.at(self.group_area_max, group, self.areas)
        # One sorted order for all anchors: by group, then top edge (row), then left edge.
        tops, lefts = anchors[:, 0], anchors[:, 1]
        order = np.lexsort((lefts, tops, group))
        self.members = order
        group, tops, lefts = group[order], tops[order], lefts[order]
        # Rows = (group, top) runs; their keys group * row_span + (top - top_min) are sorted
        # and each group's rows lie in their own key interval.
        self.top_min = float(tops.min()) if tops.shape[0] else 0.0
        self.row_span = (float(tops.max()) - self.top_min + 4.0) if tops.shape[0] else 4.0
        new_row = np.r_[True, (group[1:] != group[:-1]) | (tops[1:] != tops[:-1])]
        row_of = np.cumsum(new_row) - 1
        self.row_keys = (group[new_row] * self.row_span + (tops[new_row] - self.top_min))
        # Anchor keys row * span + (left - x_min) + 1, likewise sorted, one interval a row.
        self.x_min = float(lefts.min()) if lefts.shape[0] else 0.0
        self.span = (float(lefts.max()) - self.x_min + 4.0) if lefts.shape[0] else 4.0
        self.keys = row_of * self.span + (lefts - self.x_min) + 1.0

    def candidate_pairs(self, boxes: np.ndarray, selected: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
        """(anchor, box) index pairs whose rectangles may overlap (a superset, 1e-6 margin).

        All groups and boxes in one pass of binary searches (no loop over groups).

        Args:
            boxes: float64 [G, (y1, x1, y2, x2)].
            selected: optional bool [groups, G]: search only these (group, box) pairs.

        Returns:
            anchor_ids, box_ids: int64 [P] each.
        """
        eps = 1e-6
        num_boxes = boxes.shape[0]
        groups = self.group_heights.shape[0]
        if not groups or not num_boxes:
            return np.zeros([0], np.int64), np.zeros([0], np.int64)
        # Every (selected) (group, box): rows whose top lies in (box_y1 - height, box_y2) ...
        if selected is None:
            g = np.repeat(np.arange(groups), num_boxes)
            b = np.tile(np.arange(num_boxes), groups)
        else:
            g, b = np.nonzero(selected)
        limit = self.row_span - 2.0
        low = g * self.row_span + np.clip(
            boxes[b, 0] - self.group_heights[g] - eps - self.top_min, -1.0, limit)
        high = g * self.row_span + np.clip(boxes[b, 2] + eps - self.top_min, -1.0, limit)
        rows, pair = _expand_ranges(np.searchsorted(self.row_keys, low, side="right"),
                                    np.searchsorted(self.row_keys, high, side="left"))
        # ... then within each row the lefts in (box_x1 - width, box_x2).
        box, width = b[pair], self.group_widths[g[pair]]
        limit = self.span - 2.0
        low = rows * self.span + np.clip(boxes[box, 1] - width - eps - self.x_min + 1.0,
                                         0.0, limit)
        high = rows * self.span + np.clip(boxes[box, 3] + eps - self.x_min + 1.0, 0.0, limit)
        positions, run = _expand_ranges(np.searchsorted(self.keys, low, side="right"),
                                        np.searchsorted(self.keys, high, side="left"))
        return self.members[positions], box[run]

    def overlaps(self, boxes: np.ndarray, floor: float = 0.0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-anchor best IoU and box, and each box's best anchors, without the [A, G] matrix.

        With ``floor`` > 0, (anchor size, box) combinations whose IoU cannot reach
        ``floor`` (area ratio below it: IoU <= smaller area / larger area) are skipped
        unless they could hold the box's best anchor: iou_max is then exact where it is
        >= floor and stays below floor elsewhere, best_anchors stay exact, and
        iou_argmax is exact only where iou_max >= floor. Small anchors around large boxes
        are most pairs, so this skips ~90 % of the work for RPN labels.

        Args:
            boxes: float [G, (y1, x1, y2, x2)].
            floor: IoU below which values need not be exact (0: everything exact).

        Returns:
            iou_max: [A] best IoU of each anchor (0 when G == 0).
            iou_argmax: [A] index of that box (the first one on ties, as np.argmax over the
                dense matrix; 0 when all IoUs are 0).
            best_anchors: sorted anchor indices that reach the best IoU of some box (all
                anchors tied for it), only for boxes whose best IoU is above 0.
        """
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        num_anchors, num_boxes = self.anchors.shape[0], boxes.shape[0]
        iou_max = np.zeros([num_anchors])
        iou_argmax = np.zeros([num_anchors], dtype=np.int64)
        if num_boxes == 0 or num_anchors == 0:
            return iou_max, iou_argmax, np.zeros([0], dtype=np.int64)
        box_areas = _box_areas(boxes)
        box_best = np.zeros([num_boxes])
        if floor > 0:
            # Upper bound of the IoU of each (group, box): smaller area / larger area.
            low = np.minimum(self.group_area_max[:, None], box_areas[None, :])
            high = np.maximum(self.group_area_min[:, None], box_areas[None, :])
            bound = np.ones_like(low)
            np.divide(low, high, out=bound, where=high > 0)
            first = bound >= floor
            a, b, iou = self._pair_ious(boxes, box_areas, first)
            np.maximum.at(box_best, b, iou)
            # A box's best anchor may lie in a skipped group only if its bound reaches the
            # best IoU found so far: search those too (tiny boxes, mostly).
            second = ~first & (bound >= box_best[None, :])
            if second.any():
                a2, b2, iou2 = self._pair_ious(boxes, box_areas, second)
                a, b, iou = np.r_[a, a2], np.r_[b, b2], np.r_[iou, iou2]
                np.maximum.at(box_best, b2, iou2)
        else:
            a, b, iou = self._pair_ious(boxes, box_areas, None)
            np.maximum.at(box_best, b, iou)

        np.maximum.at(iou_max, a, iou)
        # Ties go to the earliest box (np.argmax); IoU 0 never assigns a box.
        winner = (iou == iou_max[a]) & (iou > 0)
        first_box = np.full([num_anchors], num_boxes, dtype=np.int64)
        np.minimum.at(first_box, a[winner], b[winner])
        assigned = first_box < num_boxes
        iou_argmax[assigned] = first_box[assigned]

        best = (iou == box_best[b]) & (box_best[b] > 0)
        best_hits = np.zeros([num_anchors], dtype=bool)  # (np.unique is 30x slower)
        best_hits[a[best]] = True
        return iou_max, iou_argmax, np.flatnonzero(best_hits)

    def _pair_ious(self, boxes: np.ndarray, box_areas: np.ndarray,
                   selected: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidate pairs (see ``candidate_pairs``) and their IoUs."""
        a, b = self.candidate_pairs(boxes, selected)
        return a, b, box_iou(self.anchors[a], boxes[b], self.areas[a], box_areas[b])


def _anchor_index(anchors: np.ndarray) -> AnchorIndex:
    """The ``AnchorIndex`` of an anchors array, cached by identity.

    ``pyramid_anchors`` hands out one cached array per (config, shape), so training builds
    the index once. Other arrays are indexed on first use (a few tens of ms at 1024 px).
    Arrays must not be modified in place after their first use here.
    """
    key = id(anchors)
    entry = _ANCHOR_INDEXES.get(key)
    if entry is not None and entry[0]() is anchors:
        return entry[1]
    index = AnchorIndex(anchors)
    try:
        ref = weakref.ref(anchors)
    except TypeError:  # not weak-referenceable (e.g. a list): do not cache
        return index
    if len(_ANCHOR_INDEXES) >= 8:
        _ANCHOR_INDEXES.clear()
    _ANCHOR_INDEXES[key] = (ref, index)
    return index


_ANCHOR_INDEXES: dict[int, tuple[Any, AnchorIndex]] = {}


def build_rpn_targets(
    image_shape: Sequence[int],
    anchors: np.ndarray,
    gt_class_ids: np.ndarray,
    gt_boxes: np.ndarray,
    config: Any,
    rng: np.random.RandomState | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Label anchors positive / negative / neutral and compute the positives' box deltas.

    Matterport's rules: an anchor is positive when its IoU with a GT box is >= 0.7 or it is
    the best anchor of some GT box (all anchors tied for the best; only if that IoU is > 0,
    which Matterport did not check), negative when its best IoU is < 0.3 and it overlaps
    no crowd box (negative class id) by IoU >= 0.001. Crowd boxes are never targets. Then
    at most RPN_TRAIN_ANCHORS_PER_IMAGE // 2 positives are kept (random subset, the rest
    become neutral) and negatives fill up to RPN_TRAIN_ANCHORS_PER_IMAGE. Sampling uses
    ``rng`` (default ``np.random``). With no GT boxes every anchor is a candidate negative.

    Only the anchors near a GT box are compared with it (``AnchorIndex``, built once per
    anchors array and cached), so a 1024 px image costs milliseconds.

    Args:
        image_shape: [H, W, C] of the model input (unused; kept for Matterport's signature).
        anchors: [A, (y1, x1, y2, x2)] in pixels.
        gt_class_ids: [N] class ids; negative ids mark crowd boxes.
        gt_boxes: [N, (y1, x1, y2, x2)] in pixels.
        config: provides RPN_TRAIN_ANCHORS_PER_IMAGE and RPN_BBOX_STD_DEV.
        rng: ``np.random.RandomState`` for the sampling (default: the global ``np.random``).

    Returns:
        rpn_match: int32 [A], 1 positive, -1 negative, 0 neutral.
        rpn_bbox: float32 [RPN_TRAIN_ANCHORS_PER_IMAGE, (dy, dx, log(dh), log(dw))] divided
            by RPN_BBOX_STD_DEV; row i belongs to the i-th positive anchor in ascending
            anchor index order (the RPN box loss relies on this order); other rows zero.
    """
    del image_shape
    original_anchors = anchors
    anchors = np.asarray(anchors, dtype=np.float64).reshape(-1, 4)
    if not isinstance(original_anchors, np.ndarray) or original_anchors.shape != anchors.shape:
        original_anchors = anchors
    gt_class_ids = np.asarray(gt_class_ids).reshape(-1)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    total = int(config.RPN_TRAIN_ANCHORS_PER_IMAGE)
    rpn_match = np.zeros([anchors.shape[0]], dtype=np.int32)
    rpn_bbox = np.zeros([total, 4], dtype=np.float32)

    index = _anchor_index(original_anchors)
    crowd = gt_class_ids < 0
    if crowd.any():
        crowd_iou, _, _ = index.overlaps(gt_boxes[crowd])
        not_crowded = crowd_iou < CROWD_IOU
        gt_boxes = gt_boxes[~crowd]
    else:
        not_crowded = np.ones([anchors.shape[0]], dtype=bool)

    # IoUs below RPN_NEGATIVE_IOU only need to stay below it (their anchors are negative
    # or best anchors, which stay exact), so most anchor-box pairs are skipped.
    iou_max, _, best_anchors = index.overlaps(gt_boxes, floor=RPN_NEGATIVE_IOU)
    # Order matters: best anchors override negatives, and positives override both.
    rpn_match[(iou_max < RPN_NEGATIVE_IOU) & not_crowded] = NEGATIVE
    rpn_match[best_anchors] = POSITIVE
    rpn_match[iou_max >= RPN_POSITIVE_IOU] = POSITIVE

    # Balance the sample: at most half positives, negatives fill the rest.
    random = np.random if rng is None else rng
    positives = np.flatnonzero(rpn_match == POSITIVE)
    extra = positives.shape[0] - total // 2
    if extra > 0:
        rpn_match[random.choice(positives, extra, replace=False)] = NEUTRAL
    negatives = np.flatnonzero(rpn_match == NEGATIVE)
    extra = negatives.shape[0] - (total - int(np.sum(rpn_match == POSITIVE)))
    if extra > 0:
        rpn_match[random.choice(negatives, extra, replace=False)] = NEUTRAL

    positives = np.flatnonzero(rpn_match == POSITIVE)  # ascending anchor order
    if positives.shape[0]:
        anchor = anchors[positives]
        # Each positive's box, the first of the best on ties (np.argmax), from the exact
        # IoUs of the few positives with every box.
        gt = gt_boxes[np.argmax(box_iou(anchor[:, None], gt_boxes[None]), axis=1)]
        rpn_bbox[:positives.shape[0]] = BoxCoder(config.RPN_BBOX_STD_DEV).encode(anchor, gt)
    return rpn_match, rpn_bbox


############################################################
#  Data generator
############################################################


class DataGenerator(keras.utils.PyDataset):
    """Batches of training inputs for ``model.fit`` (a ``keras.utils.PyDataset``).

    ``self[idx]`` returns ``(inputs,)`` where ``inputs`` is the tuple of the training
    model's inputs (``mrcnn.inputs.training_inputs``), zero padded to static shapes (B = batch size, A = number of anchors,
    G = MAX_GT_INSTANCES)::

        input_image        float32 [B, H, W, C]  molded (mean pixel subtracted)
        input_image_meta   float32 [B, IMAGE_META_SIZE]
        input_rpn_match    int32   [B, A, 1]     1 / -1 / 0
        input_rpn_bbox     float32 [B, RPN_TRAIN_ANCHORS_PER_IMAGE, 4]
        input_gt_class_ids int32   [B, G]
        input_gt_boxes     float32 [B, G, 4]     pixels (y1, x1, y2, x2)
        input_gt_masks     bool    [B, mh, mw, G] MINI_MASK_SHAPE or IMAGE_SHAPE[:2]

    ``mrcnn.inspection.InspectionGenerator`` adds Matterport's debugging extras (random
    ROIs, the heads' targets) to these batches.

    The last batch of an epoch is filled up with images from the start of the epoch's
    order, so every batch has the same shape (a new shape would retrace the model).

    Workers and randomness: Keras calls ``self[idx]`` from ``workers`` threads (or
    processes) in any order, so each batch draws its randomness (crop position, anchor
    sampling, the MAX_GT_INSTANCES subset, substitutes for broken images) from its own
    ``np.random.RandomState`` seeded by (seed, epoch, idx), never from the shared global
    state: a seeded run gives the same batches whatever the number of workers.
    An imgaug augmenter is copied and seeded per image from the batch's state, so it is
    reproduced too; albumentations transforms keep their own generator (seed them with
    ``A.Compose(..., seed=...)``; with several workers their draws interleave).

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
        augmentation: albumentations transform or imgaug augmenter applied to images and
            masks; anything else raises a TypeError here, before any image is loaded.
        no_augmentation_sources: dataset sources whose images are never augmented.
        batch_size: images per batch (default ``config.BATCH_SIZE``).
        seed: seed of the epoch order and of every batch's randomness (default: drawn from
            ``np.random``, so seeding NumPy first makes a run reproducible).
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
        augmentation: Any = None,
        no_augmentation_sources: Sequence[str] | None = None,
        batch_size: int | None = None,
        seed: int | None = None,
        steps: int | None = None,
        **pydataset_kwargs: Any,
    ) -> None:
        pydataset_kwargs.setdefault("workers", int(config.DATA_WORKERS))
        pydataset_kwargs.setdefault("use_multiprocessing", bool(config.DATA_USE_MULTIPROCESSING))
        check_augmentation(augmentation, "DataGenerator(augmentation=...)")
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
        self.batch_size = int(batch_size or config.BATCH_SIZE)
        if steps is not None and int(steps) < 1:
            raise ValueError(f"DataGenerator: steps must be >= 1, got {steps}")
        self.steps = int(steps) if steps is not None else None
        self.use_mini_mask = bool(config.USE_MINI_MASK)
        self._augment = False  # Matterport's deprecated fliplr flag (inspection.data_generator)

        self.image_shape = tuple(int(s) for s in config.IMAGE_SHAPE)
        self.backbone_shapes = compute_backbone_shapes(config, self.image_shape)
        # Pixel anchors, the same (cached) array the model's AnchorsLayer normalizes.
        self.anchors = pyramid_anchors(config, self.image_shape, normalized=False)

        self.seed = int(seed) if seed is not None else int(np.random.randint(2**31 - 1))
        self.epoch = 0
        self._rng = np.random.default_rng(self.seed)
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
        self.epoch += 1

    def batch_rng(self, idx: int) -> np.random.RandomState:
        """The random state of batch ``idx`` of the current epoch (a function of seed, epoch
        and idx only, so worker threads and processes reproduce it in any order)."""
        sequence = np.random.SeedSequence([self.seed, self.epoch, int(idx)])
        return np.random.RandomState(np.random.MT19937(sequence))

    def batch_image_ids(self, idx: int) -> np.ndarray:
        """Image ids of batch ``idx`` of the current epoch (wrapping around at the end)."""
        start = idx * self.batch_size
        return np.take(self.order, np.arange(start, start + self.batch_size), mode="wrap")

    def __getitem__(self, idx: int) -> tuple:
        if not 0 <= idx < len(self):
            raise IndexError(f"batch index {idx} out of range [0, {len(self)})")
        inputs, outputs = self.load_batch(self.batch_image_ids(idx), rng=self.batch_rng(idx))
        if outputs:
            return tuple(inputs), tuple(outputs)
        return (tuple(inputs),)

    # -- one image -----------------------------------------------------------------------
    def _augmentation_for(self, image_id: int) -> Any:
        if self.augmentation is None or not self.no_augmentation_sources:
            return self.augmentation
        source = self.dataset.image_info[image_id]["source"]
        return None if source in self.no_augmentation_sources else self.augmentation

    def load_example(self, image_id: int, rng: np.random.RandomState | None = None
                     ) -> dict[str, Any]:
        """Ground truth and targets of one image (no error handling).

        Args:
            image_id: internal image id.
            rng: random state of the batch (default: the global ``np.random``).

        Returns:
            dict with image, image_meta, gt_class_ids, gt_boxes, gt_masks (see
            ``load_image_gt``), rpn_match, rpn_bbox.
        """
        config = self.config
        image, image_meta, gt_class_ids, gt_boxes, gt_masks = load_image_gt(
            self.dataset, config, image_id, augmentation=self._augmentation_for(image_id),
            use_mini_mask=self.use_mini_mask, augment=self._augment, fixed_shape=True,
            rng=rng)
        rpn_match, rpn_bbox = build_rpn_targets(image.shape, self.anchors, gt_class_ids,
                                                gt_boxes, config, rng=rng)
        return dict(image=image, image_meta=image_meta, gt_class_ids=gt_class_ids,
                    gt_boxes=gt_boxes, gt_masks=gt_masks, rpn_match=rpn_match,
                    rpn_bbox=rpn_bbox)

    def _load_example_or_substitute(self, image_id: int, rng: np.random.RandomState | None
                                    ) -> dict[str, Any]:
        """``load_example``, replacing a failing image by a random other one (see class doc)."""
        failures = 0
        while True:
            try:
                return self.load_example(image_id, rng)
            except Exception as err:  # user dataset code can raise anything
                failures += 1
                where = describe_image(self.dataset, image_id)
                if failures > self.max_consecutive_failures:
                    raise RuntimeError(
                        f"DataGenerator: {failures} images in a row failed to load; the "
                        f"last was {where}: {type(err).__name__}: {err}") from err
                logger.warning("Skipping %s, it failed to load: %s: %s. Using a random "
                               "other image instead.", where, type(err).__name__, err)
                if rng is None:
                    image_id = int(self._rng.choice(self.image_ids))
                else:
                    image_id = int(self.image_ids[rng.randint(self.image_ids.shape[0])])

    # -- batches -------------------------------------------------------------------------
    def load_batch(self, image_ids: Sequence[int], rng: np.random.RandomState | None = None
                   ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Build Matterport's ``(inputs, outputs)`` pair for some images.

        Args:
            image_ids: internal image ids, one per batch slot.
            rng: random state of the batch (``self[idx]`` passes ``batch_rng(idx)``;
                default: the global ``np.random``, as Matterport's ``data_generator``).

        Returns:
            inputs: [images, image_meta, rpn_match, rpn_bbox, gt_class_ids, gt_boxes,
                gt_masks] (see the class doc), then what ``batch_extras`` adds.
            outputs: what ``batch_extras`` returns ([] here).
        """
        config = self.config
        batch = len(image_ids)
        specs = inputs_spec.training_inputs(config, self.use_mini_mask)
        arrays = {}
        for spec in specs:
            shape = tuple(self.anchors.shape[0] if s is None else s for s in spec.shape)
            # Every image slot is written in full below (load_image_gt pads to IMAGE_SHAPE).
            alloc = np.empty if spec.name == inputs_spec.IMAGE else np.zeros
            arrays[spec.name] = alloc((batch,) + shape, dtype=spec.dtype)
        images, gt_masks = arrays[inputs_spec.IMAGE], arrays[inputs_spec.GT_MASKS]
        gt_class_ids, gt_boxes = arrays[inputs_spec.GT_CLASS_IDS], arrays[inputs_spec.GT_BOXES]
        examples = []

        for b, image_id in enumerate(image_ids):
            ex = self._load_example_or_substitute(int(image_id), rng)
            count = ex["gt_class_ids"].shape[0]  # <= MAX_GT_INSTANCES (load_image_gt)
            transform.subtract_mean(ex["image"], config.MEAN_PIXEL, images[b])  # mold_image
            arrays[inputs_spec.IMAGE_META][b] = ex["image_meta"]
            arrays[inputs_spec.RPN_MATCH][b, :, 0] = ex["rpn_match"]
            arrays[inputs_spec.RPN_BBOX][b] = ex["rpn_bbox"]
            gt_class_ids[b, :count] = ex["gt_class_ids"]
            gt_boxes[b, :count] = ex["gt_boxes"]
            gt_masks[b, :, :, :count] = ex["gt_masks"]
            examples.append(ex)

        extra_inputs, outputs = self.batch_extras(examples)
        return [arrays[spec.name] for spec in specs] + extra_inputs, outputs

    def batch_extras(self, examples: list[dict[str, Any]]
                     ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """What a subclass adds to a batch (``mrcnn.inspection.InspectionGenerator``).

        Args:
            examples: the batch's ``load_example`` dicts, in slot order.

        Returns:
            (arrays appended to the inputs, the outputs); ([], []) for training batches.
        """
        return [], []
