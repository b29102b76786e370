"""PyramidROIAlign: crop each ROI from its FPN level into a fixed-size feature patch."""

from __future__ import annotations

import keras
from keras import layers, ops

from mrcnn import ops as mops


def _without_meta(inputs: list) -> list:
    """[boxes, P2, ...] from either call form (Matterport's passes image_meta second)."""
    if len(inputs) > 1 and len(inputs[1].shape) == 2:
        return [inputs[0], *inputs[2:]]
    return list(inputs)


@keras.saving.register_keras_serializable(package="mrcnn")
class PyramidROIAlign(layers.Layer):
    """ROI align over the feature pyramid (Matterport's layer, static-shape kernel).

    Each box goes to level ``4 + round(log2(sqrt(h*w) / (224 / sqrt(image_area))))``
    clipped to P2..P5 and is sampled bilinearly with ``tf.image.crop_and_resize``
    semantics; all levels are gathered in one pass (``mrcnn.ops.multilevel_roi_align``).

    Args:
        pool_shape: (height, width) of the output patches.
        image_stride: stride of the first feature map (P2) relative to the input image
            (BACKBONE_STRIDES[0]); gives the image size for the level formula.

    Call args:
        inputs: [boxes [B, N, 4] normalized, P2, P3, P4, P5]. Matterport's
            [boxes, image_meta, P2, ...] is accepted too: the meta (the only rank-2 input)
            is dropped, since the image size comes from P2's shape and ``image_stride``.

    Returns:
        [B, N, pool_h, pool_w, C].
    """

    def __init__(self, pool_shape, image_stride: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.pool_shape = tuple(int(s) for s in pool_shape)
        self.image_stride = int(image_stride)

    def call(self, inputs):
        boxes, *feature_maps = _without_meta(inputs)
        p2 = feature_maps[0]
        image_shape = (p2.shape[1] * self.image_stride, p2.shape[2] * self.image_stride)
        return mops.multilevel_roi_align(feature_maps, boxes, image_shape, self.pool_shape)

    def compute_output_shape(self, input_shape):
        boxes_shape, channels = input_shape[0], input_shape[-1][-1]
        return (boxes_shape[0], boxes_shape[1], *self.pool_shape, channels)

    def get_config(self):
        base = super().get_config()
        base.update(pool_shape=self.pool_shape, image_stride=self.image_stride)
        return base


@keras.saving.register_keras_serializable(package="mrcnn")
class FlattenRois(layers.Layer):
    """[B, N, ...] -> [B*N, ...], so that plain Conv2D/Dense layers run once over all ROIs.

    Keras 3's TimeDistributed unrolls a Python loop over a static time axis (one conv per
    ROI); folding the ROIs into the batch is one conv for all of them.
    """

    def call(self, x):
        return ops.reshape(x, (-1, *x.shape[2:]))

    def compute_output_shape(self, input_shape):
        return (None, *input_shape[2:])


@keras.saving.register_keras_serializable(package="mrcnn")
class UnflattenRois(layers.Layer):
    """[B*N, ...] -> [B, N, ...] with a static ROI count N.

    Args:
        num_rois: N.
    """

    def __init__(self, num_rois: int, **kwargs):
        super().__init__(**kwargs)
        self.num_rois = int(num_rois)

    def call(self, x):
        return ops.reshape(x, (-1, self.num_rois, *x.shape[1:]))

    def compute_output_shape(self, input_shape):
        return (None, self.num_rois, *input_shape[1:])

    def get_config(self):
        base = super().get_config()
        base.update(num_rois=self.num_rois)
        return base
