"""COCO AP of a model on a dataset: what ``mrcnn evaluate`` and the AP-every-epoch callback do.

``evaluate_dataset(model, dataset)`` runs an inference ``MaskRCNN`` over a dataset's images
and scores boxes and masks with pycocotools (``mrcnn.coco_eval``); ground truth comes from
``load_mask`` (crowds as negative class ids), so every dataset works, not only COCO files.
``source_ids`` turns results into a COCO file's own image and category ids;
``draw_detections`` draws masks and boxes with NumPy. No Keras import here: the command
line builds its parser from ``COLUMNS`` before any model is needed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from typing import Any, Sequence

import numpy as np

from mrcnn import coco_eval
from mrcnn.dataset import check_mask
from mrcnn.progress import track

# The numbers logged per IoU type ("segm_AP", "bbox_AR100", ...).
METRICS = ("AP", "AP50", "AP75", "AR100")
IOU_TYPES = ("segm", "bbox")
COLUMNS = tuple(f"{t}_{m}" for t in IOU_TYPES for m in METRICS)
RESULTS_FILE = "results.csv"


def evaluate_dataset(model: Any, dataset: Any, image_ids: Sequence[int] | None = None,
                     iou_types: Sequence[str] = IOU_TYPES, verbose: int = 1,
                     label: str = "evaluate", max_dets: int = 100) -> dict[str, Any]:
    """COCO AP of an inference model on a prepared dataset (pycocotools).

    Args:
        model: an inference ``MaskRCNN``.
        dataset: a prepared ``Dataset``.
        image_ids: the internal image ids to use (default: all).
        iou_types: "segm" and/or "bbox".
        verbose: 1 shows a progress line; 2 also prints COCOeval's tables.
        label: the progress line's label.
        max_dets: detections per image that count (see ``coco_eval.evaluate``).

    Returns:
        {iou_type: ``coco_eval.evaluate_results`` output (without the COCOeval object)},
        plus "results": the COCO result dicts (internal image and class ids) and
        "image_ids".
    """
    from pycocotools.coco import COCO

    image_ids = [int(i) for i in (dataset.image_ids if image_ids is None else image_ids)]
    images, annotations, results = [], [], []
    for image_id in track(image_ids, label=label, unit="img", verbose=verbose):
        image = dataset.load_image(image_id)
        masks, class_ids = check_mask(*dataset.load_mask(image_id), image_id, image.shape,
                                      dataset.num_classes)
        # Encoded image by image (build_coco_gt), so no more than one image's masks are held.
        gt = coco_eval.build_coco_gt([{"image_id": image_id, "height": image.shape[0],
                                       "width": image.shape[1], "class_ids": class_ids,
                                       "masks": masks}], dataset.class_names)
        images.extend(gt.dataset["images"])
        for ann in gt.dataset["annotations"]:
            annotations.append({**ann, "id": len(annotations) + 1})
        r = model.detect([image], verbose=0)[0]
        results.extend(coco_eval.build_coco_results([{**r, "image_id": image_id}]))
    coco_gt = COCO()
    coco_gt.dataset = {"images": images, "annotations": annotations,
                       "categories": [{"id": i, "name": str(n)}
                                      for i, n in enumerate(dataset.class_names) if i > 0]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
    out: dict[str, Any] = {"results": results, "image_ids": image_ids}
    for iou_type in iou_types:
        scores = coco_eval.evaluate_results(coco_gt, results, iou_type, image_ids,
                                            verbose=verbose > 1, max_dets=max_dets)
        scores.pop("cocoeval")
        out[iou_type] = scores
    return out


def summary_row(scores: dict[str, Any]) -> dict[str, float]:
    """The ``COLUMNS`` of an ``evaluate_dataset`` result: {"segm_AP": ..., ...}."""
    return {f"{t}_{m}": float(scores[t][m]) for t in IOU_TYPES if t in scores
            for m in METRICS}


def _coco_sources(dataset: Any) -> set[str]:
    return {"coco"} | set(getattr(dataset, "_coco_sources", ()))


def source_image_id(dataset: Any, image_id: int) -> int:
    """The id of an image in results: a COCO file's own id, else the internal id."""
    info = dataset.image_info[image_id]
    return int(info["id"]) if info["source"] in _coco_sources(dataset) else int(image_id)


def source_category_id(dataset: Any, class_id: int) -> int:
    """The category id of a class in results: a COCO file's own id, else the internal id."""
    info = dataset.class_info[class_id]
    return int(info["id"]) if info["source"] in _coco_sources(dataset) else int(class_id)


def source_ids(results: Sequence[dict], dataset: Any) -> list[dict]:
    """COCO result dicts (internal ids) with the dataset's own ids (``source_image_id``,
    ``source_category_id``), as its annotation file knows them."""
    return [{**r, "image_id": source_image_id(dataset, r["image_id"]),
             "category_id": source_category_id(dataset, r["category_id"])} for r in results]


def draw_detections(image: np.ndarray, result: dict[str, np.ndarray]) -> np.ndarray:
    """The image with each detection's mask tinted and its box outlined (uint8 RGB).

    Drawn with NumPy (no matplotlib figure), cheap enough to log every few epochs.
    """
    from mrcnn import visualize

    out = np.asarray(image, dtype=np.uint8).copy()
    masks = np.asarray(result["masks"])
    count = masks.shape[-1] if masks.ndim == 3 else 0
    colors = visualize.random_colors(count) if count else []
    for k in range(count):
        out = visualize.apply_mask(out, masks[..., k], colors[k], alpha=0.5)
        visualize.draw_box(out, result["rois"][k], tuple(int(255 * c) for c in colors[k]))
    return out


def summary_writer(log_dir: str):
    """A ``tf.summary`` file writer for ``log_dir``, or None without TensorFlow/TensorBoard."""
    if importlib.util.find_spec("tensorboard") is None:
        return None
    try:
        import tensorflow as tf
    except ImportError:
        return None
    return tf.summary.create_file_writer(log_dir)
