"""metrics.per_image_ap: the shared evaluation loop against compute_ap called by hand."""

from __future__ import annotations

import numpy as np
import pytest

from mrcnn import data, metrics, utils
from tests.tiny import TinyConfig, shapes_dataset


class ReplayModel:
    """Stands in for MaskRCNN.detect: checks the images it gets, returns prepared results."""

    def __init__(self, images, results):
        self.images, self.results, self.calls = list(images), list(results), []

    def detect(self, images, verbose=0):
        self.calls.append(len(images))
        out = []
        for image in images:
            np.testing.assert_array_equal(image, self.images.pop(0))
            out.append(self.results.pop(0))
        return out


def _predictions(class_ids, boxes, masks, rng):
    """Ground truth turned into imperfect detections: one instance dropped, one mask eroded,
    one class changed, random scores."""
    keep = np.arange(len(class_ids))[1:] if len(class_ids) > 1 else np.arange(len(class_ids))
    masks = masks[..., keep].copy()
    class_ids = class_ids[keep].copy()
    if masks.shape[-1]:
        ys, xs = np.nonzero(masks[..., 0])
        masks[ys[: len(ys) // 2], xs[: len(xs) // 2], 0] = False
    if len(class_ids) > 1:
        class_ids[-1] = 1 + class_ids[-1] % 3
    return {"rois": utils.extract_bboxes(masks), "class_ids": class_ids,
            "scores": rng.random(len(class_ids)).astype(np.float32), "masks": masks}


def _reference(truths, results, thresholds):
    return np.array([[metrics.compute_ap(b, c, m, r["rois"], r["class_ids"], r["scores"],
                                         r["masks"], t)[0] for t in thresholds]
                     for (c, b, m), r in zip(truths, results)])


@pytest.mark.parametrize("batch_size", [1, 3])
def test_original_images_match_compute_ap_by_hand(batch_size):
    dataset = shapes_dataset(count=5, size=48, seed=3)
    rng = np.random.default_rng(0)
    ids = [4, 0, 2, 1, 3]
    images, truths, results = [], [], []
    for i in ids:
        masks, class_ids = dataset.load_mask(i)
        boxes = utils.extract_bboxes(masks)
        images.append(dataset.load_image(i))
        truths.append((class_ids, boxes, masks))
        results.append(_predictions(class_ids, boxes, masks, rng))
    thresholds = np.arange(0.5, 1.0, 0.05)
    expected = _reference(truths, results, thresholds)
    model = ReplayModel(images, results)
    aps = metrics.per_image_ap(model, dataset, ids, iou_thresholds=thresholds,
                               batch_size=batch_size)
    np.testing.assert_allclose(aps, expected)
    assert model.calls == ([1] * 5 if batch_size == 1 else [3, 2])
    assert 0 < aps.mean() < 1  # imperfect detections: neither all hits nor all misses
    # A row's mean is compute_ap_range's AP (nucleus reports it that way).
    c, b, m = truths[0]
    r = results[0]
    assert aps[0].mean() == pytest.approx(utils.compute_ap_range(
        b, c, m, r["rois"], r["class_ids"], r["scores"], r["masks"], verbose=0))


def test_config_molds_ground_truth_as_load_image_gt():
    config = TinyConfig()  # 64 px model input; the images are 48 px
    dataset = shapes_dataset(count=3, size=48, seed=5)
    rng = np.random.default_rng(1)
    images, truths, results = [], [], []
    for i in dataset.image_ids:
        image, _, class_ids, boxes, masks = data.load_image_gt(dataset, config, i)
        assert image.shape[:2] == (64, 64)
        images.append(image)
        truths.append((class_ids, boxes, masks))
        results.append(_predictions(class_ids, boxes, masks, rng))
    expected = _reference(truths, results, [0.5, 0.75])
    aps = metrics.per_image_ap(ReplayModel(images, results), dataset, config=config,
                               iou_thresholds=[0.5, 0.75])
    np.testing.assert_allclose(aps, expected)
    assert aps.shape == (3, 2)
