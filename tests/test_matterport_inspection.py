"""Matterport's inspection notebooks (inspect_model, inspect_balloon_model,
inspect_nucleus_model) run on mrcnn with their own calls.

The RPN walk-through fetches the proposal layer's inner tensors with ``model.ancestor``
and ``run_graph``; they are checked against a NumPy recomputation from the RPN outputs and
against the layer's own output. The evaluation flow (``load_image_gt`` + ``detect_molded``
+ ``utils.compute_ap_range``) relies on ``detect_molded`` answering in the molded image's
coordinates: a model forced to detect exactly the ground-truth box gets AP > 0 there, and
the same detection in original-image coordinates (what ``detect`` gives) misses it.
"""

from __future__ import annotations

import re

import keras
import matplotlib.pyplot as plt
import numpy as np
import pytest

import mrcnn.model as modellib
from mrcnn import utils, visualize
from tests.test_data import ToyDataset
from tests.tiny import TinyFastConfig, force_detections, shapes_dataset


class InspectConfig(TinyFastConfig):
    NAME = "inspect"
    # A low NMS threshold, so that NMS drops proposals and its indices are not 0..n-1.
    RPN_NMS_THRESHOLD = 0.3


def get_ax(rows=1, cols=1, size=4):
    """Matterport's notebook helper."""
    _, ax = plt.subplots(rows, cols, figsize=(size * cols, size * rows))
    return ax


def inference_model(tmp_path, config=None) -> modellib.MaskRCNN:
    keras.utils.set_random_seed(0)
    return modellib.MaskRCNN("inference", config or InspectConfig(), str(tmp_path))


@pytest.fixture(scope="module")
def rpn_model(tmp_path_factory):
    """An inference model whose RPN regresses (its box head starts at zero deltas)."""
    model = inference_model(tmp_path_factory.mktemp("logs"))
    bbox = model.keras_model.get_layer("rpn_model").get_layer("rpn_bbox_pred")
    kernel, bias = bbox.get_weights()
    rng = np.random.default_rng(0)
    bbox.set_weights([rng.normal(0, 0.05, kernel.shape).astype(np.float32), bias])
    return model


def rpn_walkthrough(model, images):
    """Matterport's "1.b RPN Predictions" cell, verbatim (plus rpn_bbox for the checks)."""
    pillar = model.keras_model.get_layer("ROI").output  # node to start searching from
    # TF 1.4 and 1.9 introduce new versions of NMS. Search for all names to support TF 1.3~1.10
    nms_node = model.ancestor(pillar, "ROI/rpn_non_max_suppression:0")
    if nms_node is None:
        nms_node = model.ancestor(pillar, "ROI/rpn_non_max_suppression/NonMaxSuppressionV2:0")
    if nms_node is None:  # TF 1.9-1.10
        nms_node = model.ancestor(pillar, "ROI/rpn_non_max_suppression/NonMaxSuppressionV3:0")
    return model.run_graph(images, [
        ("rpn_class", model.keras_model.get_layer("rpn_class").output),
        ("rpn_bbox", model.keras_model.get_layer("rpn_bbox").output),
        ("pre_nms_anchors", model.ancestor(pillar, "ROI/pre_nms_anchors:0")),
        ("refined_anchors", model.ancestor(pillar, "ROI/refined_anchors:0")),
        ("refined_anchors_clipped", model.ancestor(pillar, "ROI/refined_anchors_clipped:0")),
        ("post_nms_anchor_ix", nms_node),
        ("proposals", model.keras_model.get_layer("ROI").output),
    ])


def test_rpn_walkthrough_with_ancestor(rpn_model):
    model, config = rpn_model, rpn_model.config
    dataset = shapes_dataset(2)
    image, image_meta, gt_class_id, gt_bbox, gt_mask = modellib.load_image_gt(
        dataset, config, 0, use_mini_mask=False)
    rpn = rpn_walkthrough(model, [image])

    anchors = model.get_anchors(image.shape)  # normalized; model.anchors: pixels
    k = min(config.PRE_NMS_LIMIT, len(anchors))
    assert rpn["rpn_class"].shape == (1, len(anchors), 2)
    for name in ["pre_nms_anchors", "refined_anchors", "refined_anchors_clipped"]:
        assert rpn[name].shape == (1, k, 4), name
    ixs = rpn["post_nms_anchor_ix"]
    assert ixs.ndim == 1 and 0 < len(ixs) <= config.POST_NMS_ROIS_INFERENCE
    assert np.issubdtype(ixs.dtype, np.integer) and len(np.unique(ixs)) == len(ixs)

    # NumPy recomputation of the steps from the RPN outputs (Matterport's ProposalLayer).
    scores = rpn["rpn_class"][0, :, 1]
    order = np.argsort(-scores, kind="stable")[:k]
    np.testing.assert_array_equal(rpn["pre_nms_anchors"][0], anchors[order])
    refined = utils.apply_box_deltas(anchors[order],
                                     rpn["rpn_bbox"][0, order] * config.RPN_BBOX_STD_DEV)
    np.testing.assert_allclose(rpn["refined_anchors"][0], refined, atol=1e-5)
    assert not np.allclose(refined, anchors[order], atol=1e-3)  # the deltas moved them
    clipped = rpn["refined_anchors_clipped"][0]
    np.testing.assert_array_equal(clipped, np.clip(rpn["refined_anchors"][0], 0.0, 1.0))
    assert (rpn["refined_anchors"][0] != clipped).any()  # clipping mattered
    keep = utils.non_max_suppression(clipped, scores[order], config.RPN_NMS_THRESHOLD)
    np.testing.assert_array_equal(ixs, keep[:config.POST_NMS_ROIS_INFERENCE])
    assert not np.array_equal(ixs, np.arange(len(ixs)))  # NMS dropped some boxes

    # The layer's output: the kept clipped boxes, in NMS order, then zero padding.
    proposals = rpn["proposals"][0]
    np.testing.assert_array_equal(proposals[:len(ixs)], clipped[ixs])
    assert not proposals[len(ixs):].any()

    # The notebook's drawing cells, as Matterport wrote them.
    limit = 100
    sorted_anchor_ids = np.argsort(rpn["rpn_class"][:, :, 1].flatten())[::-1]
    visualize.draw_boxes(image, boxes=model.anchors[sorted_anchor_ids[:limit]], ax=get_ax())
    ax = get_ax(1, 2)
    pre_nms_anchors = utils.denorm_boxes(rpn["pre_nms_anchors"][0], image.shape[:2])
    refined_anchors = utils.denorm_boxes(rpn["refined_anchors"][0], image.shape[:2])
    refined_anchors_clipped = utils.denorm_boxes(rpn["refined_anchors_clipped"][0],
                                                 image.shape[:2])
    visualize.draw_boxes(image, boxes=pre_nms_anchors[:limit],
                         refined_boxes=refined_anchors[:limit], ax=ax[0])
    visualize.draw_boxes(image, refined_boxes=refined_anchors_clipped[:limit], ax=ax[1])
    ixs = rpn["post_nms_anchor_ix"][:limit]
    visualize.draw_boxes(image, refined_boxes=refined_anchors_clipped[ixs], ax=get_ax())
    h, w = config.IMAGE_SHAPE[:2]
    proposals = rpn["proposals"][0, :limit] * np.array([h, w, h, w])
    visualize.draw_boxes(image, refined_boxes=proposals, ax=get_ax())
    plt.close("all")


def test_ancestor_names(rpn_model):
    model = rpn_model
    km = model.keras_model
    pillar = km.get_layer("ROI").output
    spellings = ["ROI/rpn_non_max_suppression:0",
                 "ROI/rpn_non_max_suppression/NonMaxSuppressionV2:0",
                 "ROI/rpn_non_max_suppression/NonMaxSuppressionV3:0"]
    handles = [model.ancestor(pillar, name) for name in spellings]
    assert all(h is not None for h in handles)
    # Unknown names, and names of layers that are not upstream of the tensor, give None.
    for tensor, name in [(pillar, "ROI/no_such_tensor:0"),
                         (pillar, "mrcnn_detection/pre_nms_anchors:0"),
                         (pillar, "ROI/rpn_non_max_suppression_1:0"),
                         (km.get_layer("rpn_class").output, "ROI/pre_nms_anchors:0")]:
        assert model.ancestor(tensor, name) is None, name
    # A compiled pattern is used as it is (Matterport's contract); downstream tensors see
    # the ROI layer as an ancestor too.
    assert model.ancestor(pillar, re.compile(r"ROI/refined_anchors_c.*")).name == \
        "ROI/refined_anchors_clipped:0"
    assert model.ancestor(km.get_layer("mrcnn_detection").output,
                          "ROI/refined_anchors:0") is not None
    with pytest.raises(TypeError, match="Keras tensor"):
        model.ancestor(np.zeros(3), "ROI/pre_nms_anchors:0")
    with pytest.raises(ValueError, match="'missing' is None"):
        model.run_graph([np.zeros((64, 64, 3), np.uint8)], [("missing", None)])

    # Two images in one batch: the array steps have both, the NMS indices are image 0's.
    dataset = shapes_dataset(2)
    images = [dataset.load_image(i) for i in (0, 1)]
    out = model.run_graph(images, [
        *[(name, h) for name, h in zip(spellings, handles)],
        ("scores", model.ancestor(pillar, "ROI/top_anchors:0")),
        ("anchor_ix", model.ancestor(pillar, "ROI/top_anchors:1")),
        ("clipped", model.ancestor(pillar, "ROI/refined_anchors_clipped:0")),
        ("rpn_class", "rpn_class"),
        ("proposals", "ROI"),
    ])
    for name in spellings[1:]:
        np.testing.assert_array_equal(out[name], out[spellings[0]])
    alone = model.run_graph(images[1:], [(spellings[0], handles[0])])[spellings[0]]
    for b, ixs in enumerate([out[spellings[0]], alone]):
        scores = out["rpn_class"][b, :, 1]
        np.testing.assert_array_equal(out["scores"][b], scores[out["anchor_ix"][b]])
        assert (np.diff(out["scores"][b]) <= 0).all()
        n = int(np.any(out["proposals"][b] != 0, axis=1).sum())
        assert len(ixs) == n
        np.testing.assert_array_equal(out["proposals"][b, :n], out["clipped"][b][ixs])
    assert not np.array_equal(alone, out[spellings[0]])  # image 1's are not image 0's


def test_rpn_targets_from_model_anchors(tmp_path):
    """Matterport's "1.a RPN Targets" cell on the anchors that detect_molded leaves."""
    model = inference_model(tmp_path)
    config = model.config
    dataset = shapes_dataset(2)
    image, image_meta, gt_class_id, gt_bbox, gt_mask = modellib.load_image_gt(
        dataset, config, 1, use_mini_mask=False)
    model.anchors = None
    model.detect_molded(modellib.mold_image(image, config)[np.newaxis], image_meta[np.newaxis])
    target_rpn_match, target_rpn_bbox = modellib.build_rpn_targets(
        image.shape, model.anchors, gt_class_id, gt_bbox, model.config)
    positive_anchor_ix = np.where(target_rpn_match[:] == 1)[0]
    positive_anchors = model.anchors[positive_anchor_ix]
    refined_anchors = utils.apply_box_deltas(
        positive_anchors,
        target_rpn_bbox[:positive_anchors.shape[0]] * model.config.RPN_BBOX_STD_DEV)
    assert len(positive_anchor_ix) > 0
    # Each refined positive anchor lands on the ground-truth box it overlaps most.
    best = utils.compute_overlaps(positive_anchors, gt_bbox.astype(np.float64)).argmax(axis=1)
    np.testing.assert_allclose(refined_anchors, gt_bbox[best], atol=1e-3)
    visualize.draw_boxes(image, boxes=positive_anchors, refined_boxes=refined_anchors,
                         ax=get_ax())
    plt.close("all")


def one_box_dataset() -> ToyDataset:
    """One 40 x 64 image with one rectangle: square mode pads it with 12 rows on top."""
    dataset = ToyDataset()
    dataset.add_toy_image(40, 64, [{"shape": "rect", "box": (4, 10, 20, 40),
                                    "color": (200, 40, 40)}])
    dataset.prepare()
    return dataset


def detect_box(keras_model, box_px, image_hw) -> None:
    """Make the model detect exactly ``box_px`` (pixels of the molded image).

    The RPN grows every anchor past the image, so the only proposal is the whole image
    [0, 0, 1, 1]; the box head's deltas then move it onto the box (force_detections makes
    it class 1 with a full mask).
    """
    force_detections(keras_model)
    rpn_bbox = keras_model.get_layer("rpn_model").get_layer("rpn_bbox_pred")
    kernel, bias = rpn_bbox.get_weights()
    rpn_bbox.set_weights([np.zeros_like(kernel), np.tile([0, 0, 50, 50], len(bias) // 4)])
    y1, x1, y2, x2 = utils.norm_boxes(np.asarray([box_px], np.float64), image_hw)[0]
    deltas = np.array([(y1 + y2) / 2 - 0.5, (x1 + x2) / 2 - 0.5,
                       np.log(y2 - y1), np.log(x2 - x1)]) / InspectConfig.BBOX_STD_DEV
    fc = keras_model.get_layer("mrcnn_bbox_fc")
    kernel, bias = fc.get_weights()
    fc.set_weights([np.zeros_like(kernel), np.tile(deltas, len(bias) // 4)])


def test_detect_molded_compares_with_load_image_gt(tmp_path):
    """Matterport's evaluation: load_image_gt + detect_molded + compute_ap_range."""
    model = inference_model(tmp_path)
    config = model.config
    dataset = one_box_dataset()
    image, image_meta, gt_class_id, gt_bbox, gt_mask = modellib.load_image_gt(
        dataset, config, 0, use_mini_mask=False)
    assert image.shape[:2] == (64, 64)
    np.testing.assert_array_equal(gt_bbox, [[16, 10, 32, 40]])  # 12 rows of padding above
    detect_box(model.keras_model, gt_bbox[0], image.shape[:2])

    molded_images = np.expand_dims(modellib.mold_image(image, config), 0)
    results = model.detect_molded(molded_images, np.expand_dims(image_meta, 0), verbose=0)
    r = results[0]
    assert r["masks"].shape == gt_mask.shape[:2] + (1,)
    np.testing.assert_allclose(r["rois"], gt_bbox, atol=1)
    ap = utils.compute_ap_range(gt_bbox, gt_class_id, gt_mask, r["rois"], r["class_ids"],
                                r["scores"], r["masks"], verbose=0)
    assert ap > 0.5
    visualize.display_differences(image, gt_bbox, gt_class_id, gt_mask, r["rois"],
                                  r["class_ids"], r["scores"], r["masks"],
                                  dataset.class_names, ax=get_ax(), show_box=False)
    plt.close("all")

    # detect() on the original image finds the same object in original coordinates: the
    # box 12 rows up, which misses the molded ground truth (AP would be 0).
    original = dataset.load_image(0)
    found = model.detect([original])[0]
    np.testing.assert_allclose(found["rois"], [[4, 10, 20, 40]], atol=1)
    assert found["masks"].shape[:2] == original.shape[:2]
    assert utils.compute_overlaps(found["rois"].astype(np.float64),
                                  gt_bbox.astype(np.float64)).max() < 0.5

    with pytest.raises(ValueError, match=r"molded_images \[N, h, w, C\]"):
        model.detect_molded(molded_images[0], image_meta)
