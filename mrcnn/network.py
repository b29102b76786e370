"""Wire the Mask R-CNN graph: image -> backbone -> FPN -> RPN -> proposals -> heads -> masks.

``build_training_graph`` and ``build_inference_graph`` return the inputs and named outputs of
the two modes; ``mrcnn.training.MaskRCNNTrainModel`` and ``mrcnn.model.MaskRCNN`` wrap them.
"""

from __future__ import annotations

import keras
from keras import layers

from mrcnn import ops as mops
from mrcnn.anchors import compute_backbone_shapes
from mrcnn.detection import DetectionLayer
from mrcnn.detection_targets import DetectionTargetLayer, positive_slots
from mrcnn.factory import Parts, build_parts
from mrcnn.inputs import GT_BOXES, GT_CLASS_IDS, GT_MASKS, IMAGE, IMAGE_META, training_inputs
from mrcnn.layer_config import config_values
from mrcnn.proposals import ProposalLayer
from mrcnn.rpn import AnchorsLayer


@keras.saving.register_keras_serializable(package="mrcnn")
class NormBoxes(layers.Layer):
    """Pixel GT boxes [B, G, 4] -> normalized (``mrcnn.ops.norm_boxes``), using the (static)
    image size. A layer only so that the training graph saves as ``.keras``."""

    def call(self, boxes, image):
        return mops.norm_boxes(boxes, (image.shape[1], image.shape[2]))

    def compute_output_shape(self, boxes_shape, image_shape=None):
        return boxes_shape


def _inference_inputs(config) -> dict:
    # Inference takes any size (pad64 mode varies); it is traced per concrete shape.
    return {
        IMAGE: keras.Input(shape=(None, None, config.IMAGE_CHANNEL_COUNT), name=IMAGE),
        IMAGE_META: keras.Input(shape=(config.IMAGE_META_SIZE,), name=IMAGE_META),
    }


def _check(part: str, tensors, expected: list, what: str) -> None:
    """Raise if a part's outputs break its contract (static sizes only; None passes)."""
    tensors = list(tensors) if isinstance(tensors, (list, tuple)) else [tensors]
    if len(tensors) != len(expected):
        raise ValueError(f"The {part} returned {len(tensors)} tensors, expected "
                         f"{len(expected)} ({what}); see docs/components.md.")
    for i, (tensor, shape) in enumerate(zip(tensors, expected)):
        got = tuple(tensor.shape)
        bad = len(got) != len(shape) or any(
            e is not None and g is not None and int(g) != int(e) for g, e in zip(got, shape))
        if bad:
            raise ValueError(f"The {part}'s output {i} has shape {got}, expected "
                             f"{tuple(shape)} ({what}); see docs/components.md.")


def _pyramid(input_image, config, parts: Parts, training: bool) -> tuple[list, list]:
    """Backbone + FPN. Returns (rpn_feature_maps [P2..P6], mrcnn_feature_maps [P2..P5])."""
    features = parts.backbone(input_image)
    _check("backbone", features, [[None] * 4] * 4, "[C2, C3, C4, C5]")
    pyramid = parts.fpn(list(features))
    depth = pyramid[0].shape[-1] if len(pyramid) else None
    if training:
        # Static image size: the levels must have the anchors' grid (Config.BACKBONE_STRIDES).
        shapes = compute_backbone_shapes(config, config.IMAGE_SHAPE)
        expected = [[None, int(h), int(w), depth] for h, w in shapes]
        what = ("[P2..P6] at Config.BACKBONE_STRIDES, channels equal; backbone strides "
                "4, 8, 16, 32")
    else:
        expected, what = [[None, None, None, depth]] * 5, "[P2..P6], channels equal"
    _check("fpn", pyramid, expected, what)
    return list(pyramid), list(pyramid[:4])


def _rpn(rpn_feature_maps, parts: Parts, anchors):
    outputs = parts.rpn_head(rpn_feature_maps)
    count = anchors.shape[1]
    _check("rpn_head", outputs, [[None, count, 2], [None, count, 2], [None, count, 4]],
           "rpn_class_logits, rpn_class, rpn_bbox over every anchor: Config.RPN_ANCHOR_RATIOS,"
           " RPN_ANCHOR_STRIDE")
    return outputs


def _box_head(rois, feature_maps, parts: Parts, config):
    outputs = parts.box_head(rois, feature_maps)
    n, c = rois.shape[1], config.NUM_CLASSES
    _check("box_head", outputs, [[None, n, c], [None, n, c], [None, n, c, 4]],
           "mrcnn_class_logits, mrcnn_class, mrcnn_bbox; C = Config.NUM_CLASSES")
    return outputs


def _mask_head(rois, feature_maps, parts: Parts, config):
    masks = parts.mask_head(rois, feature_maps)
    h, w = config.MASK_SHAPE
    _check("mask_head", [masks], [[None, rois.shape[1], h, w, config.NUM_CLASSES]],
           "mrcnn_mask at Config.MASK_SHAPE, NUM_CLASSES channels")
    return masks


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


def build_training_graph(config, parts: Parts | None = None) -> tuple[dict, dict]:
    """Training graph: inputs of the data generator, outputs the losses need.

    Args:
        config: the ``Config``.
        parts: the backbone, FPN and heads (``factory.build_parts``; None: the Config's).

    Returns:
        (inputs, outputs): dicts of Keras tensors. Inputs: ``inputs.training_inputs``
        (input_image, input_image_meta, input_rpn_match, input_rpn_bbox,
        input_gt_class_ids, input_gt_boxes, input_gt_masks), in that order. Outputs:
        rpn_class_logits, rpn_class, rpn_bbox, rois,
        target_class_ids, target_bbox, target_mask, mrcnn_class_logits, mrcnn_class,
        mrcnn_bbox, mrcnn_mask, active_class_ids.
    """
    parts = parts or build_parts(config)
    inputs = {spec.name: keras.Input(shape=spec.shape, name=spec.name, dtype=spec.dtype)
              for spec in training_inputs(config)}
    input_image = inputs[IMAGE]
    gt_boxes = NormBoxes(name="norm_gt_boxes")(inputs[GT_BOXES], input_image)

    rpn_feature_maps, mrcnn_feature_maps = _pyramid(input_image, config, parts, training=True)
    anchors = _anchors_layer(config)(input_image)
    rpn_class_logits, rpn_class, rpn_bbox = _rpn(rpn_feature_maps, parts, anchors)
    rpn_rois = _proposal_layer(config, config.POST_NMS_ROIS_TRAINING)(
        [rpn_class, rpn_bbox, anchors])

    rois, target_class_ids, target_bbox, target_mask = DetectionTargetLayer(
        name="proposal_targets", **config_values(config, DetectionTargetLayer.CONFIG_KEYS))(
        [rpn_rois, inputs[GT_CLASS_IDS], gt_boxes, inputs[GT_MASKS]])

    mrcnn_class_logits, mrcnn_class, mrcnn_bbox = _box_head(rois, mrcnn_feature_maps, parts,
                                                            config)
    # Masks are learned on positive ROIs only, and those fill the first slots.
    positive_rois = rois[:, :positive_slots(config)]
    mrcnn_mask = _mask_head(positive_rois, mrcnn_feature_maps, parts, config)
    outputs = {
        "rpn_class_logits": rpn_class_logits, "rpn_class": rpn_class, "rpn_bbox": rpn_bbox,
        "rois": rois, "target_class_ids": target_class_ids, "target_bbox": target_bbox,
        "target_mask": target_mask, "mrcnn_class_logits": mrcnn_class_logits,
        "mrcnn_class": mrcnn_class, "mrcnn_bbox": mrcnn_bbox, "mrcnn_mask": mrcnn_mask,
    }
    return inputs, outputs


def build_inference_graph(config, parts: Parts | None = None) -> tuple[dict, dict]:
    """Inference graph: image + meta in, detections and masks out.

    Args:
        config: the ``Config``.
        parts: the backbone, FPN and heads (``factory.build_parts``; None: the Config's).

    Returns:
        (inputs, outputs) dicts. Outputs, in Matterport's order: mrcnn_detection
        [B, D, 6], mrcnn_class [B, R, C], mrcnn_bbox [B, R, C, 4], mrcnn_mask
        [B, D, h, w, C], ROI [B, R, 4], rpn_class [B, A, 2], rpn_bbox [B, A, 4]; plus the
        pyramid levels fpn_p2..fpn_p6 and the anchors for inspection.
    """
    parts = parts or build_parts(config)
    inputs = _inference_inputs(config)
    input_image, input_image_meta = inputs[IMAGE], inputs[IMAGE_META]
    rpn_feature_maps, mrcnn_feature_maps = _pyramid(input_image, config, parts, training=False)
    anchors = _anchors_layer(config)(input_image)
    rpn_class_logits, rpn_class, rpn_bbox = _rpn(rpn_feature_maps, parts, anchors)
    rpn_rois = _proposal_layer(config, config.POST_NMS_ROIS_INFERENCE)(
        [rpn_class, rpn_bbox, anchors])
    _, mrcnn_class, mrcnn_bbox = _box_head(rpn_rois, mrcnn_feature_maps, parts, config)
    detections = DetectionLayer(name="mrcnn_detection",
                                **config_values(config, DetectionLayer.CONFIG_KEYS))(
        [rpn_rois, mrcnn_class, mrcnn_bbox, input_image_meta])
    detection_boxes = layers.Identity(name="detection_boxes")(detections[..., :4])
    mrcnn_mask = _mask_head(detection_boxes, mrcnn_feature_maps, parts, config)
    outputs = {
        "mrcnn_detection": detections, "mrcnn_class": mrcnn_class, "mrcnn_bbox": mrcnn_bbox,
        "mrcnn_mask": mrcnn_mask, "ROI": rpn_rois, "rpn_class": rpn_class,
        "rpn_bbox": rpn_bbox,
    }
    return inputs, outputs
