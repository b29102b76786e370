"""Wire the Mask R-CNN graph: image -> backbone -> FPN -> RPN -> proposals -> heads -> masks.

``build_training_graph`` and ``build_inference_graph`` return the inputs and named outputs of
the two modes; ``mrcnn.training.MaskRCNNTrainModel`` and ``mrcnn.model.MaskRCNN`` wrap them.
"""

from __future__ import annotations

import keras
from keras import layers

from mrcnn import ops as mops
from mrcnn.backbone import build_backbone
from mrcnn.box_head import fpn_classifier_graph
from mrcnn.detection import DetectionLayer
from mrcnn.detection_targets import DetectionTargetLayer, positive_slots
from mrcnn.fpn import fpn_graph
from mrcnn.layer_config import config_values
from mrcnn.mask_head import build_fpn_mask_graph
from mrcnn.proposals import ProposalLayer
from mrcnn.rpn import AnchorsLayer, build_rpn_model, rpn_on_pyramid


@keras.saving.register_keras_serializable(package="mrcnn")
class NormBoxes(layers.Layer):
    """Pixel GT boxes [B, G, 4] -> normalized (``mrcnn.ops.norm_boxes``), using the (static)
    image size. A layer only so that the training graph saves as ``.keras``."""

    def call(self, boxes, image):
        return mops.norm_boxes(boxes, (image.shape[1], image.shape[2]))

    def compute_output_shape(self, boxes_shape, image_shape=None):
        return boxes_shape


def _inputs(config, training: bool) -> dict:
    channels = config.IMAGE_CHANNEL_COUNT
    if training:
        h, w = int(config.IMAGE_SHAPE[0]), int(config.IMAGE_SHAPE[1])
    else:
        # Inference takes any size (pad64 mode varies); it is traced per concrete shape.
        h = w = None
    return {
        "input_image": keras.Input(shape=(h, w, channels), name="input_image"),
        "input_image_meta": keras.Input(shape=(config.IMAGE_META_SIZE,),
                                        name="input_image_meta"),
    }


def _pyramid(input_image, config) -> tuple[list, list]:
    """Backbone + FPN. Returns (rpn_feature_maps [P2..P6], mrcnn_feature_maps [P2..P5])."""
    c2, c3, c4, c5 = build_backbone(input_image, config)
    p2, p3, p4, p5, p6 = fpn_graph(c2, c3, c4, c5, config.TOP_DOWN_PYRAMID_SIZE,
                                   norm=config.NORM, gn_groups=config.GN_GROUPS)
    return [p2, p3, p4, p5, p6], [p2, p3, p4, p5]


def _rpn(rpn_feature_maps, config):
    rpn = build_rpn_model(config.RPN_ANCHOR_STRIDE, len(config.RPN_ANCHOR_RATIOS),
                          config.TOP_DOWN_PYRAMID_SIZE, config.RPN_CONV_CHANNELS)
    return rpn_on_pyramid(rpn, rpn_feature_maps)


# Config is unpacked here, once (Model Garden's factory): each custom layer gets the plain
# values it uses and returns them from get_config, so the models save as .keras.

def _anchors_layer(config) -> AnchorsLayer:
    shape_fn = config.COMPUTE_BACKBONE_SHAPE if callable(config.BACKBONE) else None
    return AnchorsLayer(compute_backbone_shape=shape_fn, image_shape=config.IMAGE_SHAPE,
                        name="anchors",
                        **config_values(config, AnchorsLayer.CONFIG_KEYS))


def _proposal_layer(config, proposal_count: int) -> ProposalLayer:
    return ProposalLayer(proposal_count, config.RPN_NMS_THRESHOLD, name="ROI",
                         **config_values(config, ProposalLayer.CONFIG_KEYS))


def build_training_graph(config) -> tuple[dict, dict]:
    """Training graph: inputs of the data generator, outputs the losses need.

    Args:
        config: the ``Config``.

    Returns:
        (inputs, outputs): dicts of Keras tensors. Inputs: input_image, input_image_meta,
        input_rpn_match, input_rpn_bbox, input_gt_class_ids, input_gt_boxes,
        input_gt_masks. Outputs: rpn_class_logits, rpn_class, rpn_bbox, rois,
        target_class_ids, target_bbox, target_mask, mrcnn_class_logits, mrcnn_class,
        mrcnn_bbox, mrcnn_mask, active_class_ids.
    """
    inputs = _inputs(config, training=True)
    input_image = inputs["input_image"]
    if config.USE_MINI_MASK:
        mask_hw = tuple(config.MINI_MASK_SHAPE)
    else:
        mask_hw = (int(config.IMAGE_SHAPE[0]), int(config.IMAGE_SHAPE[1]))
    g = config.MAX_GT_INSTANCES
    inputs.update(
        input_rpn_match=keras.Input(shape=(None, 1), name="input_rpn_match", dtype="int32"),
        input_rpn_bbox=keras.Input(shape=(config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4),
                                   name="input_rpn_bbox"),
        input_gt_class_ids=keras.Input(shape=(g,), name="input_gt_class_ids", dtype="int32"),
        input_gt_boxes=keras.Input(shape=(g, 4), name="input_gt_boxes"),
        input_gt_masks=keras.Input(shape=(*mask_hw, g), name="input_gt_masks", dtype="bool"),
    )
    gt_boxes = NormBoxes(name="norm_gt_boxes")(inputs["input_gt_boxes"], input_image)

    rpn_feature_maps, mrcnn_feature_maps = _pyramid(input_image, config)
    rpn_class_logits, rpn_class, rpn_bbox = _rpn(rpn_feature_maps, config)
    anchors = _anchors_layer(config)(input_image)
    rpn_rois = _proposal_layer(config, config.POST_NMS_ROIS_TRAINING)(
        [rpn_class, rpn_bbox, anchors])

    rois, target_class_ids, target_bbox, target_mask = DetectionTargetLayer(
        name="proposal_targets", **config_values(config, DetectionTargetLayer.CONFIG_KEYS))(
        [rpn_rois, inputs["input_gt_class_ids"], gt_boxes, inputs["input_gt_masks"]])

    mrcnn_class_logits, mrcnn_class, mrcnn_bbox = fpn_classifier_graph(
        rois, mrcnn_feature_maps, config.POOL_SIZE, config.NUM_CLASSES, config)
    # Masks are learned on positive ROIs only, and those fill the first slots.
    positive_rois = rois[:, :positive_slots(config)]
    mrcnn_mask = build_fpn_mask_graph(positive_rois, mrcnn_feature_maps, config.MASK_POOL_SIZE,
                                      config.NUM_CLASSES, config)
    outputs = {
        "rpn_class_logits": rpn_class_logits, "rpn_class": rpn_class, "rpn_bbox": rpn_bbox,
        "rois": rois, "target_class_ids": target_class_ids, "target_bbox": target_bbox,
        "target_mask": target_mask, "mrcnn_class_logits": mrcnn_class_logits,
        "mrcnn_class": mrcnn_class, "mrcnn_bbox": mrcnn_bbox, "mrcnn_mask": mrcnn_mask,
    }
    return inputs, outputs


def build_inference_graph(config) -> tuple[dict, dict]:
    """Inference graph: image + meta in, detections and masks out.

    Args:
        config: the ``Config``.

    Returns:
        (inputs, outputs) dicts. Outputs, in Matterport's order: mrcnn_detection
        [B, D, 6], mrcnn_class [B, R, C], mrcnn_bbox [B, R, C, 4], mrcnn_mask
        [B, D, h, w, C], ROI [B, R, 4], rpn_class [B, A, 2], rpn_bbox [B, A, 4]; plus the
        pyramid levels fpn_p2..fpn_p6 and the anchors for inspection.
    """
    inputs = _inputs(config, training=False)
    input_image, input_image_meta = inputs["input_image"], inputs["input_image_meta"]
    rpn_feature_maps, mrcnn_feature_maps = _pyramid(input_image, config)
    rpn_class_logits, rpn_class, rpn_bbox = _rpn(rpn_feature_maps, config)
    anchors = _anchors_layer(config)(input_image)
    rpn_rois = _proposal_layer(config, config.POST_NMS_ROIS_INFERENCE)(
        [rpn_class, rpn_bbox, anchors])
    _, mrcnn_class, mrcnn_bbox = fpn_classifier_graph(
        rpn_rois, mrcnn_feature_maps, config.POOL_SIZE, config.NUM_CLASSES, config)
    detections = DetectionLayer(name="mrcnn_detection",
                                **config_values(config, DetectionLayer.CONFIG_KEYS))(
        [rpn_rois, mrcnn_class, mrcnn_bbox, input_image_meta])
    detection_boxes = layers.Identity(name="detection_boxes")(detections[..., :4])
    mrcnn_mask = build_fpn_mask_graph(detection_boxes, mrcnn_feature_maps,
                                      config.MASK_POOL_SIZE, config.NUM_CLASSES, config)
    outputs = {
        "mrcnn_detection": detections, "mrcnn_class": mrcnn_class, "mrcnn_bbox": mrcnn_bbox,
        "mrcnn_mask": mrcnn_mask, "ROI": rpn_rois, "rpn_class": rpn_class,
        "rpn_bbox": rpn_bbox,
    }
    return inputs, outputs
