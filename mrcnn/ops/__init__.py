"""Backend-specific kernels, each with a pure ``keras.ops`` twin.

- ``boxes``: box coding (deltas: encode, decode, clamp), clipping, IoU, (de)normalization
  on tensors.
- ``roi_align``: ``crop_and_resize`` (exact ``tf.image.crop_and_resize`` semantics) and the
  one-gather ``multilevel_roi_align`` of the FPN heads.
- ``conv``: the non-overlapping transposed convolution (the mask head's deconv).
- ``device``: whether an accelerator is present, and ``Config.JIT_COMPILE="auto"``'s answer.
- ``nms``: batched static-shape NMS; TF kernel on TensorFlow, tiled ``keras.ops`` elsewhere.
- ``distribute``: data-parallel training on ``tf.distribute`` / ``keras.distribution``
  (imported as ``mrcnn.ops.distribute``; Config.GPU_COUNT > 1).

Everything here takes and returns static shapes and compiles with XLA on TensorFlow
(``jit_compile=True``) and JAX (``jax.jit``).
"""

from mrcnn.ops.boxes import (
    MAX_LOG_SCALE,
    BoxCoder,
    apply_box_deltas,
    box_refinement,
    clamp_deltas,
    clip_boxes,
    denorm_boxes,
    norm_boxes,
    overlaps,
)
from mrcnn.ops.conv import nonoverlapping_conv_transpose
from mrcnn.ops.device import accelerator_present, resolve_jit_compile
from mrcnn.ops.nms import (
    gather_padded,
    nms_padded_pure,
    nms_padded_tf,
    nms_padded_tiled,
    non_max_suppression_padded,
)
from mrcnn.ops.roi_align import crop_and_resize, multilevel_roi_align, roi_pyramid_levels

__all__ = [
    "BoxCoder",
    "MAX_LOG_SCALE",
    "accelerator_present",
    "apply_box_deltas",
    "box_refinement",
    "clamp_deltas",
    "clip_boxes",
    "crop_and_resize",
    "denorm_boxes",
    "gather_padded",
    "multilevel_roi_align",
    "nms_padded_pure",
    "nms_padded_tf",
    "nms_padded_tiled",
    "non_max_suppression_padded",
    "nonoverlapping_conv_transpose",
    "norm_boxes",
    "overlaps",
    "resolve_jit_compile",
    "roi_pyramid_levels",
]
