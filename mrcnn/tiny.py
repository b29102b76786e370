"""A seconds-per-step Mask R-CNN for smoke runs: tests, ``--tiny`` sample runs, notebooks.

ResNet-50's graph takes tens of seconds to trace on a CPU, which is most of the cost of
running a command line or a notebook end to end. ``tiny_config(MyConfig)`` keeps what makes
the config *yours* (classes, resize mode, mean pixel, thresholds) and swaps everything that
costs time for tiny values: 64 px images, a five-conv backbone (Matterport's callable
``BACKBONE`` contract), slim pyramid and heads, a few dozen proposals and ROIs.

The model it builds is not meant to be good, only to exercise every code path: the same
layers, losses, data pipeline, checkpoints and detection post-processing as the real one.

One switch turns it on everywhere: the samples' ``--tiny`` flag, or the environment
variable ``MRCNN_TINY=1`` (``tiny_requested``), which the notebooks read too.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from mrcnn.config import Config


# The environment switch of the tiny mode (samples and notebooks).
TINY_ENV = "MRCNN_TINY"


def tiny_requested(args: Any = None) -> bool:
    """Whether the tiny mode is on: ``args.tiny`` (a ``--tiny`` flag) or ``MRCNN_TINY``.

    Args:
        args: parsed command-line arguments, or None (only the environment counts).

    Returns:
        True when ``args.tiny`` is set or ``MRCNN_TINY`` is 1, true, yes or on.
    """
    if getattr(args, "tiny", False):
        return True
    return os.environ.get(TINY_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def tiny_backbone(input_image, stage5: bool = True, train_bn: Any = None) -> list:
    """Five strided 3x3 convs -> [C1, C2, C3, C4, C5] at strides 2..32.

    Args:
        input_image: the image tensor [B, H, W, C].
        stage5: ignored (always built; Matterport's signature).
        train_bn: ignored (no normalization layers).

    Returns:
        The five feature maps; the FPN uses C2..C5.
    """
    from keras import layers

    x = input_image
    outputs = []
    for i, (filters, stride) in enumerate([(16, 2), (32, 2), (32, 2), (64, 2), (64, 2)]):
        x = layers.Conv2D(filters, 3, strides=stride, padding="same", activation="relu",
                          kernel_initializer="he_normal", name=f"tiny_conv{i + 1}")(x)
        outputs.append(x)
    return outputs


def tiny_backbone_shapes(image_shape) -> np.ndarray:
    """[H, W] of P2..P6 for a ``tiny_backbone`` model (strides 4, 8, 16, 32, 64).

    Args:
        image_shape: [H, W, ...] of the molded image.

    Returns:
        int array [5, 2].
    """
    return np.array([[int(np.ceil(image_shape[0] / s)), int(np.ceil(image_shape[1] / s))]
                     for s in (4, 8, 16, 32, 64)])


# What a tiny config overrides. Everything else (NUM_CLASSES, IMAGE_RESIZE_MODE, MEAN_PIXEL,
# DETECTION_* thresholds, LEARNING_RATE...) stays the base config's.
TINY_SETTINGS: dict[str, Any] = dict(
    IMAGE_MIN_DIM=64,
    IMAGE_MAX_DIM=64,
    BACKBONE=staticmethod(tiny_backbone),
    COMPUTE_BACKBONE_SHAPE=staticmethod(tiny_backbone_shapes),
    NORM="gn",
    GN_GROUPS=8,
    RPN_ANCHOR_SCALES=(8, 16, 32, 64, 128),
    TOP_DOWN_PYRAMID_SIZE=64,
    RPN_CONV_CHANNELS=64,
    MASK_HEAD_CHANNELS=32,
    FPN_CLASSIF_FC_LAYERS_SIZE=128,
    BOX_HEAD="2fc",
    RPN_TRAIN_ANCHORS_PER_IMAGE=32,
    PRE_NMS_LIMIT=500,
    POST_NMS_ROIS_TRAINING=64,
    POST_NMS_ROIS_INFERENCE=32,
    TRAIN_ROIS_PER_IMAGE=16,
    MAX_GT_INSTANCES=20,
    MINI_MASK_SHAPE=(16, 16),
    DETECTION_MAX_INSTANCES=10,
    # XLA compilation costs more than the handful of steps a smoke run takes.
    JIT_COMPILE=False,
    MIXED_PRECISION=None,
)


def tiny_config(base: type[Config], **overrides: Any) -> Config:
    """An instance of ``base`` shrunk by ``TINY_SETTINGS`` (then ``overrides``).

    The class is a subclass named ``Tiny<Base>`` whose NAME is ``"tiny" + base.NAME``, so
    its checkpoints never mix with those of the real config (``find_last`` matches run
    folders by name).

    Args:
        base: a Config subclass.
        **overrides: attributes applied last, e.g. ``STEPS_PER_EPOCH=1``.

    Returns:
        The config instance.
    """
    attrs = {**TINY_SETTINGS, "NAME": "tiny" + str(base.NAME), **overrides}
    return type("Tiny" + base.__name__, (base,), attrs)()
