"""ResNet backbones with Matterport's layer names (conv1, res2a_branch2a, bn2a_branch2a...).

ResNet-50/101 (bottleneck blocks) are Matterport's. ResNet-18/34 (basic blocks, same naming
scheme: branch2a/2b and branch1) are added for small data and CPU training, where a
from-scratch ResNet-50 is mostly wasted compute.

The names matter: ``train(layers="3+")`` selects layers by regex on them and
``load_weights(by_name=True)`` matches Matterport / ImageNet HDF5 files by them.
"""

from __future__ import annotations

import importlib
from typing import Callable

from keras import initializers, layers

from mrcnn.component import Component
from mrcnn.norm import norm_layer

# Identity blocks in stage 4 after its conv block: the only difference between the depths.
STAGE4_BLOCKS = {"resnet50": 5, "resnet101": 22}
# Blocks per stage (2..5) of the basic-block ResNets.
BASIC_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
ARCHITECTURES = (*STAGE4_BLOCKS, *BASIC_BLOCKS)

# He initialization: the backbone is usually trained from scratch here (no downloads).
# Pretrained weights overwrite every initializer below, so they only matter from scratch.
KERNEL_INIT = "he_normal"

# The input is Matterport's mean-subtracted 8-bit image (utils.mold_image), whose values
# have a standard deviation of roughly 58 (ImageNet: 57-58 per channel), not 1 as He
# initialization assumes. With frozen BatchNorm (an identity map at initialization) nothing
# else would normalize them, and features of ~60 made the first RPN deltas and losses huge,
# so there conv1's He variance is divided by PIXEL_STD**2 (activations start near unit scale).
PIXEL_STD = 58.0


def conv1_init() -> initializers.Initializer:
    """conv1's initializer; a new instance per layer (an unseeded Keras initializer instance
    returns the same values at every call, and draws its seed when it is created)."""
    return initializers.VarianceScaling(scale=2.0 / PIXEL_STD ** 2, mode="fan_in",
                                        distribution="truncated_normal")


def _conv(filters: int, kernel: int | tuple, name: str, strides: int = 1,
          padding: str = "valid", kernel_init=KERNEL_INIT) -> layers.Conv2D:
    # use_bias=True as in Matterport, so HDF5 weights from its files fit.
    return layers.Conv2D(filters, kernel, strides=strides, padding=padding, name=name,
                         use_bias=True, kernel_initializer=kernel_init)


def _last_branch_init(norm: str):
    """Initializer of the last conv of a residual branch.

    Each block must start close to the identity, or the residual stream's variance adds up
    over the 16-33 blocks (He initialization preserves it per branch, not per sum). Trainable
    norms do it with a zero gamma (``norm_layer(zero_init=True)``). Frozen BatchNorm cannot
    (a frozen zero gamma would kill the branch for good), so the conv itself starts at zero
    (SkipInit / Fixup): the branch outputs 0, its kernel still gets gradients, and the
    earlier convs of the branch start learning after the first step.
    """
    return "zeros" if norm == "frozen_bn" else KERNEL_INIT


def _merge_shortcut(x, y, filters: int, stage: int, block: str, norm: str, gn_groups: int,
                    strides: int, shortcut_conv: bool):
    """relu(y + shortcut(x)): identity, or Matterport's 1x1 projection res*_branch1."""
    shortcut = x
    if shortcut_conv:
        shortcut = _conv(filters, 1, f"res{stage}{block}_branch1", strides=strides)(x)
        shortcut = norm_layer(norm, f"bn{stage}{block}_branch1", gn_groups)(shortcut)
    y = layers.Add()([y, shortcut])
    return layers.Activation("relu", name=f"res{stage}{block}_out")(y)


def _bottleneck(x, kernel_size: int, filters: tuple[int, int, int], stage: int, block: str,
                norm: str, gn_groups: int, strides: int = 1, shortcut_conv: bool = False):
    """Bottleneck residual block: 1x1 -> kxk -> 1x1 (+ 1x1 projection shortcut)."""
    f1, f2, f3 = filters
    conv_name = f"res{stage}{block}_branch"
    bn_name = f"bn{stage}{block}_branch"

    y = _conv(f1, 1, conv_name + "2a", strides=strides)(x)
    y = norm_layer(norm, bn_name + "2a", gn_groups)(y)
    y = layers.Activation("relu")(y)
    y = _conv(f2, kernel_size, conv_name + "2b", padding="same")(y)
    y = norm_layer(norm, bn_name + "2b", gn_groups)(y)
    y = layers.Activation("relu")(y)
    y = _conv(f3, 1, conv_name + "2c", kernel_init=_last_branch_init(norm))(y)
    y = norm_layer(norm, bn_name + "2c", gn_groups, zero_init=True)(y)
    return _merge_shortcut(x, y, f3, stage, block, norm, gn_groups, strides, shortcut_conv)


def _basic_block(x, filters: int, stage: int, block: str, norm: str, gn_groups: int,
                 strides: int = 1, shortcut_conv: bool = False):
    """Basic residual block: 3x3 -> 3x3 (+ 1x1 projection shortcut)."""
    conv_name = f"res{stage}{block}_branch"
    bn_name = f"bn{stage}{block}_branch"
    y = _conv(filters, 3, conv_name + "2a", strides=strides, padding="same")(x)
    y = norm_layer(norm, bn_name + "2a", gn_groups)(y)
    y = layers.Activation("relu")(y)
    y = _conv(filters, 3, conv_name + "2b", padding="same",
              kernel_init=_last_branch_init(norm))(y)
    y = norm_layer(norm, bn_name + "2b", gn_groups, zero_init=True)(y)
    return _merge_shortcut(x, y, filters, stage, block, norm, gn_groups, strides, shortcut_conv)


def resnet_graph(input_image, architecture: str, stage5: bool = True, norm: str = "frozen_bn",
                 gn_groups: int = 32) -> list:
    """Build the ResNet feature extractor.

    Args:
        input_image: image tensor [B, H, W, C].
        architecture: "resnet18", "resnet34", "resnet50" or "resnet101".
        stage5: build stage 5 (C5); Mask R-CNN's FPN needs it.
        norm: "frozen_bn", "bn" or "gn" (Config.NORM).
        gn_groups: GroupNorm groups (Config.GN_GROUPS).

    Returns:
        [C1, C2, C3, C4, C5]: stage outputs at strides 4 (C1 after pooling), 4, 8, 16, 32.
        C5 is None when ``stage5`` is False.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"Config.BACKBONE = {architecture!r} is invalid: expected one of "
                         f"{ARCHITECTURES} or a callable.")
    x = layers.ZeroPadding2D((3, 3))(input_image)
    # Only frozen BN needs conv1 at the pixels' scale: a trainable norm right after it
    # normalizes anyway, and tiny conv1 weights would make AdamW's fixed-size steps huge
    # relative to them (shapes with GN: mAP@0.5 0.862 instead of 0.9+ after 4 epochs).
    x = _conv(64, 7, "conv1", strides=2,
              kernel_init=conv1_init() if norm == "frozen_bn" else KERNEL_INIT)(x)
    x = norm_layer(norm, "bn_conv1", gn_groups)(x)
    x = layers.Activation("relu")(x)
    c1 = x = layers.MaxPooling2D(3, strides=2, padding="same")(x)

    if architecture in BASIC_BLOCKS:
        def stage(x, n_blocks: int, width: int, stage_id: int, strides: int):
            # Stage 2 keeps 64 channels, so only later stages need a projection shortcut.
            x = _basic_block(x, width, stage_id, "a", norm, gn_groups, strides=strides,
                             shortcut_conv=stage_id > 2)
            for i in range(1, n_blocks):
                x = _basic_block(x, width, stage_id, chr(ord("a") + i), norm, gn_groups)
            return x
        counts = BASIC_BLOCKS[architecture]
        widths = (64, 128, 256, 512)
    else:
        def stage(x, n_blocks: int, width: int, stage_id: int, strides: int):
            filters = (width, width, 4 * width)
            x = _bottleneck(x, 3, filters, stage_id, "a", norm, gn_groups, strides=strides,
                            shortcut_conv=True)
            for i in range(1, n_blocks):
                x = _bottleneck(x, 3, filters, stage_id, chr(ord("a") + i), norm, gn_groups)
            return x
        counts = (3, 4, 1 + STAGE4_BLOCKS[architecture], 3)
        widths = (64, 128, 256, 512)

    c2 = x = stage(x, counts[0], widths[0], 2, strides=1)
    c3 = x = stage(x, counts[1], widths[1], 3, strides=2)
    c4 = x = stage(x, counts[2], widths[2], 4, strides=2)
    c5 = stage(x, counts[3], widths[3], 5, strides=2) if stage5 else None
    return [c1, c2, c3, c4, c5]


class ResNetBackbone(Component):
    """The ResNet backbone with Matterport's layer names (``resnet_graph``).

    Contract of a backbone: called on the image ``[B, H, W, C]``, it returns
    ``[C2, C3, C4, C5]`` at strides 4, 8, 16, 32 (``Config.BACKBONE_STRIDES[:4]``; the FPN
    makes P6 at 64), any channel counts.

    Args:
        architecture: "resnet18", "resnet34", "resnet50" or "resnet101" (Config.BACKBONE).
        norm: "frozen_bn", "bn" or "gn" (Config.NORM).
        gn_groups: GroupNorm groups (Config.GN_GROUPS).
    """

    def __init__(self, architecture: str = "resnet101", norm: str = "frozen_bn",
                 gn_groups: int = 32):
        if architecture not in ARCHITECTURES:
            raise ValueError(f"Config.BACKBONE = {architecture!r} is invalid: expected one of "
                             f"{ARCHITECTURES} or a callable.")
        self.architecture, self.norm, self.gn_groups = architecture, norm, int(gn_groups)
        self._keep(architecture=architecture, norm=norm, gn_groups=gn_groups)

    def __call__(self, image) -> list:
        """Args: image [B, H, W, C]. Returns: [C2, C3, C4, C5]."""
        _, c2, c3, c4, c5 = resnet_graph(image, self.architecture, stage5=True,
                                         norm=self.norm, gn_groups=self.gn_groups)
        return [c2, c3, c4, c5]


class CallableBackbone(Component):
    """Matterport's callable ``Config.BACKBONE``: ``fn(image, stage5=True, train_bn=...)``
    returning ``[C1, C2, C3, C4, C5]``.

    Args:
        fn: the callable (a module-level function, so that ``get_config`` can name it).
        train_bn: passed on as ``train_bn`` (Config.TRAIN_BN).
    """

    def __init__(self, fn: Callable | str, train_bn: bool | None = False):
        if isinstance(fn, str):  # an import path, from get_config
            module, _, name = fn.rpartition(".")
            fn = getattr(importlib.import_module(module), name)
        self.fn, self.train_bn = fn, train_bn
        self._keep(fn=f"{fn.__module__}.{fn.__qualname__}", train_bn=train_bn)

    def __call__(self, image) -> list:
        """Args: image [B, H, W, C]. Returns: [C2, C3, C4, C5]."""
        _, c2, c3, c4, c5 = self.fn(image, stage5=True, train_bn=self.train_bn)
        return [c2, c3, c4, c5]
