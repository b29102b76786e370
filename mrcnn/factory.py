"""The factory: Config -> the model's parts, unpacked once (Model Garden's ``factory``,
detectron2's ``from_config``).

``build_parts(config)`` reads every Config attribute the backbone, FPN, RPN head, box head
and mask head use and passes them on as plain constructor values; below this module no part
sees the Config. A part given explicitly (``MaskRCNN(..., box_head=MyHead())``) is used as
it is and its default is not built. See docs/components.md for each part's contract.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from mrcnn.backbone import CallableBackbone, ResNetBackbone
from mrcnn.box_head import BoxHead
from mrcnn.fpn import FPN
from mrcnn.mask_head import MaskHead
from mrcnn.rpn import RPNHead

PART_NAMES = ("backbone", "fpn", "rpn_head", "box_head", "mask_head")


@dataclass
class Parts:
    """The five pluggable parts of a Mask R-CNN graph (each a callable on Keras tensors).

    Attributes:
        backbone: image -> [C2, C3, C4, C5].
        fpn: [C2..C5] -> [P2..P6].
        rpn_head: [P2..P6] -> [rpn_class_logits, rpn_class, rpn_bbox].
        box_head: (rois, [P2..P5]) -> [mrcnn_class_logits, mrcnn_class, mrcnn_bbox].
        mask_head: (rois, [P2..P5]) -> mrcnn_mask.
    """

    backbone: Any
    fpn: Any
    rpn_head: Any
    box_head: Any
    mask_head: Any

    def get_config(self) -> dict:
        """``{part name: part.get_config()}`` for the parts that have one (None otherwise)."""
        return {f.name: (getattr(self, f.name).get_config()
                         if hasattr(getattr(self, f.name), "get_config") else None)
                for f in fields(self)}


def backbone_from_config(config) -> Any:
    """The backbone of Config.BACKBONE: a ResNet name, or Matterport's callable."""
    if callable(config.BACKBONE):
        return CallableBackbone(config.BACKBONE, train_bn=config.TRAIN_BN)
    return ResNetBackbone(config.BACKBONE, norm=config.NORM, gn_groups=config.GN_GROUPS)


def fpn_from_config(config) -> FPN:
    """The FPN of Config.TOP_DOWN_PYRAMID_SIZE, NORM, GN_GROUPS."""
    return FPN(config.TOP_DOWN_PYRAMID_SIZE, norm=config.NORM, gn_groups=config.GN_GROUPS)


def rpn_head_from_config(config) -> RPNHead:
    """The RPN head of Config.RPN_ANCHOR_RATIOS, RPN_ANCHOR_STRIDE, TOP_DOWN_PYRAMID_SIZE,
    RPN_CONV_CHANNELS, NORM."""
    return RPNHead(len(config.RPN_ANCHOR_RATIOS), config.RPN_ANCHOR_STRIDE,
                   config.TOP_DOWN_PYRAMID_SIZE, config.RPN_CONV_CHANNELS, norm=config.NORM)


def box_head_from_config(config) -> BoxHead:
    """The box head of Config.NUM_CLASSES, POOL_SIZE, BOX_HEAD, FPN_CLASSIF_FC_LAYERS_SIZE,
    NORM, GN_GROUPS, BACKBONE_STRIDES."""
    return BoxHead(config.NUM_CLASSES, config.POOL_SIZE, design=config.BOX_HEAD,
                   fc_size=config.FPN_CLASSIF_FC_LAYERS_SIZE, norm=config.NORM,
                   gn_groups=config.GN_GROUPS, image_stride=config.BACKBONE_STRIDES[0])


def mask_head_from_config(config) -> MaskHead:
    """The mask head of Config.NUM_CLASSES, MASK_POOL_SIZE, MASK_HEAD_CHANNELS, NORM,
    GN_GROUPS, BACKBONE_STRIDES."""
    return MaskHead(config.NUM_CLASSES, config.MASK_POOL_SIZE,
                    channels=config.MASK_HEAD_CHANNELS, norm=config.NORM,
                    gn_groups=config.GN_GROUPS, image_stride=config.BACKBONE_STRIDES[0])


_DEFAULTS = {"backbone": backbone_from_config, "fpn": fpn_from_config,
             "rpn_head": rpn_head_from_config, "box_head": box_head_from_config,
             "mask_head": mask_head_from_config}


def build_parts(config, **given: Any) -> Parts:
    """The parts of a Mask R-CNN: those given, and the Config's defaults for the others.

    Args:
        config: a ``Config``.
        **given: backbone=, fpn=, rpn_head=, box_head=, mask_head=: parts to use instead
            of the defaults (None: the default). See docs/components.md for the contracts.

    Returns:
        The ``Parts``; a default is built only for a part not given.
    """
    unknown = set(given) - set(PART_NAMES)
    if unknown:
        raise TypeError(f"build_parts: unknown parts {sorted(unknown)}; expected some of "
                        f"{PART_NAMES}")
    for name, part in given.items():
        if part is not None and not callable(part):
            raise TypeError(f"MaskRCNN({name}=...) must be callable on Keras tensors (see "
                            f"docs/components.md), got {type(part).__name__}")
    return Parts(**{name: given[name] if given.get(name) is not None else _DEFAULTS[name](config)
                    for name in PART_NAMES})
