"""ProposalLayer: turn RPN scores and deltas into a fixed number of proposals (layer "ROI").

Steps: keep the PRE_NMS_LIMIT best-scoring anchors, apply their deltas (scaled by
RPN_BBOX_STD_DEV), clip to the image, run NMS and pad to ``proposal_count`` with zero boxes.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from mrcnn import ops as mops
from mrcnn.layer_config import PlainConfigMixin
from mrcnn.ops.boxes import clamp_deltas


def refine_top_anchors(rpn_probs, rpn_bbox, anchors, pre_nms_limit: int, bbox_std_dev):
    """Apply the RPN deltas to the best-scoring anchors and clip them to the image.

    Args:
        rpn_probs: [B, A, 2] background / foreground probabilities.
        rpn_bbox: [B, A, 4] deltas.
        anchors: [B, A, 4] normalized anchors.
        pre_nms_limit: how many top anchors to keep (capped at A).
        bbox_std_dev: RPN_BBOX_STD_DEV, the scale of the deltas.

    Returns:
        boxes [B, K, 4] normalized refined anchors clipped to [0, 1], scores [B, K] and
        their anchor indices [B, K], K = min(pre_nms_limit, A), best first.
    """
    scores = rpn_probs[:, :, 1]
    k = min(int(pre_nms_limit), int(anchors.shape[1]))
    scores, ix = ops.top_k(scores, k=k, sorted=True)
    deltas = ops.take_along_axis(rpn_bbox, ix[..., None], axis=1)
    deltas = ops.cast(deltas, "float32") * np.asarray(bbox_std_dev, np.float32)
    pre_anchors = ops.take_along_axis(anchors, ix[..., None], axis=1)
    boxes = mops.apply_box_deltas(pre_anchors, clamp_deltas(deltas))
    boxes = mops.clip_boxes(boxes, np.array([0, 0, 1, 1], np.float32))
    return boxes, scores, ix


@keras.saving.register_keras_serializable(package="mrcnn")
class ProposalLayer(PlainConfigMixin, layers.Layer):
    """Select ``proposal_count`` proposals from the RPN output with NMS.

    Args:
        proposal_count: number of output proposals (POST_NMS_ROIS_TRAINING / _INFERENCE).
        nms_threshold: IoU threshold of the NMS (RPN_NMS_THRESHOLD).
        config: a ``Config`` to read the values below from (Matterport's signature).
        pre_nms_limit, rpn_bbox_std_dev: Config.PRE_NMS_LIMIT, Config.RPN_BBOX_STD_DEV
            (keyword arguments; see ``mrcnn.layer_config``).

    Call args:
        inputs: [rpn_probs [B, A, 2], rpn_bbox [B, A, 4], anchors [B, A, 4] normalized].

    Returns:
        [B, proposal_count, (y1, x1, y2, x2)] normalized, best first, zero rows as padding.
    """

    CONFIG_KEYS = ("PRE_NMS_LIMIT", "RPN_BBOX_STD_DEV")

    def __init__(self, proposal_count: int, nms_threshold: float, config=None, **kwargs):
        super().__init__(**self._take_config(config, kwargs))
        self.proposal_count = int(proposal_count)
        self.nms_threshold = float(nms_threshold)

    def call(self, inputs):
        rpn_probs, rpn_bbox, anchors = inputs
        boxes, scores, _ = refine_top_anchors(rpn_probs, rpn_bbox, anchors,
                                              self.config.PRE_NMS_LIMIT,
                                              self.config.RPN_BBOX_STD_DEV)
        boxes = ops.stop_gradient(boxes)
        indices, valid = mops.non_max_suppression_padded(
            boxes, scores, self.proposal_count, self.nms_threshold)
        proposals = ops.take_along_axis(boxes, indices[..., None], axis=1)
        return ops.where(valid[..., None], proposals, 0.0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.proposal_count, 4)

    def get_config(self):
        base = super().get_config()
        base.update(proposal_count=self.proposal_count, nms_threshold=self.nms_threshold)
        return base
