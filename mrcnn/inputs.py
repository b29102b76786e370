"""The training inputs, named once: what the data generator yields, the graph takes and the
losses read.

``training_inputs(config)`` lists each input's name, dtype and per-image shape, in the
order of the generator's batches (Matterport's order). ``DataGenerator`` allocates its
batch arrays from it, ``network.build_training_graph`` makes its ``keras.Input`` layers from
it and the losses look inputs up by these names.

NumPy only (the data pipeline imports it without building a model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The names, in generator order.
IMAGE = "input_image"
IMAGE_META = "input_image_meta"
RPN_MATCH = "input_rpn_match"
RPN_BBOX = "input_rpn_bbox"
GT_CLASS_IDS = "input_gt_class_ids"
GT_BOXES = "input_gt_boxes"
GT_MASKS = "input_gt_masks"


@dataclass(frozen=True)
class InputSpec:
    """One model input.

    Attributes:
        name: the input's name (the ``keras.Input`` name and the key the losses use).
        dtype: its dtype ("float32", "int32", "bool").
        shape: its shape per image (no batch axis); None where it varies (the anchor count
            of ``input_rpn_match``, which depends on the image size).
        doc: what it holds.
    """

    name: str
    dtype: str
    shape: tuple
    doc: str


def training_inputs(config: Any, use_mini_mask: bool | None = None) -> list[InputSpec]:
    """The training model's inputs, in the data generator's order.

    Args:
        config: a ``Config`` (IMAGE_SHAPE, IMAGE_META_SIZE, RPN_TRAIN_ANCHORS_PER_IMAGE,
            MAX_GT_INSTANCES, USE_MINI_MASK, MINI_MASK_SHAPE).
        use_mini_mask: mask size override (None: Config.USE_MINI_MASK).

    Returns:
        The ``InputSpec`` of each input.
    """
    if use_mini_mask is None:
        use_mini_mask = config.USE_MINI_MASK
    image_shape = tuple(int(s) for s in config.IMAGE_SHAPE)
    mask_hw = (tuple(int(s) for s in config.MINI_MASK_SHAPE) if use_mini_mask
               else image_shape[:2])
    gt = int(config.MAX_GT_INSTANCES)
    return [
        InputSpec(IMAGE, "float32", image_shape, "molded image (MEAN_PIXEL subtracted)"),
        InputSpec(IMAGE_META, "float32", (int(config.IMAGE_META_SIZE),),
                  "compose_image_meta's vector"),
        InputSpec(RPN_MATCH, "int32", (None, 1), "per anchor: 1 positive, -1 negative, 0"),
        InputSpec(RPN_BBOX, "float32", (int(config.RPN_TRAIN_ANCHORS_PER_IMAGE), 4),
                  "the positive anchors' deltas / RPN_BBOX_STD_DEV, zero padded"),
        InputSpec(GT_CLASS_IDS, "int32", (gt,), "class ids, zero padded (negative: crowd)"),
        InputSpec(GT_BOXES, "float32", (gt, 4), "pixel boxes (y1, x1, y2, x2), zero padded"),
        InputSpec(GT_MASKS, "bool", (*mask_hw, gt),
                  "masks (mini masks with USE_MINI_MASK), zero padded"),
    ]
