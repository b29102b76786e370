"""bench/nucleus_seeds.py's pure parts: contender specs and the mean +- std table.

The training itself is a benchmark (minutes per seed); what is tested here is that the
table it prints says what the rows say.
"""

import json

import numpy as np
import pytest

from bench import nucleus_seeds


def test_contender_specs():
    assert nucleus_seeds.parse_contender("mrcnn") == {
        "spec": "mrcnn", "engine": "mrcnn", "recipe": False, "overrides": {}, "commit": None}
    spec = nucleus_seeds.parse_contender("mrcnn+recipe@dece6be")
    assert spec["recipe"] and spec["commit"] == "dece6be" and spec["overrides"] == {}
    spec = nucleus_seeds.parse_contender(
        "mrcnn+LR_SCHEDULE=cosine+LEARNING_RATE=0.003+RPN_ANCHOR_SCALES=(4,8)")
    assert spec["overrides"] == {"LR_SCHEDULE": "cosine", "LEARNING_RATE": 0.003,
                                 "RPN_ANCHOR_SCALES": (4, 8)}
    assert nucleus_seeds.parse_contender("torchvision+recipe")["engine"] == "torchvision"


@pytest.mark.parametrize("spec", ["detectron", "mrcnn+fast", "mrcnn+lr=0.1",
                                  "torchvision+LEARNING_RATE=0.1", "torchvision@dece6be"])
def test_bad_contender_specs_are_refused(spec):
    with pytest.raises(SystemExit, match="nucleus_seeds.py"):
        nucleus_seeds.parse_contender(spec)


def _rows():
    rng = np.random.default_rng(0)
    rows = []
    for contender in ("b", "a"):  # first-seen order is kept, not sorted
        for seed in range(3):
            for epoch in (1, 2):
                rows.append({"contender": contender, "seed": seed, "epoch": epoch,
                             "images": 100 * epoch, **{k: float(rng.random()) for k in (
                                 "AP50", "AP", "recall50", "train_wall", "train_cpu")}})
    return rows


def test_summary_is_mean_and_sample_std_per_contender_and_epoch():
    rows = _rows()
    table = nucleus_seeds.summarize(rows)
    assert [(r["contender"], r["epoch"]) for r in table] == [("b", 1), ("b", 2), ("a", 1),
                                                            ("a", 2)]
    for entry in table:
        group = [r["AP50"] for r in rows
                 if (r["contender"], r["epoch"]) == (entry["contender"], entry["epoch"])]
        assert entry["seeds"] == 3
        np.testing.assert_allclose(entry["AP50"], (np.mean(group), np.std(group, ddof=1)))


def test_summarize_prints_the_table_of_a_rows_file(tmp_path, capsys):
    path = tmp_path / "rows.jsonl"
    rows = _rows()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    nucleus_seeds.main(["--summarize", str(path)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| b")]
    first = [r["AP50"] for r in rows if r["contender"] == "b" and r["epoch"] == 1]
    assert lines[0].split("|")[5].strip() == (f"{np.mean(first):.3f} ± "
                                              f"{np.std(first, ddof=1):.3f}")


def test_rescore_settings_and_checkpoint_listing(tmp_path):
    from bench import nucleus_rescore

    assert nucleus_rescore.parse_setting("MASK_PASTE=integer DETECTION_NMS_THRESHOLD=0.3") == {
        "MASK_PASTE": "integer", "DETECTION_NMS_THRESHOLD": 0.3}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        nucleus_rescore.parse_setting("paste=integer")
    for run in ("mrcnn/0", "mrcnn_dece6be/1"):
        folder = tmp_path / "logs" / run / "seed20261207T1200"
        folder.mkdir(parents=True)
        for epoch in (1, 2):
            (folder / f"mask_rcnn_seed_{epoch:04d}.h5").write_bytes(b"")
    found = nucleus_rescore.checkpoints(str(tmp_path), None)
    assert [(run, epoch) for run, epoch, _ in found] == [
        ("mrcnn/0", 1), ("mrcnn/0", 2), ("mrcnn_dece6be/1", 1), ("mrcnn_dece6be/1", 2)]
    assert [e for _, e, _ in nucleus_rescore.checkpoints(str(tmp_path), [2])] == [2, 2]


def test_touching_marks_instances_with_an_8_neighbour_of_another():
    masks = np.zeros((12, 12, 4), bool)
    masks[1:3, 1:3, 0] = True   # shares an edge with 1
    masks[1:3, 3:5, 1] = True
    masks[3:5, 5:7, 2] = True   # touches 1 only diagonally, at (2, 4) / (3, 5)
    masks[8:11, 8:11, 3] = True  # alone
    assert nucleus_seeds.touching(masks).tolist() == [True, True, True, False]
    assert nucleus_seeds.touching(masks[..., 3:]).tolist() == [False]
    assert nucleus_seeds.touching(np.zeros((5, 5, 0), bool)).shape == (0,)


def test_found_share_counts_covered_nuclei_by_group():
    gt = np.zeros((12, 12, 3), bool)
    gt[1:5, 1:5, 0] = True   # touching pair
    gt[1:5, 5:9, 1] = True
    gt[8:12, 0:4, 2] = True  # isolated
    det = np.zeros((12, 12, 2), bool)
    det[1:5, 1:5, 0] = True          # nucleus 0 exactly
    det[1:5, 5:8, 1] = True          # nucleus 1 at IoU 12/16 = 0.75
    out = nucleus_seeds.found_share([gt], [det])
    assert out["touching_share"] == pytest.approx(2 / 3)
    assert out["found50_touching"] == 1.0 and out["found75_touching"] == 1.0
    assert out["found50_isolated"] == 0.0
    det[1:5, 7, 1] = False           # now 8/16 = 0.5: found at 0.5, not at 0.75
    out = nucleus_seeds.found_share([gt], [det])
    assert out["found50_touching"] == 1.0 and out["found75_touching"] == 0.5
    empty = nucleus_seeds.found_share([gt], [np.zeros((12, 12, 0), bool)])
    assert empty["found50_touching"] == 0.0 and empty["found50_isolated"] == 0.0
