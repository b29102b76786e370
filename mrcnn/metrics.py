"""Detection metrics: matching predictions to ground truth, VOC-style AP, recall, and
the per-image AP loop over a dataset that the samples, notebooks and benchmarks share.

The matching and AP functions follow Matterport's ``utils`` (same names, arguments and
return values; ``mrcnn.utils`` re-exports them). NumPy only; ``per_image_ap`` drives a model
through its ``detect`` method (and, to mold ground truth, the data pipeline's
``load_image_gt``, imported when called).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from mrcnn.dataset import check_mask, describe_image
from mrcnn.utils import compute_overlaps, compute_overlaps_masks, extract_bboxes


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


def per_image_ap(
    model: Any,
    dataset: Any,
    image_ids: Iterable[int] | None = None,
    *,
    config: Any = None,
    iou_thresholds: Sequence[float] = (0.5,),
    batch_size: int = 1,
    verbose: int = 0,
) -> np.ndarray:
    """Mask AP of each image of a dataset: detect, then ``compute_ap`` at each IoU threshold.

    The evaluation loop of Matterport's notebooks and of the samples' ``evaluate`` commands;
    the mAP is the mean over images, e.g. ``per_image_ap(...)[:, 0].mean()``.

    Args:
        model: a ``MaskRCNN`` in inference mode (only ``detect(images, verbose=0)`` is used).
        dataset: a prepared ``Dataset`` with ground-truth masks.
        image_ids: the images to evaluate; default ``dataset.image_ids``.
        config: when given, images and ground truth are first molded to the model's input
            size by ``load_image_gt(dataset, config, image_id)`` (no mini masks), as
            Matterport's notebooks did. When None, detection runs on the images as
            ``load_image`` returns them and is compared with their ``load_mask`` masks.
        iou_thresholds: mask IoUs a detection needs to be a true positive. With
            ``np.arange(0.5, 1.0, 0.05)`` the mean of a row is ``compute_ap_range``'s AP.
        batch_size: images per ``detect`` call (the inference config's BATCH_SIZE).
        verbose: 0 silent, 1 a progress line, 2 one line per image.

    Returns:
        float64 [images, thresholds]: the AP of each image (rows in ``image_ids`` order) at
        each threshold.
    """
    from mrcnn.progress import track

    if config is not None:
        # Imported here: the pipeline (and Keras) is needed only to mold the ground truth.
        from mrcnn.data import load_image_gt
    ids = list(dataset.image_ids if image_ids is None else image_ids)
    thresholds = [float(t) for t in iou_thresholds]
    aps = np.zeros([len(ids), len(thresholds)])
    step = max(int(batch_size), 1)
    for start in track(range(0, len(ids), step), label="evaluate", unit="batch",
                       verbose=int(verbose == 1)):
        batch = ids[start:start + step]
        truths = []
        for image_id in batch:
            if config is not None:
                image, _, class_ids, boxes, masks = load_image_gt(dataset, config, image_id)
            else:
                image = dataset.load_image(image_id)
                masks, class_ids = check_mask(*dataset.load_mask(image_id), image_id,
                                              image.shape,
                                              where=describe_image(dataset, image_id))
                boxes = extract_bboxes(masks)
            truths.append((image, class_ids, boxes, masks))
        results = model.detect([t[0] for t in truths], verbose=0)
        for row, (image_id, (_, class_ids, boxes, masks), r) in enumerate(
                zip(batch, truths, results), start):
            for col, threshold in enumerate(thresholds):
                aps[row, col] = compute_ap(boxes, class_ids, masks, r["rois"], r["class_ids"],
                                           r["scores"], r["masks"], threshold)[0]
            if verbose >= 2:
                print(f"image {image_id:4}: {len(class_ids)} objects, "
                      f"{len(r['class_ids']):3} detections, AP {aps[row, 0]:.3f}")
    return aps
