"""Detect over a folder of image files: pictures and one result file.

What every sample's ``detect --images DIR`` does, as library API so a project copied from
a sample keeps it::

    paths = predict.list_images("photos/")            # or "photos/*.jpg"
    summary = predict.detect_images(model, paths, class_names, "out/")

writes ``out/detect_<image name>.png`` (the detections drawn) for each image and
``out/detections.json``: one record per detection in COCO's result format (``bbox`` as
``[x, y, width, height]`` pixels, ``segmentation`` as compressed RLE, ``score``), plus the
file, class id and class name, so pycocotools, a spreadsheet or a script can read it.
Images that cannot be read are reported in the file's ``errors`` and skipped.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Sequence

import numpy as np

from mrcnn.dataset import load_image_file
from mrcnn.paths import claim
from mrcnn.progress import track

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
RESULT_FILE = "detections.json"


def list_images(pattern: str) -> list[str]:
    """Image files of a folder (non-recursive) or a glob pattern, sorted.

    Args:
        pattern: a folder, or a glob such as ``"data/*.jpg"`` or ``"data/**/*.png"``.

    Returns:
        Sorted paths with an image extension (``IMAGE_EXTENSIONS``, any case).

    Raises:
        FileNotFoundError: nothing matched; the message names the pattern.
    """
    if os.path.isdir(pattern):
        candidates = [os.path.join(pattern, name) for name in os.listdir(pattern)]
    else:
        candidates = glob.glob(pattern, recursive=True)
    paths = sorted(p for p in candidates
                   if os.path.isfile(p) and p.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise FileNotFoundError(f"--images {pattern}: no image files there (looked for "
                                f"{', '.join(IMAGE_EXTENSIONS)})")
    return paths


def detection_records(file_name: str, result: dict[str, np.ndarray],
                      class_names: Sequence[str]) -> list[dict[str, Any]]:
    """One image's ``detect()`` result as JSON-ready COCO-style records.

    Args:
        file_name: the image's file name, stored in each record.
        result: a dict of ``MaskRCNN.detect`` (rois, class_ids, scores, masks).
        class_names: names by class id (``dataset.class_names``).

    Returns:
        One dict per detection: file_name, class_id, class_name, score, bbox
        ``[x, y, w, h]`` and segmentation (compressed RLE, str counts).
    """
    from mrcnn.coco_eval import masks_to_rle

    rles = masks_to_rle(result["masks"])
    records = []
    for (y1, x1, y2, x2), class_id, score, rle in zip(
            np.asarray(result["rois"]).reshape(-1, 4).tolist(), result["class_ids"],
            result["scores"], rles):
        records.append({
            "file_name": file_name,
            "class_id": int(class_id),
            "class_name": str(class_names[int(class_id)]),
            "score": round(float(score), 5),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "segmentation": rle,
        })
    return records


def detect_images(model: Any, paths: Sequence[str], class_names: Sequence[str],
                  output_dir: str, pictures: bool = True, verbose: int = 1) -> dict[str, Any]:
    """Detect on image files; write pictures and ``detections.json`` to ``output_dir``.

    Args:
        model: an inference ``MaskRCNN`` with weights loaded.
        paths: image files (see ``list_images``).
        class_names: names by class id.
        output_dir: created if missing. An existing ``detections.json`` there is never
            overwritten: the new one gets a numbered name.
        pictures: also save ``detect_<name>.png`` with the detections drawn (numbered
            instead of replacing a file that exists).
        verbose: progress on stderr (``mrcnn.progress``).

    Returns:
        {"result_file": path, "images": count read, "detections": count,
        "errors": [{"file_name", "error"}]}.
    """
    from mrcnn import visualize

    os.makedirs(output_dir, exist_ok=True)
    records: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    for path in track(paths, label="detect", unit="img", verbose=verbose):
        name = os.path.basename(path)
        try:
            image = load_image_file(path)
        except (OSError, ValueError) as err:  # unreadable file: report it, go on
            errors.append({"file_name": path, "error": f"{type(err).__name__}: {err}"})
            continue
        result = model.detect([image], verbose=0)[0]
        images.append({"file_name": path, "height": int(image.shape[0]),
                       "width": int(image.shape[1])})
        records.extend(detection_records(path, result, class_names))
        if pictures:
            stem = os.path.splitext(name)[0]
            visualize.save_instances_image(
                claim(os.path.join(output_dir, f"detect_{stem}.png")), image,
                result["rois"],
                result["masks"], result["class_ids"], class_names, result["scores"])
    result_file = claim(os.path.join(output_dir, RESULT_FILE))
    with open(result_file, "w", encoding="utf-8") as f:
        json.dump({"images": images, "detections": records, "errors": errors}, f)
    return {"result_file": result_file, "images": len(images), "detections": len(records),
            "errors": errors}
