"""samples/balloon: VIA annotations, color splash, and the CLI end to end.

``train --tiny`` runs in-process; ``splash`` runs as a real subprocess
(``python samples/balloon/balloon.py ...``, tiny through ``MRCNN_TINY=1``) to prove the
script entry point works.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import cv2
import h5py
import numpy as np
import pytest

from mrcnn import cli
from samples.balloon import balloon
from tests import sample_data as sd


@pytest.fixture(scope="module")
def via(tmp_path_factory):
    """train/ (regions as lists, VIA 2.x) and val/ (regions as dicts, VIA 1.x)."""
    return sd.write_balloon_dataset(str(tmp_path_factory.mktemp("balloon")))


@pytest.fixture(scope="module")
def trained(via, tmp_path_factory):
    logs = str(tmp_path_factory.mktemp("balloon_logs"))
    return sd.train_tiny(balloon.main, [
        "train", f"--dataset={via['root']}", "--weights=none"], logs, "balloon")


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


############################################################
#  VIA annotations
############################################################

def test_regions_as_dict_and_as_list_read_the_same(tmp_path):
    region = sd.via_polygon([10, 30, 20], [5, 5, 25])
    for form, regions in (("list", [region, region]), ("dict", {"0": region, "1": region})):
        path = tmp_path / f"{form}.json"
        path.write_text(json.dumps({"a.jpg123": {"filename": "a.jpg", "size": 123,
                                                 "regions": regions}}))
        entries = balloon.read_via_annotations(str(path))
        assert [e["filename"] for e in entries] == ["a.jpg"]
        assert entries[0]["shapes"] == [region["shape_attributes"]] * 2


def test_via2_project_file_and_images_without_regions(tmp_path):
    region = sd.via_polygon([1, 8, 4], [1, 1, 9])
    path = tmp_path / "project.json"
    path.write_text(json.dumps({"_via_settings": {}, "_via_img_metadata": {
        "a.jpg1": {"filename": "a.jpg", "regions": [region]},
        "b.jpg1": {"filename": "b.jpg", "regions": []}}}))
    with pytest.warns(UserWarning, match="b.jpg"):
        entries = balloon.read_via_annotations(str(path))
    assert [e["filename"] for e in entries] == ["a.jpg"]


def test_masks_follow_the_polygons(via):
    for subset, masks_of in via["subsets"].items():
        d = balloon.BalloonDataset()
        d.load_balloon(via["root"], subset)
        d.prepare()
        assert len(d.image_ids) == len(masks_of)
        for image_id in d.image_ids:
            info = d.image_info[image_id]
            want = masks_of[info["id"]]
            masks, class_ids = d.load_mask(image_id)
            image = d.load_image(image_id)
            assert masks.shape == want.shape and image.shape[:2] == want.shape[:2]
            np.testing.assert_array_equal(class_ids, np.ones(want.shape[-1]))
            for k in range(want.shape[-1]):
                assert iou(masks[..., k], want[..., k]) > 0.8


def test_other_via_shapes_rasterize():
    assert balloon.draw_shape({"name": "rect", "x": 2, "y": 3, "width": 4, "height": 2},
                              10, 10).sum() == 8
    circle = balloon.draw_shape({"name": "circle", "cx": 5, "cy": 5, "r": 3}, 12, 12)
    assert circle[5, 5] and not circle[0, 0] and 20 < circle.sum() < 36
    ellipse = balloon.draw_shape({"name": "ellipse", "cx": 6, "cy": 6, "rx": 5, "ry": 2},
                                 12, 12)
    assert ellipse[6, 2] and not ellipse[2, 6]


def test_color_splash_keeps_color_only_under_the_masks():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, [20, 30, 3]).astype(np.uint8)
    masks = np.zeros([20, 30, 2], bool)
    masks[2:6, 3:9, 0] = True
    masks[10:15, 20:28, 1] = True
    out = balloon.color_splash(image, masks)
    keep = masks.any(-1)
    np.testing.assert_array_equal(out[keep], image[keep])
    gray = out[~keep]
    assert (gray[:, 0] == gray[:, 1]).all() and (gray[:, 1] == gray[:, 2]).all()
    luma = image[~keep].astype(float) @ np.array([0.2125, 0.7154, 0.0721])
    assert np.abs(gray[:, 0] - luma).max() <= 0.51
    all_gray = balloon.color_splash(image, np.zeros([20, 30, 0], bool))
    assert (all_gray[..., 0] == all_gray[..., 2]).all()


def test_splash_video_with_a_stub_model(tmp_path):
    path = str(tmp_path / "in.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 5, (40, 32))
    for k in range(3):
        writer.write(np.full([32, 40, 3], 60 * k, np.uint8))
    writer.release()

    class StubModel:
        calls = 0

        def detect(self, images, verbose=0):
            StubModel.calls += 1
            masks = np.zeros(images[0].shape[:2] + (1,), bool)
            masks[4:10, 4:10] = True
            return [{"rois": np.array([[4, 4, 10, 10]]), "class_ids": np.array([1]),
                     "scores": np.array([0.99]), "masks": masks}]

    output = str(tmp_path / "out.avi")
    assert balloon.detect_and_color_splash(StubModel(), video_path=path, output=output) == output
    assert StubModel.calls == 3
    capture = cv2.VideoCapture(output)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == 3 and frames[0].shape == (32, 40, 3)


############################################################
#  Weights and NORM
############################################################

def test_norm_follows_the_weights(tmp_path):
    def weights_file(name, layer):
        path = str(tmp_path / name)
        with h5py.File(path, "w") as f:
            f.attrs["layer_names"] = [layer.encode(), b"conv1"]
        return path

    bn, gn = weights_file("bn.h5", "bn_conv1"), weights_file("gn.h5", "gn_conv1")
    logs = str(tmp_path)
    assert balloon.BalloonConfig.NORM == "gn"
    assert cli.norm_for_weights("coco", balloon.BalloonConfig, logs) == {"NORM": None}
    assert cli.norm_for_weights("imagenet", balloon.BalloonConfig, logs) == {"NORM": None}
    assert cli.norm_for_weights(bn, balloon.BalloonConfig, logs) == {"NORM": None}
    assert cli.norm_for_weights(gn, balloon.BalloonConfig, logs) == {}
    assert cli.norm_for_weights("none", balloon.BalloonConfig, logs) == {}
    assert cli.norm_for_weights("coco", balloon.BalloonConfig, logs, tiny=True) == {}
    config = cli.make_config(balloon.BalloonConfig, weights=bn, model_dir=logs)
    assert config.NORM == "frozen_bn"


############################################################
#  Bad input: one error line naming the path
############################################################

def assert_one_error_line(result, *fragments):
    return sd.assert_one_error_line(result, "balloon.py", *fragments)


def test_missing_dataset_folder(tmp_path):
    missing = str(tmp_path / "nowhere")
    assert_one_error_line(sd.run_cli(balloon.main, [
        "train", f"--dataset={missing}", "--weights=none", "--tiny"]), missing)


def test_missing_annotation_file(tmp_path):
    (tmp_path / "train").mkdir()
    assert_one_error_line(sd.run_cli(balloon.main, [
        "train", f"--dataset={tmp_path}", "--weights=none", "--tiny"]),
        str(tmp_path / "train" / "via_region_data.json"))


def test_malformed_annotations(tmp_path):
    sd.write_balloon_dataset(str(tmp_path), images={"train": 1, "val": 1})
    path = tmp_path / "val" / "via_region_data.json"
    data = json.loads(path.read_text())
    entry = next(iter(data.values()))
    entry["regions"]["0"]["shape_attributes"]["all_points_y"] = [1, 2]
    path.write_text(json.dumps(data))
    assert_one_error_line(sd.run_cli(balloon.main, [
        "train", f"--dataset={tmp_path}", "--weights=none", "--tiny"]), str(path),
        entry["filename"])
    path.write_text("{not json")
    assert_one_error_line(sd.run_cli(balloon.main, [
        "train", f"--dataset={tmp_path}", "--weights=none", "--tiny"]), str(path))


def test_missing_image_file(tmp_path):
    sd.write_balloon_dataset(str(tmp_path), images={"train": 2, "val": 1})
    image = tmp_path / "train" / "train_1.jpg"
    image.unlink()
    assert_one_error_line(sd.run_cli(balloon.main, [
        "train", f"--dataset={tmp_path}", "--weights=none", "--tiny"]), str(image))


def test_splash_of_an_unreadable_image(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    assert_one_error_line(sd.run_cli(balloon.main, [
        "splash", "--weights=none", f"--image={path}", "--tiny"]), str(path))
    assert_one_error_line(sd.run_cli(balloon.main, ["splash", "--weights=none", "--tiny"]),
                          "--image or --video")


############################################################
#  The command line end to end
############################################################

def test_train_writes_a_checkpoint(trained):
    assert "layers='all'" in trained["stdout"]  # from scratch: all layers


def test_splash_script_copied_alone_runs(via, trained, tmp_path):
    """balloon.py copied alone (no samples/ package, no repository on the path) runs with
    --tiny: everything it shares with the other samples is library API (mrcnn.cli)."""
    folder = tmp_path / "my_project"
    folder.mkdir()
    script = str(folder / "balloon.py")
    shutil.copy(os.path.join(sd.ROOT_DIR, "samples", "balloon", "balloon.py"), script)
    # Only the mrcnn package on the path (a link to this checkout's), so that neither
    # samples/ nor tests/ can be imported by the copy.
    path_dir = tmp_path / "site"
    path_dir.mkdir()
    os.symlink(os.path.join(sd.ROOT_DIR, "mrcnn"), path_dir / "mrcnn")
    env = {k: v for k, v in os.environ.items() if k != "MRCNN_TINY"}
    env["PYTHONPATH"] = str(path_dir)
    image = os.path.join(via["root"], "val", "val_0.jpg")
    output = str(tmp_path / "splash.png")
    proc = subprocess.run(
        [sys.executable, script, "splash", "--tiny", f"--weights={trained['checkpoint']}",
         f"--image={image}", f"--output={output}", f"--logs={trained['logs']}"],
        cwd=str(folder), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Saved to {output}" in proc.stdout
    written = cv2.imread(output)
    assert written is not None and written.shape == cv2.imread(image).shape
    assert "samples" not in proc.stderr  # no fallback import of the repository's samples


def test_detect_images_writes_pictures_and_results(via, trained, tmp_path):
    import json

    pattern = os.path.join(via["root"], "val", "*.jpg")
    out = str(tmp_path / "detections")
    code, summary, _, err = sd.run_cli(balloon.main, [
        "detect", f"--images={pattern}", f"--weights={trained['checkpoint']}", "--tiny",
        f"--logs={trained['logs']}", f"--output={out}"])
    assert code == 0, err[-2000:]
    paths = cli.image_files(pattern)
    data = json.loads(open(summary["result_file"]).read())
    assert os.path.dirname(summary["result_file"]) == out
    assert sorted(i["file_name"] for i in data["images"]) == sorted(paths)
    assert {d["class_name"] for d in data["detections"]} <= {"balloon"}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        assert os.path.getsize(os.path.join(out, f"detect_{stem}.png")) > 0


def test_detect_without_images_is_one_line(trained):
    sd.assert_one_error_line(sd.run_cli(balloon.main, [
        "detect", f"--weights={trained['checkpoint']}", "--tiny",
        f"--logs={trained['logs']}"]), "balloon.py", "--images")


def test_set_overrides_win_and_a_bad_key_is_one_line(via, tmp_path):
    config = cli.make_config(balloon.BalloonConfig, tiny=True,
                                settings={"STEPS_PER_EPOCH": 7, "DETECTION_MIN_CONFIDENCE": 0.5})
    assert config.STEPS_PER_EPOCH == 7  # over tiny's 1 step per epoch
    assert config.DETECTION_MIN_CONFIDENCE == 0.5 and config.NAME == "tinyballoon"
    sd.assert_one_error_line(sd.run_cli(balloon.main, [
        "detect", f"--images={via['root']}/val", "--weights=none", "--tiny",
        f"--logs={tmp_path}", "--set", "DETECTION_MAX_INSTANCE=5"]),
        "balloon.py", "DETECTION_MAX_INSTANCE is not a setting", "DETECTION_MAX_INSTANCES")


def test_nan_and_outside_polygons_warn_naming_the_region(tmp_path):
    # 60x72 images (write_balloon_dataset's size); region 1 of train_0 gets NaN points,
    # region 0 of train_1 is moved right of the image.
    sd.write_balloon_dataset(str(tmp_path), images={"train": 2})
    path = tmp_path / "train" / "via_region_data.json"
    data = json.loads(path.read_text())
    first, second = data.values()
    first["regions"].append(sd.via_polygon([10, 30, 20, 25], [5, 5, 25, 20]))
    nan_region = len(first["regions"]) - 1
    first["regions"][nan_region]["shape_attributes"]["all_points_x"][3] = float("nan")
    second["regions"][0]["shape_attributes"]["all_points_x"] = [200, 220, 210]
    second["regions"][0]["shape_attributes"]["all_points_y"] = [5, 5, 25]
    path.write_text(json.dumps(data))  # json writes NaN, as VIA exports of bad data do

    dataset = balloon.BalloonDataset()
    with pytest.warns(UserWarning) as caught:
        dataset.load_balloon(str(tmp_path), "train")
    messages = [str(w.message) for w in caught]
    assert any(f"image 'train_0.jpg', region {nan_region}: polygon has 1 NaN" in m
               and str(path) in m for m in messages), messages
    assert any("image 'train_1.jpg', region 0: polygon lies entirely outside the 72x60"
               in m for m in messages), messages
    dataset.prepare()
    # The NaN point is dropped: the region is the triangle of the other three points.
    masks, _ = dataset.load_mask(0)
    expected = balloon.draw_shape(sd.via_polygon([10, 30, 20], [5, 5, 25])["shape_attributes"],
                                  60, 72)
    assert any(np.array_equal(masks[..., k], expected) for k in range(masks.shape[-1]))
    # The outside region gives no mask; the image keeps its other regions.
    assert dataset.load_mask(1)[0].shape[-1] == len(second["regions"]) - 1
