"""samples/coco: CocoDataset on pycocotools, COCO evaluation, and the CLI end to end.

The mini COCO has polygon, uncompressed-RLE and compressed-RLE annotations, one crowd
(RLE, iscrowd=1) per subset and an image without annotations. ``train --tiny`` and
``evaluate --tiny`` run in-process.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from mrcnn import utils
from mrcnn import cli
from samples.coco import coco
from tests import sample_data as sd

# pycocotools' mask.decode under NumPy 2 (its own code, harmless).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return sd.write_coco_dataset(str(tmp_path_factory.mktemp("coco")))


@pytest.fixture(scope="module")
def trained(mini, tmp_path_factory):
    logs = str(tmp_path_factory.mktemp("coco_logs"))
    return sd.train_tiny(coco.main, [
        "train", f"--dataset={mini['root']}", "--year=2017", "--model=none"], logs, "coco")


def load(mini, subset="val", **kwargs):
    dataset = coco.CocoDataset()
    result = dataset.load_coco(mini["root"], subset, year=mini["year"], **kwargs)
    dataset.prepare()
    return dataset, result


def reference_mask(ann, height, width):
    """The annotation's mask through pycocotools' own COCO.annToMask."""
    from pycocotools.coco import COCO

    ground_truth = COCO()
    ground_truth.imgs = {ann["image_id"]: {"height": height, "width": width}}
    return ground_truth.annToMask(ann).astype(bool)


############################################################
#  CocoDataset
############################################################

def test_load_coco_polygons_rle_and_crowds(mini):
    dataset, ground_truth = load(mini, return_coco=True)
    assert ground_truth is not None and len(ground_truth.getImgIds()) == 4
    assert dataset.class_names == ["BG", "person", "car", "dog"]
    # The image without annotations is left out, as in Matterport.
    assert len(dataset.image_ids) == 3
    anns = {a["id"]: a for a in mini["anns"]["val"]}
    crowd_seen = False
    for image_id in dataset.image_ids:
        info = dataset.image_info[image_id]
        masks, class_ids = dataset.load_mask(image_id)
        assert masks.dtype == bool and masks.shape == (info["height"], info["width"],
                                                        len(info["annotations"]))
        for k, ann in enumerate(info["annotations"]):
            ann = anns[ann["id"]]
            internal = dataset.map_source_class_id(f"coco.{ann['category_id']}")
            if ann["iscrowd"]:
                assert class_ids[k] == -internal  # crowds: negative class ids
                crowd_seen = True
            else:
                assert class_ids[k] == internal
            np.testing.assert_array_equal(
                masks[..., k], reference_mask(ann, info["height"], info["width"]))
    assert crowd_seen
    kinds = {type(a["segmentation"]).__name__ + (
        "" if isinstance(a["segmentation"], list) else type(a["segmentation"]["counts"]).__name__)
        for a in anns.values()}
    assert kinds == {"list", "dictlist", "dictstr"}  # polygons, raw RLE, compressed RLE


def test_class_subset(mini):
    dataset, _ = load(mini, class_ids=[18])
    assert dataset.class_names == ["BG", "dog"] and dataset.num_classes == 2
    dogs = [a for a in mini["anns"]["val"] if a["category_id"] == 18]
    assert [dataset.image_info[i]["id"] for i in dataset.image_ids] == \
        sorted({a["image_id"] for a in dogs})
    masks, class_ids = dataset.load_mask(dataset.image_ids[0])
    assert masks.shape[-1] == len(dogs) and (class_ids == 1).all()
    with pytest.raises(cli.InputError, match="99"):
        load(mini, class_ids=[18, 99])


def test_detect_coco_maps_classes_images_and_boxes(mini):
    dataset, _ = load(mini)

    class OneBox:
        """One detection of internal class 3 (COCO category 18) on every image."""

        def detect(self, images, verbose=0):
            masks = np.zeros(images[0].shape[:2] + (1,), bool)
            masks[10:20, 5:15, 0] = True
            return [{"rois": np.array([[10, 5, 20, 15]]), "class_ids": np.array([3]),
                     "scores": np.array([0.75]), "masks": masks}]

    first = dataset.image_ids[0]
    results, coco_ids, _ = coco.detect_coco(OneBox(), dataset, limit=1)
    assert coco_ids == [dataset.image_info[first]["id"]] and len(results) == 1
    r = results[0]
    assert r["image_id"] == coco_ids[0] and r["category_id"] == 18 and r["score"] == 0.75
    assert dataset.get_source_class_id(3, "coco") == 18
    assert r["bbox"] == [5.0, 10.0, 10.0, 10.0]
    from pycocotools import mask as mask_utils

    expected = np.zeros(dataset.load_image(first).shape[:2], bool)
    expected[10:20, 5:15] = True
    np.testing.assert_array_equal(mask_utils.decode(r["segmentation"]).astype(bool), expected)


class PerfectModel:
    """Returns the ground truth (crowds left out) of whichever dataset image it is shown."""

    def __init__(self, dataset):
        self.by_pixels = {}
        for image_id in dataset.image_ids:
            image = dataset.load_image(image_id)
            self.by_pixels[image.tobytes()] = dataset.load_mask(image_id)

    def detect(self, images, verbose=0):
        masks, class_ids = self.by_pixels[images[0].tobytes()]
        keep = class_ids > 0
        masks, class_ids = masks[..., keep], class_ids[keep]
        return [{"rois": utils.extract_bboxes(masks), "class_ids": class_ids,
                 "scores": np.ones(len(class_ids)), "masks": masks}]


@pytest.mark.parametrize("eval_type", ["bbox", "segm"])
def test_evaluate_coco_scores_the_ground_truth_perfectly(mini, eval_type, capsys):
    dataset, ground_truth = load(mini, return_coco=True)
    stats = coco.evaluate_coco(PerfectModel(dataset), dataset, ground_truth, eval_type)
    assert stats.shape == (12,)
    assert stats[0] > 0.95 and stats[1] == pytest.approx(1.0)  # AP, AP50
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all" in capsys.readouterr().out
    limited = coco.evaluate_coco(PerfectModel(dataset), dataset, ground_truth, eval_type,
                                 limit=1)
    assert limited.shape == (12,)


class BlindModel:
    """Finds nothing: what a model fresh from one training step often does."""

    def detect(self, images, verbose=0):
        height, width = images[0].shape[:2]
        return [{"rois": np.zeros((0, 4), np.int32), "class_ids": np.zeros(0, np.int32),
                 "scores": np.zeros(0, np.float32), "masks": np.zeros((height, width, 0), bool)}]


@pytest.mark.parametrize("eval_type", ["bbox", "segm"])
def test_evaluate_coco_without_any_detection_still_runs_cocoeval(mini, eval_type, capsys):
    dataset, ground_truth = load(mini, return_coco=True)
    stats = coco.evaluate_coco(BlindModel(), dataset, ground_truth, eval_type)
    # COCOeval's own answer for an empty result set: 0 where there is ground truth
    # (AP and AR over all areas), -1 only where it has nothing to measure.
    assert stats.shape == (12,)
    assert stats[0] == 0 and stats[1] == 0 and stats[8] == 0
    assert set(np.unique(stats)) <= {0.0, -1.0}
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all" in capsys.readouterr().out


############################################################
#  Bad input: one error line naming the path
############################################################

def assert_one_error_line(result, *fragments):
    return sd.assert_one_error_line(result, "coco.py", *fragments)


def test_missing_annotation_file(mini):
    path = os.path.join(mini["root"], "annotations", "instances_val2014.json")
    assert_one_error_line(sd.run_cli(coco.main, [
        "evaluate", f"--dataset={mini['root']}", "--year=2014", "--model=none", "--tiny"]),
        path.replace("val2014", "minival2014"))


def test_malformed_annotation_file(tmp_path):
    (tmp_path / "annotations").mkdir()
    path = tmp_path / "annotations" / "instances_val2017.json"
    path.write_text('{"images": [')
    assert_one_error_line(sd.run_cli(coco.main, [
        "evaluate", f"--dataset={tmp_path}", "--model=none", "--tiny"]), str(path))


def test_download_without_network_fails_clearly(tmp_path, monkeypatch):
    # Port 9 of localhost refuses the connection: a network failure, offline or not.
    monkeypatch.setattr(coco, "IMAGES_URL", "http://127.0.0.1:9/zips/{subset}{year}.zip")
    target = tmp_path / "coco"
    assert_one_error_line(sd.run_cli(coco.main, [
        "evaluate", f"--dataset={target}", "--model=none", "--tiny", "--download"]),
        "download of http://127.0.0.1:9/zips/val2017.zip to", "failed",
        str(target / "val2017.zip"))
    assert not list(target.glob("*.part"))


############################################################
#  The command line end to end
############################################################

def test_train_uses_the_dataset_classes(trained):
    # Background + the three categories of the annotation file, not COCO's 80.
    assert any(line.split() == ["NUM_CLASSES", "4"] for line in trained["stdout"].splitlines())
    # --model=none: the three stages collapse into one, all layers from random weights.
    assert "Train all layers from random weights (layers='all'" in trained["stdout"]
    assert "Training network heads" not in trained["stdout"]


def test_evaluate_returns_12_stats_for_boxes_and_masks(mini, trained, monkeypatch):
    monkeypatch.setenv("MRCNN_TINY", "1")  # the environment switch instead of --tiny
    code, stats, out, err = sd.run_cli(coco.main, [
        "evaluate", f"--dataset={mini['root']}", "--year=2017", "--model=last",
        f"--logs={trained['logs']}", "--limit=2"])
    assert code == 0, err[-2000:]
    assert set(stats) == {"bbox", "segm"}
    for eval_type in ("bbox", "segm"):
        assert np.shape(stats[eval_type]) == (12,)
        assert all(-1 <= v <= 1 for v in stats[eval_type])
        assert f"{eval_type} stats: " in out
    assert "Running COCO evaluation on 2 images." in out
    assert out.count("Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all") == 2


############################################################
#  Bad annotation files: one line naming the file, or a warning naming the annotations
############################################################

def _write_variant(tmp_path, mini, edit):
    """Copy the mini val2017 annotations with ``edit(data)`` applied; return (root, path)."""
    import json

    with open(mini["files"]["val"]) as f:
        data = json.load(f)
    data = edit(data) or data
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    os.symlink(os.path.join(mini["root"], "val2017"), root / "val2017")
    path = root / "annotations" / "instances_val2017.json"
    path.write_text(json.dumps(data))
    return str(root), str(path)


def _drop(key, index=0):
    def edit(data):
        del data["images"][index][key]
    return edit


def _set_ann(key, value):
    def edit(data):
        data["annotations"][0][key] = value
    return edit


@pytest.mark.parametrize("edit, fragments", [
    (lambda d: d["images"], ["top level is a list", "'images', 'annotations'"]),
    (_drop("file_name"), ["image #0 (id 200)", "'file_name'"]),
    (_drop("height", 1), ["image #1 (id 201)", "'height'"]),
    (_set_ann("image_id", 999), ["annotation {ann}", "image_id 999", "not in 'images'"]),
    (_set_ann("category_id", 77), ["annotation {ann}", "category_id 77", "not in 'categories'"]),
    (lambda d: d.pop("annotations") and None, ["no 'annotations' list"]),
    (lambda d: d.update(annotations=[]), ["empty 'annotations' list"]),
    (lambda d: d.update(images={}), ["'images' must be a list"]),
], ids=["list", "no-file_name", "no-height", "unknown-image", "unknown-category",
        "no-annotations", "empty-annotations", "images-dict"])
def test_bad_annotation_file_is_one_line_before_the_model(tmp_path, mini, edit, fragments,
                                                          monkeypatch):
    root, path = _write_variant(tmp_path, mini, edit)
    fragments = [f.format(ann=mini["anns"]["val"][0]["id"]) for f in fragments]
    # The check runs before any model is built.
    monkeypatch.setattr(cli, "setup_model", lambda *a, **k: pytest.fail("model built"))
    assert_one_error_line(sd.run_cli(coco.main, [
        "evaluate", f"--dataset={root}", "--model=none", "--tiny"]), path, *fragments)


def test_odd_and_outside_polygons_warn_naming_the_annotation(tmp_path, mini):
    def edit(data):
        polygons = [a for a in data["annotations"] if isinstance(a["segmentation"], list)]
        polygons[0]["segmentation"][0].append(3.0)  # odd length
        polygons[1]["segmentation"][0][0] = 500.0  # x far right of the 64 px image
        edit.ids = polygons[0]["id"], polygons[1]["id"]

    root, path = _write_variant(tmp_path, mini, edit)
    dataset = coco.CocoDataset()
    with pytest.warns(UserWarning) as caught:
        dataset.load_coco(root, "val", year="2017")
    messages = [str(w.message) for w in caught if path in str(w.message)]
    odd = next(m for m in messages if "odd number" in m)
    outside = next(m for m in messages if "beyond the image" in m)
    assert f"ids {edit.ids[0]}" in odd and f"ids {edit.ids[1]}" in outside
    # The clean mini file warns about nothing.
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=UserWarning)
        coco.CocoDataset().load_coco(mini["root"], "val", year="2017")
