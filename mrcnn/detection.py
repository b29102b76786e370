"""DetectionLayer: final boxes from the box head, per-class NMS in one call (inference only)."""

from __future__ import annotations

import keras
from keras import layers, ops

from mrcnn import ops as mops
from mrcnn.layer_config import PlainConfigMixin
from mrcnn.transform import parse_image_meta_graph


def refine_detections_graph(rois, probs, deltas, window, config):
    """Classify and refine ROIs, filter, and run per-class NMS; batched, static shapes.

    Args:
        rois: [B, N, 4] normalized proposals.
        probs: [B, N, C] class probabilities.
        deltas: [B, N, C, 4] class-specific box deltas.
        window: [B, 4] normalized image window (the part that is not padding).
        config: the ``Config``.

    Returns:
        [B, DETECTION_MAX_INSTANCES, (y1, x1, y2, x2, class_id, score)] normalized boxes,
        best first, zero rows as padding.
    """
    rois = ops.cast(rois, "float32")
    probs = ops.cast(probs, "float32")
    # Matterport ("argmax"): the most probable of all classes, so an ROI that is rather
    # background is gone below. "foreground" (torchvision, detectron2): the most probable
    # object class, even where background is likelier; DETECTION_MIN_CONFIDENCE decides.
    first = 1 if config.DETECTION_SCORE_MODE == "foreground" else 0
    class_ids = ops.cast(ops.argmax(probs[:, :, first:], axis=2), "int32") + first  # [B, N]
    scores = ops.max(probs[:, :, first:], axis=2)
    class_deltas = ops.take_along_axis(
        ops.cast(deltas, "float32"), class_ids[:, :, None, None], axis=2)[:, :, 0]
    boxes = mops.BoxCoder(config.BBOX_STD_DEV).decode(rois, class_deltas)
    boxes = mops.clip_boxes(boxes, window[:, None, :])

    keep = (class_ids > 0) & ops.any(rois != 0, axis=-1)
    if config.DETECTION_MIN_CONFIDENCE:
        keep = keep & (scores >= config.DETECTION_MIN_CONFIDENCE)
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    keep = keep & (area > 0)
    # Per-class NMS in one call: shifting each class's boxes by 2*class_id puts different
    # classes far apart (normalized boxes lie in [0, 1]), so they never suppress each other.
    offset = ops.cast(class_ids, "float32")[..., None] * 2.0
    nms_boxes = ops.where(keep[..., None], boxes + offset, 0.0)
    nms_scores = ops.where(keep, scores, -1.0)
    indices, valid = mops.non_max_suppression_padded(
        nms_boxes, nms_scores, config.DETECTION_MAX_INSTANCES,
        config.DETECTION_NMS_THRESHOLD, score_threshold=-0.5)

    def take(x):
        return ops.take_along_axis(x, indices, axis=1)

    out = ops.concatenate([
        ops.take_along_axis(boxes, indices[..., None], axis=1),
        ops.cast(take(class_ids), "float32")[..., None],
        take(scores)[..., None],
    ], axis=-1)
    return ops.where(valid[..., None], out, 0.0)


@keras.saving.register_keras_serializable(package="mrcnn")
class DetectionLayer(PlainConfigMixin, layers.Layer):
    """Turn classified, refined ROIs into final detections (layer "mrcnn_detection").

    Args:
        config: a ``Config`` to read the values below from (Matterport's signature).
        bbox_std_dev, detection_min_confidence, detection_max_instances,
        detection_nms_threshold, detection_score_mode: the Config values (keyword
            arguments, see ``mrcnn.layer_config``). A layer saved before
            detection_score_mode existed loads with "argmax", what it did then.

    Call args:
        inputs: [rois [B, N, 4], mrcnn_class [B, N, C], mrcnn_bbox [B, N, C, 4],
            image_meta [B, META]].

    Returns:
        [B, DETECTION_MAX_INSTANCES, (y1, x1, y2, x2, class_id, score)] in normalized
        coordinates, zero-padded.
    """

    CONFIG_KEYS = ("BBOX_STD_DEV", "DETECTION_MIN_CONFIDENCE", "DETECTION_MAX_INSTANCES",
                   "DETECTION_NMS_THRESHOLD", "DETECTION_SCORE_MODE")

    def __init__(self, config=None, **kwargs):
        if config is None:
            kwargs.setdefault("detection_score_mode", "argmax")
        super().__init__(**self._take_config(config, kwargs))

    def call(self, inputs):
        rois, mrcnn_class, mrcnn_bbox, image_meta = inputs
        meta = parse_image_meta_graph(ops.cast(image_meta, "float32"))
        image_hw = meta["image_shape"][:, :2]
        # [B, 1, 4] windows pair with [B, 2] shapes in norm_boxes' batched convention.
        window = mops.norm_boxes(meta["window"][:, None, :], image_hw)[:, 0]
        return refine_detections_graph(rois, mrcnn_class, mrcnn_bbox, window, self.config)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.config.DETECTION_MAX_INSTANCES, 6)
