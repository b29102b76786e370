"""The shapes command line end to end: train -> evaluate -> detect, with --tiny."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from samples.shapes import shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    logs = str(tmp_path_factory.mktemp("shapes_logs"))
    out = str(tmp_path_factory.mktemp("shapes_out"))
    m_ap = shapes.main(["train", "--tiny", "--epochs", "1", "--steps", "2",
                        "--train-count", "8", "--val-count", "2", "--eval-count", "4",
                        f"--logs={logs}", f"--output={out}"])
    return {"logs": logs, "out": out, "map": m_ap}


def test_train_writes_checkpoint_map_and_picture(trained):
    runs = [d for d in os.listdir(trained["logs"]) if d.startswith("tinyshapes")]
    assert len(runs) == 1, os.listdir(trained["logs"])
    assert os.listdir(os.path.join(trained["logs"], runs[0])).count(
        "mask_rcnn_tinyshapes_0001.h5") == 1
    assert isinstance(trained["map"], float) and 0.0 <= trained["map"] <= 1.0
    picture = Image.open(os.path.join(trained["out"], "shapes_detections.png"))
    assert picture.size[0] > 100 and picture.size[1] > 100
    # Not a blank canvas: the images themselves are drawn.
    assert np.asarray(picture.convert("L")).std() > 5


def test_evaluate_reuses_the_last_checkpoint(trained):
    m_ap = shapes.main(["evaluate", "--tiny", "--eval-count", "4",
                        f"--logs={trained['logs']}", f"--output={trained['out']}"])
    # Same checkpoint, same held-out images, deterministic inference: same mAP.
    assert m_ap == pytest.approx(trained["map"])


def test_detect_on_an_image_file(trained, tmp_path):
    image = shapes.make_dataset(1, 123, shapes.ShapesInferenceConfig()).load_image(0)
    path = str(tmp_path / "mine.png")
    Image.fromarray(image).save(path)
    shapes.main(["detect", "--tiny", f"--image={path}", f"--logs={trained['logs']}",
                 f"--output={tmp_path}"])
    saved = Image.open(tmp_path / "detect_mine.png")
    assert saved.size[0] > 0


def test_bad_arguments_fail_with_a_message(trained, tmp_path):
    missing = str(tmp_path / "nope.png")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "samples", "shapes", "shapes.py"), "detect",
         "--tiny", f"--image={missing}", f"--logs={trained['logs']}"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"--image {missing}: no such file" in result.stderr


def _one_error_line(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        shapes.main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("shapes.py: error: ")
    return lines[0]


def test_evaluate_without_weights_is_one_line(trained, capsys):
    line = _one_error_line(capsys, ["evaluate", "--tiny", "--weights=none",
                                    f"--logs={trained['logs']}"])
    assert "--weights=none" in line


def test_detect_with_no_checkpoint_is_one_line(tmp_path, capsys):
    empty_logs = tmp_path / "logs"
    empty_logs.mkdir()
    line = _one_error_line(capsys, ["detect", "--tiny", "--weights=last",
                                    f"--logs={empty_logs}", f"--output={tmp_path}"])
    assert "--weights=last: no checkpoint" in line and str(empty_logs) in line


def test_detect_with_a_missing_weights_file_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nope.h5"
    line = _one_error_line(capsys, ["detect", "--tiny", f"--weights={missing}",
                                    f"--logs={tmp_path}", f"--output={tmp_path}"])
    assert f"--weights {missing}: no such file" in line


def test_detect_on_a_folder_of_images(trained, tmp_path):
    import json

    src = tmp_path / "pictures"
    src.mkdir()
    dataset = shapes.make_dataset(2, 321, shapes.ShapesInferenceConfig())
    for k in range(2):
        Image.fromarray(dataset.load_image(k)).save(src / f"s{k}.png")
    out = tmp_path / "out"
    shapes.main(["detect", "--tiny", f"--images={src}", f"--logs={trained['logs']}",
                 f"--output={out}"])
    data = json.loads((out / "detections.json").read_text())
    assert sorted(i["file_name"] for i in data["images"]) == [str(src / "s0.png"),
                                                               str(src / "s1.png")]
    assert {d["class_name"] for d in data["detections"]} <= set(shapes.SHAPE_CLASSES)
    assert (out / "detect_s0.png").is_file() and (out / "detect_s1.png").is_file()
