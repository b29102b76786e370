"""VGG Image Annotator (VIA) json files: polygons, rectangles, circles, ellipses; any classes.

VIA 1.x and 2.x exports (a dict of entries, ``regions`` a dict or a list) and VIA 2 project
files (entries under ``_via_img_metadata``) are read. Each region's class is its
``region_attributes[<class_key>]`` (default key "class"): a name, or for VIA's checkbox
attributes a ``{name: true}`` object. Without any class attribute in the file every region is
one class (named after the dataset, as Matterport's balloon sample)::

    dataset = ViaDataset()
    dataset.load_via("train/via_region_data.json", class_key="class")
    dataset.prepare()

Every ``filename`` must stay inside the image folder (``mrcnn.paths.inside``).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import numpy as np

from mrcnn.dataset import Dataset
from mrcnn.datasets import files
from mrcnn.errors import InputError
from mrcnn.datasets.files import COORDINATE_LIMIT, read_json
from mrcnn.paths import inside

ANNOTATION_FILE = "via_region_data.json"

# VIA region shapes that become masks, with the attributes each needs.
SHAPE_ATTRIBUTES = {
    "polygon": ("all_points_x", "all_points_y"),
    "rect": ("x", "y", "width", "height"),
    "circle": ("cx", "cy", "r"),
    "ellipse": ("cx", "cy", "rx", "ry"),
}

# Sizes of shapes, never negative.
SIZE_ATTRIBUTES = ("width", "height", "r", "rx", "ry")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number_list(value: Any) -> bool:
    return isinstance(value, list) and all(_number(v) for v in value)


def _check_region(json_path: str, filename: str, index: int, region: Any) -> dict:
    """The ``shape_attributes`` of a region, validated; InputError naming the region."""
    where = f"{json_path}: image {filename!r}, region {index}"
    if not isinstance(region, dict) or not isinstance(region.get("shape_attributes"), dict):
        raise InputError(f"{where}: expected an object with 'shape_attributes'")
    shape = region["shape_attributes"]
    name = shape.get("name")
    if not isinstance(name, str) or name not in SHAPE_ATTRIBUTES:
        raise InputError(f"{where}: unsupported shape {name!r} (supported: "
                         f"{', '.join(SHAPE_ATTRIBUTES)})")
    missing = [a for a in SHAPE_ATTRIBUTES[name] if a not in shape]
    if missing:
        raise InputError(f"{where}: {name} without {', '.join(missing)}")
    if name == "polygon":
        xs, ys = shape["all_points_x"], shape["all_points_y"]
        if not (_number_list(xs) and _number_list(ys)) or len(xs) != len(ys) or len(xs) < 3:
            raise InputError(f"{where}: polygon needs all_points_x and all_points_y as lists "
                             "of at least 3 numbers of equal length")
        if any(abs(v) > COORDINATE_LIMIT for v in [*xs, *ys] if np.isfinite(v)):
            raise InputError(f"{where}: polygon coordinates beyond +-{COORDINATE_LIMIT:g}")
    else:
        names = [*SHAPE_ATTRIBUTES[name], *(("theta",) if "theta" in shape else ())]
        bad = [a for a in names if not _number(shape[a]) or not np.isfinite(shape[a])
               or abs(shape[a]) > COORDINATE_LIMIT]
        if bad:
            raise InputError(f"{where}: {name} attributes {', '.join(bad)} must be finite "
                             f"numbers within +-{COORDINATE_LIMIT:g}")
        negative = [a for a in SIZE_ATTRIBUTES if a in SHAPE_ATTRIBUTES[name] and shape[a] < 0]
        if negative:
            raise InputError(f"{where}: {name} {', '.join(negative)} must not be negative")
    return shape


def _polygon_in_image(shape: dict, where: str, height: int, width: int) -> dict:
    """Warn (naming the region) about polygon points that cannot make a mask.

    NaN / infinite points (JSON allows NaN) are dropped, with a warning: rasterizing them
    is undefined. A polygon entirely outside the image gives no mask (``load_mask`` drops
    it), which usually means the annotation belongs to another image or size.

    Returns:
        The shape, without its non-finite points.
    """
    if shape["name"] != "polygon":
        return shape
    xs = np.asarray(shape["all_points_x"], dtype=np.float64)
    ys = np.asarray(shape["all_points_y"], dtype=np.float64)
    finite = np.isfinite(xs) & np.isfinite(ys)
    if not finite.all():
        warnings.warn(f"{where}: polygon has {int((~finite).sum())} NaN or infinite point(s) "
                      f"of {len(xs)}; they are dropped", stacklevel=3)
        xs, ys = xs[finite], ys[finite]
        shape = {**shape, "all_points_x": xs.tolist(), "all_points_y": ys.tolist()}
    if len(xs) and (xs.max() < 0 or ys.max() < 0 or xs.min() > width or ys.min() > height):
        warnings.warn(f"{where}: polygon lies entirely outside the {width}x{height} image "
                      f"(x {xs.min():g}..{xs.max():g}, y {ys.min():g}..{ys.max():g}); it "
                      "gives no mask", stacklevel=3)
    return shape


def region_class(region: dict, class_key: str, where: str) -> str | None:
    """The class name of a region: ``region_attributes[class_key]``, or None without one.

    A string is the name; VIA's checkbox attribute ``{"cat": true}`` names the one checked.

    Raises:
        InputError: the attribute is there but is neither (naming the region).
    """
    attributes = region.get("region_attributes")
    if attributes is None:
        return None
    if not isinstance(attributes, dict):
        raise InputError(f"{where}: 'region_attributes' must be an object")
    value = attributes.get(class_key)
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, dict):
        checked = [str(k) for k, v in value.items() if v is True]
        if len(checked) == 1:
            return checked[0]
    raise InputError(f"{where}: region_attributes[{class_key!r}] must be a class name (or "
                     f"one checked option), got {value!r}")


def read_via_annotations(json_path: str, class_key: str | None = None) -> list[dict]:
    """Read a VIA annotation file into [{"filename", "shapes", "classes"}].

    Accepts VIA 1.x and 2.x exports (a dict of entries, ``regions`` a dict or a list) and
    VIA 2 project files (entries under ``_via_img_metadata``). Entries without regions
    are skipped with a warning.

    Args:
        json_path: the file.
        class_key: the ``region_attributes`` key holding each region's class name (None:
            no classes read; ``classes`` holds None per region).

    Returns:
        One dict per image with regions: ``filename``, ``shapes`` (validated
        ``shape_attributes``) and ``classes`` (class name or None, per shape).

    Raises:
        InputError: missing or malformed file, an unsupported or malformed region (the
            message names the file, the image and the region).
    """
    data = read_json(json_path)
    if isinstance(data, dict) and isinstance(data.get("_via_img_metadata"), dict):
        data = data["_via_img_metadata"]  # VIA 2 project file
    if not isinstance(data, dict):
        raise InputError(f"{json_path}: expected a VIA export (an object of image entries), "
                         f"got {type(data).__name__}")
    entries = []
    for key, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            raise InputError(f"{json_path}: entry {key!r} is not a VIA image entry (no "
                             "'filename')")
        filename = entry["filename"]
        regions = entry.get("regions")
        if isinstance(regions, dict):  # VIA 1.x: {"0": region, "1": region}
            regions = list(regions.values())
        if regions is None or regions == []:
            warnings.warn(f"{json_path}: skipping image {filename!r}: no regions",
                          stacklevel=2)
            continue
        if not isinstance(regions, list):
            raise InputError(f"{json_path}: image {filename!r}: 'regions' must be a list or "
                             "an object")
        shapes = [_check_region(json_path, filename, k, r) for k, r in enumerate(regions)]
        classes = [region_class(r, class_key, f"{json_path}: image {filename!r}, region {k}")
                   if class_key else None for k, r in enumerate(regions)]
        entries.append({"filename": filename, "shapes": shapes, "classes": classes})
    return entries


def draw_shape(shape: dict, height: int, width: int) -> np.ndarray:
    """Rasterize one VIA shape into a bool [height, width] mask (clipped to the image)."""
    import skimage.draw

    mask = np.zeros([height, width], dtype=bool)
    name = shape["name"]
    if name == "polygon":
        rr, cc = skimage.draw.polygon(np.asarray(shape["all_points_y"], dtype=np.float64),
                                      np.asarray(shape["all_points_x"], dtype=np.float64),
                                      shape=(height, width))
        mask[rr, cc] = True
    elif name == "rect":
        x0, y0 = int(round(shape["x"])), int(round(shape["y"]))
        x1, y1 = int(round(shape["x"] + shape["width"])), int(round(shape["y"] + shape["height"]))
        mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    elif name == "circle":
        rr, cc = skimage.draw.disk((shape["cy"], shape["cx"]), shape["r"], shape=(height, width))
        mask[rr, cc] = True
    elif name == "ellipse":
        # VIA draws on a canvas (y down) rotated by theta radians.
        cx, cy, rx, ry = (float(shape[k]) for k in ("cx", "cy", "rx", "ry"))
        theta = float(shape.get("theta", 0.0) or 0.0)
        yy, xx = np.mgrid[:height, :width]
        dx, dy = xx - cx, yy - cy
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        mask = (u / max(rx, 1e-6)) ** 2 + (v / max(ry, 1e-6)) ** 2 <= 1
    else:
        raise ValueError(f"unsupported shape {name!r}")
    return mask


def stack_instance_masks(masks: Sequence[np.ndarray], class_ids: Sequence[int], height: int,
                         width: int) -> tuple[np.ndarray, np.ndarray]:
    """``load_mask``'s output: empty masks dropped.

    Args:
        masks: bool [height, width] masks, one per instance.
        class_ids: internal class id per mask.
        height, width: the image size (for the empty result).

    Returns:
        masks: bool [height, width, N]; class_ids: int32 [N].
    """
    kept = [(np.asarray(m, dtype=bool), c) for m, c in zip(masks, class_ids)]
    kept = [(m, c) for m, c in kept if m.any()]
    if not kept:
        return np.zeros([height, width, 0], dtype=bool), np.zeros([0], dtype=np.int32)
    return (np.stack([m for m, _ in kept], axis=-1),
            np.array([c for _, c in kept], dtype=np.int32))


class ViaDataset(Dataset):
    """Regions drawn with the VGG Image Annotator, one or several classes.

    Args of ``__init__``: as ``Dataset``. The source name of images and classes is
    ``source`` (a class attribute, "via"; the balloon sample uses "balloon").
    """

    source = "via"

    def load_via(self, json_path: str, image_dir: str | None = None,
                 class_key: str = "class", class_names: Sequence[str] | None = None,
                 default_class: str | None = None, allow_outside: bool = False) -> None:
        """Register the images of a VIA file.

        Args:
            json_path: the VIA export.
            image_dir: the folder ``filename`` is relative to (default: the json's folder).
            class_key: ``region_attributes`` key of each region's class name.
            class_names: the classes, in the order of their ids (1, 2, ...); default: the
                names found, sorted. A region of another class is an error naming it.
            default_class: the class of regions without the attribute; default: when no
                region has one, all are one class named after ``source``; when some have
                one, a region without it is an error naming it.
            allow_outside: accept file names that leave ``image_dir``.

        Each image is decode-checked now (a corrupt file is named at once, not hours into
        training) and its size read from its header.

        Raises:
            InputError: a missing or malformed file, an image that is not there, a path
                outside ``image_dir``, a region without a known class.
        """
        if image_dir is None:
            image_dir = os.path.dirname(os.path.abspath(json_path))
        files.require_dir(image_dir, "image folder")
        entries = read_via_annotations(json_path, class_key)
        if not entries:
            raise InputError(f"{json_path}: no image with regions")
        found = sorted({c for e in entries for c in e["classes"] if c is not None})
        if default_class is None and not found:
            default_class = self.source
        names = list(class_names) if class_names else sorted(set(found) | (
            {default_class} if default_class and any(
                c is None for e in entries for c in e["classes"]) else set()))
        ids = {name: k + 1 for k, name in enumerate(names)}
        for name, class_id in ids.items():
            self.add_class(self.source, class_id, name)
        for entry in entries:
            where = f"{json_path}: image {entry['filename']!r}"
            path = inside(image_dir, entry["filename"], what=f"image {entry['filename']!r}",
                          source=json_path, allow_outside=allow_outside)
            if not os.path.isfile(path):
                raise InputError(f"{where}: file not found: {path}")
            class_ids = []
            for k, name in enumerate(entry["classes"]):
                name = name if name is not None else default_class
                if name is None:
                    raise InputError(f"{where}, region {k}: no region_attributes"
                                     f"[{class_key!r}] (the class of the region)")
                if name not in ids:
                    raise InputError(f"{where}, region {k}: class {name!r} is not one of "
                                     f"{names}")
                class_ids.append(ids[name])
            height, width = files.verify_image(path)
            shapes = [_polygon_in_image(shape, f"{where}, region {k}", height, width)
                      for k, shape in enumerate(entry["shapes"])]
            self.add_image(self.source, image_id=entry["filename"], path=path, width=width,
                           height=height, polygons=shapes, region_class_ids=class_ids)

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """One mask per region (regions entirely outside the image are dropped).

        Returns:
            masks: bool [height, width, N].
            class_ids: int32 [N] internal class ids.
        """
        info = self.image_info[image_id]
        if info["source"] != self.source:
            return super().load_mask(image_id)
        height, width = info["height"], info["width"]
        class_ids = [self.map_source_class_id(f"{self.source}.{c}")
                     for c in info.get("region_class_ids", [1] * len(info["polygons"]))]
        return stack_instance_masks([draw_shape(s, height, width) for s in info["polygons"]],
                                    class_ids, height, width)

    def image_reference(self, image_id: int) -> str:
        """The image's path."""
        info = self.image_info[image_id]
        if info["source"] == self.source:
            return info["path"]
        return super().image_reference(image_id)

