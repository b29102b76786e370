"""NumPy utilities for Mask R-CNN: the ``Dataset`` base class, box and mask geometry,
image resizing, anchors and detection metrics.

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

import os
import warnings
from typing import Any, Iterable, Sequence

import numpy as np

from mrcnn import transform

# Released Matterport weights trained on MS COCO (the HDF5 layout our loader understands).
COCO_MODEL_URL = (
    "https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5"
)


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
    """IoU of one box against many boxes.

    Areas are passed in (rather than recomputed) because callers such as
    ``compute_overlaps`` and ``non_max_suppression`` reuse them across many calls.

    Args:
        box: [4] (y1, x1, y2, x2).
        boxes: [N, 4] (y1, x1, y2, x2).
        box_area: area of ``box``.
        boxes_area: [N] areas of ``boxes``.

    Returns:
        [N] float IoU values. A pair whose union is empty gets 0 (Matterport gave NaN).
    """
    boxes = np.asarray(boxes)
    y1 = np.maximum(box[0], boxes[:, 0])
    y2 = np.minimum(box[2], boxes[:, 2])
    x1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[3], boxes[:, 3])
    intersection = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    union = box_area + np.asarray(boxes_area) - intersection
    return _safe_divide(intersection, union)


def compute_overlaps(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Pairwise IoU between two sets of boxes.

    Args:
        boxes1: [N, (y1, x1, y2, x2)].
        boxes2: [M, (y1, x1, y2, x2)].

    Returns:
        [N, M] float IoU matrix (zeros of that shape when either set is empty).
    """
    boxes1 = np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)
    boxes2 = np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)
    if boxes1.shape[0] == 0 or boxes2.shape[0] == 0:
        return np.zeros((boxes1.shape[0], boxes2.shape[0]))
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    # Broadcast [N, 1] against [1, M] instead of looping over boxes2.
    y1 = np.maximum(boxes1[:, None, 0], boxes2[None, :, 0])
    x1 = np.maximum(boxes1[:, None, 1], boxes2[None, :, 1])
    y2 = np.minimum(boxes1[:, None, 2], boxes2[None, :, 2])
    x2 = np.minimum(boxes1[:, None, 3], boxes2[None, :, 3])
    intersection = np.maximum(y2 - y1, 0) * np.maximum(x2 - x1, 0)
    union = area1[:, None] + area2[None, :] - intersection
    return _safe_divide(intersection, union)


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

    Args:
        boxes: [N, (y1, x1, y2, x2)].
        deltas: [N, (dy, dx, log(dh), log(dw))].

    Returns:
        float32 [N, (y1, x1, y2, x2)] refined boxes.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    deltas = np.asarray(deltas, dtype=np.float32)
    height = boxes[:, 2] - boxes[:, 0]
    width = boxes[:, 3] - boxes[:, 1]
    center_y = boxes[:, 0] + 0.5 * height + deltas[:, 0] * height
    center_x = boxes[:, 1] + 0.5 * width + deltas[:, 1] * width
    height = height * np.exp(deltas[:, 2])
    width = width * np.exp(deltas[:, 3])
    y1 = center_y - 0.5 * height
    x1 = center_x - 0.5 * width
    return np.stack([y1, x1, y1 + height, x1 + width], axis=1)


def box_refinement(box: np.ndarray, gt_box: np.ndarray) -> np.ndarray:
    """Regression deltas that move ``box`` onto ``gt_box``.

    Heights are ``y2 - y1`` and centres ``y1 + 0.5 * height`` (Matterport's convention,
    which the released weights were trained with).

    Args:
        box: [N, (y1, x1, y2, x2)].
        gt_box: [N, (y1, x1, y2, x2)].

    Returns:
        float32 [N, (dy, dx, log(dh), log(dw))].
    """
    box = np.asarray(box, dtype=np.float32)
    gt_box = np.asarray(gt_box, dtype=np.float32)
    height = box[:, 2] - box[:, 0]
    width = box[:, 3] - box[:, 1]
    center_y = box[:, 0] + 0.5 * height
    center_x = box[:, 1] + 0.5 * width
    gt_height = gt_box[:, 2] - gt_box[:, 0]
    gt_width = gt_box[:, 3] - gt_box[:, 1]
    gt_center_y = gt_box[:, 0] + 0.5 * gt_height
    gt_center_x = gt_box[:, 1] + 0.5 * gt_width
    dy = (gt_center_y - center_y) / height
    dx = (gt_center_x - center_x) / width
    dh = np.log(gt_height / height)
    dw = np.log(gt_width / width)
    return np.stack([dy, dx, dh, dw], axis=1)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 wherever den is 0 (no RuntimeWarning, no NaN)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast_shapes(num.shape, den.shape))
    np.divide(num, den, out=out, where=den != 0)
    return out


############################################################
#  Dataset
############################################################


def check_mask(
    mask: np.ndarray,
    class_ids: np.ndarray,
    image_id: Any,
    image_shape: Sequence[int],
    num_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and normalise the output of a ``Dataset.load_mask`` implementation.

    The data pipeline calls this on every ``load_mask`` result so that a mistake in a
    user's subclass fails with a message naming the image instead of a shape error deep
    inside the model.

    Args:
        mask: what ``load_mask`` returned; expected [height, width, N], bool-like:
            bool, numbers that are all 0 or 1, or integers that are all 0 or 255.
        class_ids: what ``load_mask`` returned; expected [N] integers. Negative ids are
            allowed (Matterport's COCO loader uses them for crowd instances).
        image_id: the dataset's internal image id, used in error messages.
        image_shape: shape of the image returned by ``load_image``; only the first two
            entries (height, width) are used.
        num_classes: when given, every ``abs(class_id)`` must be below it.

    Returns:
        ``(mask, class_ids)`` as a bool [height, width, N] array and an int32 [N] array.
        With N == 0 the mask is returned as an empty [height, width, 0] array whatever its
        spatial size was, because the base ``load_mask`` returns a [0, 0, 0] array.

    Raises:
        ValueError: naming ``image_id`` and the expectation that was violated.
    """
    where = f"load_mask(image_id={image_id!r})"
    height, width = int(image_shape[0]), int(image_shape[1])
    mask = np.asarray(mask)
    class_ids = np.asarray(class_ids)
    if class_ids.ndim != 1:
        raise ValueError(
            f"{where}: class_ids must be a 1-D array [N], got shape {class_ids.shape}"
        )
    if class_ids.size and not (
        np.issubdtype(class_ids.dtype, np.integer)
        or (np.issubdtype(class_ids.dtype, np.floating) and np.all(class_ids == np.round(class_ids)))
    ):
        raise ValueError(
            f"{where}: class_ids must be integers, got dtype {class_ids.dtype} "
            f"with values {class_ids[:5]}"
        )
    class_ids = class_ids.astype(np.int32)
    if mask.ndim != 3:
        hint = " (for a single instance use mask[..., np.newaxis])" if mask.ndim == 2 else ""
        raise ValueError(
            f"{where}: mask must be 3-D [height, width, N], got shape {mask.shape}{hint}"
        )
    count = mask.shape[-1]
    if count != class_ids.shape[0]:
        raise ValueError(
            f"{where}: mask has {count} instances (shape {mask.shape}) but class_ids has "
            f"{class_ids.shape[0]} entries; they must match"
        )
    if count == 0:
        return np.zeros([height, width, 0], dtype=bool), class_ids
    if mask.shape[:2] != (height, width):
        raise ValueError(
            f"{where}: mask spatial size {mask.shape[:2]} does not match the image size "
            f"{(height, width)}"
        )
    if mask.dtype != bool:
        # Bool-like: 0/1 numbers, or 0/255 integers (binary images drawn with e.g. cv2).
        # Anything else (soft masks, label maps) is rejected rather than silently
        # binarised, because it usually means the subclass returned the wrong array.
        values = np.unique(mask) if np.issubdtype(mask.dtype, np.number) else None
        allowed = (0, 1, 255) if np.issubdtype(mask.dtype, np.integer) else (0, 1)
        if values is None or not np.isin(values, allowed).all() or (
            np.isin(values, (1, 255)).sum() > 1
        ):
            shown = values[:6].tolist() if values is not None else "n/a"
            raise ValueError(
                f"{where}: mask must be bool (or 0/1-valued, or 0/255 integers), got dtype "
                f"{mask.dtype} with values {shown}"
            )
        mask = mask != 0
    if np.any(class_ids == 0):
        # 0 is the background class: the heads would ignore the instance while the RPN
        # trained on it as an object. Usually an off-by-one in a class map.
        raise ValueError(
            f"{where}: class_ids {class_ids.tolist()} contain 0, the background class id; "
            "every instance needs an object class id >= 1 (negative for crowd regions)"
        )
    if num_classes is not None and np.any(np.abs(class_ids) >= num_classes):
        raise ValueError(
            f"{where}: class_ids {class_ids.tolist()} contain ids outside "
            f"[0, {num_classes}) for a dataset with {num_classes} classes"
        )
    return mask, class_ids


def load_image_file(path: str) -> np.ndarray:
    """Read an image file (or URL) as [H, W, 3] uint8 RGB, as ``Dataset.load_image`` does.

    For images outside a dataset (a ``detect --image`` argument, a notebook's own picture):
    grayscale, RGBA and 16-bit files are converted the same way.

    Args:
        path: file path or URL.

    Returns:
        uint8 array [height, width, 3].

    Raises:
        FileNotFoundError, IOError, ValueError: as ``Dataset.load_image``, naming the path.
    """
    return _read_rgb_uint8(path, f"path {path!r}")


def _read_rgb_uint8(path: str, where: str) -> np.ndarray:
    """Decode ``path`` and convert it to RGB uint8; errors name ``where``."""
    is_url = isinstance(path, str) and "://" in path
    if not is_url and not os.path.exists(path):
        raise FileNotFoundError(f"Image file not found for {where}")
    try:
        import skimage.io  # lazy: skimage.io pulls in imageio plugins

        image = skimage.io.imread(path)
    except Exception as err:  # decoders raise many different types
        raise IOError(f"Could not read image for {where}: {err}") from err
    try:
        return _to_rgb_uint8(np.asarray(image))
    except ValueError as err:
        raise ValueError(f"Unsupported image for {where}: {err}") from err


class Dataset:
    """Base class for datasets.

    Subclass it, register classes with ``add_class`` and images with ``add_image``
    (typically in a ``load_xxx()`` method of your own), override ``load_mask`` (and
    optionally ``load_image`` and ``image_reference``), then call ``prepare()`` before use::

        class ShapesDataset(Dataset):
            def load_shapes(self, count, height, width):
                self.add_class("shapes", 1, "square")
                ...
                self.add_image("shapes", image_id=i, path=None, height=h, width=w)

            def load_mask(self, image_id):
                ...
                return mask, class_ids

    Several datasets ("sources") can share one instance: each keeps its own class ids
    and ``prepare()`` assigns consecutive internal ids, with id 0 the background.
    """

    def __init__(self, class_map: dict | None = None) -> None:
        # class_map is accepted for Matterport compatibility; it was never used there.
        self._image_ids: np.ndarray = np.zeros([0], dtype=np.int64)
        self.image_info: list[dict[str, Any]] = []
        # The background class is always internal class 0, from the pseudo-source "".
        self.class_info: list[dict[str, Any]] = [{"source": "", "id": 0, "name": "BG"}]
        self.source_class_ids: dict[str, list[int]] = {}

    def add_class(self, source: str, class_id: int, class_name: str) -> None:
        """Register a class of a source. Adding the same (source, id) twice is a no-op.

        Args:
            source: name of the dataset the class comes from, e.g. "coco"; no dots.
            class_id: the class id in that source.
            class_name: human-readable name.
        """
        if "." in source:
            raise ValueError(f"Source name cannot contain a dot: {source!r}")
        for info in self.class_info:
            if info["source"] == source and info["id"] == class_id:
                return
        self.class_info.append({"source": source, "id": class_id, "name": class_name})

    def add_image(self, source: str, image_id: Any, path: str | None, **kwargs: Any) -> None:
        """Register an image.

        Args:
            source: name of the dataset the image comes from.
            image_id: the image id in that source (any value; used in image_from_source_map).
            path: file path (or URL) read by the default ``load_image``.
            **kwargs: stored in ``image_info`` (e.g. height, width, annotations, polygons).
        """
        info = {"id": image_id, "source": source, "path": path}
        info.update(kwargs)
        self.image_info.append(info)

    def image_reference(self, image_id: int) -> str:
        """Return a link or description of the image for debugging (override in subclasses).

        Args:
            image_id: internal image id.

        Returns:
            The base class returns "".
        """
        return ""

    def prepare(self, class_map: dict | None = None) -> None:
        """Build the lookup tables; call it after all classes and images were added.

        Args:
            class_map: ignored (kept for Matterport compatibility).
        """

        def clean_name(name: str) -> str:
            # COCO-style names such as "person, human" keep the first alias only.
            return ",".join(name.split(",")[:1])

        self.num_classes = len(self.class_info)
        self.class_ids = np.arange(self.num_classes)
        self.class_names = [clean_name(c["name"]) for c in self.class_info]
        self.num_images = len(self.image_info)
        self._image_ids = np.arange(self.num_images)
        self.class_from_source_map = {
            f"{info['source']}.{info['id']}": int(internal)
            for info, internal in zip(self.class_info, self.class_ids)
        }
        self.image_from_source_map = {
            f"{info['source']}.{info['id']}": int(internal)
            for info, internal in zip(self.image_info, self._image_ids)
        }
        # Sources in order of first appearance (Matterport used an unordered set). The
        # background pseudo-source "" is included, as in Matterport.
        self.sources = list(dict.fromkeys(info["source"] for info in self.class_info))
        self.source_class_ids = {}
        for source in self.sources:
            # Background (internal id 0) belongs to every source.
            self.source_class_ids[source] = [
                i for i, info in enumerate(self.class_info) if i == 0 or info["source"] == source
            ]

    def map_source_class_id(self, source_class_id: str) -> int:
        """Internal class id of a source class.

        Args:
            source_class_id: "source.class_id", e.g. "coco.12".

        Returns:
            The internal class id.
        """
        return self.class_from_source_map[source_class_id]

    def get_source_class_id(self, class_id: int, source: str) -> int:
        """Source class id of an internal class id.

        Args:
            class_id: internal class id.
            source: the source the class must belong to.

        Returns:
            The class id in ``source``.
        """
        info = self.class_info[class_id]
        if info["source"] != source:
            raise ValueError(
                f"Class {class_id} ({info['name']!r}) belongs to source {info['source']!r}, "
                f"not {source!r}"
            )
        return info["id"]

    @property
    def image_ids(self) -> np.ndarray:
        """Internal image ids (0 .. num_images - 1), available after ``prepare()``."""
        return self._image_ids

    def source_image_link(self, image_id: int) -> str | None:
        """Path or URL of the image in its source."""
        return self.image_info[image_id]["path"]

    def load_image(self, image_id: int) -> np.ndarray:
        """Load an image as an [H, W, 3] uint8 RGB array.

        Whatever the file holds, the result is RGB uint8: grayscale is repeated over 3
        channels, an alpha channel is dropped (not composited), and other bit depths are
        rescaled by the range of their dtype (a uint16 value v becomes round(v * 255 /
        65535)), not by the image's own min/max, so intensities stay comparable across
        images; note that a 12-bit image stored in 16 bits will therefore look dark. Float
        images with values in [0, 1] are multiplied by 255; other floats are clipped to
        [0, 255].

        Args:
            image_id: internal image id.

        Returns:
            uint8 array [height, width, 3].

        Raises:
            FileNotFoundError: the path does not exist.
            IOError: the file could not be decoded.
            ValueError: the decoded array has an unsupported shape.
        """
        path = self.image_info[image_id]["path"]
        where = f"image_id={image_id!r} (path {path!r})"
        if path is None:
            raise ValueError(
                f"Cannot load {where}: no path was registered; override load_image() "
                "for generated images"
            )
        return _read_rgb_uint8(path, where)

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Load the instance masks of an image. Subclasses MUST override this.

        Contract for overrides: return ``(masks, class_ids)`` where ``masks`` is a bool
        array [height, width, N] with one channel per instance and ``class_ids`` an int32
        array [N] of internal class ids (``check_mask`` validates this).

        The base implementation warns and returns no instances (empty arrays of shapes
        [0, 0, 0] and [0]), as Matterport's did.

        Args:
            image_id: internal image id.

        Returns:
            ``(masks, class_ids)``.
        """
        warnings.warn(
            f"{type(self).__name__}.load_mask() is the Dataset base implementation, which "
            "returns no instances; subclasses must override load_mask() to return "
            "(bool masks [H, W, N], int32 class_ids [N]).",
            stacklevel=2,
        )
        return np.empty([0, 0, 0], dtype=bool), np.empty([0], np.int32)

    # Also reachable as Dataset.check_mask / dataset.check_mask for convenience.
    check_mask = staticmethod(check_mask)


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Convert a decoded image of any common layout / dtype to [H, W, 3] uint8."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"expected a 2-D or 3-D image array, got shape {image.shape}")
    channels = image.shape[-1]
    if channels in (1, 2):  # gray, gray + alpha
        image = np.repeat(image[:, :, :1], 3, axis=2)
    elif channels == 4:  # RGBA: drop alpha
        image = image[:, :, :3]
    elif channels != 3:
        raise ValueError(f"expected 1, 2, 3 or 4 channels, got shape {image.shape}")
    return _to_uint8(image)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Rescale an array to uint8 by its dtype range (see ``Dataset.load_image``)."""
    dtype = image.dtype
    if dtype == np.uint8:
        return np.ascontiguousarray(image)
    if dtype == bool:
        return image.astype(np.uint8) * 255
    if np.issubdtype(dtype, np.unsignedinteger):
        top = float(np.iinfo(dtype).max)
    elif np.issubdtype(dtype, np.signedinteger):
        # Some decoders hand 16-bit files back as int32 (PIL mode "I"); infer the range
        # from the values rather than from int32's enormous range.
        vmax = int(image.max()) if image.size else 0
        top = 255.0 if vmax <= 255 else 65535.0 if vmax <= 65535 else float(np.iinfo(dtype).max)
        image = np.clip(image, 0, None)
    elif np.issubdtype(dtype, np.floating):
        if image.size and np.nanmin(image) >= 0 and np.nanmax(image) <= 1:
            top = 1.0
        else:
            top = 255.0
    else:
        raise ValueError(f"unsupported pixel dtype {dtype}")
    scaled = np.round(np.nan_to_num(image.astype(np.float64)) * (255.0 / top))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def as_model_image(image: Any, where: str, channels: int = 3) -> np.ndarray:
    """Check an image handed to the model and convert its pixels to uint8.

    For arrays that did not come from ``Dataset.load_image``'s file reader: a user's
    ``load_image`` override, or an image passed to ``detect``. The model expects uint8
    pixels (it subtracts MEAN_PIXEL from 0..255 values), so other dtypes are converted by
    the rule ``Dataset.load_image`` applies to files: scaled by the range of their dtype
    (uint16 v -> round(v * 255 / 65535); bool -> 0/255), floats in [0, 1] multiplied by 255,
    other floats rounded and clipped to [0, 255]. Fed as they were, a float
    image in [0, 1] would be a near-black image to the model (no detections, no error).

    Args:
        image: array-like [height, width, channels].
        where: names the image in error messages, e.g. "image_id=3 (source 'coco', id 42)".
        channels: expected channel count (Config.IMAGE_CHANNEL_COUNT).

    Returns:
        uint8 array [height, width, channels] (the input itself when it is already one).

    Raises:
        ValueError: naming ``where``: wrong shape, a dtype that is not a number, or NaN/inf
            pixels.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != channels:
        raise ValueError(f"{where}: load_image returned shape {image.shape}, expected "
                         f"[height, width, {channels}] (config.IMAGE_CHANNEL_COUNT)")
    if image.dtype == np.uint8:
        return image
    if image.dtype != bool and not np.issubdtype(image.dtype, np.number) \
            or np.issubdtype(image.dtype, np.complexfloating):
        raise ValueError(f"{where}: image has dtype {image.dtype}; expected uint8 pixels "
                         "(or integers / floats, which are converted to uint8)")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        # One NaN pixel poisons the weights it reaches (and a ReLU can hide it from the loss).
        raise ValueError(f"{where}: load_image returned non-finite (NaN/inf) pixel values")
    return _to_uint8(image)


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
#  Anchors
############################################################


def generate_anchors(
    scales: float | Sequence[float],
    ratios: Sequence[float],
    shape: Sequence[int],
    feature_stride: int,
    anchor_stride: int,
) -> np.ndarray:
    """Anchors of one feature-map level.

    Ordering (the model's RPN outputs rely on it): feature-map positions row-major (y
    outer, x inner); at each position one anchor per (ratio, scale) pair, ratios outer.
    Anchor centres sit at ``position * feature_stride`` (Matterport's convention).

    Args:
        scales: anchor side length(s) in pixels, e.g. 32.
        ratios: width / height ratios, e.g. [0.5, 1, 2].
        shape: (height, width) of the feature map.
        feature_stride: image pixels per feature-map cell.
        anchor_stride: place anchors at every ``anchor_stride``-th cell.

    Returns:
        float [num_anchors, (y1, x1, y2, x2)] in image pixels.
    """
    scales_g, ratios_g = np.meshgrid(np.asarray(scales, dtype=np.float64).ravel(),
                                     np.asarray(ratios, dtype=np.float64).ravel())
    scales_g, ratios_g = scales_g.ravel(), ratios_g.ravel()  # ratio-major, scale-minor
    heights = scales_g / np.sqrt(ratios_g)
    widths = scales_g * np.sqrt(ratios_g)
    ys = np.arange(0, shape[0], anchor_stride) * feature_stride
    xs = np.arange(0, shape[1], anchor_stride) * feature_stride
    cy, cx = np.meshgrid(ys, xs, indexing="ij")  # [Ny, Nx], x varies fastest
    cy = cy.reshape(-1, 1).astype(np.float64)
    cx = cx.reshape(-1, 1).astype(np.float64)
    boxes = np.stack(
        [cy - 0.5 * heights, cx - 0.5 * widths, cy + 0.5 * heights, cx + 0.5 * widths],
        axis=-1,
    )  # [positions, anchors per position, 4]
    return boxes.reshape(-1, 4)


def generate_pyramid_anchors(
    scales: Sequence[float],
    ratios: Sequence[float],
    feature_shapes: Sequence[Sequence[int]],
    feature_strides: Sequence[int],
    anchor_stride: int,
) -> np.ndarray:
    """Anchors for all pyramid levels, concatenated level by level.

    Args:
        scales: one anchor scale per level, e.g. (32, 64, 128, 256, 512).
        ratios: width / height ratios shared by all levels.
        feature_shapes: [levels, (height, width)] feature-map shapes.
        feature_strides: one stride per level, e.g. (4, 8, 16, 32, 64).
        anchor_stride: see ``generate_anchors``.

    Returns:
        float [num_anchors, (y1, x1, y2, x2)] in image pixels; level 0 first, each level
        ordered as in ``generate_anchors``.
    """
    anchors = [
        generate_anchors(scales[i], ratios, feature_shapes[i], feature_strides[i], anchor_stride)
        for i in range(len(scales))
    ]
    return np.concatenate(anchors, axis=0)


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
#  Metrics
############################################################


def trim_zeros(x: np.ndarray) -> np.ndarray:
    """Drop the all-zero rows (padding) of a 2-D array.

    Args:
        x: [rows, columns], e.g. padded boxes.

    Returns:
        The rows that are not all zero.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"trim_zeros expects a 2-D array, got shape {x.shape}")
    return x[~np.all(x == 0, axis=1)]


def compute_matches(
    gt_boxes: np.ndarray,
    gt_class_ids: np.ndarray,
    gt_masks: np.ndarray,
    pred_boxes: np.ndarray,
    pred_class_ids: np.ndarray,
    pred_scores: np.ndarray,
    pred_masks: np.ndarray,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match predictions to ground truth by mask IoU, highest score first.

    Zero-padded boxes (and their masks) are trimmed first. Each prediction, in decreasing
    score order, takes the unmatched ground-truth instance of the same class with the
    highest mask IoU, provided that IoU is at least ``iou_threshold``.

    Args:
        gt_boxes: [N, (y1, x1, y2, x2)] (all-zero rows are padding).
        gt_class_ids: [N] class ids.
        gt_masks: [height, width, N].
        pred_boxes: [P, (y1, x1, y2, x2)] (all-zero rows are padding).
        pred_class_ids: [P] class ids.
        pred_scores: [P] confidence scores.
        pred_masks: [height, width, P].
        iou_threshold: minimum mask IoU for a match.
        score_threshold: as in Matterport, compared to the IoU overlaps (not the scores):
            ground-truth candidates with overlap below it are skipped. With the default 0
            it has no effect. Kept only for compatibility.

    Returns:
        gt_match: [N] index of the matched prediction (in score-sorted order) or -1.
        pred_match: [P] index of the matched ground truth, or -1; predictions are in
            decreasing score order.
        overlaps: [P, N] mask IoUs, predictions in decreasing score order.
    """
    gt_boxes = trim_zeros(np.asarray(gt_boxes).reshape(-1, 4))
    gt_class_ids = np.asarray(gt_class_ids).reshape(-1)
    gt_masks = np.asarray(gt_masks)
    gt_masks = gt_masks[..., : gt_boxes.shape[0]] if gt_masks.ndim == 3 else gt_masks
    pred_boxes = trim_zeros(np.asarray(pred_boxes).reshape(-1, 4))
    pred_scores = np.asarray(pred_scores).reshape(-1)[: pred_boxes.shape[0]]
    pred_class_ids = np.asarray(pred_class_ids).reshape(-1)
    pred_masks = np.asarray(pred_masks)

    # Stable sort on the negated scores: ties keep input order.
    indices = np.argsort(-pred_scores, kind="stable")
    pred_class_ids = pred_class_ids[indices]
    if pred_masks.ndim == 3:
        pred_masks = pred_masks[..., indices]

    overlaps = compute_overlaps_masks(pred_masks, gt_masks)

    gt_match = -1 * np.ones([gt_boxes.shape[0]])
    pred_match = -1 * np.ones([pred_boxes.shape[0]])
    for i in range(pred_boxes.shape[0]):
        candidates = np.argsort(-overlaps[i], kind="stable")
        below = np.where(overlaps[i, candidates] < score_threshold)[0]
        if below.size > 0:
            candidates = candidates[: below[0]]
        for j in candidates:
            if gt_match[j] > -1:
                continue  # already taken by a higher-scored prediction
            if overlaps[i, j] < iou_threshold:
                break  # candidates are sorted, so no later one qualifies
            if pred_class_ids[i] == gt_class_ids[j]:
                gt_match[j] = i
                pred_match[i] = j
                break
    return gt_match, pred_match, overlaps


def compute_ap(
    gt_boxes: np.ndarray,
    gt_class_ids: np.ndarray,
    gt_masks: np.ndarray,
    pred_boxes: np.ndarray,
    pred_class_ids: np.ndarray,
    pred_scores: np.ndarray,
    pred_masks: np.ndarray,
    iou_threshold: float = 0.5,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Average precision of one image at one IoU threshold (mask IoU).

    Precision is made monotonically decreasing and integrated over every recall change
    (PASCAL VOC 2010+ "all points" interpolation), as in Matterport.

    Edge cases: no predictions gives AP 0; no ground truth gives AP 0 (recalls are 0; with
    predictions Matterport produced NaN and a divide-by-zero warning here).

    Args:
        gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores,
        pred_masks: see ``compute_matches``.
        iou_threshold: mask IoU needed for a true positive.

    Returns:
        mAP: the average precision (float).
        precisions: interpolated precision at each rank, padded with a leading and a
            trailing point.
        recalls: recall at each rank, padded with 0 in front and 1 at the end.
        overlaps: [P, N] mask IoUs (predictions sorted by score).
    """
    gt_match, pred_match, overlaps = compute_matches(
        gt_boxes, gt_class_ids, gt_masks,
        pred_boxes, pred_class_ids, pred_scores, pred_masks,
        iou_threshold,
    )
    hits = np.cumsum(pred_match > -1)
    precisions = hits / (np.arange(len(pred_match)) + 1)
    recalls = hits.astype(np.float32) / max(len(gt_match), 1)

    precisions = np.concatenate([[0], precisions, [0]])
    recalls = np.concatenate([[0], recalls, [1]])
    # Precision envelope: each point takes the best precision at any higher recall.
    precisions = np.maximum.accumulate(precisions[::-1])[::-1]
    changes = np.where(recalls[:-1] != recalls[1:])[0] + 1
    m_ap = float(np.sum((recalls[changes] - recalls[changes - 1]) * precisions[changes]))
    return m_ap, precisions, recalls, overlaps


def compute_ap_range(
    gt_box: np.ndarray,
    gt_class_id: np.ndarray,
    gt_mask: np.ndarray,
    pred_box: np.ndarray,
    pred_class_id: np.ndarray,
    pred_score: np.ndarray,
    pred_mask: np.ndarray,
    iou_thresholds: Iterable[float] | None = None,
    verbose: int = 1,
) -> float:
    """AP averaged over several IoU thresholds (default 0.5:0.95:0.05, COCO-style).

    Args:
        gt_box, gt_class_id, gt_mask, pred_box, pred_class_id, pred_score, pred_mask:
            see ``compute_ap``.
        iou_thresholds: thresholds to average over; default ``np.arange(0.5, 1.0, 0.05)``.
        verbose: print the AP at each threshold and the mean when non-zero.

    Returns:
        The mean AP over the thresholds.
    """
    if iou_thresholds is None:
        iou_thresholds = np.arange(0.5, 1.0, 0.05)
    iou_thresholds = list(iou_thresholds)
    aps = []
    for iou_threshold in iou_thresholds:
        ap, _, _, _ = compute_ap(
            gt_box, gt_class_id, gt_mask,
            pred_box, pred_class_id, pred_score, pred_mask,
            iou_threshold=iou_threshold,
        )
        if verbose:
            print(f"AP @{iou_threshold:.2f}:\t {ap:.3f}")
        aps.append(ap)
    mean_ap = float(np.mean(aps))
    if verbose:
        print(f"AP @{iou_thresholds[0]:.2f}-{iou_thresholds[-1]:.2f}:\t {mean_ap:.3f}")
    return mean_ap


def compute_recall(
    pred_boxes: np.ndarray, gt_boxes: np.ndarray, iou: float
) -> tuple[float, np.ndarray]:
    """Recall of ground-truth boxes by predicted boxes (box IoU), e.g. for RPN proposals.

    Args:
        pred_boxes: [P, (y1, x1, y2, x2)].
        gt_boxes: [N, (y1, x1, y2, x2)].
        iou: IoU at which a prediction counts as covering a ground-truth box.

    Returns:
        recall: fraction of ground-truth boxes that are the best match of at least one
            prediction with IoU >= ``iou`` (0 when there is no ground truth or prediction).
        positive_ids: indices of the predictions with IoU >= ``iou`` to some gt box.
    """
    overlaps = compute_overlaps(pred_boxes, gt_boxes)
    if overlaps.shape[0] == 0 or overlaps.shape[1] == 0:
        return 0.0, np.zeros([0], dtype=np.int64)
    iou_max = overlaps.max(axis=1)
    iou_argmax = overlaps.argmax(axis=1)
    positive_ids = np.where(iou_max >= iou)[0]
    matched_gt_boxes = iou_argmax[positive_ids]
    recall = len(set(matched_gt_boxes.tolist())) / overlaps.shape[1]
    return recall, positive_ids


############################################################
#  Pretrained weights
############################################################


def download_trained_weights(coco_model_path: str, verbose: int = 1) -> None:
    """Download Matterport's COCO-trained weights (``COCO_MODEL_URL``) if not there yet.

    Through ``mrcnn.download.download``: Keras' progress bar, a temporary ``.part`` file
    renamed when complete (an interrupted download never leaves a truncated .h5), and an
    existing file is never overwritten.

    Args:
        coco_model_path: where to save ``mask_rcnn_coco.h5``.
        verbose: progress when non-zero.

    Raises:
        RuntimeError (``mrcnn.download.DownloadError``): the download failed (no network,
            HTTP error, ...); the message names the URL and the path to place the file at.
    """
    from mrcnn.download import download

    if verbose > 0:
        print(f"Downloading pretrained model to {coco_model_path} ...")
    download(COCO_MODEL_URL, coco_model_path, verbose=verbose)
    if verbose > 0:
        print("... done downloading pretrained model!")
