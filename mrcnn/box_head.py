"""Box head: per-ROI classification and class-specific box refinement (mrcnn_class_*, mrcnn_bbox).

Two designs (Config.BOX_HEAD): Matterport's "2fc" (a 7x7 conv acting as the first fc layer,
then a 1x1 conv) and the GN paper's "4conv1fc" (four 3x3 convs, one fc).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from mrcnn import initializers
from mrcnn.component import Component
from mrcnn.norm import norm_layer
from mrcnn.roi_align import FlattenRois, PyramidROIAlign, UnflattenRois


@keras.saving.register_keras_serializable(package="mrcnn")
class Conv2D(layers.Conv2D):
    """``keras.layers.Conv2D``; a kernel that covers its whole input runs as one matmul.

    Matterport writes the box head's fc layers as a 7x7 "valid" conv on the 7x7 ROI features
    and a 1x1 conv. Those are matrix products, and as convolutions TensorFlow's CPU kernels
    computed them (forward and both gradients) about twice as slowly as the matmul TF Model
    Garden's fc layers use. Same weights (the kernel [kh, kw, cin, cout] flattened row-major
    matches the features [h, w, c] flattened row-major), names, config and class name, so
    Matterport's ``mrcnn_class_conv1``/``conv2`` weights load unchanged; other shapes and
    settings run Keras' own code.
    """

    def call(self, inputs):
        height, width, channels = inputs.shape[-3], inputs.shape[-2], inputs.shape[-1]
        whole = (len(inputs.shape) == 4 and self.padding == "valid"
                 and self.data_format == "channels_last"
                 and tuple(self.strides) == (1, 1) and tuple(self.dilation_rate) == (1, 1)
                 and self.groups == 1 and tuple(self.kernel_size) == (height, width))
        if not whole:
            return super().call(inputs)
        size = height * width * channels
        kernel = ops.reshape(ops.cast(self.kernel, inputs.dtype), (size, self.filters))
        y = ops.matmul(ops.reshape(inputs, (-1, size)), kernel)
        if self.use_bias:
            y = y + ops.cast(self.bias, y.dtype)
        y = ops.reshape(y, (-1, 1, 1, self.filters))
        return self.activation(y) if self.activation is not None else y


def fpn_classifier_graph(rois, feature_maps: list, pool_size: int, num_classes: int, *,
                         design: str = "2fc", fc_size: int = 1024, norm: str = "frozen_bn",
                         gn_groups: int = 32, image_stride: int = 4) -> list:
    """Build the box head on the ROIs.

    Args:
        rois: [B, N, 4] normalized boxes.
        feature_maps: [P2, P3, P4, P5].
        pool_size: ROI align size (POOL_SIZE).
        num_classes: NUM_CLASSES (background included).
        design: "2fc" or "4conv1fc" (Config.BOX_HEAD).
        fc_size: width of the fc layers (Config.FPN_CLASSIF_FC_LAYERS_SIZE).
        norm, gn_groups: Config.NORM, Config.GN_GROUPS.
        image_stride: stride of P2 (Config.BACKBONE_STRIDES[0]).

    Returns:
        mrcnn_class_logits [B, N, num_classes], mrcnn_class (softmax) [B, N, num_classes],
        mrcnn_bbox [B, N, num_classes, (dy, dx, log dh, log dw)].
    """
    num_rois = rois.shape[1]
    groups = gn_groups
    x = PyramidROIAlign((pool_size, pool_size), image_stride=image_stride,
                        name="roi_align_classifier")([rois] + list(feature_maps))
    x = FlattenRois(name="mrcnn_class_flatten_rois")(x)
    if design == "2fc":
        x = Conv2D(fc_size, pool_size, padding="valid", name="mrcnn_class_conv1",
                   kernel_initializer=initializers.box_fc(norm))(x)
        x = norm_layer(norm, "mrcnn_class_bn1", groups)(x)
        x = layers.Activation("relu")(x)
        x = Conv2D(fc_size, 1, name="mrcnn_class_conv2",
                   kernel_initializer=initializers.box_fc(norm))(x)
        x = norm_layer(norm, "mrcnn_class_bn2", groups)(x)
        x = layers.Activation("relu")(x)
        x = layers.Reshape((fc_size,), name="pool_squeeze")(x)
    else:  # "4conv1fc"
        for i in range(1, 5):
            x = layers.Conv2D(256, 3, padding="same", name=f"mrcnn_class_conv{i}",
                              kernel_initializer="he_normal")(x)
            x = norm_layer(norm, f"mrcnn_class_bn{i}", groups)(x)
            x = layers.Activation("relu")(x)
        x = layers.Flatten()(x)
        x = layers.Dense(fc_size, name="mrcnn_class_fc", kernel_initializer="he_normal")(x)
        x = layers.Activation("relu", name="pool_squeeze")(x)
    shared = UnflattenRois(num_rois, name="mrcnn_class_shared")(x)

    # Without GN the logits start near uniform and the deltas near zero (see
    # mrcnn.initializers).
    mrcnn_class_logits = layers.Dense(num_classes, name="mrcnn_class_logits",
                                      kernel_initializer=initializers.class_predictor(norm))(
                                          shared)
    mrcnn_probs = layers.Activation("softmax", name="mrcnn_class", dtype="float32")(
        mrcnn_class_logits)
    x = layers.Dense(num_classes * 4, activation="linear", name="mrcnn_bbox_fc",
                     kernel_initializer=initializers.box_delta_predictor(norm))(shared)
    mrcnn_bbox = layers.Reshape((num_rois, num_classes, 4), name="mrcnn_bbox")(x)
    return [mrcnn_class_logits, mrcnn_probs, mrcnn_bbox]


class BoxHead(Component):
    """The box head (``fpn_classifier_graph``: Matterport's names mrcnn_class_conv1, ...).

    Contract of a box head: called on ``rois [B, N, 4]`` (normalized) and the pyramid
    ``[P2, P3, P4, P5]``, it returns ``[mrcnn_class_logits [B, N, C], mrcnn_class
    [B, N, C] (softmax, float32), mrcnn_bbox [B, N, C, 4]]`` with C = Config.NUM_CLASSES
    and deltas scaled by 1 / Config.BBOX_STD_DEV.

    Args:
        num_classes: Config.NUM_CLASSES (background included).
        pool_size: ROI align size (Config.POOL_SIZE).
        design: "2fc" or "4conv1fc" (Config.BOX_HEAD).
        fc_size: Config.FPN_CLASSIF_FC_LAYERS_SIZE.
        norm, gn_groups: Config.NORM, Config.GN_GROUPS.
        image_stride: stride of P2 (Config.BACKBONE_STRIDES[0]).
    """

    def __init__(self, num_classes: int, pool_size: int = 7, design: str = "2fc",
                 fc_size: int = 1024, norm: str = "frozen_bn", gn_groups: int = 32,
                 image_stride: int = 4):
        if design not in ("2fc", "4conv1fc"):
            raise ValueError(f"Config.BOX_HEAD = {design!r} is invalid: expected '2fc' or "
                             "'4conv1fc'.")
        self._keep(num_classes=num_classes, pool_size=pool_size, design=design,
                   fc_size=fc_size, norm=norm, gn_groups=gn_groups, image_stride=image_stride)

    def __call__(self, rois, feature_maps: list) -> list:
        """Args: rois [B, N, 4], feature_maps [P2..P5].
        Returns: [mrcnn_class_logits, mrcnn_class, mrcnn_bbox]."""
        c = self._config
        return fpn_classifier_graph(rois, feature_maps, c["pool_size"], c["num_classes"],
                                    design=c["design"], fc_size=c["fc_size"], norm=c["norm"],
                                    gn_groups=c["gn_groups"], image_stride=c["image_stride"])
