"""Region Proposal Network: one small conv net shared across pyramid levels (``rpn_model``),
and the layer that holds its anchors (``AnchorsLayer``, from ``mrcnn.anchors``)."""

from __future__ import annotations

import warnings

import keras
import numpy as np
from keras import layers, ops

from mrcnn import initializers
from mrcnn.anchors import pyramid_anchors
from mrcnn.component import Component
from mrcnn.layer_config import PlainConfigMixin


def rpn_graph(feature_map, anchors_per_location: int, anchor_stride: int,
              channels: int = 512, norm: str = "frozen_bn"):
    """The RPN head on one feature map.

    Args:
        feature_map: [B, H, W, depth].
        anchors_per_location: anchors per feature-map cell (len(RPN_ANCHOR_RATIOS)).
        anchor_stride: 1 = anchors at every cell, 2 = every other cell.
        channels: width of the shared conv (Config.RPN_CONV_CHANNELS).
        norm: Config.NORM, which picks the predictors' initializers (``mrcnn.initializers``).

    Returns:
        rpn_class_logits [B, H*W*anchors, 2], rpn_probs [B, H*W*anchors, 2] (background,
        foreground), rpn_bbox [B, H*W*anchors, 4] (dy, dx, log dh, log dw).
        The anchor order is cell-major (y, then x), anchor ratio minor, matching
        ``mrcnn.anchors.generate_pyramid_anchors``.
    """
    shared = layers.Conv2D(channels, 3, padding="same", activation="relu", strides=anchor_stride,
                           name="rpn_conv_shared")(feature_map)
    # Without GN the predictors start small or at zero (see mrcnn.initializers).
    x = layers.Conv2D(2 * anchors_per_location, 1, padding="valid", activation="linear",
                      kernel_initializer=initializers.class_predictor(norm),
                      name="rpn_class_raw")(shared)
    rpn_class_logits = layers.Reshape((-1, 2))(x)
    # float32 so that mixed precision keeps the probabilities (and losses) accurate.
    rpn_probs = layers.Activation("softmax", name="rpn_class_xxx", dtype="float32")(
        rpn_class_logits)
    x = layers.Conv2D(4 * anchors_per_location, 1, padding="valid", activation="linear",
                      kernel_initializer=initializers.rpn_delta_predictor(norm),
                      name="rpn_bbox_pred")(shared)
    rpn_bbox = layers.Reshape((-1, 4))(x)
    return [rpn_class_logits, rpn_probs, rpn_bbox]


def build_rpn_model(anchor_stride: int, anchors_per_location: int, depth: int,
                    channels: int = 512, norm: str = "frozen_bn") -> keras.Model:
    """Wrap the RPN head in a Keras model named ``rpn_model`` so it is shared by every level.

    Args:
        anchor_stride: Config.RPN_ANCHOR_STRIDE.
        anchors_per_location: len(Config.RPN_ANCHOR_RATIOS).
        depth: channels of the feature maps (Config.TOP_DOWN_PYRAMID_SIZE).
        channels: width of the shared conv (Config.RPN_CONV_CHANNELS).
        norm: Config.NORM (the predictors' initializers, ``mrcnn.initializers``).

    Returns:
        A model mapping [B, H, W, depth] to [rpn_class_logits, rpn_probs, rpn_bbox].
    """
    input_feature_map = keras.Input(shape=(None, None, depth), name="input_rpn_feature_map")
    outputs = rpn_graph(input_feature_map, anchors_per_location, anchor_stride, channels,
                        norm)
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


def stride_shapes(image_hw, strides) -> list[list[int]]:
    """[height, width] of each pyramid level by the stride rule: ceil(size / stride).

    Args:
        image_hw: (height, width) of the molded image.
        strides: Config.BACKBONE_STRIDES.

    Returns:
        [[h, w], ...], one per stride.
    """
    return [[-(-int(image_hw[0]) // int(s)), -(-int(image_hw[1]) // int(s))] for s in strides]


def _checked_shapes(entries, strides) -> dict[tuple[int, int], list[list[int]]]:
    """``backbone_shapes`` from get_config (a model file) -> {(H, W): [[h, w] x levels]}."""
    table = {}
    problem = "expected a list of {'image_size': [H, W], 'feature_shapes': [[h, w], ...]}"
    if not isinstance(entries, (list, tuple)):
        raise ValueError(f"AnchorsLayer: backbone_shapes {entries!r}: {problem}")
    for entry in entries:
        try:
            size = tuple(int(v) for v in entry["image_size"])
            shapes = [[int(v) for v in level] for level in entry["feature_shapes"]]
        except (TypeError, KeyError, ValueError) as err:
            raise ValueError(f"AnchorsLayer: backbone_shapes entry {entry!r}: {problem}") \
                from err
        # A level has at most one cell per pixel: larger numbers would only make a crafted
        # file allocate huge anchor arrays.
        if len(size) != 2 or min(size) < 1 or len(shapes) != len(strides) or any(
                len(level) != 2 or min(level) < 0 or level[0] > size[0] or level[1] > size[1]
                for level in shapes):
            raise ValueError(f"AnchorsLayer: backbone_shapes entry {entry!r}: {problem} with "
                             f"{len(strides)} levels (one per BACKBONE_STRIDES entry) of "
                             "sizes between 0 and the image size")
        table[size] = shapes
    return table


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
        norm: Config.NORM, which picks the predictors' initializers (``mrcnn.initializers``).
    """

    def __init__(self, anchors_per_location: int = 3, anchor_stride: int = 1,
                 depth: int = 256, channels: int = 512, norm: str = "frozen_bn"):
        self.anchors_per_location, self.anchor_stride = int(anchors_per_location), \
            int(anchor_stride)
        self.depth, self.channels, self.norm = int(depth), int(channels), norm
        self._keep(anchors_per_location=anchors_per_location, anchor_stride=anchor_stride,
                   depth=depth, channels=channels, norm=norm)

    def __call__(self, feature_maps: list) -> list:
        """Args: feature_maps [P2..P6]. Returns: [rpn_class_logits, rpn_class, rpn_bbox]."""
        rpn = build_rpn_model(self.anchor_stride, self.anchors_per_location, self.depth,
                              self.channels, self.norm)
        return rpn_on_pyramid(rpn, feature_maps)


@keras.saving.register_keras_serializable(package="mrcnn")
class AnchorsLayer(PlainConfigMixin, layers.Layer):
    """Outputs the normalized anchors of the input image's shape, broadcast to the batch.

    The image's height and width must be static when the layer runs (they are: the training
    graph has a fixed shape and inference is traced per image shape).

    A model file holds values only: ``get_config`` stores the backbone's feature shapes as
    numbers (``backbone_shapes``, computed at construction for ``image_shape``), never a
    function. A reloaded layer uses them for that image size and the stride rule
    (ceil(size / stride), what every built-in backbone does) for other sizes, when the
    stored shapes follow it; otherwise it refuses other sizes with an error saying how to
    rebuild the model. Older files that name COMPUTE_BACKBONE_SHAPE as an import path load
    without importing anything (the name is ignored; the stride rule is used).

    Args:
        config: a ``Config`` to read the values below from (Matterport's signature).
        rpn_anchor_scales, rpn_anchor_ratios, backbone_strides, rpn_anchor_stride: the
            Config values (keyword arguments, see ``mrcnn.layer_config``).
        compute_backbone_shape: Config.COMPUTE_BACKBONE_SHAPE of a callable BACKBONE, or
            None (shapes from the strides). Called in this process only, never saved.
        image_shape: Config.IMAGE_SHAPE, the size whose feature shapes are stored.
        backbone_shapes: the stored shapes (from ``get_config``; not given by hand).

    Call args:
        image: the input image [B, H, W, C] (only its shape is used).

    Returns:
        [B, A, 4] normalized anchors.
    """

    CONFIG_KEYS = ("RPN_ANCHOR_SCALES", "RPN_ANCHOR_RATIOS", "BACKBONE_STRIDES",
                   "RPN_ANCHOR_STRIDE")

    def __init__(self, config=None, compute_backbone_shape=None, image_shape=None,
                 backbone_shapes=None, **kwargs):
        if config is not None:
            if callable(config.BACKBONE):
                compute_backbone_shape = compute_backbone_shape or config.COMPUTE_BACKBONE_SHAPE
            image_shape = config.IMAGE_SHAPE if image_shape is None else image_shape
        legacy = None
        if isinstance(compute_backbone_shape, str):
            # An import path stored by an older version: a file never chooses code to run.
            legacy, compute_backbone_shape = compute_backbone_shape, None
        elif compute_backbone_shape is not None and not callable(compute_backbone_shape):
            raise TypeError("AnchorsLayer: compute_backbone_shape must be a callable "
                            f"(Config.COMPUTE_BACKBONE_SHAPE) or None, got "
                            f"{compute_backbone_shape!r}")
        super().__init__(**self._take_config(config, kwargs))
        strides = self.config.BACKBONE_STRIDES
        # Plain attributes, outside Keras' tracking (which would wrap the dict).
        object.__setattr__(self, "_shape_fn", compute_backbone_shape)
        object.__setattr__(self, "_shapes", _checked_shapes(backbone_shapes or [], strides))
        if image_shape is not None:
            size = (int(image_shape[0]), int(image_shape[1]))
            if size not in self._shapes:
                self._shapes[size] = self._live_shapes(size)
        if legacy is not None and not self._shapes:
            warnings.warn(
                f"AnchorsLayer {self.name!r}: the model file names COMPUTE_BACKBONE_SHAPE "
                f"{legacy!r} as code to import; mrcnn never runs code named in a file, so the "
                "backbone's feature shapes are computed from BACKBONE_STRIDES (ceil(size / "
                "stride), as every built-in backbone). Save the model again to store its "
                "shapes as numbers.", stacklevel=2)
        # pyramid_anchors() asks COMPUTE_BACKBONE_SHAPE when BACKBONE is callable.
        self.config.BACKBONE = self.config.COMPUTE_BACKBONE_SHAPE = self.backbone_shapes

    def _live_shapes(self, size: tuple[int, int]) -> list[list[int]]:
        if self._shape_fn is None:
            return stride_shapes(size, self.config.BACKBONE_STRIDES)
        return np.asarray(self._shape_fn(size)).astype(int).tolist()

    def backbone_shapes(self, image_shape) -> np.ndarray:
        """[height, width] of each pyramid level for a molded image shape.

        Args:
            image_shape: (H, W[, C]).

        Returns:
            int array [levels, 2].

        Raises:
            ValueError: a reloaded model whose stored shapes do not follow the stride rule
                is asked for another image size.
        """
        size = (int(image_shape[0]), int(image_shape[1]))
        if size in self._shapes:
            return np.asarray(self._shapes[size])
        strides = self.config.BACKBONE_STRIDES
        if self._shape_fn is not None or all(
                shapes == stride_shapes(known, strides) for known, shapes in self._shapes.items()):
            return np.asarray(self._live_shapes(size))
        known = ", ".join(f"{h}x{w}" for h, w in self._shapes)
        raise ValueError(
            f"AnchorsLayer {self.name!r}: this model's backbone feature shapes are stored for "
            f"images of {known} only (its backbone does not follow ceil(size / stride)); got "
            f"{size[0]}x{size[1]}. Build the model from its Config (MaskRCNN(mode, config, "
            "model_dir), whose COMPUTE_BACKBONE_SHAPE computes any size) and load the "
            "weights, or feed images of the stored size.")

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
        base.update(backbone_shapes=[{"image_size": list(size), "feature_shapes": shapes}
                                     for size, shapes in self._shapes.items()])
        return base
