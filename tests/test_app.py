"""The ``mrcnn`` command end to end on tiny generated data, and the AP-every-epoch callback."""

from __future__ import annotations

import csv
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn import app
from mrcnn.evaluation import COLUMNS
from mrcnn.weights import read_weights
from tests.app_data import write_via_multiclass
from tests.sample_data import assert_one_error_line, run_cli, write_coco_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mrcnn(*args: str, cwd: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m mrcnn args...`` in a subprocess (this checkout first on the path)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
               TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-m", "mrcnn", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=900)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _start(args, cwd, log):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
               TF_CPP_MIN_LOG_LEVEL="3")
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "mrcnn", *args], cwd=cwd, env=env,
                                stdout=f, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 3-epoch COCO run (every epoch kept) and a 1-epoch multi-class VIA run, in parallel."""
    work = str(tmp_path_factory.mktemp("app"))
    coco = write_coco_dataset(os.path.join(work, "coco"), images_per_subset=4)
    via = write_via_multiclass(os.path.join(work, "via"), count=6)
    logs = os.path.join(work, "logs")
    via_run = _start(["train", "--data", via["json"], "--class-key", "type", "--weights",
                      "none", "--tiny", "--epochs", "1", "--logs", logs, "--name", "shapes2",
                      "--eval-images", "2"], work, os.path.join(work, "via.log"))
    result = mrcnn("train", "--data", coco["files"]["train"],
                   "--images", os.path.join(work, "coco", "train2017"),
                   "--val", coco["files"]["val"],
                   "--val-images", os.path.join(work, "coco", "val2017"),
                   "--weights", "none", "--tiny", "--epochs", "3", "--keep-epochs",
                   "--logs", logs, cwd=work)
    via_run.wait(timeout=900)
    via_log = open(os.path.join(work, "via.log")).read()
    assert via_run.returncode == 0, via_log[-3000:]
    (run_dir,) = glob.glob(os.path.join(logs, "tinymrcnn2*"))
    (via_dir,) = glob.glob(os.path.join(logs, "tinyshapes2*"))
    return {"work": work, "coco": coco, "via": via, "logs": logs, "run": run_dir,
            "via_run": via_dir, "stdout": result.stdout}


def _rows(run_dir):
    with open(os.path.join(run_dir, "results.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_train_writes_results_csv_one_row_per_epoch(runs):
    rows = _rows(runs["run"])
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for row in rows:
        for column in COLUMNS:
            assert -1.0 <= float(row[column]) <= 1.0
        assert float(row["loss"]) > 0 and float(row["val_loss"]) > 0
    record = json.load(open(os.path.join(runs["run"], "config.json")))
    assert record["devices"]["devices"] and record["devices"]["used"]
    assert "Devices:" in runs["stdout"]
    # stdout is a pipe: one line per epoch (Keras verbose=2), no progress bar.
    assert "\b" not in runs["stdout"] and "\r" not in runs["stdout"]
    assert runs["stdout"].count("val_loss:") == 3


def test_tensorboard_gets_the_csv_numbers_and_pictures(runs):
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(runs["run"], "evaluation"),
                              size_guidance={"tensors": 0})
    events.Reload()
    tags = events.Tags()["tensors"]
    rows = _rows(runs["run"])
    for column in ("segm_AP", "bbox_AR100"):
        logged = {e.step: float(tf.make_ndarray(e.tensor_proto))
                  for e in events.Tensors(column.replace("_", "/", 1))}
        assert logged == pytest.approx({int(r["epoch"]): float(r[column]) for r in rows},
                                       abs=1e-6)
    # Pictures at the first evaluated epoch (then every 5): 3 validation images.
    assert {f"predictions/{k}" for k in range(3)} <= set(tags)
    (picture,) = events.Tensors("predictions/0")
    assert picture.step == 1


def test_best_is_the_checkpoint_of_the_best_epoch(runs):
    rows = _rows(runs["run"])
    values = [float(r["segm_AP"]) for r in rows]
    best_epoch = int(np.argmax(values)) + 1  # the first of equal scores
    name = "tinymrcnn"

    def weights(suffix):
        return read_weights(os.path.join(runs["run"], f"mask_rcnn_{name}_{suffix}.h5"))

    for alias, epoch in (("best", best_epoch), ("last", 3)):
        got, want = weights(alias), weights(f"{epoch:04d}")
        assert list(got) == list(want)
        for layer in want:
            for a, b in zip(got[layer], want[layer]):
                np.testing.assert_array_equal(a, b)
    # Epochs 1 and 3 differ (training happened), so the comparison can tell them apart.
    first, last = weights("0001"), weights("0003")
    assert any(not np.array_equal(a, b) for layer in first
               for a, b in zip(first[layer], last[layer]))


def test_via_multiclass_run_records_its_classes(runs):
    record = json.load(open(os.path.join(runs["via_run"], "dataset.json")))
    assert record["class_names"] == ["BG", "cat", "dog"]
    assert [int(r["epoch"]) for r in _rows(runs["via_run"])] == [1]
    files = sorted(os.listdir(runs["via_run"]))
    assert "mask_rcnn_tinyshapes2_best.h5" in files and "mask_rcnn_tinyshapes2_last.h5" in files


@pytest.fixture(scope="module")
def detecting_weights(runs):
    """The run's last checkpoint with a class head that always detects (class 1, full
    masks), saved in the run folder so that its dataset.json is found."""
    from mrcnn import model as modellib
    from mrcnn.cli import make_config
    from tests.tiny import force_detections

    config = make_config(app.app_config("mrcnn"), tiny=True, NUM_CLASSES=4, GPU_COUNT=1,
                         IMAGES_PER_GPU=1)
    model = modellib.MaskRCNN("inference", config, runs["logs"])
    model.load_weights(os.path.join(runs["run"], "mask_rcnn_tinymrcnn_last.h5"), by_name=True)
    force_detections(model.keras_model)
    path = os.path.join(runs["run"], "detecting.h5")
    model.save_weights(path)
    return path


@pytest.fixture(scope="module")
def predicted(runs, detecting_weights, tmp_path_factory):
    """``mrcnn predict`` on the validation images (and one broken file), every detection
    kept, with the COCO file's ids (--data) and instance-mask PNGs."""
    folder = tmp_path_factory.mktemp("predict")
    broken = folder / "broken.png"
    broken.write_bytes(b"not an image")
    val_images = os.path.join(runs["work"], "coco", "val2017")
    result = mrcnn("predict", "--weights", detecting_weights, "--out", str(folder / "pred"),
                   "--masks", "--min-confidence", "0", "--data", runs["coco"]["files"]["val"],
                   "--images", val_images, val_images, str(broken), cwd=str(folder))
    return {"out": folder / "pred", "broken": str(broken), "stderr": result.stderr}


def test_predict_results_load_in_coco_and_score(runs, predicted):
    out = predicted["out"]
    assert "broken.png" in predicted["stderr"] and "could not be read" in predicted["stderr"]
    results = json.load(open(out / "results.json"))
    assert results, "the forced head detects in every image"
    gt = COCO(runs["coco"]["files"]["val"])
    # The dataset's own ids: COCO image ids and category ids.
    assert {r["image_id"] for r in results} <= set(gt.getImgIds())
    assert {r["category_id"] for r in results} <= set(gt.getCatIds())
    dt = gt.loadRes(str(out / "results.json"))
    evaluator = COCOeval(gt, dt, "segm")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert np.all(np.isfinite(evaluator.stats))
    details = json.load(open(out / "detections.json"))
    assert [e["file_name"] for e in details["errors"]] == [predicted["broken"]]
    # Instance PNGs: label k + 1 where detection k is the first to cover the pixel.
    for image in details["images"]:
        stem = os.path.splitext(os.path.basename(image["file_name"]))[0]
        labels = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
        mine = [r for r in results if r["image_id"] == image["id"]]
        taken = np.zeros(labels.shape, bool)
        for k, r in enumerate(mine):
            m = mask_utils.decode(r["segmentation"]).astype(bool) & ~taken
            np.testing.assert_array_equal(labels[m], k + 1)
            taken |= m
        assert not labels[~taken].any()
        assert (out / f"detect_{stem}.png").is_file()


def test_evaluate_agrees_with_cocoeval_on_the_annotation_file(runs, detecting_weights,
                                                              predicted, tmp_path):
    """The command's AP (ground truth from load_mask) equals pycocotools' on the annotation
    file itself, for the same detections (predict's results.json)."""
    val_json = runs["coco"]["files"]["val"]
    report = tmp_path / "ev.json"
    mrcnn("evaluate", "--weights", detecting_weights, "--data", val_json, "--images",
          os.path.join(runs["work"], "coco", "val2017"), "--out", str(report),
          cwd=str(tmp_path))
    scores = json.load(open(report))
    gt = COCO(val_json)
    annotated = sorted({a["image_id"] for a in gt.dataset["annotations"]})
    dt = gt.loadRes(str(predicted["out"] / "results.json"))
    for iou_type in ("segm", "bbox"):
        evaluator = COCOeval(gt, dt, iou_type)
        evaluator.params.imgIds = annotated  # evaluate scores the annotated images
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        assert scores[iou_type]["AP"] == pytest.approx(evaluator.stats[0], abs=1e-6)
        assert scores[iou_type]["AP50"] == pytest.approx(evaluator.stats[1], abs=1e-6)
    assert set(scores["segm"]["per_class_ap"]) == {"person", "car", "dog"}


def test_export_and_info(runs, tmp_path):
    out = tmp_path / "exported"
    mrcnn("export", "--weights", "last", "--tiny", "--logs", runs["logs"], "--out", str(out),
          cwd=str(tmp_path))
    assert (out / "saved_model.pb").is_file()
    assert json.load(open(out / "classes.json"))["class_names"] == [
        "BG", "person", "car", "dog"]
    again = mrcnn("export", "--weights", "last", "--tiny", "--logs", runs["logs"], "--out",
                  str(out), cwd=str(tmp_path), check=False)
    assert again.returncode == 2 and "exists already" in again.stderr
    info = mrcnn("info", cwd=str(tmp_path))
    assert "backend" in info.stdout and "used" in info.stdout


def test_resume_continues_the_run(runs):
    """--weights last resumes the newest run in its folder, at the next epoch."""
    result = mrcnn("train", "--data", runs["coco"]["files"]["train"],
                   "--images", os.path.join(runs["work"], "coco", "train2017"),
                   "--weights", "last", "--tiny", "--epochs", "4", "--logs", runs["logs"],
                   "--eval-images", "2", cwd=runs["work"])
    assert "Starting at epoch 3" in result.stdout
    assert [int(r["epoch"]) for r in _rows(runs["run"])] == [1, 2, 3, 4]
    files = os.listdir(runs["run"])
    # Not kept this time: epoch 3's checkpoint goes once epoch 4's is written.
    assert "mask_rcnn_tinymrcnn_0004.h5" in files and "mask_rcnn_tinymrcnn_0003.h5" not in files


@pytest.mark.parametrize("argv, fragments", [
    (["train", "--data", "missing.json", "--weights", "none"], ["missing.json"]),
    (["train", "--data", "x.json", "--weights", "nope.h5"], ["nope.h5"]),
    (["predict", "--weights", "none", "nothing_here/*.jpg"], ["nothing_here"]),
])
def test_bad_input_is_one_line(argv, fragments, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_error_line(run_cli(app.main, argv), "mrcnn", *fragments)


def test_data_path_outside_the_image_folder_is_one_line(tmp_path, monkeypatch):
    via = write_via_multiclass(str(tmp_path / "via"), count=1)
    data = json.load(open(via["json"]))
    data["img0.png"]["filename"] = "../../etc/passwd"
    with open(via["json"], "w") as f:
        json.dump(data, f)
    monkeypatch.chdir(tmp_path)
    line = assert_one_error_line(
        run_cli(app.main, ["train", "--data", via["json"], "--weights", "none", "--tiny"]),
        "mrcnn", "../../etc/passwd", via["json"], "allow_outside")
    assert "leaves the folder" in line


def test_every_subcommand_has_help():
    for command in app.COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(app.main, [command, "--help"])
            raise SystemExit(0)
        assert exit_info.value.code in (0, None)


# ------------------------------------------------------------------------ the callback

class _FakeRun:
    """What EvaluationCallback reads from a MaskRCNN: config-free files of a run."""

    def __init__(self, folder):
        self.log_dir = str(folder)
        self.model_dir = str(folder)
        self.checkpoint_path = os.path.join(str(folder), "mask_rcnn_x_{epoch:04d}.h5")
        self.epoch = 0


class _FakeDataset:
    image_ids = np.arange(5)


@pytest.mark.parametrize("keep", [False, True])
def test_callback_keeps_best_and_last_by_the_metric(tmp_path, monkeypatch, keep):
    from mrcnn.callbacks import EvaluationCallback

    run = _FakeRun(tmp_path)
    callback = EvaluationCallback(run, _FakeDataset(), images=3, pictures=0,
                                  keep_epochs=keep)
    callback.set_params({"epochs": 4})
    scores = iter([0.1, 0.3, 0.2, 0.3])

    def fake_evaluate(number):
        value = next(scores)
        return {t: {"AP": value if t == "segm" else 0.5, "AP50": 0.0, "AP75": 0.0,
                    "AR100": 0.0} for t in ("segm", "bbox")}

    monkeypatch.setattr(callback, "evaluate", fake_evaluate)
    monkeypatch.setattr(callback, "log_tensorboard", lambda *a: None)
    callback.on_train_begin()
    for epoch in range(4):
        with open(run.checkpoint_path.format(epoch=epoch + 1), "w") as f:
            f.write(f"epoch {epoch + 1}")
        callback.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1)})
    read = lambda name: open(tmp_path / f"mask_rcnn_x_{name}.h5").read()  # noqa: E731
    assert read("best") == "epoch 2"  # 0.3 first reached at epoch 2; a tie does not replace
    assert read("last") == "epoch 4"
    kept = sorted(f for f in os.listdir(tmp_path) if f[-7:-3].isdigit())
    assert kept == ([f"mask_rcnn_x_{e:04d}.h5" for e in range(1, 5)] if keep
                    else ["mask_rcnn_x_0004.h5"])
    rows = _rows(tmp_path)
    assert [float(r["segm_AP"]) for r in rows] == [0.1, 0.3, 0.2, 0.3]
    assert [float(r["loss"]) for r in rows] == pytest.approx([1, 0.5, 1 / 3, 0.25], abs=1e-5)
    # A resumed run continues from its csv's best.
    resumed = EvaluationCallback(run, _FakeDataset(), images=3, pictures=0)
    run.epoch = 4
    resumed.on_train_begin()
    assert resumed.best == 0.3
