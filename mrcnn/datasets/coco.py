"""COCO instances json files: any categories, polygons, RLE, crowds, any image folder.

detectron2's ``register_coco_instances(name, {}, json_file, image_root)`` in Matterport's
``Dataset`` shape::

    dataset = CocoDataset()
    dataset.load_coco_json("annotations/train.json", image_dir="images/")
    dataset.prepare()

The file is checked when it is read (``check_coco_annotations``), so that what pycocotools
would take apart later with a traceback (a two-point polygon read as a box, an RLE of another
size, an empty segmentation) fails at once with the annotation id, its image and the file.
Every ``file_name`` must stay inside the image folder (``mrcnn.paths.inside``).

MS COCO's own layout (``<root>/annotations/instances_<subset><year>.json`` and
``<root>/<subset><year>/``) is ``load_coco``, Matterport's method.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from typing import Any, Sequence

import numpy as np

from mrcnn.dataset import Dataset
from mrcnn.datasets import files
from mrcnn.errors import InputError
from mrcnn.datasets.files import COORDINATE_LIMIT, read_json
from mrcnn.paths import inside

DEFAULT_DATASET_YEAR = "2017"

# Keys each record of a COCO instances file needs here.
IMAGE_KEYS = ("id", "file_name", "width", "height")
ANNOTATION_KEYS = ("id", "image_id", "category_id", "segmentation")


def _pycocotools():
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    return COCO, mask_utils


def image_folder(dataset_dir: str, subset: str, year: str) -> str:
    """``<dataset>/<subset><year>``; minival and valminusminival images are in val<year>."""
    folder = "val" if subset in ("minival", "valminusminival") else subset
    return os.path.join(dataset_dir, f"{folder}{year}")


def annotation_file(dataset_dir: str, subset: str, year: str) -> str:
    """``<dataset>/annotations/instances_<subset><year>.json``."""
    return os.path.join(dataset_dir, "annotations", f"instances_{subset}{year}.json")


############################################################
#  Reading and checking
############################################################

def read_coco(path: str):
    """``pycocotools.coco.COCO(path)`` with bad files reported as one InputError line.

    The file is checked first (``check_coco_annotations``), so that a file pycocotools would
    take apart with a traceback, or silently turn into an empty dataset, fails here naming
    the file and what is wrong. Annotations without ``iscrowd``, ``area`` or ``bbox`` get
    them (0, and the area and box of the segmentation), as COCOeval needs them.

    Args:
        path: the json file.

    Returns:
        The ``COCO`` object.

    Raises:
        InputError: naming the file (and the record) on any problem.
    """
    data = read_json(path)
    check_coco_annotations(data, path)
    complete_annotations(data)
    COCO, _ = _pycocotools()
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco


def complete_annotations(data: dict) -> None:
    """Add the ``iscrowd``, ``area`` and ``bbox`` a checked file may lack (in place)."""
    _, mask_utils = _pycocotools()
    sizes = {image["id"]: (image["height"], image["width"]) for image in data["images"]}
    for ann in data["annotations"]:
        ann.setdefault("iscrowd", 0)
        if "area" in ann and "bbox" in ann:
            continue
        rle = segmentation_rle(ann["segmentation"], *sizes[ann["image_id"]])
        ann.setdefault("area", float(mask_utils.area(rle)))
        ann.setdefault("bbox", [float(v) for v in mask_utils.toBbox(rle)])


def _records(data: dict, key: str, path: str) -> list:
    records = data.get(key)
    if records is None:
        raise InputError(
            f"{path} has no {key!r} list: a COCO instances file needs 'images', "
            "'annotations' and 'categories' (an image-info file without annotations cannot "
            "be used to train or evaluate)")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise InputError(f"{path}: {key!r} must be a list of objects, got "
                         f"{type(records).__name__}")
    return records


def _missing_key(records: list, keys: Sequence[str], what: str, path: str) -> None:
    for index, record in enumerate(records):
        missing = [k for k in keys if k not in record]
        if missing:
            raise InputError(f"{path}: {what} #{index} (id {record.get('id')!r}) has no "
                             f"{', '.join(repr(k) for k in missing)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_ids(records: list, what: str, path: str) -> None:
    seen = set()
    for index, record in enumerate(records):
        if not _is_int(record["id"]):
            raise InputError(f"{path}: {what} #{index} has id {record['id']!r}; COCO ids are "
                             "integers")
        if record["id"] in seen:
            raise InputError(f"{path}: {what} id {record['id']} appears twice")
        seen.add(record["id"])


def rle_counts_from_string(counts: str) -> list[int] | None:
    """Decode the run lengths of a compressed COCO RLE string (pycocotools' rleFrString).

    Returns:
        The run lengths, or None when the string is not a valid encoding.
    """
    out: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                return None  # the last number is cut off
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def _check_rle(segm: dict, where: str, height: int, width: int, crowd: bool) -> None:
    if "counts" not in segm or "size" not in segm:
        raise InputError(f"{where}: an RLE segmentation needs 'counts' and 'size'")
    size = segm["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v >= 0
                                                               for v in size)):
        raise InputError(f"{where}: RLE 'size' must be [height, width], got {size!r}")
    if not crowd and tuple(size) != (height, width):
        raise InputError(f"{where}: RLE size {size[0]}x{size[1]} differs from the image's "
                         f"{height}x{width} (height x width)")
    counts = segm["counts"]
    if isinstance(counts, str):
        runs = rle_counts_from_string(counts)
        if runs is None:
            raise InputError(f"{where}: RLE 'counts' is not a valid compressed RLE string")
    elif isinstance(counts, list) and all(_is_int(v) for v in counts):
        runs = counts
    else:
        raise InputError(f"{where}: RLE 'counts' must be a string (compressed) or a list of "
                         "integers")
    if any(v < 0 for v in runs) or sum(runs) != size[0] * size[1]:
        raise InputError(f"{where}: RLE run lengths must be >= 0 and add up to "
                         f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels, got "
                         f"{sum(runs)}")


def _check_polygons(segm: list, where: str) -> int:
    """Check a list of polygons; returns how many have an odd number of coordinates."""
    if not segm:
        raise InputError(f"{where}: empty 'segmentation' (expected polygons or an RLE)")
    odd = 0
    for polygon in segm:
        if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
            raise InputError(f"{where}: a polygon must be a list of numbers [x1, y1, x2, y2, "
                             "...]; 'segmentation' is a list of such lists")
        if len(polygon) < 6:
            raise InputError(f"{where}: polygon with {len(polygon)} numbers; at least 3 "
                             "points (6 numbers) are needed")
        if not all(math.isfinite(v) and abs(v) <= COORDINATE_LIMIT for v in polygon):
            raise InputError(f"{where}: polygon with NaN, infinite or too large coordinates "
                             f"(beyond +-{COORDINATE_LIMIT:g})")
        odd += len(polygon) % 2
    return odd


def check_coco_annotations(data: Any, path: str) -> None:
    """Check a parsed COCO instances file; warn about odd polygons.

    Errors (``InputError`` naming ``path``): the top level is not an object; ``images``,
    ``annotations`` or ``categories`` missing; an image without ``file_name``, ``width`` or
    ``height``; ids that are not integers or appear twice; an annotation of an image or
    category the file does not list; a segmentation that is empty, a polygon with fewer than
    3 points (6 numbers) or non-finite ones, a malformed RLE, a non-crowd RLE whose size is
    not its image's (annotation id, image and file named).
    Warnings (naming the annotations): a polygon with an odd number of coordinates, or one
    that extends beyond the image by more than a pixel (rasterization clips it).

    Args:
        data: the parsed JSON.
        path: the file, for messages.
    """
    if not isinstance(data, dict):
        raise InputError(
            f"{path}: not a COCO instances file: the top level is a {type(data).__name__}, "
            "expected an object with 'images', 'annotations' and 'categories'")
    images = _records(data, "images", path)
    annotations = _records(data, "annotations", path)
    categories = _records(data, "categories", path)
    if not annotations:
        raise InputError(f"{path} has an empty 'annotations' list: nothing to train or "
                         "evaluate on")
    _missing_key(images, IMAGE_KEYS, "image", path)
    _missing_key(categories, ("id", "name"), "category", path)
    _missing_key(annotations, ANNOTATION_KEYS, "annotation", path)
    for what, records in (("image", images), ("category", categories),
                          ("annotation", annotations)):
        _check_ids(records, what, path)
    for image in images:
        if not isinstance(image["file_name"], str) or not image["file_name"]:
            raise InputError(f"{path}: image {image['id']}: 'file_name' must be a non-empty "
                             "string")
        if not all(_is_int(image[k]) and image[k] > 0 for k in ("width", "height")):
            raise InputError(f"{path}: image {image['id']} ({image['file_name']!r}): 'width' "
                             "and 'height' must be positive integers")
    for category in categories:
        if not isinstance(category["name"], str):
            raise InputError(f"{path}: category {category['id']}: 'name' must be a string")
    images_by_id = {image["id"]: image for image in images}
    category_ids = {c["id"] for c in categories}
    odd, outside = [], []
    for ann in annotations:
        image = images_by_id.get(ann["image_id"]) if _is_int(ann["image_id"]) else None
        if image is None:
            raise InputError(f"{path}: annotation {ann['id']} belongs to image_id "
                             f"{ann['image_id']!r}, which is not in 'images'")
        if not _is_int(ann["category_id"]) or ann["category_id"] not in category_ids:
            raise InputError(f"{path}: annotation {ann['id']} has category_id "
                             f"{ann['category_id']!r}, which is not in 'categories' (ids "
                             f"{sorted(category_ids)[:20]})")
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1):  # True/False compare equal and are accepted too
            raise InputError(f"{path}: annotation {ann['id']}: 'iscrowd' must be 0 or 1, "
                             f"got {crowd!r}")
        where = (f"{path}: annotation {ann['id']} (image {image['id']}, "
                 f"{image['file_name']!r})")
        height, width = image["height"], image["width"]
        segm = ann["segmentation"]
        if isinstance(segm, dict):
            _check_rle(segm, where, height, width, bool(crowd))
            continue
        if not isinstance(segm, list):
            raise InputError(f"{where}: 'segmentation' must be a list of polygons or an RLE "
                             f"object, got {type(segm).__name__}")
        if _check_polygons(segm, where):
            odd.append(ann["id"])
        xs = [v for polygon in segm for v in polygon[0::2]]
        ys = [v for polygon in segm for v in polygon[1::2]]
        if min(xs) < -1 or min(ys) < -1 or max(xs) > width + 1 or max(ys) > height + 1:
            outside.append(ann["id"])
    for ids, problem in ((odd, "have a polygon with an odd number of coordinates (x, y "
                               "pairs expected; the last value is ignored)"),
                         (outside, "have a polygon that extends beyond the image (the mask "
                                   "is clipped to the image)")):
        if ids:
            shown = ", ".join(str(i) for i in ids[:10]) + (", ..." if len(ids) > 10 else "")
            warnings.warn(f"{path}: {len(ids)} annotation(s) {problem}: ids {shown}",
                          stacklevel=3)


def segmentation_rle(segm: Any, height: int, width: int) -> dict:
    """A checked segmentation (polygons, uncompressed or compressed RLE) -> compressed RLE."""
    _, mask_utils = _pycocotools()
    if isinstance(segm, list):  # polygons: one object may have several parts
        return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    if isinstance(segm["counts"], list):  # uncompressed RLE
        return mask_utils.frPyObjects(segm, *segm["size"])
    return segm


############################################################
#  Dataset
############################################################

class CocoDataset(Dataset):
    """Any dataset in COCO's instances format, through pycocotools."""

    def load_coco_json(self, json_path: str, image_dir: str | None = None,
                       class_ids: Sequence[int] | None = None, return_coco: bool = False,
                       allow_outside: bool = False, source: str = "coco"):
        """Register the images of a COCO instances file that have annotations.

        Args:
            json_path: the annotation file.
            image_dir: the folder ``file_name`` is relative to (default: the json's folder).
            class_ids: load only these category ids (and the images that have them).
            return_coco: return the ``COCO`` object.
            allow_outside: accept file names that leave ``image_dir`` (absolute paths,
                ``..``, symlinks to elsewhere).
            source: the source name of the classes and images (``add_class``).

        Returns:
            The ``COCO`` object when ``return_coco``.

        Raises:
            InputError: a missing or malformed file (the record named), unknown class ids,
                a file name outside ``image_dir``.
        """
        coco = read_coco(json_path)
        if image_dir is None:
            image_dir = os.path.dirname(os.path.abspath(json_path))
        files.require_dir(image_dir, "image folder")
        all_class_ids = sorted(coco.getCatIds())
        if class_ids:
            unknown = sorted(set(class_ids) - set(all_class_ids))
            if unknown:
                raise InputError(f"class ids {unknown} are not categories of {json_path}")
            class_ids = sorted(class_ids)
        else:
            class_ids = all_class_ids
        # As Matterport: only images with at least one annotation of the classes.
        image_ids = sorted({i for c in class_ids for i in coco.getImgIds(catIds=[c])})
        for i in class_ids:
            self.add_class(source, i, coco.loadCats(i)[0]["name"])
        for i in image_ids:
            info = coco.imgs[i]
            path = inside(image_dir, info["file_name"], what=f"image {i} 'file_name'",
                          source=json_path, allow_outside=allow_outside)
            self.add_image(
                source, image_id=i, path=path, width=info["width"], height=info["height"],
                annotations=coco.loadAnns(coco.getAnnIds(imgIds=[i], catIds=class_ids,
                                                         iscrowd=None)))
        self._coco_sources = getattr(self, "_coco_sources", set()) | {source}
        return coco if return_coco else None

    def load_coco(self, dataset_dir: str, subset: str, year: str = DEFAULT_DATASET_YEAR,
                  class_ids: Sequence[int] | None = None, class_map: Any = None,
                  return_coco: bool = False, auto_download: bool = False):
        """Register the images of an MS COCO subset (Matterport's method).

        Args:
            dataset_dir: root of the dataset.
            subset: "train", "val", or for 2014 "minival" / "valminusminival".
            year: "2014" or "2017", as a string.
            class_ids: load only these COCO category ids (and the images that have them).
            class_map: unused (Matterport's placeholder).
            return_coco: return the ``COCO`` object.
            auto_download: call ``auto_download`` first (the coco sample implements it).

        Returns:
            The ``COCO`` object when ``return_coco``.
        """
        year = str(year)
        if auto_download:
            self.auto_download(dataset_dir, subset, year)
        files.require_dir(dataset_dir, "dataset folder")
        return self.load_coco_json(annotation_file(dataset_dir, subset, year),
                                   image_folder(dataset_dir, subset, year),
                                   class_ids=class_ids, return_coco=return_coco)

    def auto_download(self, dataDir: str, dataType: str, dataYear: str) -> None:
        """Download MS COCO (Matterport's method): samples/coco/coco.py implements it."""
        raise InputError("downloading MS COCO is done by samples/coco/coco.py --download")

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Instance masks of a COCO image.

        Crowd annotations get NEGATIVE class ids (Matterport's convention): the training
        pipeline uses them to ignore ROIs that mostly cover a crowd, never as targets.
        Annotations whose mask rounds to no pixel are skipped.

        Returns:
            masks: bool [height, width, N].
            class_ids: int32 [N] internal class ids, negative for crowds.
        """
        info = self.image_info[image_id]
        if info["source"] not in getattr(self, "_coco_sources", {"coco"}):
            return super().load_mask(image_id)
        height, width = info["height"], info["width"]
        masks, class_ids = [], []
        for annotation in info["annotations"]:
            class_id = self.class_from_source_map.get(
                f"{info['source']}.{annotation['category_id']}")
            if not class_id:
                continue
            m = self.annToMask(annotation, height, width)
            if m.max() < 1:  # smaller than a pixel
                continue
            if annotation.get("iscrowd"):
                class_id *= -1
                if m.shape != (height, width):  # some crowd RLEs have another size
                    m = np.ones([height, width], dtype=bool)
            masks.append(m.astype(bool))
            class_ids.append(class_id)
        if not class_ids:
            return np.zeros([height, width, 0], dtype=bool), np.zeros([0], dtype=np.int32)
        return np.stack(masks, axis=2), np.array(class_ids, dtype=np.int32)

    def image_reference(self, image_id: int) -> str:
        """The image's path."""
        info = self.image_info[image_id]
        if info["source"] in getattr(self, "_coco_sources", {"coco"}):
            return str(info["path"])
        return super().image_reference(image_id)

    # Matterport's versions of pycocotools' COCO.annToRLE / annToMask, with the image
    # size given (our images need no COCO object).
    def annToRLE(self, ann: dict, height: int, width: int) -> dict:
        """Polygons, uncompressed or compressed RLE -> compressed RLE."""
        return segmentation_rle(ann["segmentation"], height, width)

    def annToMask(self, ann: dict, height: int, width: int) -> np.ndarray:
        """Annotation -> uint8 [height, width] binary mask."""
        _, mask_utils = _pycocotools()
        return mask_utils.decode(self.annToRLE(ann, height, width))
