"""Tests for mrcnn.coco_eval against pycocotools used directly."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn import coco_eval, utils

CLASS_NAMES = ["BG", "cat", "dog", "bird"]  # "bird" never appears in the ground truth


# ----------------------------------------------------------------------------- fixtures


def random_blob(rng, height, width):
    """A random rectangle or ellipse mask, 5..110 px, inside the image."""
    h = int(rng.integers(5, min(110, height)))
    w = int(rng.integers(5, min(110, width)))
    y1 = int(rng.integers(0, height - h + 1))
    x1 = int(rng.integers(0, width - w + 1))
    m = np.zeros((height, width), bool)
    if rng.random() < 0.5:
        m[y1 : y1 + h, x1 : x1 + w] = True
    else:
        yy, xx = np.mgrid[:height, :width]
        cy, cx, ry, rx = y1 + h / 2, x1 + w / 2, h / 2, w / 2
        m = ((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2 <= 1
    return m


def make_case(seed, n_images=5, crowd=True):
    """Random ground truth and imperfect detections (misses, jitter, wrong classes, FPs)."""
    rng = np.random.default_rng(seed)
    gt_list, det_list = [], []
    for image_id in range(1, n_images + 1):
        height, width = int(rng.integers(60, 130)), int(rng.integers(60, 130))
        n = int(rng.integers(1, 5))
        gt_masks = np.stack([random_blob(rng, height, width) for _ in range(n)], axis=-1)
        gt_ids = rng.integers(1, 3, size=n).astype(np.int32)
        if crowd and image_id == 2:
            gt_ids[0] = -gt_ids[0]  # Matterport's crowd marker
        gt_list.append(dict(image_id=image_id, height=height, width=width,
                            boxes=utils.extract_bboxes(gt_masks), class_ids=gt_ids,
                            masks=gt_masks))
        det_masks, det_ids = [], []
        for i in range(n):
            if rng.random() < 0.2:
                continue  # missed
            dy, dx = rng.integers(-4, 5, size=2)
            m = np.roll(gt_masks[..., i], (int(dy), int(dx)), axis=(0, 1))
            if not m.any():
                continue
            det_masks.append(m)
            cid = abs(int(gt_ids[i]))
            det_ids.append(cid if rng.random() < 0.85 else 3 - cid)
        for _ in range(int(rng.integers(0, 3))):  # false positives
            det_masks.append(random_blob(rng, height, width))
            det_ids.append(int(rng.integers(1, 4)))
        det_masks = (np.stack(det_masks, axis=-1) if det_masks
                     else np.zeros((height, width, 0), bool))
        det_list.append(dict(image_id=image_id, rois=utils.extract_bboxes(det_masks),
                             class_ids=np.array(det_ids, np.int32),
                             scores=rng.random(len(det_ids)).astype(np.float32),
                             masks=det_masks))
    return gt_list, det_list


def bbox_xywh(mask):
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()),
            float(ys.max() + 1 - ys.min())]


def rle(mask):
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def write_coco_json(tmp_path, gt_list, det_list):
    """Hand-built COCO files, independent of mrcnn.coco_eval."""
    images, anns, results = [], [], []
    for gt in gt_list:
        images.append({"id": gt["image_id"], "height": gt["height"], "width": gt["width"],
                       "file_name": f"{gt['image_id']}.png"})
        for i, cid in enumerate(gt["class_ids"]):
            m = gt["masks"][..., i]
            anns.append({"id": len(anns) + 1, "image_id": gt["image_id"],
                         "category_id": abs(int(cid)), "iscrowd": int(cid < 0),
                         "bbox": bbox_xywh(m), "area": float(m.sum()),
                         "segmentation": rle(m)})
    for det in det_list:
        for i, cid in enumerate(det["class_ids"]):
            m = det["masks"][..., i]
            results.append({"image_id": det["image_id"], "category_id": int(cid),
                            "bbox": bbox_xywh(m), "score": float(det["scores"][i]),
                            "segmentation": rle(m)})
    categories = [{"id": i, "name": n} for i, n in enumerate(CLASS_NAMES) if i]
    gt_path, res_path = tmp_path / "gt.json", tmp_path / "res.json"
    gt_path.write_text(json.dumps({"images": images, "annotations": anns,
                                   "categories": categories}))
    res_path.write_text(json.dumps(results))
    return str(gt_path), str(res_path)


def run_pycocotools(gt_path, res_path, iou_type, cat_ids=None):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt_path)
        coco_dt = coco_gt.loadRes(res_path)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.array(ev.stats)


# ----------------------------------------------------------------------------- RLE helpers


def test_rle_round_trip_and_polygons():
    gt_list, _ = make_case(0, n_images=1)
    masks = gt_list[0]["masks"]
    rles = coco_eval.masks_to_rle(masks)
    assert len(rles) == masks.shape[-1]
    json.dumps(rles)  # JSON-serialisable
    back = coco_eval.rle_to_masks(rles, masks.shape[0], masks.shape[1])
    assert back.dtype == bool
    np.testing.assert_array_equal(back, masks)
    assert coco_eval.masks_to_rle(np.zeros((4, 5, 0), bool)) == []
    assert coco_eval.rle_to_masks([], 4, 5).shape == (4, 5, 0)
    square = coco_eval.rle_to_masks([[[2, 2, 6, 2, 6, 6, 2, 6]]], 10, 10)[..., 0]
    assert square[3:6, 3:6].all() and not square[8:].any()


# ----------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_perfect_detections_score_one(iou_type):
    gt_list, _ = make_case(1, crowd=False)
    det_list = [dict(image_id=g["image_id"], rois=g["boxes"], class_ids=g["class_ids"],
                     scores=np.linspace(1, 0.5, len(g["class_ids"])), masks=g["masks"])
                for g in gt_list]
    res = coco_eval.evaluate(gt_list, det_list, iou_type, class_names=CLASS_NAMES, verbose=False)
    assert res["AP"] == pytest.approx(1.0)
    assert res["AP50"] == pytest.approx(1.0) and res["AP75"] == pytest.approx(1.0)
    assert res["AR100"] == pytest.approx(1.0)
    present = {int(c) for g in gt_list for c in g["class_ids"]}
    for cid in present:
        assert res["per_class_ap"][cid] == pytest.approx(1.0)
    assert np.isnan(res["per_class_ap"][3])  # "bird": no ground truth
    assert res["stats"].shape == (12,)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_max_dets_lifts_the_recall_cap_of_dense_images(iou_type):
    # 150 disjoint 4x4 squares, all found exactly: with COCO's 100 detections per image
    # only 100 can match (recall 2/3, precision 1 up to there: AP = 67/101 of the 101
    # recall points), with max_dets=200 all do (AP 1).
    masks = np.zeros((60, 100, 150), bool)
    for k in range(150):
        y, x = divmod(k, 15)
        masks[6 * y:6 * y + 4, 6 * x + 4:6 * x + 8, k] = True
    boxes = utils.extract_bboxes(masks)
    ids = np.ones(150, np.int32)
    gt = [dict(image_id=1, height=60, width=100, boxes=boxes, class_ids=ids, masks=masks)]
    det = [dict(image_id=1, rois=boxes, class_ids=ids, scores=np.linspace(1, 0.5, 150),
                masks=masks)]
    capped = coco_eval.evaluate(gt, det, iou_type, verbose=False)
    full = coco_eval.evaluate(gt, det, iou_type, verbose=False, max_dets=200)
    assert capped["AP50"] == pytest.approx(67 / 101)
    assert capped["AR100"] == pytest.approx(100 / 150) == capped["AR_max"]
    assert full["AP50"] == pytest.approx(1.0) and full["AP"] == pytest.approx(1.0)
    assert full["AR_max"] == pytest.approx(1.0)
    assert capped["recall50"] == pytest.approx(100 / 150)
    assert full["recall50"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="max_dets"):
        coco_eval.evaluate(gt, det, iou_type, verbose=False, max_dets=0)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_recall50_counts_objects_covered_at_iou_one_half(iou_type):
    # 20 disjoint 5x5 squares, each detected one pixel to the right (IoU 20/30 = 0.667),
    # 5 more never detected: recall at IoU 0.5 is 20/25; averaged over COCO's IoU
    # thresholds .50:.95 it is 20/25 * 4/10 (0.50, 0.55, 0.60, 0.65 pass).
    gt_masks = np.zeros((60, 100, 25), bool)
    det_masks = np.zeros((60, 100, 20), bool)
    for k in range(25):
        y, x = divmod(k, 10)
        gt_masks[8 * y:8 * y + 5, 8 * x + 2:8 * x + 7, k] = True
        if k < 20:
            det_masks[8 * y:8 * y + 5, 8 * x + 3:8 * x + 8, k] = True
    gt = [dict(image_id=1, height=60, width=100, boxes=utils.extract_bboxes(gt_masks),
               class_ids=np.ones(25, np.int32), masks=gt_masks)]
    det = [dict(image_id=1, rois=utils.extract_bboxes(det_masks),
                class_ids=np.ones(20, np.int32), scores=np.linspace(1, 0.5, 20),
                masks=det_masks)]
    res = coco_eval.evaluate(gt, det, iou_type, verbose=False)
    assert res["recall50"] == pytest.approx(20 / 25)
    assert res["AR_max"] == pytest.approx(20 / 25 * 4 / 10)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("seed", [3, 11])
def test_matches_pycocotools_on_hand_built_json(tmp_path, iou_type, seed):
    gt_list, det_list = make_case(seed)
    gt_path, res_path = write_coco_json(tmp_path, gt_list, det_list)
    expected = run_pycocotools(gt_path, res_path, iou_type)
    res = coco_eval.evaluate(gt_list, det_list, iou_type, class_names=CLASS_NAMES, verbose=False)
    # The case is non-trivial: neither perfect nor empty.
    assert 0.05 < res["AP"] < 0.95
    np.testing.assert_allclose(res["stats"], expected, atol=1e-12)
    for i, name in enumerate(coco_eval.STAT_NAMES):
        assert res[name] == pytest.approx(expected[i], abs=1e-12)
    # Per-class AP, computed independently by restricting COCOeval to one category.
    for cid in (1, 2):
        alone = run_pycocotools(gt_path, res_path, iou_type, cat_ids=[cid])
        assert res["per_class_ap"][cid] == pytest.approx(alone[0], abs=1e-12)
        assert res["per_class_ap50"][cid] == pytest.approx(alone[1], abs=1e-12)
    assert np.isnan(res["per_class_ap"][3])


def test_evaluate_results_on_a_subset_of_images_equals_evaluate_of_that_subset():
    # The samples' path: a COCO ground truth of many images, results for some of them.
    gt_list, det_list = make_case(6)
    keep = [g["image_id"] for g in gt_list[:3]]
    coco_gt = coco_eval.build_coco_gt(gt_list, CLASS_NAMES)
    results = coco_eval.build_coco_results([d for d in det_list if d["image_id"] in keep])
    subset = coco_eval.evaluate_results(coco_gt, results, "segm", image_ids=keep,
                                        verbose=False)
    alone = coco_eval.evaluate([g for g in gt_list if g["image_id"] in keep],
                               [d for d in det_list if d["image_id"] in keep], "segm",
                               class_names=CLASS_NAMES, verbose=False)
    np.testing.assert_allclose(subset["stats"], alone["stats"])
    whole = coco_eval.evaluate_results(coco_gt, results, "segm", verbose=False)
    assert whole["AR100"] < subset["AR100"]  # the other images' objects count as missed


def test_string_image_ids_are_mapped():
    gt_list, det_list = make_case(5)
    names = {g["image_id"]: f"img_{g['image_id']}.jpg" for g in gt_list}
    gt_s = [{**g, "image_id": names[g["image_id"]]} for g in gt_list]
    det_s = [{**d, "image_id": names[d["image_id"]]} for d in det_list]
    a = coco_eval.evaluate(gt_list, det_list, "segm", verbose=False)
    b = coco_eval.evaluate(gt_s, det_s, "segm", verbose=False)
    np.testing.assert_array_equal(a["stats"], b["stats"])


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_empty_detections(iou_type):
    gt_list, _ = make_case(7, crowd=False)
    empty_per_image = [dict(image_id=g["image_id"], rois=np.zeros((0, 4), np.int32),
                            class_ids=np.zeros(0, np.int32), scores=np.zeros(0, np.float32),
                            masks=np.zeros((g["height"], g["width"], 0), bool))
                       for g in gt_list]
    for det_list in ([], empty_per_image):
        res = coco_eval.evaluate(gt_list, det_list, iou_type, class_names=CLASS_NAMES,
                                 verbose=False)
        areas = [m.sum(axis=(0, 1)) for m in (g["masks"] for g in gt_list)]
        areas = np.concatenate(areas)
        has = {"s": (areas < 32**2).any(), "m": ((areas >= 32**2) & (areas < 96**2)).any(),
               "l": (areas >= 96**2).any()}
        assert res["AP"] == 0.0 and res["AP50"] == 0.0 and res["AR100"] == 0.0
        for key, idx in (("s", 3), ("m", 4), ("l", 5)):
            # 0 where ground truth exists in the area range, -1 (COCOeval's "n/a") otherwise.
            assert res["stats"][idx] == (0.0 if has[key] else -1.0)
        assert res["per_class_ap"][1] == 0.0 and np.isnan(res["per_class_ap"][3])


def test_verbose_prints_table(capsys):
    gt_list, det_list = make_case(2)
    coco_eval.evaluate(gt_list, det_list, "bbox", verbose=True)
    out = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in out
    coco_eval.evaluate(gt_list, det_list, "bbox", verbose=False)
    assert capsys.readouterr().out == ""


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools decode
def test_build_coco_gt_contents():
    masks = np.zeros((20, 30, 2), bool)
    masks[2:6, 3:13, 0] = True  # area 40
    masks[10:12, 10:12, 1] = True
    gt = dict(image_id=9, height=20, width=30, boxes=utils.extract_bboxes(masks),
              class_ids=np.array([2, -1]), masks=masks)
    coco = coco_eval.build_coco_gt([gt])
    assert coco.getImgIds() == [9]
    assert coco.getCatIds() == [1, 2]
    a1, a2 = coco.loadAnns(coco.getAnnIds())
    assert a1["id"] == 1 and a1["bbox"] == [3.0, 2.0, 10.0, 4.0] and a1["area"] == 40.0
    assert a1["iscrowd"] == 0 and a1["category_id"] == 2
    assert a2["iscrowd"] == 1 and a2["category_id"] == 1
    np.testing.assert_array_equal(coco.annToMask(a1).astype(bool), masks[..., 0])


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools decode
def test_build_coco_results_contents():
    masks = np.zeros((20, 30, 1), bool)
    masks[2:6, 3:13, 0] = True
    det = dict(image_id=4, rois=np.array([[2, 3, 6, 13]]), class_ids=np.array([1]),
               scores=np.array([0.75], np.float32), masks=masks)
    (r,) = coco_eval.build_coco_results([det])
    assert r["image_id"] == 4 and r["category_id"] == 1 and r["score"] == 0.75
    assert r["bbox"] == [3.0, 2.0, 10.0, 4.0]
    json.dumps(r)
    np.testing.assert_array_equal(mask_utils.decode(r["segmentation"]).astype(bool),
                                  masks[..., 0])


def test_evaluate_input_errors():
    gt_list, det_list = make_case(4)
    with pytest.raises(ValueError, match="iou_type"):
        coco_eval.evaluate(gt_list, det_list, "keypoints", verbose=False)
    with pytest.raises(ValueError, match="not in gt_list"):
        coco_eval.evaluate(gt_list[:1], det_list, "bbox", verbose=False)
    no_masks = [{k: v for k, v in d.items() if k != "masks"} for d in det_list]
    with pytest.raises(ValueError, match="masks"):
        coco_eval.evaluate(gt_list, no_masks, "segm", verbose=False)
