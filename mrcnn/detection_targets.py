"""DetectionTargetLayer: sample the training ROIs of the heads and build their targets.

Static shapes throughout: positives and negatives are drawn with random scores + ``top_k``
into fixed slots (no boolean masks, no dynamic gathers), and unused slots hold zeros.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from mrcnn import ops as mops
from mrcnn.layer_config import PlainConfigMixin


def _take_rows(values, indices):
    """Batched row gather: values [B, N, ...], indices [B, K] -> [B, K, ...]."""
    idx = indices
    for _ in range(len(values.shape) - 2):
        idx = ops.expand_dims(idx, -1)
    idx = ops.broadcast_to(idx, (ops.shape(indices)[0], indices.shape[1], *values.shape[2:]))
    return ops.take_along_axis(values, idx, axis=1)


def _random_pick(candidates, count: int, seed_generator):
    """Pick up to ``count`` random True positions per row.

    Args:
        candidates: [B, N] bool.
        count: static number of slots.
        seed_generator: a keras SeedGenerator.

    Returns:
        indices [B, count] int32 and ok [B, count] bool (False where fewer candidates).
    """
    noise = keras.random.uniform(ops.shape(candidates), seed=seed_generator)
    key = ops.where(candidates, noise + 1.0, 0.0)  # candidates rank above everything else
    num = candidates.shape[1]
    if count > num:
        # Fewer rows than slots (e.g. POST_NMS_ROIS_TRAINING < TRAIN_ROIS_PER_IMAGE):
        # top_k needs k <= num, so pad with non-candidates; their slots come out not ok.
        key = ops.pad(key, [[0, 0], [0, count - num]])
    values, indices = ops.top_k(key, k=count, sorted=True)
    # Padding columns do not exist in the caller's arrays: point them at row 0 (masked).
    indices = ops.where(indices < num, indices, 0)
    return ops.cast(indices, "int32"), values > 0.0


def positive_slots(config) -> int:
    """Number of ROI slots reserved for positives: int(TRAIN_ROIS_PER_IMAGE * ratio)."""
    return int(config.TRAIN_ROIS_PER_IMAGE * config.ROI_POSITIVE_RATIO)


def detection_targets_graph(proposals, gt_class_ids, gt_boxes, gt_masks, config,
                            seed_generator):
    """Sample ROIs and build class, box and mask targets for a batch.

    Args:
        proposals: [B, N, 4] normalized, zero rows are padding.
        gt_class_ids: [B, G] int; 0 = padding, negative = crowd (excluded as Matterport).
        gt_boxes: [B, G, 4] normalized.
        gt_masks: [B, mh, mw, G] bool/float (mini masks when USE_MINI_MASK).
        config: the ``Config``.
        seed_generator: keras SeedGenerator for the sampling.

    Returns:
        rois [B, T, 4], target_class_ids [B, T] int32, target_deltas [B, T, 4] float32
        (scaled by 1/BBOX_STD_DEV), target_masks [B, P, MASK_H, MASK_W] float32 in {0, 1}.
        T = TRAIN_ROIS_PER_IMAGE: the first P = ``int(T * ROI_POSITIVE_RATIO)`` slots hold
        the positives, the rest the negatives; unused slots are all zeros (rois included).
        Mask targets exist for the P positive slots only: the mask head is trained on
        positives alone, so it runs on ``rois[:, :P]`` (a third of Matterport's mask-head
        work in training, same loss).
    """
    gt_class_ids = ops.cast(gt_class_ids, "int32")
    gt_boxes = ops.cast(gt_boxes, "float32")
    proposals = ops.cast(proposals, "float32")
    gt_valid = ops.any(gt_boxes != 0, axis=-1) & (gt_class_ids != 0)
    non_crowd = gt_valid & (gt_class_ids > 0)
    crowd = gt_valid & (gt_class_ids < 0)
    if config.TRAIN_ROIS_INCLUDE_GT:
        # Non-crowd GT boxes join the candidates (zeroed otherwise: they are then padding).
        proposals = ops.concatenate(
            [proposals, ops.where(non_crowd[..., None], gt_boxes, 0.0)], axis=1)
    valid = ops.any(proposals != 0, axis=-1)

    iou = mops.overlaps(proposals, gt_boxes)  # [B, N, G]
    iou_non_crowd = ops.where(non_crowd[:, None, :], iou, -1.0)
    best_iou = ops.max(iou_non_crowd, axis=2)
    best_gt = ops.cast(ops.argmax(iou_non_crowd, axis=2), "int32")
    crowd_iou = ops.max(ops.where(crowd[:, None, :], iou, 0.0), axis=2)

    positive = valid & (best_iou >= 0.5)
    # Proposals that touch a crowd are neither positive (excluded above) nor negative.
    negative = valid & (best_iou < 0.5) & (crowd_iou < 0.001)

    rois_per_image = int(config.TRAIN_ROIS_PER_IMAGE)
    pos_slots = positive_slots(config)
    neg_slots = rois_per_image - pos_slots
    pos_idx, pos_ok = _random_pick(positive, pos_slots, seed_generator)
    neg_idx, neg_ok = _random_pick(negative, neg_slots, seed_generator)
    # Keep Matterport's balance: negatives = positives * (1/ratio - 1).
    num_pos = ops.sum(ops.cast(pos_ok, "float32"), axis=1)
    num_neg = ops.cast(num_pos / config.ROI_POSITIVE_RATIO, "int32") - ops.cast(num_pos, "int32")
    neg_ok = neg_ok & (ops.arange(neg_slots, dtype="int32")[None, :] < num_neg[:, None])

    pos_rois = ops.where(pos_ok[..., None], _take_rows(proposals, pos_idx), 0.0)
    neg_rois = ops.where(neg_ok[..., None], _take_rows(proposals, neg_idx), 0.0)
    rois = ops.concatenate([pos_rois, neg_rois], axis=1)

    # Positive targets: class, deltas and mask of the best-matching GT.
    roi_gt = ops.take_along_axis(best_gt, pos_idx, axis=1)  # [B, P]
    roi_gt_boxes = _take_rows(gt_boxes, roi_gt)
    roi_class = ops.where(pos_ok, ops.take_along_axis(gt_class_ids, roi_gt, axis=1), 0)
    deltas = mops.BoxCoder(config.BBOX_STD_DEV).encode(pos_rois, roi_gt_boxes)
    deltas = ops.where(pos_ok[..., None], deltas, 0.0)

    masks = _mask_targets(pos_rois, roi_gt, roi_gt_boxes, gt_masks, config)
    masks = ops.where(pos_ok[..., None, None], masks, 0.0)

    batch = ops.shape(rois)[0]
    target_class_ids = ops.concatenate(
        [roi_class, ops.zeros((batch, neg_slots), "int32")], axis=1)
    target_deltas = ops.concatenate([deltas, ops.zeros((batch, neg_slots, 4), "float32")],
                                    axis=1)
    return [ops.stop_gradient(t) for t in (rois, target_class_ids, target_deltas, masks)]


def _mask_targets(rois, roi_gt, roi_gt_boxes, gt_masks, config):
    """Crop each positive ROI from its GT mask and resize to MASK_SHAPE, binarized at 0.5."""
    batch, num_gt = ops.shape(gt_masks)[0], gt_masks.shape[3]
    mh, mw = gt_masks.shape[1], gt_masks.shape[2]
    # [B, mh, mw, G] -> [B*G, mh, mw, 1]: one single-channel image per GT instance.
    flat_masks = ops.reshape(ops.transpose(ops.cast(gt_masks, "float32"), (0, 3, 1, 2)),
                             (-1, mh, mw, 1))
    boxes = rois
    if config.USE_MINI_MASK:
        # Mini masks cover only their GT box: express the ROI in that box's unit frame.
        y1, x1, y2, x2 = (boxes[..., i] for i in range(4))
        gy1, gx1, gy2, gx2 = (roi_gt_boxes[..., i] for i in range(4))
        gh = ops.maximum(gy2 - gy1, 1e-6)
        gw = ops.maximum(gx2 - gx1, 1e-6)
        boxes = ops.stack([(y1 - gy1) / gh, (x1 - gx1) / gw, (y2 - gy1) / gh,
                           (x2 - gx1) / gw], axis=-1)
    box_index = ops.arange(batch, dtype="int32")[:, None] * num_gt + roi_gt  # [B, P]
    slots = rois.shape[1]
    crops = mops.crop_and_resize(flat_masks, ops.reshape(boxes, (-1, 4)),
                                 ops.reshape(box_index, (-1,)), tuple(config.MASK_SHAPE))
    crops = ops.reshape(crops, (-1, slots, *config.MASK_SHAPE))
    # Round like Matterport (tf.round, half to even) so the BCE target is binary. On [0, 1]
    # that is ``> 0.5``: a sample exactly halfway between a 0 and a 1 pixel is background
    # (``>= 0.5`` rounded it up, unlike Matterport).
    return ops.cast(crops > 0.5, "float32")


@keras.saving.register_keras_serializable(package="mrcnn")
class DetectionTargetLayer(PlainConfigMixin, layers.Layer):
    """Sample TRAIN_ROIS_PER_IMAGE ROIs per image and compute their targets (training only).

    Args:
        config: a ``Config`` to read the values below from (Matterport's signature).
        seed: seed of the sampling (None: drawn from Keras' global seed).
        train_rois_per_image, roi_positive_ratio, bbox_std_dev, mask_shape, use_mini_mask,
        train_rois_include_gt: the Config values (keyword arguments, see
            ``mrcnn.layer_config``).

    Call args:
        inputs: [proposals [B, N, 4], gt_class_ids [B, G], gt_boxes [B, G, 4] normalized,
            gt_masks [B, mh, mw, G]].

    Returns:
        [rois, target_class_ids, target_deltas, target_masks]; see
        ``detection_targets_graph``.
    """

    CONFIG_KEYS = ("TRAIN_ROIS_PER_IMAGE", "ROI_POSITIVE_RATIO", "BBOX_STD_DEV", "MASK_SHAPE",
                   "USE_MINI_MASK", "TRAIN_ROIS_INCLUDE_GT")

    def __init__(self, config=None, seed: int | None = None, **kwargs):
        super().__init__(**self._take_config(config, kwargs))
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        proposals, gt_class_ids, gt_boxes, gt_masks = inputs
        return detection_targets_graph(proposals, gt_class_ids, gt_boxes, gt_masks,
                                       self.config, self.seed_generator)

    def compute_output_shape(self, input_shape):
        batch = input_shape[0][0]
        t = self.config.TRAIN_ROIS_PER_IMAGE
        p = positive_slots(self.config)
        return [(batch, t, 4), (batch, t), (batch, t, 4), (batch, p, *self.config.MASK_SHAPE)]

    def compute_output_spec(self, inputs):
        shapes = self.compute_output_shape([x.shape for x in inputs])
        dtypes = ["float32", "int32", "float32", "float32"]
        return [keras.KerasTensor(s, dtype=d) for s, d in zip(shapes, dtypes)]

    def get_config(self):
        base = super().get_config()
        base.update(seed=self.seed)
        return base
