"""Region Proposal Network: one small conv net shared across pyramid levels (``rpn_model``),
and the layer that holds its anchors (``AnchorsLayer``, from ``mrcnn.anchors``)."""

from __future__ import annotations

import importlib

import keras
from keras import initializers, layers, ops

from mrcnn.anchors import pyramid_anchors
from mrcnn.component import Component
from mrcnn.layer_config import PlainConfigMixin


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
        ``mrcnn.anchors.generate_pyramid_anchors``.
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


class RPNHead(Component):
    """The RPN head: one ``rpn_model`` shared by every pyramid level.

    Contract of an RPN head: called on ``[P2, ..., P6]``, it returns ``[rpn_class_logits
    [B, A, 2], rpn_class [B, A, 2] (softmax, float32), rpn_bbox [B, A, 4]]`` over the
    anchors of all levels in ``mrcnn.anchors``' order (level-major, then cell y, x, then
    ratio): ``anchors_per_location`` must be len(Config.RPN_ANCHOR_RATIOS) and
    ``anchor_stride`` Config.RPN_ANCHOR_STRIDE.

    Args:
        anchors_per_location: anchors per feature-map cell.
        anchor_stride: 1 = anchors at every cell, 2 = every other cell.
        depth: channels of the pyramid levels (Config.TOP_DOWN_PYRAMID_SIZE).
        channels: width of the shared conv (Config.RPN_CONV_CHANNELS).
    """

    def __init__(self, anchors_per_location: int = 3, anchor_stride: int = 1,
                 depth: int = 256, channels: int = 512):
        self.anchors_per_location, self.anchor_stride = int(anchors_per_location), \
            int(anchor_stride)
        self.depth, self.channels = int(depth), int(channels)
        self._keep(anchors_per_location=anchors_per_location, anchor_stride=anchor_stride,
                   depth=depth, channels=channels)

    def __call__(self, feature_maps: list) -> list:
        """Args: feature_maps [P2..P6]. Returns: [rpn_class_logits, rpn_class, rpn_bbox]."""
        rpn = build_rpn_model(self.anchor_stride, self.anchors_per_location, self.depth,
                              self.channels)
        return rpn_on_pyramid(rpn, feature_maps)


@keras.saving.register_keras_serializable(package="mrcnn")
class AnchorsLayer(PlainConfigMixin, layers.Layer):
    """Outputs the normalized anchors of the input image's shape, broadcast to the batch.

    The image's height and width must be static when the layer runs (they are: the training
    graph has a fixed shape and inference is traced per image shape).

    Args:
        config: a ``Config`` to read the values below from (Matterport's signature).
        rpn_anchor_scales, rpn_anchor_ratios, backbone_strides, rpn_anchor_stride: the
            Config values (keyword arguments, see ``mrcnn.layer_config``).
        compute_backbone_shape: Config.COMPUTE_BACKBONE_SHAPE of a callable BACKBONE, or
            None (shapes from the strides). ``get_config`` stores it as its import path
            ("package.module.function"), so it must be a module-level function.

    Call args:
        image: the input image [B, H, W, C] (only its shape is used).

    Returns:
        [B, A, 4] normalized anchors.
    """

    CONFIG_KEYS = ("RPN_ANCHOR_SCALES", "RPN_ANCHOR_RATIOS", "BACKBONE_STRIDES",
                   "RPN_ANCHOR_STRIDE")

    def __init__(self, config=None, compute_backbone_shape=None, **kwargs):
        if config is not None and callable(config.BACKBONE):
            compute_backbone_shape = compute_backbone_shape or config.COMPUTE_BACKBONE_SHAPE
        if isinstance(compute_backbone_shape, str):  # an import path, from get_config
            module, _, name = compute_backbone_shape.rpartition(".")
            compute_backbone_shape = getattr(importlib.import_module(module), name)
        super().__init__(**self._take_config(config, kwargs))
        self.compute_backbone_shape = compute_backbone_shape
        # compute_backbone_shapes() calls COMPUTE_BACKBONE_SHAPE when BACKBONE is callable.
        self.config.BACKBONE = self.config.COMPUTE_BACKBONE_SHAPE = compute_backbone_shape

    def call(self, image):
        height, width = image.shape[1], image.shape[2]
        if height is None or width is None:
            raise ValueError("AnchorsLayer needs a static image height and width; got "
                             f"{image.shape}. Trace the model with concrete image shapes.")
        anchors = ops.convert_to_tensor(pyramid_anchors(self.config, (height, width)))
        batch = ops.shape(image)[0]
        return ops.broadcast_to(anchors[None], (batch, anchors.shape[0], 4))

    def compute_output_shape(self, image_shape):
        h, w = image_shape[1], image_shape[2]
        count = None
        if h is not None and w is not None:
            count = len(pyramid_anchors(self.config, (h, w)))
        return (image_shape[0], count, 4)

    def get_config(self):
        base = super().get_config()
        fn = self.compute_backbone_shape
        if fn is not None and ("<" in fn.__qualname__ or "." in fn.__qualname__):
            raise ValueError(f"AnchorsLayer.get_config: COMPUTE_BACKBONE_SHAPE {fn} must be a "
                             "module-level function to be saved (its import path is stored).")
        base.update(compute_backbone_shape=f"{fn.__module__}.{fn.__qualname__}" if fn
                    else None)
        return base
