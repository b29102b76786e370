"""Region Proposal Network: one small conv net shared across pyramid levels (``rpn_model``)."""

from __future__ import annotations

import keras
from keras import initializers, layers


def predictor_init() -> initializers.Initializer:
    """Initializer of the classification predictors (RPN and box head): Detectron's
    N(0, 0.01). Small enough that the first scores are near uniform, not zero, so scores
    still differ and the first proposals and detections are not all tied. A new instance per
    layer: an unseeded Keras initializer instance returns the same values at every call."""
    return initializers.RandomNormal(stddev=0.01)


def rpn_graph(feature_map, anchors_per_location: int, anchor_stride: int,
              channels: int = 512):
    """The RPN head on one feature map.

    Args:
        feature_map: [B, H, W, depth].
        anchors_per_location: anchors per feature-map cell (len(RPN_ANCHOR_RATIOS)).
        anchor_stride: 1 = anchors at every cell, 2 = every other cell.
        channels: width of the shared conv (Config.RPN_CONV_CHANNELS).

    Returns:
        rpn_class_logits [B, H*W*anchors, 2], rpn_probs [B, H*W*anchors, 2] (background,
        foreground), rpn_bbox [B, H*W*anchors, 4] (dy, dx, log dh, log dw).
        The anchor order is cell-major (y, then x), anchor ratio minor, matching
        ``utils.generate_pyramid_anchors``.
    """
    shared = layers.Conv2D(channels, 3, padding="same", activation="relu", strides=anchor_stride,
                           name="rpn_conv_shared")(feature_map)
    # Predictors start small (class, as in Detectron: N(0, 0.01)) or at zero (deltas: every
    # proposal starts as its anchor). A random deltas layer on unnormalized features made
    # the first proposals exp() of huge deltas and the first rpn_bbox_loss ~1e4.
    x = layers.Conv2D(2 * anchors_per_location, 1, padding="valid", activation="linear",
                      kernel_initializer=predictor_init(), name="rpn_class_raw")(shared)
    rpn_class_logits = layers.Reshape((-1, 2))(x)
    # float32 so that mixed precision keeps the probabilities (and losses) accurate.
    rpn_probs = layers.Activation("softmax", name="rpn_class_xxx", dtype="float32")(
        rpn_class_logits)
    x = layers.Conv2D(4 * anchors_per_location, 1, padding="valid", activation="linear",
                      kernel_initializer="zeros", name="rpn_bbox_pred")(shared)
    rpn_bbox = layers.Reshape((-1, 4))(x)
    return [rpn_class_logits, rpn_probs, rpn_bbox]


def build_rpn_model(anchor_stride: int, anchors_per_location: int, depth: int,
                    channels: int = 512) -> keras.Model:
    """Wrap the RPN head in a Keras model named ``rpn_model`` so it is shared by every level.

    Args:
        anchor_stride: Config.RPN_ANCHOR_STRIDE.
        anchors_per_location: len(Config.RPN_ANCHOR_RATIOS).
        depth: channels of the feature maps (Config.TOP_DOWN_PYRAMID_SIZE).
        channels: width of the shared conv (Config.RPN_CONV_CHANNELS).

    Returns:
        A model mapping [B, H, W, depth] to [rpn_class_logits, rpn_probs, rpn_bbox].
    """
    input_feature_map = keras.Input(shape=(None, None, depth), name="input_rpn_feature_map")
    outputs = rpn_graph(input_feature_map, anchors_per_location, anchor_stride, channels)
    return keras.Model(input_feature_map, outputs, name="rpn_model")


def rpn_on_pyramid(rpn_model: keras.Model, feature_maps: list) -> list:
    """Run the shared RPN on every pyramid level and concatenate along the anchor axis.

    Args:
        rpn_model: from ``build_rpn_model``.
        feature_maps: [P2, P3, P4, P5, P6].

    Returns:
        [rpn_class_logits, rpn_class, rpn_bbox], each [B, A, 2 or 4] over all levels
        (level-major, like the anchors).
    """
    per_level = [rpn_model(p) for p in feature_maps]
    names = ["rpn_class_logits", "rpn_class", "rpn_bbox"]
    return [layers.Concatenate(axis=1, name=name)([lvl[i] for lvl in per_level])
            for i, name in enumerate(names)]
