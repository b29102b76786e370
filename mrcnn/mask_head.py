"""Mask head: where masks are predicted. Four 3x3 convs, a 2x deconv, one sigmoid per class."""

from __future__ import annotations

import keras
from keras import layers, ops

from mrcnn import ops as mops
from mrcnn.component import Component
from mrcnn.norm import norm_layer
from mrcnn.roi_align import FlattenRois, PyramidROIAlign, UnflattenRois


def build_fpn_mask_graph(rois, feature_maps: list, pool_size: int, num_classes: int, *,
                         channels: int = 256, norm: str = "frozen_bn", gn_groups: int = 32,
                         image_stride: int = 4):
    """Build the mask head on the ROIs (Matterport names mrcnn_mask_conv1..4, ..., mrcnn_mask).

    Args:
        rois: [B, N, 4] normalized boxes.
        feature_maps: [P2, P3, P4, P5].
        pool_size: ROI align size (MASK_POOL_SIZE); the output is twice that.
        num_classes: NUM_CLASSES (background included).
        channels: width of the convs (Config.MASK_HEAD_CHANNELS).
        norm, gn_groups: Config.NORM, Config.GN_GROUPS.
        image_stride: stride of P2 (Config.BACKBONE_STRIDES[0]).

    Returns:
        [B, N, 2*pool_size, 2*pool_size, num_classes] mask probabilities (float32).
    """
    num_rois = rois.shape[1]
    groups = gn_groups
    x = PyramidROIAlign((pool_size, pool_size), image_stride=image_stride,
                        name="roi_align_mask")([rois] + list(feature_maps))
    x = FlattenRois(name="mrcnn_mask_flatten_rois")(x)
    for i in range(1, 5):
        x = layers.Conv2D(channels, 3, padding="same",
                          name=f"mrcnn_mask_conv{i}",
                          kernel_initializer="he_normal")(x)
        x = norm_layer(norm, f"mrcnn_mask_bn{i}", groups)(x)
        x = layers.Activation("relu")(x)
    x = Conv2DTranspose(channels, 2, strides=2, activation="relu",
                               name="mrcnn_mask_deconv", kernel_initializer="he_normal")(x)
    # float32 output: the mask loss takes log of these probabilities.
    x = layers.Conv2D(num_classes, 1, strides=1, activation="sigmoid", name="mrcnn_mask",
                      dtype="float32")(x)
    return UnflattenRois(num_rois, name="mrcnn_mask_rois")(x)


class MaskHead(Component):
    """The mask head (``build_fpn_mask_graph``: Matterport's names mrcnn_mask_conv1, ...).

    Contract of a mask head: called on ``rois [B, N, 4]`` (normalized) and the pyramid
    ``[P2, P3, P4, P5]``, it returns mask probabilities ``[B, N, h, w, C]`` (float32, C =
    Config.NUM_CLASSES) where ``(h, w)`` is Config.MASK_SHAPE (the mask targets' size).

    Args:
        num_classes: Config.NUM_CLASSES (background included).
        pool_size: ROI align size (Config.MASK_POOL_SIZE); masks are twice that.
        channels: Config.MASK_HEAD_CHANNELS.
        norm, gn_groups: Config.NORM, Config.GN_GROUPS.
        image_stride: stride of P2 (Config.BACKBONE_STRIDES[0]).
    """

    def __init__(self, num_classes: int, pool_size: int = 14, channels: int = 256,
                 norm: str = "frozen_bn", gn_groups: int = 32, image_stride: int = 4):
        self._keep(num_classes=num_classes, pool_size=pool_size, channels=channels,
                   norm=norm, gn_groups=gn_groups, image_stride=image_stride)

    def __call__(self, rois, feature_maps: list):
        """Args: rois [B, N, 4], feature_maps [P2..P5]. Returns: masks [B, N, h, w, C]."""
        c = self._config
        return build_fpn_mask_graph(rois, feature_maps, c["pool_size"], c["num_classes"],
                                    channels=c["channels"], norm=c["norm"],
                                    gn_groups=c["gn_groups"], image_stride=c["image_stride"])


@keras.saving.register_keras_serializable(package="mrcnn")
class Conv2DTranspose(layers.Conv2DTranspose):
    """``keras.layers.Conv2DTranspose``; with kernel == stride, on ``mrcnn.ops``' fastest form.

    Same weights, names, config and class name as Keras' layer (Matterport's
    ``mrcnn_mask_deconv`` loads unchanged, and notebooks that pick layers by class name, as
    Matterport's inspect_weights does, still find it); other settings run Keras' own code.
    Off TensorFlow this is one matmul and a reshape: XLA's CPU gradient of a transposed
    convolution is a naive loop (a JAX train step took ~200 s, 227 s of it in this layer's
    backward pass).
    """

    def call(self, inputs):
        plain = (tuple(self.kernel_size) == tuple(self.strides) and self.padding == "valid"
                 and self.data_format == "channels_last"
                 and tuple(self.dilation_rate) == (1, 1) and self.output_padding is None)
        if not plain:
            return super().call(inputs)
        y = mops.nonoverlapping_conv_transpose(inputs, ops.cast(self.kernel, inputs.dtype))
        if self.use_bias:
            y = y + ops.cast(self.bias, y.dtype)
        return self.activation(y) if self.activation is not None else y
