"""Detect over image files (and videos): pictures, COCO results, instance-mask PNGs.

What ``mrcnn predict`` and every sample's ``detect --images DIR`` do, as library API so a
project copied from a sample keeps it::

    paths = predict.list_images("photos/")            # or "photos/*.jpg"
    summary = predict.detect_images(model, paths, class_names, "out/")

writes ``out/detect_<image name>.png`` (the detections drawn) for each image,
``out/results.json``: one record per detection in COCO's result format, ready for
``COCO.loadRes`` (``image_id``, ``category_id``, ``bbox`` as ``[x, y, width, height]``
pixels, ``score``, ``segmentation`` as compressed RLE), and ``out/detections.json``: the
same records with the file and class name, the images with their ids and sizes, and the
files that could not be read (warned and skipped). Image ids are given (a COCO dataset's
own) or 1, 2, ... in input order; ``instance_masks=True`` also writes
``out/masks/<image name>.png``: 0 for the background, k for the k-th detection of the image.
A video (read by OpenCV) counts one image per frame (``<video>#<frame>``) and is written
back with its detections drawn.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Iterator, Sequence

import numpy as np

from mrcnn.dataset import load_image_file
from mrcnn.paths import claim
from mrcnn.progress import track

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg")
RESULT_FILE = "detections.json"
COCO_RESULT_FILE = "results.json"


def list_images(pattern: str) -> list[str]:
    """Image files of a folder (non-recursive) or a glob pattern, sorted.

    Args:
        pattern: a folder, or a glob such as ``"data/*.jpg"`` or ``"data/**/*.png"``.

    Returns:
        Sorted paths with an image extension (``IMAGE_EXTENSIONS``, any case).

    Raises:
        FileNotFoundError: nothing matched; the message names the pattern.
    """
    paths = _matching(pattern, IMAGE_EXTENSIONS)
    if not paths:
        raise FileNotFoundError(f"--images {pattern}: no image files there (looked for "
                                f"{', '.join(IMAGE_EXTENSIONS)})")
    return paths


def _matching(pattern: str, extensions: Sequence[str]) -> list[str]:
    if os.path.isdir(pattern):
        candidates = [os.path.join(pattern, name) for name in os.listdir(pattern)]
    else:
        candidates = glob.glob(pattern, recursive=True)
    return sorted(p for p in candidates
                  if os.path.isfile(p) and p.lower().endswith(tuple(extensions)))


def list_sources(sources: Sequence[str]) -> list[str]:
    """The inputs of ``mrcnn predict``: files as given, folders and globs expanded.

    Args:
        sources: image or video files, folders, glob patterns.

    Returns:
        The paths, in the order given (each folder or glob sorted). A file named
        explicitly is kept whatever its extension (it is reported if unreadable).

    Raises:
        FileNotFoundError: a source matches nothing (naming it).
    """
    out: list[str] = []
    for source in sources:
        if os.path.isfile(source):
            out.append(source)
            continue
        found = _matching(source, IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
        if not found:
            raise FileNotFoundError(f"{source}: no image or video files there")
        out.extend(found)
    return out


def detection_records(file_name: str, result: dict[str, np.ndarray],
                      class_names: Sequence[str], image_id: int | None = None,
                      category_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """One image's ``detect()`` result as JSON-ready COCO result records.

    Args:
        file_name: the image's file name, stored in each record.
        result: a dict of ``MaskRCNN.detect`` (rois, class_ids, scores, masks).
        class_names: names by class id (``dataset.class_names``).
        image_id: the image's id in the records (``COCO.loadRes`` needs one).
        category_ids: category id per class id (default: the class id itself).

    Returns:
        One dict per detection: image_id, category_id, file_name, class_id, class_name,
        score, bbox ``[x, y, w, h]`` and segmentation (compressed RLE, str counts).
    """
    from mrcnn.coco_eval import masks_to_rle

    rles = masks_to_rle(result["masks"])
    records = []
    for (y1, x1, y2, x2), class_id, score, rle in zip(
            np.asarray(result["rois"]).reshape(-1, 4).tolist(), result["class_ids"],
            result["scores"], rles):
        class_id = int(class_id)
        records.append({
            "image_id": image_id,
            "category_id": int(category_ids[class_id]) if category_ids is not None
            else class_id,
            "file_name": file_name,
            "class_id": class_id,
            "class_name": str(class_names[class_id]),
            "score": round(float(score), 5),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "segmentation": rle,
        })
    return records


def read_inputs(paths: Sequence[str]) -> Iterator[tuple[str, np.ndarray | Exception]]:
    """(name, RGB uint8 image) per image file and per video frame; (path, error) for a
    file that cannot be read."""
    for path in paths:
        if path.lower().endswith(VIDEO_EXTENSIONS):
            yield from _video_frames(path)
            continue
        try:
            yield path, load_image_file(path)
        except (OSError, ValueError) as err:  # unreadable file: report it, go on
            yield path, err


def _video_frames(path: str) -> Iterator[tuple[str, np.ndarray | Exception]]:
    import cv2

    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        yield path, OSError(f"OpenCV cannot read video {path}")
        return
    index = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            yield f"{path}#{index}", np.ascontiguousarray(frame[..., ::-1])  # BGR -> RGB
            index += 1
    finally:
        capture.release()
    if index == 0:
        yield path, OSError(f"no frame of video {path} could be decoded")


def instance_label_image(masks: np.ndarray) -> np.ndarray:
    """[H, W, N] masks -> [H, W] labels: 0 background, k + 1 for detection k (the first,
    best-scored, detection wins where masks overlap); uint8, or uint16 above 255."""
    masks = np.asarray(masks, dtype=bool)
    count = masks.shape[-1]
    dtype = np.uint8 if count < 256 else np.uint16
    if count == 0:
        return np.zeros(masks.shape[:2], dtype)
    first = np.argmax(masks, axis=-1)
    return np.where(masks.any(axis=-1), first + 1, 0).astype(dtype)


def detect_images(model: Any, paths: Sequence[str], class_names: Sequence[str],
                  output_dir: str, pictures: bool = True, verbose: int = 1, *,
                  image_ids: dict[str, int] | None = None,
                  category_ids: Sequence[int] | None = None,
                  instance_masks: bool = False) -> dict[str, Any]:
    """Detect on image (and video) files; write pictures and the results to ``output_dir``.

    Args:
        model: an inference ``MaskRCNN`` with weights loaded.
        paths: image files (see ``list_images``) or videos.
        class_names: names by class id.
        output_dir: created if missing. Existing files there are never overwritten: new
            ones get a numbered name.
        pictures: also save ``detect_<name>.png`` with the detections drawn (a video:
            ``detect_<name>.avi``).
        verbose: progress on stderr (``mrcnn.progress``).
        image_ids: image id per path (a COCO dataset's own); default 1, 2, ... in order.
        category_ids: category id per class id in the results (default: the class ids).
        instance_masks: also save ``masks/<name>.png`` label images (``instance_label_image``).

    Returns:
        {"result_file": detections.json, "coco_result_file": results.json, "images": count
        read, "detections": count, "errors": [{"file_name", "error"}]}.
    """
    from mrcnn import visualize

    os.makedirs(output_dir, exist_ok=True)
    records: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    videos: dict[str, Any] = {}
    # Images without a given id are numbered after the given ones (never the same id).
    next_id = max((image_ids or {}).values(), default=0) + 1
    # A video's frame count is not known up front (then no ETA).
    total = None if any(p.lower().endswith(VIDEO_EXTENSIONS) for p in paths) else len(paths)
    for name, image in track(read_inputs(paths), total=total, label="detect", unit="img",
                             verbose=verbose):
        if isinstance(image, Exception):
            errors.append({"file_name": name, "error": f"{type(image).__name__}: {image}"})
            continue
        image_id = (image_ids or {}).get(name)
        if image_id is None:
            image_id, next_id = next_id, next_id + 1
        result = model.detect([image], verbose=0)[0]
        images.append({"id": image_id, "file_name": name, "height": int(image.shape[0]),
                       "width": int(image.shape[1])})
        records.extend(detection_records(name, result, class_names, image_id, category_ids))
        video, _, frame = name.rpartition("#")
        stem = os.path.splitext(os.path.basename(video if frame.isdigit() else name))[0]
        if frame.isdigit() and video in paths:
            if pictures:
                _write_frame(videos, video, output_dir, stem, result, image)
            if instance_masks:
                stem = f"{stem}_{int(frame):06d}"
        elif pictures:
            visualize.save_instances_image(
                claim(os.path.join(output_dir, f"detect_{stem}.png")), image,
                result["rois"], result["masks"], result["class_ids"], class_names,
                result["scores"])
        if instance_masks:
            from PIL import Image

            os.makedirs(os.path.join(output_dir, "masks"), exist_ok=True)
            Image.fromarray(instance_label_image(result["masks"])).save(
                claim(os.path.join(output_dir, "masks", f"{stem}.png")))
    for writer in videos.values():
        writer.release()
    coco_result_file = claim(os.path.join(output_dir, COCO_RESULT_FILE))
    with open(coco_result_file, "w", encoding="utf-8") as f:
        json.dump([{k: r[k] for k in ("image_id", "category_id", "bbox", "score",
                                      "segmentation")} for r in records], f)
    result_file = claim(os.path.join(output_dir, RESULT_FILE))
    with open(result_file, "w", encoding="utf-8") as f:
        json.dump({"images": images, "categories": [
            {"id": int(category_ids[i]) if category_ids is not None else i, "name": str(n)}
            for i, n in enumerate(class_names) if i > 0],
            "detections": records, "errors": errors}, f)
    return {"result_file": result_file, "coco_result_file": coco_result_file,
            "images": len(images), "detections": len(records), "errors": errors}


def _write_frame(videos: dict, video: str, output_dir: str, stem: str, result: dict,
                 image: np.ndarray) -> None:
    """Append a frame with its detections drawn to ``detect_<stem>.avi`` (Motion-JPEG)."""
    import cv2

    from mrcnn.evaluation import draw_detections

    if video not in videos:
        capture = cv2.VideoCapture(video)
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        capture.release()
        path = claim(os.path.join(output_dir, f"detect_{stem}.avi"))
        videos[video] = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"),
                                        fps if np.isfinite(fps) and fps > 0 else 25.0,
                                        (image.shape[1], image.shape[0]))
    videos[video].write(np.ascontiguousarray(draw_detections(image, result)[..., ::-1]))

