"""COCO-style evaluation of mrcnn detections through pycocotools.

Ground truth and detections are given as plain Python/NumPy structures (the ones
``Dataset.load_mask`` and ``MaskRCNN.detect`` produce); the COCO objects are built in
memory, so no annotation JSON is needed. Typical use::

    gt_list, det_list = [], []
    for image_id in dataset.image_ids:
        image, _, gt_class_ids, gt_boxes, gt_masks = modellib.load_image_gt(dataset, config, image_id)
        r = model.detect([image])[0]
        gt_list.append(dict(image_id=int(image_id), height=image.shape[0], width=image.shape[1],
                            boxes=gt_boxes, class_ids=gt_class_ids, masks=gt_masks))
        det_list.append(dict(image_id=int(image_id), **r))
    results = coco_eval.evaluate(gt_list, det_list, iou_type="segm",
                                 class_names=dataset.class_names)

Boxes are ``(y1, x1, y2, x2)`` pixels with exclusive ``y2``/``x2`` (``utils.extract_bboxes``);
they become COCO ``[x, y, width, height]``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STAT_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)


def masks_to_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """Encode instance masks as COCO compressed RLE.

    Args:
        masks: [height, width, N] masks (non-zero = foreground).

    Returns:
        N dicts ``{"size": [h, w], "counts": str}``; ``counts`` is decoded to ``str`` so the
        result can be written to JSON (pycocotools accepts str and bytes).
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks_to_rle expects [H, W, N] masks, got shape {masks.shape}")
    if masks.shape[-1] == 0:
        return []
    # pycocotools' encoder needs a Fortran-ordered uint8 [H, W, N] array.
    rles = mask_utils.encode(np.asfortranarray(masks != 0, dtype=np.uint8))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def rle_to_masks(rles: Sequence[Any], height: int, width: int) -> np.ndarray:
    """Decode COCO segmentations to a bool [height, width, N] mask array.

    Args:
        rles: N segmentations, each a compressed RLE (str or bytes counts), an
            uncompressed RLE (list counts) or a list of polygons.
        height: image height.
        width: image width.

    Returns:
        bool [height, width, N]; N == 0 gives an empty [height, width, 0] array.
    """
    height, width = int(height), int(width)
    if len(rles) == 0:
        return np.zeros((height, width, 0), dtype=bool)
    compressed = []
    for segm in rles:
        if isinstance(segm, list):  # polygons
            segm = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
        elif isinstance(segm.get("counts"), list):  # uncompressed RLE
            segm = mask_utils.frPyObjects(segm, height, width)
        compressed.append(segm)
    with warnings.catch_warnings():
        # pycocotools 2.0.x's decoder trips NumPy 2's __array__(copy=...) deprecation.
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(compressed).astype(bool)


def _xywh(boxes: np.ndarray) -> np.ndarray:
    """(y1, x1, y2, x2) exclusive-end pixel boxes -> COCO (x, y, w, h)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack(
        [boxes[:, 1], boxes[:, 0], boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], axis=1
    )


def _silent(fn, *args, **kwargs):
    """Call a pycocotools function without its progress prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def _checked_masks(masks, count: int, caller: str, image_id) -> np.ndarray | None:
    """``masks`` as an array [H, W, count], or None; ValueError naming the image otherwise."""
    if masks is None:
        return None
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[-1] != count:
        raise ValueError(f"{caller}: image {image_id}: masks shape {masks.shape} does not "
                         f"match {count} instances")
    return masks


def build_coco_gt(gt_list: Sequence[dict], class_names: Sequence[str] | None = None) -> COCO:
    """Build an in-memory ``pycocotools.coco.COCO`` ground-truth object.

    Args:
        gt_list: one dict per image with keys ``image_id`` (int), ``height``, ``width``,
            ``boxes`` [N, (y1, x1, y2, x2)] (may be omitted when ``masks`` is given),
            ``class_ids`` [N] and optionally ``masks`` bool [H, W, N] and ``iscrowd`` [N].
            A negative class id marks a crowd instance of class ``abs(id)`` (Matterport's
            COCO loader convention); ``iscrowd`` marks crowd instances explicitly.
        class_names: names indexed by class id (e.g. ``dataset.class_names``; index 0 is
            background and is skipped). When given, every class 1..len-1 becomes a COCO
            category; otherwise the categories are the class ids present in ``gt_list``.

    Returns:
        A COCO object. Annotation ids start at 1 (COCOeval treats id 0 as "unmatched").
        ``area`` is the mask area when masks are given, else the box area.
    """
    images, annotations = [], []
    seen_classes: set[int] = set()
    seen_images: set[int] = set()
    for gt in gt_list:
        image_id = _as_int_id(gt["image_id"])
        if image_id in seen_images:
            raise ValueError(f"build_coco_gt: image_id {image_id} appears twice")
        seen_images.add(image_id)
        height, width = int(gt["height"]), int(gt["width"])
        images.append({"id": image_id, "height": height, "width": width})
        class_ids = np.asarray(gt["class_ids"]).reshape(-1).astype(np.int64)
        masks = _checked_masks(gt.get("masks"), len(class_ids), "build_coco_gt", image_id)
        boxes = gt.get("boxes")
        if boxes is None:
            if masks is None:
                raise ValueError(f"build_coco_gt: image {image_id} has neither boxes nor masks")
            from mrcnn.utils import extract_bboxes

            boxes = extract_bboxes(masks)
        bboxes = _xywh(boxes)
        if len(bboxes) != len(class_ids):
            raise ValueError(
                f"build_coco_gt: image {image_id}: {len(bboxes)} boxes but "
                f"{len(class_ids)} class_ids"
            )
        iscrowd = gt.get("iscrowd")
        iscrowd = (
            np.zeros(len(class_ids), bool) if iscrowd is None
            else np.asarray(iscrowd).reshape(-1).astype(bool)
        )
        iscrowd = iscrowd | (class_ids < 0)
        rles = masks_to_rle(masks) if masks is not None else None
        for i, class_id in enumerate(class_ids):
            category = int(abs(class_id))
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category,
                "bbox": [float(v) for v in bboxes[i]],
                "iscrowd": int(iscrowd[i]),
            }
            if rles is not None:
                ann["segmentation"] = rles[i]
                ann["area"] = float(mask_utils.area(rles[i]))
            else:
                ann["area"] = float(bboxes[i, 2] * bboxes[i, 3])
            annotations.append(ann)
            seen_classes.add(category)

    if class_names is not None:
        categories = [{"id": i, "name": str(n)} for i, n in enumerate(class_names) if i > 0]
        unknown = seen_classes - {c["id"] for c in categories}
        if unknown:
            raise ValueError(
                f"build_coco_gt: class ids {sorted(unknown)} are not covered by "
                f"{len(class_names)} class_names"
            )
    else:
        categories = [{"id": c, "name": str(c)} for c in sorted(seen_classes)]

    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    _silent(coco.createIndex)
    return coco


def build_coco_results(det_list: Sequence[dict]) -> list[dict[str, Any]]:
    """Convert detections to COCO result dicts.

    Args:
        det_list: one dict per image with keys ``image_id`` (int), ``rois``
            [N, (y1, x1, y2, x2)], ``class_ids`` [N], ``scores`` [N] and optionally
            ``masks`` bool [H, W, N] (the output of ``MaskRCNN.detect`` plus the id).

    Returns:
        A list of ``{"image_id", "category_id", "bbox" (xywh), "score"[, "segmentation"]}``
        dicts with plain Python values (JSON-serialisable).
    """
    results = []
    for det in det_list:
        image_id = _as_int_id(det["image_id"])
        class_ids = np.asarray(det["class_ids"]).reshape(-1)
        scores = np.asarray(det["scores"]).reshape(-1)
        bboxes = _xywh(det["rois"])
        if not (len(bboxes) == len(class_ids) == len(scores)):
            raise ValueError(
                f"build_coco_results: image {image_id}: {len(bboxes)} rois, "
                f"{len(class_ids)} class_ids and {len(scores)} scores must match"
            )
        masks = _checked_masks(det.get("masks"), len(class_ids), "build_coco_results",
                               image_id)
        rles = masks_to_rle(masks) if masks is not None else None
        for i in range(len(class_ids)):
            res = {
                "image_id": image_id,
                "category_id": int(class_ids[i]),
                "bbox": [float(v) for v in bboxes[i]],
                "score": float(scores[i]),
            }
            if rles is not None:
                res["segmentation"] = rles[i]
            results.append(res)
    return results


def _as_int_id(image_id: Any) -> int:
    try:
        as_int = int(image_id)
    except (TypeError, ValueError):
        as_int = None
    if as_int is None or as_int != image_id:
        raise ValueError(
            f"COCO image ids must be integers, got {image_id!r}; use the dataset's internal "
            "image id (or call evaluate(), which maps other ids for you)"
        )
    return as_int


def _map_image_ids(gt_list: Sequence[dict], det_list: Sequence[dict]):
    """Replace non-integer image ids by 1..M (in gt order) in copies of both lists."""
    ids = [gt["image_id"] for gt in gt_list]
    if all(isinstance(i, (int, np.integer)) for i in ids):
        return gt_list, det_list
    mapping = {i: k + 1 for k, i in enumerate(ids)}
    gt_list = [{**gt, "image_id": mapping[gt["image_id"]]} for gt in gt_list]
    new_dets = []
    for det in det_list:
        if det["image_id"] not in mapping:
            raise ValueError(f"evaluate: detections for unknown image_id {det['image_id']!r}")
        new_dets.append({**det, "image_id": mapping[det["image_id"]]})
    return gt_list, new_dets


def load_results(coco_gt: COCO, results: Sequence[dict], iou_type: str) -> COCO:
    """A COCO result set for ``results``, also when there is none.

    pycocotools' ``loadRes`` indexes the first result, so it fails on an empty list (an
    untrained model, or a threshold that removes everything). An empty result set is then
    built directly; COCOeval scores it 0 where ground truth exists and -1 where it has
    nothing to measure.

    Args:
        coco_gt: the ground truth.
        results: COCO result dicts (image_id, category_id, score, bbox and/or
            segmentation). They are copied: ``loadRes`` adds fields to the dicts it gets.
        iou_type: "bbox" drops the masks (box AP does not need them, and decoding their
            RLEs is slow); "segm" keeps them.

    Returns:
        A ``COCO`` object usable as ``COCOeval``'s detections.
    """
    if iou_type == "bbox":
        results = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    if results:
        return _silent(coco_gt.loadRes, copy.deepcopy(list(results)))
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "annotations": [],
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
    }
    _silent(coco_dt.createIndex)
    return coco_dt


def evaluate(
    gt_list: Sequence[dict],
    det_list: Sequence[dict],
    iou_type: str = "bbox",
    class_names: Sequence[str] | None = None,
    verbose: bool = True,
    max_dets: int = 100,
) -> dict[str, Any]:
    """Run COCOeval on mrcnn ground truth and detections.

    Args:
        gt_list: ground truth per image, see ``build_coco_gt``.
        det_list: detections per image, see ``build_coco_results``. Images may be missing
            (no detections); every image must appear in ``gt_list``.
        iou_type: "bbox" or "segm" ("segm" needs ``masks`` in both lists; checked, with
            ``max_dets``, by ``evaluate_results``).
        class_names: see ``build_coco_gt``.
        verbose: print the standard COCOeval summary table.
        max_dets: detections per image that count (COCO's 100). Dense scenes (nuclei,
            cells, crowds) have more objects than that, and AP with 100 caps their recall:
            set it above the largest instance count. AP and AP50 then count up to
            ``max_dets`` detections; ``AR_max`` is the recall at ``max_dets`` (COCOeval's
            own ``AR100`` stays at 100 detections, -1 when 100 is not evaluated), averaged
            over IoU .50:.95, and ``recall50`` the recall at IoU 0.5 and ``max_dets``.

    Returns:
        A dict with ``stats`` (float array of the 12 COCOeval stats), the same values under
        their names (``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AR1``,
        ``AR10``, ``AR100``, ``ARs``, ``ARm``, ``ARl``), ``per_class_ap`` and
        ``per_class_ap50`` ({class_id: AP}; AP@[.5:.95] resp. AP@.5, area "all",
        100 detections; NaN for a class without ground truth) and ``cocoeval`` (the
        ``COCOeval`` object, for further analysis).

        With no detections at all (see ``load_results``), AP/AR are 0 where ground truth
        exists and -1 where COCOeval has nothing to measure (e.g. an area range with no
        ground truth), exactly as COCOeval reports them.
    """
    if not gt_list:
        raise ValueError("evaluate: gt_list is empty")
    if iou_type == "segm":
        for kind, items in (("gt_list", gt_list), ("det_list", det_list)):
            for item in items:
                if item.get("masks") is None:
                    raise ValueError(
                        f"evaluate(iou_type='segm'): {kind} entry for image "
                        f"{item['image_id']!r} has no 'masks'"
                    )
    gt_list, det_list = _map_image_ids(gt_list, det_list)
    coco_gt = build_coco_gt(gt_list, class_names)
    unknown = {int(d["image_id"]) for d in det_list} - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"evaluate: detections for image ids {sorted(unknown)} not in gt_list")
    return evaluate_results(coco_gt, build_coco_results(det_list), iou_type, verbose=verbose,
                            max_dets=max_dets)


def _defined_mean(values: np.ndarray, undefined: float) -> float:
    """Mean of COCOeval's entries that are defined (-1 marks "nothing to measure", e.g. no
    ground truth for a class); ``undefined`` when none is."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else undefined


def evaluate_results(
    coco_gt: COCO,
    results: Sequence[dict],
    iou_type: str = "bbox",
    image_ids: Sequence[int] | None = None,
    verbose: bool = True,
    max_dets: int = 100,
) -> dict[str, Any]:
    """Run COCOeval on COCO result dicts against a ``COCO`` ground truth.

    What ``evaluate`` does after building both sides; call it directly with an official
    annotation file (``COCO(path)``: crowd regions and areas as the file has them) and
    results collected image by image with ``build_coco_results`` (masks RLE-encoded as
    they come, so a large evaluation never holds every mask at once).

    Args:
        coco_gt: the ground truth.
        results: ``{"image_id", "category_id", "bbox", "score"[, "segmentation"]}`` dicts
            whose ids are ``coco_gt``'s image and category ids.
        iou_type: "bbox" or "segm".
        image_ids: the images to evaluate (default: all of ``coco_gt``'s); images without
            results count as images where nothing was found.
        verbose, max_dets: see ``evaluate``.

    Returns:
        See ``evaluate``.
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if int(max_dets) < 1:
        raise ValueError(f"evaluate: max_dets must be >= 1, got {max_dets}")
    coco_dt = load_results(coco_gt, results, iou_type)
    cocoeval = COCOeval(coco_gt, coco_dt, iou_type)
    if image_ids is not None:
        cocoeval.params.imgIds = [int(i) for i in image_ids]
    cocoeval.params.maxDets = [1, 10, int(max_dets)]
    _silent(cocoeval.evaluate)
    _silent(cocoeval.accumulate)
    if verbose:
        print(f"COCO evaluation, iou_type={iou_type!r}, {len(cocoeval.params.imgIds)} images, "
              f"{len(results)} detections")
        cocoeval.summarize()
    else:
        _silent(cocoeval.summarize)

    stats = np.asarray(cocoeval.stats, dtype=np.float64)
    if int(max_dets) != 100:
        # COCOeval's summary computes AP@[.5:.95] at a hard-coded 100 detections (-1 when
        # 100 is not evaluated); recompute it at max_dets like its other AP stats.
        stats[0] = _defined_mean(cocoeval.eval["precision"][:, :, :, 0, -1], -1.0)
        if verbose:
            print(f"AP @[ IoU=0.50:0.95 | area=   all | maxDets={int(max_dets)} ] = "
                  f"{stats[0]:.3f} (the first line above is at 100 detections)")
    out: dict[str, Any] = {"stats": stats}
    out.update({name: float(v) for name, v in zip(STAT_NAMES, stats)})

    # precision: [T iou thresholds, R recall points, K classes, A area ranges, M max dets]
    precision = cocoeval.eval["precision"]
    iou_thrs = cocoeval.params.iouThrs
    t50 = int(np.argmin(np.abs(iou_thrs - 0.5)))
    per_class, per_class50 = {}, {}
    for k, cat_id in enumerate(cocoeval.params.catIds):
        per_class[int(cat_id)] = _defined_mean(precision[:, :, k, 0, -1], float("nan"))
        per_class50[int(cat_id)] = _defined_mean(precision[t50, :, k, 0, -1], float("nan"))
    # recall: [T, K, A, M]. Average recall at the largest maxDets (area "all"), whatever
    # its value, over IoU .50:.95; and at IoU 0.5 alone: the share of objects that some
    # kept detection covers, what DETECTION_MAX_INSTANCES and NMS settings cap.
    recall = cocoeval.eval["recall"]
    out["AR_max"] = _defined_mean(recall[:, :, 0, -1], -1.0)
    out["recall50"] = _defined_mean(recall[t50, :, 0, -1], -1.0)
    out["per_class_ap"] = per_class
    out["per_class_ap50"] = per_class50
    out["cocoeval"] = cocoeval
    return out
