"""The ``Dataset`` base class and what it hands the model: validated masks, RGB uint8 images.

A user's data enters Mask R-CNN here: subclass ``Dataset`` (``add_class``, ``add_image``,
``load_mask``), and the pipeline checks every ``load_mask`` result with ``check_mask`` and
every image with ``as_model_image``. ``load_image_file`` reads a file outside a dataset the
way ``Dataset.load_image`` does. NumPy only (scikit-image reads the files, imported lazily).
Matterport's names keep working through ``mrcnn.utils`` (``utils.Dataset``, ...).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import numpy as np

from mrcnn.errors import InputError


def describe_image(dataset: Any, image_id: Any) -> str:
    """Name an image for error messages: internal id, source, source id and file.

    Args:
        dataset: a ``Dataset`` (anything with ``image_info``).
        image_id: its internal image id.

    Returns:
        e.g. ``"image_id=3 (source 'coco', id 42, path '/data/val2017/42.jpg')"``.
    """
    if isinstance(image_id, np.integer):  # ids from dataset.image_ids: plain in messages
        image_id = int(image_id)
    try:
        info = dataset.image_info[image_id]
        text = f"image_id={image_id!r} (source {info.get('source')!r}, id {info.get('id')!r}"
        return text + (f", path {info['path']!r})" if info.get("path") else ")")
    except Exception:  # the id itself may be what is broken
        return f"image_id={image_id!r}"


def check_mask(
    mask: np.ndarray,
    class_ids: np.ndarray,
    image_id: Any,
    image_shape: Sequence[int],
    num_classes: int | None = None,
    where: str | None = None,
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
        where: how to name the image in errors (``describe_image``: source, source id
            and file); default the internal ``image_id`` only.

    Returns:
        ``(mask, class_ids)`` as a bool [height, width, N] array and an int32 [N] array.
        With N == 0 the mask is returned as an empty [height, width, 0] array whatever its
        spatial size was, because the base ``load_mask`` returns a [0, 0, 0] array.

    Raises:
        InputError: naming the image and the expectation that was violated.
    """
    where = f"load_mask of {where}" if where else f"load_mask(image_id={image_id!r})"
    height, width = int(image_shape[0]), int(image_shape[1])
    mask = np.asarray(mask)
    class_ids = np.asarray(class_ids)
    if class_ids.ndim != 1:
        raise InputError(
            f"{where}: class_ids must be a 1-D array [N], got shape {class_ids.shape}"
        )
    if class_ids.size and not (
        np.issubdtype(class_ids.dtype, np.integer)
        or (np.issubdtype(class_ids.dtype, np.floating) and np.all(class_ids == np.round(class_ids)))
    ):
        raise InputError(
            f"{where}: class_ids must be integers, got dtype {class_ids.dtype} "
            f"with values {class_ids[:5]}"
        )
    class_ids = class_ids.astype(np.int32)
    if mask.ndim != 3:
        hint = " (for a single instance use mask[..., np.newaxis])" if mask.ndim == 2 else ""
        raise InputError(
            f"{where}: mask must be 3-D [height, width, N], got shape {mask.shape}{hint}"
        )
    count = mask.shape[-1]
    if count != class_ids.shape[0]:
        raise InputError(
            f"{where}: mask has {count} instances (shape {mask.shape}) but class_ids has "
            f"{class_ids.shape[0]} entries; they must match"
        )
    if count == 0:
        return np.zeros([height, width, 0], dtype=bool), class_ids
    if mask.shape[:2] != (height, width):
        raise InputError(
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
            raise InputError(
                f"{where}: mask must be bool (or 0/1-valued, or 0/255 integers), got dtype "
                f"{mask.dtype} with values {shown}"
            )
        mask = mask != 0
    if np.any(class_ids == 0):
        # 0 is the background class: the heads would ignore the instance while the RPN
        # trained on it as an object. Usually an off-by-one in a class map.
        raise InputError(
            f"{where}: class_ids {class_ids.tolist()} contain 0, the background class id; "
            "every instance needs an object class id >= 1 (negative for crowd regions)"
        )
    if num_classes is not None and np.any(np.abs(class_ids) >= num_classes):
        raise InputError(
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
        InputError: naming ``where``: wrong shape (channels), an empty image, a dtype that
            is not a number, or NaN/inf pixels.
    """
    try:
        image = np.asarray(image)
    except (ValueError, TypeError) as err:  # ragged nested lists
        raise InputError(f"{where}: not an image array ({err})") from err
    if image.ndim != 3 or image.shape[-1] != channels:
        raise InputError(f"{where}: shape {image.shape}, expected [height, width, "
                         f"{channels}] (config.IMAGE_CHANNEL_COUNT)")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"{where}: empty image of shape {image.shape}")
    if image.dtype == np.uint8:
        return image
    if image.dtype != bool and not np.issubdtype(image.dtype, np.number) \
            or np.issubdtype(image.dtype, np.complexfloating):
        raise InputError(f"{where}: image has dtype {image.dtype}; expected uint8 pixels "
                         "(or integers / floats, which are converted to uint8)")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        # One NaN pixel poisons the weights it reaches (and a ReLU can hide it from the loss).
        raise InputError(f"{where}: image has non-finite (NaN/inf) pixel values")
    return _to_uint8(image)
