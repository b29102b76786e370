"""NumPy box and mask geometry for Mask R-CNN, and Matterport's ``utils`` import surface.

Defined here: box extraction, IoU, NMS, box deltas, mini masks, resizing, box
normalisation and the COCO weights download. Matterport's other ``utils`` names stay
reachable here but live in their own modules: ``Dataset``, ``check_mask``,
``load_image_file`` in ``mrcnn.dataset``; ``compute_matches``, ``compute_ap``,
``compute_ap_range``, ``compute_recall``, ``trim_zeros`` in ``mrcnn.metrics``;
``generate_anchors``, ``generate_pyramid_anchors`` in ``mrcnn.anchors``.

This module is deliberately free of TensorFlow, Keras and JAX so that data tooling,
notebooks and evaluation scripts can import it cheaply (a test enforces this). Function
names, argument order and return values follow Matterport's ``mrcnn/utils.py`` so that
existing scripts keep working; where behaviour differs (mostly edge cases that used to
crash or produce NaN) the docstring says so.

Conventions used throughout:

- Boxes are ``(y1, x1, y2, x2)`` in pixels with ``y2``/``x2`` exclusive.
- Instance masks are ``[height, width, N]`` arrays, one channel per instance.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mrcnn import transform
from mrcnn.box_coder import BoxCoder, box_iou, pairwise_iou
from mrcnn.dataset import Dataset, as_model_image, check_mask, load_image_file  # noqa: F401

# Released Matterport weights trained on MS COCO (the HDF5 layout our loader understands).
COCO_MODEL_URL = (
    "https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5"
)
# Its SHA-256. Matterport published none, and no independently verified value was found,
# so it is unknown (None): the download is checked only when the caller passes the hash
# it trusts (``download_trained_weights(path, file_hash=...)``).
COCO_MODEL_SHA256: str | None = None


############################################################
#  Bounding boxes
############################################################


def extract_bboxes(mask: np.ndarray) -> np.ndarray:
    """Compute tight bounding boxes from instance masks.

    Args:
        mask: [height, width, N] masks; any non-zero pixel belongs to the instance.

    Returns:
        int32 array [N, (y1, x1, y2, x2)] with ``y2``/``x2`` exclusive (one past the last
        mask pixel). An empty mask gives the box ``(0, 0, 0, 0)``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"extract_bboxes expects a [H, W, N] mask, got shape {mask.shape}")
    height, width, count = mask.shape
    boxes = np.zeros([count, 4], dtype=np.int32)
    if count == 0 or height == 0 or width == 0:
        return boxes
    mask = mask.astype(bool, copy=False)
    rows = transform.any_over_width(mask)  # [H, N]: does row y contain the instance?
    cols = mask.any(axis=0)  # [W, N]
    present = rows.any(axis=0)
    # argmax returns the first True; on the reversed array it finds the last one.
    y1 = rows.argmax(axis=0)
    y2 = height - rows[::-1].argmax(axis=0)
    x1 = cols.argmax(axis=0)
    x2 = width - cols[::-1].argmax(axis=0)
    boxes[:] = np.stack([y1, x1, y2, x2], axis=1)
    boxes[~present] = 0
    return boxes


def compute_iou(
    box: np.ndarray, boxes: np.ndarray, box_area: float, boxes_area: np.ndarray
) -> np.ndarray:
    """IoU of one box against many boxes (``box_coder.box_iou``).

    Areas are passed in (rather than recomputed) because callers such as
    ``non_max_suppression`` reuse them across many calls.

    Args:
        box: [4] (y1, x1, y2, x2).
        boxes: [N, 4] (y1, x1, y2, x2).
        box_area: area of ``box``.
        boxes_area: [N] areas of ``boxes``.

    Returns:
        [N] float IoU values. A pair whose union is empty gets 0 (Matterport gave NaN).
    """
    return box_iou(np.asarray(box), np.asarray(boxes), box_area, boxes_area)


def compute_overlaps(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Pairwise IoU between two sets of boxes (``box_coder.pairwise_iou``).

    Args:
        boxes1: [N, (y1, x1, y2, x2)].
        boxes2: [M, (y1, x1, y2, x2)].

    Returns:
        [N, M] float IoU matrix (zeros of that shape when either set is empty).
    """
    return pairwise_iou(boxes1, boxes2)


def compute_overlaps_masks(masks1: np.ndarray, masks2: np.ndarray) -> np.ndarray:
    """Pairwise IoU between two sets of masks.

    Args:
        masks1: [height, width, N]; values > 0.5 are foreground.
        masks2: [height, width, M], same spatial size as ``masks1``.

    Returns:
        [N, M] float IoU matrix (zeros of that shape when either set is empty). Two empty
        masks have IoU 0 (Matterport gave NaN).
    """
    masks1 = np.asarray(masks1)
    masks2 = np.asarray(masks2)
    n1 = masks1.shape[-1] if masks1.ndim else 0
    n2 = masks2.shape[-1] if masks2.ndim else 0
    if n1 == 0 or n2 == 0:
        return np.zeros((n1, n2))
    if masks1.shape[:-1] != masks2.shape[:-1]:
        raise ValueError(
            f"compute_overlaps_masks: spatial sizes differ: {masks1.shape} vs {masks2.shape}"
        )
    flat1 = np.reshape(masks1 > 0.5, (-1, n1)).astype(np.float32)
    flat2 = np.reshape(masks2 > 0.5, (-1, n2)).astype(np.float32)
    area1 = flat1.sum(axis=0)
    area2 = flat2.sum(axis=0)
    # A matrix product counts the shared pixels of every pair at once.
    intersections = flat1.T @ flat2
    union = area1[:, None] + area2[None, :] - intersections
    return _safe_divide(intersections, union)


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression.

    Repeatedly keeps the highest-scoring remaining box and drops every remaining box whose
    IoU with it is greater than ``threshold``.

    Args:
        boxes: [N, (y1, x1, y2, x2)].
        scores: [N] box scores.
        threshold: IoU above which a lower-scored box is suppressed.

    Returns:
        int32 indices of the kept boxes, in decreasing score order. Empty input gives an
        empty array (Matterport asserted N > 0).
    """
    boxes = np.asarray(boxes)
    scores = np.asarray(scores)
    if boxes.shape[0] == 0:
        return np.zeros([0], dtype=np.int32)
    if boxes.dtype.kind != "f":
        boxes = boxes.astype(np.float32)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        best = order[0]
        keep.append(best)
        rest = order[1:]
        iou = compute_iou(boxes[best], boxes[rest], area[best], area[rest])
        order = rest[iou <= threshold]
    return np.array(keep, dtype=np.int32)


def apply_box_deltas(boxes: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """Apply regression deltas to boxes (the inverse of ``box_refinement``).

    ``box_coder.BoxCoder`` without std-dev scaling or clamping (Matterport's semantics).

    Args:
        boxes: [N, (y1, x1, y2, x2)].
        deltas: [N, (dy, dx, log(dh), log(dw))].

    Returns:
        float32 [N, (y1, x1, y2, x2)] refined boxes.
    """
    return _PLAIN_CODER.decode(np.asarray(boxes, dtype=np.float32),
                               np.asarray(deltas, dtype=np.float32))


def box_refinement(box: np.ndarray, gt_box: np.ndarray) -> np.ndarray:
    """Regression deltas that move ``box`` onto ``gt_box`` (``box_coder.BoxCoder.encode``).

    Heights are ``y2 - y1`` and centres ``y1 + 0.5 * height`` (Matterport's convention,
    which the released weights were trained with). A degenerate pair (zero height or width
    in either box) gives deltas of 0 (Matterport gave inf/NaN).

    Args:
        box: [N, (y1, x1, y2, x2)].
        gt_box: [N, (y1, x1, y2, x2)].

    Returns:
        float32 [N, (dy, dx, log(dh), log(dw))].
    """
    return _PLAIN_CODER.encode(np.asarray(box, dtype=np.float32),
                               np.asarray(gt_box, dtype=np.float32))


# Matterport's plain deltas: no std-dev scaling, no clamp.
_PLAIN_CODER = BoxCoder(std_dev=None, max_log_scale=None)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 wherever den is 0 (no RuntimeWarning, no NaN)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast_shapes(num.shape, den.shape))
    np.divide(num, den, out=out, where=den != 0)
    return out


############################################################
#  Resizing
############################################################


def resize(
    image: np.ndarray,
    output_shape: Sequence[int],
    order: int = 1,
    mode: str = "constant",
    cval: float = 0,
    clip: bool = True,
    preserve_range: bool = False,
    anti_aliasing: bool = False,
    anti_aliasing_sigma: Any = None,
) -> np.ndarray:
    """Thin wrapper over ``skimage.transform.resize`` with Matterport's defaults.

    One place to pin the interpolation settings used everywhere (bilinear, no
    anti-aliasing: what the released weights were trained with).

    Args:
        image: array to resize; extra trailing dimensions (channels) are kept.
        output_shape: target (height, width[, ...]).
        order, mode, cval, clip, preserve_range, anti_aliasing, anti_aliasing_sigma:
            forwarded to ``skimage.transform.resize``.

    Returns:
        The resized array (float unless ``order == 0`` on a bool input).
    """
    import skimage.transform  # lazy: skimage.transform imports scipy

    return skimage.transform.resize(
        image,
        tuple(int(s) for s in output_shape),
        order=order,
        mode=mode,
        cval=cval,
        clip=clip,
        preserve_range=preserve_range,
        anti_aliasing=anti_aliasing,
        anti_aliasing_sigma=anti_aliasing_sigma,
    )


# Image <-> model-input geometry lives in mrcnn.transform (OpenCV); Matterport's names stay
# here. The wrappers keep their signatures (``mold_mask`` takes the config).
resize_image = transform.resize_image
resize_mask = transform.resize_mask
_nearest_indices = transform.nearest_indices


def minimize_mask(bbox: np.ndarray, mask: np.ndarray, mini_shape: Sequence[int]) -> np.ndarray:
    """Crop each instance mask to its box and resize it to ``mini_shape`` (mini masks).

    Mini masks save memory during training; ``expand_mask`` reverses the operation.

    Args:
        bbox: [N, (y1, x1, y2, x2)] boxes, e.g. from ``extract_bboxes``.
        mask: [height, width, N] masks.
        mini_shape: (height, width) of the mini masks, e.g. config.MINI_MASK_SHAPE.

    Returns:
        bool [mini_h, mini_w, N].

    Raises:
        ValueError: a box has zero area (naming the instance index).
    """
    mask = np.asarray(mask)
    mini_shape = tuple(int(s) for s in mini_shape)
    count = mask.shape[-1]
    mini_mask = np.zeros(mini_shape + (count,), dtype=bool)
    for i in range(count):
        y1, x1, y2, x2 = (int(v) for v in bbox[i][:4])
        m = mask[y1:y2, x1:x2, i]
        if m.size == 0:
            raise ValueError(
                f"minimize_mask: instance {i} has an empty box {(y1, x1, y2, x2)} "
                "(zero area); drop empty instances before building mini masks"
            )
        # Bilinear on 0/1 floats then round, as Matterport (OpenCV with skimage's border).
        resized = transform.resize_bilinear(m.astype(np.float32), mini_shape)
        mini_mask[:, :, i] = np.around(resized).astype(bool)
    return mini_mask


def expand_mask(bbox: np.ndarray, mini_mask: np.ndarray, image_shape: Sequence[int]) -> np.ndarray:
    """Paste mini masks back into full-size masks (the inverse of ``minimize_mask``).

    Args:
        bbox: [N, (y1, x1, y2, x2)] boxes the mini masks belong to.
        mini_mask: [mini_h, mini_w, N].
        image_shape: shape of the image; the first two entries are used.

    Returns:
        bool [height, width, N]. Instances with an empty box stay empty.
    """
    mini_mask = np.asarray(mini_mask)
    count = mini_mask.shape[-1]
    mask = np.zeros(tuple(int(s) for s in image_shape[:2]) + (count,), dtype=bool)
    for i in range(count):
        y1, x1, y2, x2 = (int(v) for v in bbox[i][:4])
        h, w = y2 - y1, x2 - x1
        if h <= 0 or w <= 0:
            continue
        resized = transform.resize_bilinear(mini_mask[:, :, i].astype(np.float32), (h, w))
        mask[y1:y2, x1:x2, i] = np.around(resized).astype(bool)
    return mask


def mold_mask(mask: np.ndarray, config: Any) -> np.ndarray:
    """Resize full masks to ``config.MASK_SHAPE`` (Matterport left this as a stub).

    Args:
        mask: [height, width] or [height, width, N] masks.
        config: object with a ``MASK_SHAPE`` (height, width) attribute.

    Returns:
        bool [mask_h, mask_w] or [mask_h, mask_w, N], thresholded at 0.5 after bilinear
        resizing (``transform.mold_mask``).
    """
    return transform.mold_mask(mask, config.MASK_SHAPE)


unmold_mask = transform.unmold_mask


############################################################
#  Box normalisation
############################################################


def norm_boxes(boxes: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Pixel boxes to normalised coordinates.

    Matterport's convention: (y2, x2) are exclusive in pixels, so they are shifted by one
    before dividing by (h - 1, w - 1); a full-image box becomes (0, 0, 1, 1).

    Args:
        boxes: [..., (y1, x1, y2, x2)] in pixels.
        shape: (height, width) of the image (extra entries are ignored).

    Returns:
        float32 [..., (y1, x1, y2, x2)] normalised boxes.
    """
    h, w = shape[0], shape[1]
    scale = np.array([h - 1, w - 1, h - 1, w - 1], dtype=np.float64)
    shift = np.array([0, 0, 1, 1], dtype=np.float64)
    return ((np.asarray(boxes) - shift) / scale).astype(np.float32)


def denorm_boxes(boxes: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Normalised boxes to pixel coordinates (inverse of ``norm_boxes``), rounded.

    Args:
        boxes: [..., (y1, x1, y2, x2)] normalised.
        shape: (height, width) of the image (extra entries are ignored).

    Returns:
        int32 [..., (y1, x1, y2, x2)] in pixels, (y2, x2) exclusive.
    """
    h, w = shape[0], shape[1]
    scale = np.array([h - 1, w - 1, h - 1, w - 1], dtype=np.float64)
    shift = np.array([0, 0, 1, 1], dtype=np.float64)
    return np.around(np.asarray(boxes) * scale + shift).astype(np.int32)


############################################################
#  Pretrained weights
############################################################


def download_trained_weights(coco_model_path: str, verbose: int = 1,
                             file_hash: str | None = COCO_MODEL_SHA256) -> None:
    """Download Matterport's COCO-trained weights (``COCO_MODEL_URL``) if not there yet.

    Through ``mrcnn.download.download``: https only, Keras' progress bar, a temporary
    ``.part`` file renamed when complete (an interrupted download never leaves a truncated
    .h5), and an existing file is never overwritten.

    Args:
        coco_model_path: where to save ``mask_rcnn_coco.h5``.
        verbose: progress when non-zero.
        file_hash: the file's SHA-256 (64 hex digits), checked after the download and on a
            file already there. The default, ``COCO_MODEL_SHA256``, is unknown (None): pass
            the hash you trust to have the file checked.

    Raises:
        RuntimeError (``mrcnn.download.DownloadError``): the download failed (no network,
            HTTP error, a hash mismatch, ...); the message names the URL and the path to
            place the file at.
    """
    from mrcnn.download import download

    if verbose > 0:
        print(f"Downloading pretrained model to {coco_model_path} ...")
    download(COCO_MODEL_URL, coco_model_path, file_hash=file_hash, verbose=verbose)
    if verbose > 0:
        print("... done downloading pretrained model!")


############################################################
#  Matterport names that live in their own modules
############################################################

# The Dataset names are imported at the top. The metrics and anchor names are resolved on
# first use (PEP 562): mrcnn.metrics and mrcnn.anchors build on the geometry above, so
# importing them here eagerly would be an import cycle.
_MOVED = {
    "mrcnn.metrics": ("trim_zeros", "compute_matches", "compute_ap", "compute_ap_range",
                      "compute_recall"),
    "mrcnn.anchors": ("generate_anchors", "generate_pyramid_anchors"),
}
_HOME = {name: module for module, names in _MOVED.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'mrcnn.utils' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
