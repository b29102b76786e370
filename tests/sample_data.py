"""Small datasets in the on-disk formats of the nucleus, balloon and coco samples.

Each writer draws a few seeded synthetic images (bright blobs or polygons on a dark
background) and writes them exactly as the real dataset ships: DSB2018 folders of PNGs,
a VIA ``via_region_data.json``, a COCO ``instances_<subset><year>.json``. They return what
the tests need to check the samples' outputs against (paths, masks, ids).

Also here: ``rle_decode_reference``, an independent NumPy decoder of the DSB2018
run-length format used to check the nucleus submission, and ``run_cli``, which runs a
sample's ``main(argv)`` in-process and captures its exit status and output.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import sys
from typing import Any, Callable, Sequence

import cv2
import numpy as np
from PIL import Image

ROOT_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


############################################################
#  Drawing
############################################################

def ellipse_mask(height: int, width: int, cy: float, cx: float, ry: float,
                 rx: float) -> np.ndarray:
    """bool [height, width] filled axis-aligned ellipse."""
    yy, xx = np.mgrid[:height, :width]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def polygon_mask(height: int, width: int, xs: Sequence[float],
                 ys: Sequence[float]) -> np.ndarray:
    """bool [height, width] filled polygon (OpenCV fill, integer vertices)."""
    mask = np.zeros([height, width], dtype=np.uint8)
    points = np.round(np.stack([xs, ys], axis=-1)).astype(np.int32)
    cv2.fillPoly(mask, [points], 1)
    return mask.astype(bool)


def blobs(rng: np.random.Generator, height: int, width: int, count: int,
          radius: tuple[int, int] = (4, 8)) -> list[np.ndarray]:
    """``count`` non-overlapping elliptic blobs (bool masks), fewer if they do not fit."""
    taken = np.zeros([height, width], dtype=bool)
    out = []
    for _ in range(count * 20):
        if len(out) == count:
            break
        ry, rx = rng.integers(radius[0], radius[1] + 1, size=2)
        cy = rng.integers(ry, height - ry)
        cx = rng.integers(rx, width - rx)
        m = ellipse_mask(height, width, cy, cx, ry, rx)
        if (m & taken).any():
            continue
        taken |= m
        out.append(m)
    return out


def paint(rng: np.random.Generator, height: int, width: int,
          masks: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 RGB image: dark noisy background, each mask a bright color."""
    image = rng.integers(0, 40, size=(height, width, 3)).astype(np.uint8)
    for m in masks:
        image[m] = rng.integers(150, 256, size=3)
    return image


def write_png(path: str, array: np.ndarray) -> None:
    """Write a PNG (uint8 gray/RGB/RGBA or uint16 gray) with Pillow."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


############################################################
#  Nucleus: DSB2018 layout
############################################################

# How the images of the training subset are stored: the loader must accept them all.
NUCLEUS_STORAGE = ("rgb", "gray", "rgba", "gray16", "rgb")


def _store(image: np.ndarray, kind: str) -> np.ndarray:
    gray = image.mean(axis=-1)
    if kind == "gray":
        return gray.astype(np.uint8)
    if kind == "gray16":
        return (gray * 257).astype(np.uint16)
    if kind == "rgba":
        return np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], -1)
    return image


def write_nucleus_dataset(root: str, train_images: int = 5, test_images: int = 2,
                          size: tuple[int, int] = (48, 56), seed: int = 0) -> dict[str, Any]:
    """A DSB2018-style dataset: ``stage1_train`` (with masks) and ``stage1_test``.

    Args:
        root: dataset folder to create.
        train_images: number of stage1_train images; they cycle through NUCLEUS_STORAGE.
        test_images: number of stage1_test images (no masks folder).
        size: (height, width) of the images.
        seed: drawing seed.

    Returns:
        {"root", "train_ids", "test_ids", "masks": {image_id: bool [H, W, N]},
         "images": {image_id: uint8 RGB [H, W, 3] as drawn}}.
    """
    rng = np.random.default_rng(seed)
    height, width = size
    out: dict[str, Any] = {"root": root, "train_ids": [], "test_ids": [], "masks": {},
                           "images": {}}
    for subset, count in (("stage1_train", train_images), ("stage1_test", test_images)):
        for k in range(count):
            image_id = f"{subset.split('_')[1]}{k:02d}{rng.integers(1 << 30):08x}"
            masks = blobs(rng, height, width, int(rng.integers(3, 6)))
            image = paint(rng, height, width, masks)
            kind = NUCLEUS_STORAGE[k % len(NUCLEUS_STORAGE)] if subset == "stage1_train" \
                else "rgb"
            image_dir = os.path.join(root, subset, image_id)
            write_png(os.path.join(image_dir, "images", f"{image_id}.png"), _store(image, kind))
            if subset == "stage1_train":
                for j, m in enumerate(masks):
                    write_png(os.path.join(image_dir, "masks", f"{j:03d}.png"),
                              m.astype(np.uint8) * 255)
                out["train_ids"].append(image_id)
            else:
                out["test_ids"].append(image_id)
            out["masks"][image_id] = np.stack(masks, axis=-1)
            out["images"][image_id] = image
    return out


def rle_decode_reference(rle: str, height: int, width: int) -> np.ndarray:
    """Decode DSB2018 run-length pairs (1-based starts, column-major) to bool [H, W].

    Written independently of the sample: walks the pairs and fills a column-major pixel
    list, then transposes.
    """
    values = [int(v) for v in rle.split()]
    assert len(values) % 2 == 0, f"odd number of values in {rle!r}"
    flat = np.zeros(height * width, dtype=bool)
    previous_end = 0
    for start, length in zip(values[0::2], values[1::2]):
        assert start >= 1 and length >= 1, (start, length)
        assert start > previous_end, "runs must be sorted and not touch"
        assert start - 1 + length <= height * width
        flat[start - 1:start - 1 + length] = True
        previous_end = start - 1 + length
    # Pixel k (0-based) is at row k % height, column k // height.
    return flat.reshape(width, height).T


############################################################
#  Balloon: VIA annotations
############################################################

def via_polygon(xs: Sequence[float], ys: Sequence[float]) -> dict:
    """A VIA polygon region."""
    return {"shape_attributes": {"name": "polygon", "all_points_x": [int(x) for x in xs],
                                 "all_points_y": [int(y) for y in ys]},
            "region_attributes": {}}


def write_balloon_dataset(root: str, images: dict[str, int] | None = None,
                          size: tuple[int, int] = (60, 72), seed: int = 0) -> dict[str, Any]:
    """A VIA dataset: ``<root>/<subset>/via_region_data.json`` + JPEG images.

    The train subset stores ``regions`` as a list (VIA 2.x), val as a dict (VIA 1.x).

    Returns:
        {"root", "subsets": {subset: {filename: bool [H, W, N] masks}}}.
    """
    images = images or {"train": 3, "val": 2}
    rng = np.random.default_rng(seed)
    height, width = size
    out: dict[str, Any] = {"root": root, "subsets": {}}
    for subset, count in images.items():
        subset_dir = os.path.join(root, subset)
        os.makedirs(subset_dir, exist_ok=True)
        annotations, masks_of = {}, {}
        for k in range(count):
            filename = f"{subset}_{k}.jpg"
            regions, masks = [], []
            for _ in range(int(rng.integers(1, 3))):
                cy, cx = rng.integers(15, height - 15), rng.integers(15, width - 15)
                r = rng.integers(8, 14)
                angles = np.sort(rng.uniform(0, 2 * np.pi, size=8))
                xs = np.clip(cx + r * np.cos(angles), 0, width - 1)
                ys = np.clip(cy + r * np.sin(angles), 0, height - 1)
                regions.append(via_polygon(xs, ys))
                masks.append(polygon_mask(height, width, np.round(xs), np.round(ys)))
            image = paint(rng, height, width, masks)
            cv2.imwrite(os.path.join(subset_dir, filename), image[..., ::-1])
            file_size = os.path.getsize(os.path.join(subset_dir, filename))
            if subset == "val":
                regions = {str(i): r for i, r in enumerate(regions)}
            annotations[f"{filename}{file_size}"] = {
                "filename": filename, "size": file_size, "regions": regions,
                "file_attributes": {}}
            masks_of[filename] = np.stack(masks, axis=-1)
        with open(os.path.join(subset_dir, "via_region_data.json"), "w") as f:
            json.dump(annotations, f)
        out["subsets"][subset] = masks_of
    return out


############################################################
#  COCO
############################################################

COCO_CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"},
                   {"id": 3, "name": "car", "supercategory": "vehicle"},
                   {"id": 18, "name": "dog", "supercategory": "animal"}]


def write_coco_dataset(root: str, subsets: Sequence[str] = ("train", "val"),
                       year: str = "2017", images_per_subset: int = 3,
                       size: tuple[int, int] = (56, 64), seed: int = 0) -> dict[str, Any]:
    """A mini COCO: ``annotations/instances_<subset><year>.json`` + ``<subset><year>/*.jpg``.

    Every subset has polygon annotations (one with two parts), an uncompressed RLE
    annotation and a compressed one, and one crowd annotation (RLE, iscrowd=1). Category
    18 ("dog") appears in the first image only; one more image has no annotation at all.

    Returns:
        {"root", "year", "files": {subset: annotation path}, "anns": {subset: [...]},
         "crowd_image": {subset: COCO image id with the crowd}}.
    """
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    height, width = size
    out: dict[str, Any] = {"root": root, "year": year, "files": {}, "anns": {},
                           "crowd_image": {}}
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    ann_id = 1
    for s, subset in enumerate(subsets):
        image_dir = os.path.join(root, f"{subset}{year}")
        os.makedirs(image_dir, exist_ok=True)
        images, anns = [], []
        for k in range(images_per_subset + 1):
            image_id = 100 * (s + 1) + k
            file_name = f"{image_id:012d}.jpg"
            images.append({"id": image_id, "file_name": file_name, "width": width,
                           "height": height})
            masks = []
            if k < images_per_subset:  # the last image has no annotation
                masks = blobs(rng, height, width, 3, radius=(6, 10))
            for j, m in enumerate(masks):
                category = 18 if (k == 0 and j == 0) else (1 if j % 2 == 0 else 3)
                ann = {"id": ann_id, "image_id": image_id, "category_id": category,
                       "iscrowd": 0}
                ann_id += 1
                if j == 0:  # polygon(s) around the blob
                    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL,
                                                   cv2.CHAIN_APPROX_NONE)
                    polygon = [float(v) for v in contours[0].reshape(-1)]
                    ann["segmentation"] = [polygon]
                elif j == 1:  # uncompressed RLE
                    ann["segmentation"] = uncompressed_rle(m)
                else:  # compressed RLE, crowd on the second image
                    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                    rle["counts"] = rle["counts"].decode("ascii")
                    ann["segmentation"] = rle
                    if k == 1:
                        ann["iscrowd"] = 1
                        out["crowd_image"][subset] = image_id
                # Box and area of the mask the segmentation describes (a polygon through
                # the contour pixels' centres covers a little less than the blob).
                segm = ann["segmentation"]
                rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width)) \
                    if isinstance(segm, list) else \
                    mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                ann["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]
                ann["area"] = float(mask_utils.area(rle))
                anns.append(ann)
            image = paint(rng, height, width, masks)
            cv2.imwrite(os.path.join(image_dir, file_name), image[..., ::-1])
        data = {"info": {"description": "mini COCO for tests"}, "licenses": [],
                "images": images, "annotations": anns, "categories": COCO_CATEGORIES}
        path = os.path.join(root, "annotations", f"instances_{subset}{year}.json")
        with open(path, "w") as f:
            json.dump(data, f)
        out["files"][subset] = path
        out["anns"][subset] = anns
    return out


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE ({"counts": [...], "size": [h, w]}, column-major, 0 first)."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"counts": [int(c) for c in counts], "size": [int(mask.shape[0]),
                                                          int(mask.shape[1])]}


############################################################
#  Running a CLI in-process
############################################################

def run_cli(main: Callable[[Sequence[str]], Any], argv: Sequence[str]) -> tuple[int, Any, str,
                                                                                  str]:
    """Run ``main(argv)``; return (exit status, return value, stdout, stderr).

    SystemExit (argparse errors, ``cli.cli_errors``) gives its code and None; the
    output is captured AND echoed to the real streams so pytest shows it on failure.
    """
    out, err = io.StringIO(), io.StringIO()
    code, result = 0, None
    with contextlib.redirect_stdout(_Tee(out, sys.stdout)), \
            contextlib.redirect_stderr(_Tee(err, sys.stderr)):
        try:
            result = main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, result, out.getvalue(), err.getvalue()


def assert_one_error_line(result: tuple, prog: str, *fragments: str) -> str:
    """A ``run_cli`` result that failed with exit status 2 and ONE stderr line
    ``<prog>: error: ...`` containing every fragment (e.g. the offending path)."""
    code, _, _, err = result
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def train_tiny(main: Callable[[Sequence[str]], Any], argv: Sequence[str], logs: str,
               name: str) -> dict:
    """Run a sample's ``train ... --tiny --logs=<logs>`` in process and find its checkpoint.

    Returns:
        {"logs", "checkpoint" (the epoch-1 file of run ``tiny<name>``), "stdout"}.
    """
    code, _, out, err = run_cli(main, [*argv, "--tiny", f"--logs={logs}"])
    assert code == 0, err[-2000:]
    checkpoints = glob.glob(os.path.join(logs, f"tiny{name}*", f"mask_rcnn_tiny{name}_0001.h5"))
    assert len(checkpoints) == 1, os.listdir(logs)
    return {"logs": logs, "checkpoint": checkpoints[0], "stdout": out}


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()


def error_lines(stderr: str) -> list[str]:
    """The ``<prog>: error: ...`` lines of a captured stderr."""
    return [line for line in stderr.splitlines() if ": error: " in line]
