"""The five Mask R-CNN losses, weighted instead of boolean-masked (static shapes).

Every loss is a mean over the entries that count (non-neutral anchors, positive ROIs, ...)
and is 0, not NaN, when none does (an image without instances, say). All math is float32,
whatever the mixed-precision policy.

Under ``tf.distribute`` a replica sees part of the batch, and Keras sums the replicas'
gradients: each loss is then the replica's *share* of the global mean (its own sum over the
count of all replicas, ``ops.distribute.replica_sum``), so the shares add up to exactly the
single-device loss of the global batch. Elsewhere (one device, JAX's SPMD) it is the mean.
"""

from __future__ import annotations

from keras import ops

from mrcnn.ops.distribute import replica_sum


def _weighted_mean(values, weights, per_weight: float = 1.0):
    """sum(values * weights) / max(per_weight * sum(weights), 1), the count over replicas."""
    weights = ops.cast(weights, "float32")
    total = ops.sum(ops.cast(values, "float32") * weights)
    return total / ops.maximum(per_weight * replica_sum(ops.sum(weights)), 1.0)


def smooth_l1(y_true, y_pred):
    """Element-wise smooth L1 (Huber with delta 1)."""
    diff = ops.abs(ops.cast(y_true, "float32") - ops.cast(y_pred, "float32"))
    return ops.where(diff < 1.0, 0.5 * diff * diff, diff - 0.5)


def rpn_class_loss(rpn_match, rpn_class_logits):
    """RPN anchor classifier loss: cross-entropy over positive and negative anchors.

    Args:
        rpn_match: [B, A, 1] int, 1 positive, -1 negative, 0 neutral.
        rpn_class_logits: [B, A, 2] background / foreground logits.

    Returns:
        Scalar loss.
    """
    match = ops.reshape(ops.cast(rpn_match, "int32"), ops.shape(rpn_match)[:2])
    target = ops.cast(match == 1, "int32")
    ce = ops.sparse_categorical_crossentropy(target, ops.cast(rpn_class_logits, "float32"),
                                             from_logits=True)
    return _weighted_mean(ce, match != 0)


def rpn_bbox_loss(target_bbox, rpn_match, rpn_bbox):
    """RPN box regression loss on the positive anchors.

    Args:
        target_bbox: [B, T, 4] deltas of the positive anchors, in ascending anchor order,
            zero-padded (``data.build_rpn_targets``).
        rpn_match: [B, A, 1] anchor labels.
        rpn_bbox: [B, A, 4] predicted deltas.

    Returns:
        Scalar loss: smooth L1 averaged over the positive anchors' coordinates.
    """
    match = ops.reshape(ops.cast(rpn_match, "int32"), ops.shape(rpn_match)[:2])
    num_anchors = rpn_bbox.shape[1]
    slots = target_bbox.shape[1]
    # Rank positives by ascending anchor index (the order of the targets) with top_k on
    # a descending key; non-positives get key 0 and fall after them.
    key = ops.where(match == 1, float(num_anchors) - ops.arange(num_anchors, dtype="float32"),
                    0.0)
    values, idx = ops.top_k(key, k=min(slots, num_anchors), sorted=True)
    if slots > num_anchors:  # tiny images: fewer anchors than target rows
        target_bbox = target_bbox[:, :num_anchors]
    pred = ops.take_along_axis(ops.cast(rpn_bbox, "float32"), idx[..., None], axis=1)
    loss = ops.sum(smooth_l1(target_bbox, pred), axis=-1)
    return _weighted_mean(loss, values > 0, per_weight=4.0)


def mrcnn_class_loss(target_class_ids, pred_class_logits, active_class_ids, rois):
    """Classifier loss over the sampled ROIs.

    As Matterport, the loss of an ROI whose *predicted* class is not active for the image's
    dataset (e.g. a COCO class on a balloon image) is ignored; unlike Matterport, the active
    classes are taken per image and padding ROIs (all-zero boxes) are ignored.

    Args:
        target_class_ids: [B, T] int.
        pred_class_logits: [B, T, C].
        active_class_ids: [B, C], 1 for classes of the image's source.
        rois: [B, T, 4] sampled ROIs (zero rows are padding).

    Returns:
        Scalar loss.
    """
    logits = ops.cast(pred_class_logits, "float32")
    ce = ops.sparse_categorical_crossentropy(ops.cast(target_class_ids, "int32"), logits,
                                             from_logits=True)
    pred_class = ops.argmax(logits, axis=2)
    pred_active = ops.take_along_axis(ops.cast(active_class_ids, "float32"),
                                      ops.cast(pred_class, "int32"), axis=1)
    valid = ops.cast(ops.any(rois != 0, axis=-1), "float32")
    return _weighted_mean(ce, pred_active * valid)


def mrcnn_bbox_loss(target_bbox, target_class_ids, pred_bbox):
    """Box refinement loss on positive ROIs, for their ground-truth class only.

    Args:
        target_bbox: [B, T, 4].
        target_class_ids: [B, T] int.
        pred_bbox: [B, T, C, 4].

    Returns:
        Scalar loss: smooth L1 averaged over the positive ROIs' coordinates.
    """
    class_ids = ops.cast(target_class_ids, "int32")
    pred = ops.take_along_axis(ops.cast(pred_bbox, "float32"), class_ids[:, :, None, None],
                               axis=2)[:, :, 0]
    loss = ops.sum(smooth_l1(target_bbox, pred), axis=-1)
    return _weighted_mean(loss, class_ids > 0, per_weight=4.0)


def mrcnn_mask_loss(target_masks, target_class_ids, pred_masks):
    """Binary cross-entropy of the GT class's mask on positive ROIs.

    Args:
        target_masks: [B, T, h, w] in {0, 1}.
        target_class_ids: [B, T] int.
        pred_masks: [B, T, h, w, C] probabilities.

    Returns:
        Scalar loss: mean BCE over the pixels of positive ROIs.
    """
    class_ids = ops.cast(target_class_ids, "int32")
    num_classes = pred_masks.shape[-1]
    one_hot = ops.one_hot(class_ids, num_classes, dtype="float32")[:, :, None, None, :]
    pred = ops.sum(ops.cast(pred_masks, "float32") * one_hot, axis=-1)  # [B, T, h, w]
    bce = ops.binary_crossentropy(ops.cast(target_masks, "float32"), pred)
    per_roi = ops.mean(bce, axis=(2, 3))
    return _weighted_mean(per_roi, class_ids > 0)
