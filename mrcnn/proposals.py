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
from mrcnn.ops.boxes import BoxCoder


def refine_top_anchors(rpn_probs, rpn_bbox, anchors, pre_nms_limit: int,
                       bbox_std_dev) -> dict:
    """Apply the RPN deltas to the best-scoring anchors and clip them to the image.

    Args:
        rpn_probs: [B, A, 2] background / foreground probabilities.
        rpn_bbox: [B, A, 4] deltas.
        anchors: [B, A, 4] normalized anchors.
        pre_nms_limit: how many top anchors to keep (capped at A).
        bbox_std_dev: RPN_BBOX_STD_DEV, the scale of the deltas.

    Returns:
        Dict of the steps, K = min(pre_nms_limit, A), best first: ``scores`` [B, K] and
        their ``anchor_ix`` [B, K]; ``pre_nms_anchors``, ``refined_anchors`` (deltas
        applied, log-scales clamped at MAX_LOG_SCALE) and ``refined_anchors_clipped``
        (clipped to [0, 1]), all [B, K, 4] normalized.
    """
    scores = rpn_probs[:, :, 1]
    k = min(int(pre_nms_limit), int(anchors.shape[1]))
    scores, ix = ops.top_k(scores, k=k, sorted=True)
    deltas = ops.take_along_axis(rpn_bbox, ix[..., None], axis=1)
    pre_anchors = ops.take_along_axis(anchors, ix[..., None], axis=1)
    refined = BoxCoder(bbox_std_dev).decode(pre_anchors, ops.cast(deltas, "float32"))
    clipped = mops.clip_boxes(refined, np.array([0, 0, 1, 1], np.float32))
    return {"scores": scores, "anchor_ix": ix, "pre_nms_anchors": pre_anchors,
            "refined_anchors": refined, "refined_anchors_clipped": clipped}


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

    # Matterport's names of the layer's tensors (``ROI/<name>:0``, what its notebooks fetch
    # with ``MaskRCNN.ancestor``) -> (key of ``steps()``, key of the valid mask or None).
    # A masked step is given as Matterport's NMS op gave it: image 0's kept indices, 1-D.
    # TF 1.3, 1.4-1.8 and 1.9+ named the NMS output three ways; all three resolve here, as
    # notebooks in use hard-code each of them.
    MATTERPORT_TENSORS = {
        "pre_nms_anchors:0": ("pre_nms_anchors", None),
        "refined_anchors:0": ("refined_anchors", None),
        "refined_anchors_clipped:0": ("refined_anchors_clipped", None),
        "top_anchors:0": ("scores", None),
        "top_anchors:1": ("anchor_ix", None),
        "rpn_non_max_suppression:0": ("nms_indices", "nms_valid"),
        "rpn_non_max_suppression/NonMaxSuppressionV2:0": ("nms_indices", "nms_valid"),
        "rpn_non_max_suppression/NonMaxSuppressionV3:0": ("nms_indices", "nms_valid"),
    }

    def __init__(self, proposal_count: int, nms_threshold: float, config=None, **kwargs):
        super().__init__(**self._take_config(config, kwargs))
        self.proposal_count = int(proposal_count)
        self.nms_threshold = float(nms_threshold)

    def steps(self, inputs) -> dict:
        """Every step of the layer, for inspection (``call`` returns ``proposals``).

        Args:
            inputs: [rpn_probs, rpn_bbox, anchors] as for ``call``.

        Returns:
            The dict of ``refine_top_anchors`` plus ``nms_indices`` [B, proposal_count]
            (indices into the K refined anchors, padded with 0), ``nms_valid``
            [B, proposal_count] bool and ``proposals`` (the layer's output).
        """
        rpn_probs, rpn_bbox, anchors = inputs
        out = refine_top_anchors(rpn_probs, rpn_bbox, anchors, self.config.PRE_NMS_LIMIT,
                                 self.config.RPN_BBOX_STD_DEV)
        boxes = ops.stop_gradient(out["refined_anchors_clipped"])
        indices, valid = mops.non_max_suppression_padded(
            boxes, out["scores"], self.proposal_count, self.nms_threshold)
        proposals = ops.take_along_axis(boxes, indices[..., None], axis=1)
        out.update(nms_indices=indices, nms_valid=valid,
                   proposals=ops.where(valid[..., None], proposals, 0.0))
        return out

    def call(self, inputs):
        # steps() computes nothing more than the proposals need: the other steps are the
        # intermediates on the way, returned, not extra work.
        return self.steps(inputs)["proposals"]

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.proposal_count, 4)

    def get_config(self):
        base = super().get_config()
        base.update(proposal_count=self.proposal_count, nms_threshold=self.nms_threshold)
        return base
