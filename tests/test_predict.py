"""mrcnn.predict: detect over image files -> pictures and a COCO-style result file."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from mrcnn import predict, utils


class StubModel:
    """detect() returns, for every image, two instances derived from the image size."""

    def __init__(self):
        self.seen = []

    def detect(self, images, verbose=0):
        results = []
        for image in images:
            self.seen.append(image.shape)
            h, w = image.shape[:2]
            masks = np.zeros((h, w, 2), bool)
            masks[1:4, 2:7, 0] = True
            masks[h - 3:h, w - 2:w, 1] = True
            results.append({"rois": utils.extract_bboxes(masks), "class_ids": np.array([1, 2]),
                            "scores": np.array([0.9, 0.55], np.float32), "masks": masks})
        return results


def _write_images(folder, sizes):
    paths = []
    for k, (h, w) in enumerate(sizes):
        path = os.path.join(folder, f"img{k}.png")
        Image.fromarray(np.full((h, w, 3), 40 * k, np.uint8)).save(path)
        paths.append(path)
    return paths


def test_list_images_takes_a_folder_or_a_glob_and_skips_other_files(tmp_path):
    paths = _write_images(str(tmp_path), [(8, 9), (10, 12)])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "UPPER.JPG").write_bytes(b"")
    assert predict.list_images(str(tmp_path)) == sorted(paths + [str(tmp_path / "UPPER.JPG")])
    assert predict.list_images(str(tmp_path / "*.png")) == paths


def test_list_images_names_the_pattern_when_nothing_matches(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"--images {tmp_path}/\\*.jpg"):
        predict.list_images(str(tmp_path / "*.jpg"))


def test_records_are_coco_results_that_decode_to_the_masks():
    model = StubModel()
    result = model.detect([np.zeros((12, 16, 3), np.uint8)])[0]
    records = predict.detection_records("a.png", result, ["BG", "cat", "dog"])
    assert [r["class_name"] for r in records] == ["cat", "dog"]
    for k, record in enumerate(records):
        y1, x1, y2, x2 = result["rois"][k]
        assert record["bbox"] == [x1, y1, x2 - x1, y2 - y1]
        decoded = mask_utils.decode(record["segmentation"])
        np.testing.assert_array_equal(decoded.astype(bool), result["masks"][..., k])
        assert record["score"] == pytest.approx(float(result["scores"][k]), abs=1e-5)
    json.dumps(records)  # plain JSON types only


def test_detect_images_writes_pictures_and_one_result_file(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    paths = _write_images(str(src), [(20, 30), (25, 18)])
    bad = src / "broken.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "out"
    model = StubModel()
    summary = predict.detect_images(model, paths + [str(bad)], ["BG", "a", "b"], str(out),
                                    verbose=0)
    assert model.seen == [(20, 30, 3), (25, 18, 3)]
    assert summary["images"] == 2 and summary["detections"] == 4
    assert [e["file_name"] for e in summary["errors"]] == [str(bad)]
    data = json.loads(open(summary["result_file"]).read())
    assert [i["file_name"] for i in data["images"]] == paths
    assert [(i["height"], i["width"]) for i in data["images"]] == [(20, 30), (25, 18)]
    assert sorted({d["file_name"] for d in data["detections"]}) == paths
    for name in ("detect_img0.png", "detect_img1.png"):
        assert Image.open(out / name).size[0] > 0


def test_detect_images_never_overwrites_earlier_results(tmp_path):
    paths = _write_images(str(tmp_path), [(10, 10)])
    # Output folder == input folder, and a picture name that exists already.
    existing = tmp_path / "detect_img0.png"
    existing.write_bytes(b"the user's file")
    first = predict.detect_images(StubModel(), paths, ["BG", "a", "b"], str(tmp_path),
                                  verbose=0)
    second = predict.detect_images(StubModel(), paths, ["BG", "a", "b"], str(tmp_path),
                                   verbose=0)
    assert existing.read_bytes() == b"the user's file"
    assert first["result_file"] != second["result_file"]
    assert os.path.isfile(first["result_file"]) and os.path.isfile(second["result_file"])
    assert (tmp_path / "detect_img0_2.png").is_file()
    assert (tmp_path / "img0.png").is_file()  # the input itself untouched


def test_videos_count_one_image_per_frame_and_are_written_back(tmp_path):
    import cv2

    video = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 24))
    for k in range(3):
        writer.write(np.full((24, 32, 3), 50 * k, np.uint8))
    writer.release()
    paths = _write_images(str(tmp_path), [(10, 12)])
    summary = predict.detect_images(StubModel(), [video, *paths], ["BG", "a", "b"],
                                    str(tmp_path / "out"), verbose=0,
                                    image_ids={paths[0]: 40}, instance_masks=True)
    data = json.loads(open(summary["result_file"]).read())
    assert [(i["id"], i["file_name"]) for i in data["images"]] == [
        (41, f"{video}#0"), (42, f"{video}#1"), (43, f"{video}#2"), (40, paths[0])]
    results = json.loads(open(summary["coco_result_file"]).read())
    assert sorted({r["image_id"] for r in results}) == [40, 41, 42, 43]
    capture = cv2.VideoCapture(str(tmp_path / "out" / "detect_clip.avi"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == 3
    labels = np.asarray(Image.open(tmp_path / "out" / "masks" / "clip_000001.png"))
    masks = StubModel().detect([np.zeros((24, 32, 3), np.uint8)])[0]["masks"]
    expected = np.zeros((24, 32), np.uint8)
    expected[masks[..., 1]] = 2
    expected[masks[..., 0]] = 1
    np.testing.assert_array_equal(labels, expected)
