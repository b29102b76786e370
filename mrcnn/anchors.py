"""Anchors: pyramid shapes, the anchor boxes of an image size, and the layer that holds them.

Anchors depend only on the (static) image shape and the Config, so they are computed with
NumPy once per shape and live in the graph as a constant: no input, no Lambda, no variable.
"""

from __future__ import annotations

import functools
import importlib

import keras
import numpy as np
from keras import layers, ops

from mrcnn import utils
from mrcnn.layer_config import PlainConfigMixin


def compute_backbone_shapes(config, image_shape) -> np.ndarray:
    """[height, width] of each pyramid level (P2..P6) for an input image shape.

    Args:
        config: a ``Config``.
        image_shape: (H, W[, C]) of the molded input image.

    Returns:
        int array [5, 2].
    """
    if callable(config.BACKBONE):
        return np.asarray(config.COMPUTE_BACKBONE_SHAPE(image_shape))
    return np.array([[int(np.ceil(image_shape[0] / stride)),
                      int(np.ceil(image_shape[1] / stride))]
                     for stride in config.BACKBONE_STRIDES])


@functools.lru_cache(maxsize=16)
def _anchors_cached(scales: tuple, ratios: tuple, strides: tuple, anchor_stride: int,
                    backbone_shapes: tuple, image_hw: tuple) -> tuple[np.ndarray, np.ndarray]:
    pixel = utils.generate_pyramid_anchors(list(scales), list(ratios),
                                           np.array(backbone_shapes), list(strides),
                                           anchor_stride)
    normalized = utils.norm_boxes(pixel, image_hw).astype(np.float32)
    pixel.setflags(write=False)
    normalized.setflags(write=False)
    return pixel, normalized


def pyramid_anchors(config, image_shape, normalized: bool = True) -> np.ndarray:
    """Anchor boxes of every pyramid level for an image shape, in the RPN's order.

    Args:
        config: a ``Config``.
        image_shape: (H, W[, C]) of the molded image.
        normalized: return normalized coordinates (what the graph uses) instead of pixels.

    Returns:
        float array [A, (y1, x1, y2, x2)] (read-only; copy before changing it).
    """
    hw = (int(image_shape[0]), int(image_shape[1]))
    shapes = compute_backbone_shapes(config, hw)
    pixel, norm = _anchors_cached(
        tuple(config.RPN_ANCHOR_SCALES), tuple(float(r) for r in config.RPN_ANCHOR_RATIOS),
        tuple(config.BACKBONE_STRIDES), int(config.RPN_ANCHOR_STRIDE),
        tuple(map(tuple, shapes.tolist())), hw)
    return norm if normalized else pixel


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
