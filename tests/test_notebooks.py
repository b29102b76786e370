"""Execute every notebook headless on the tiny config and check what each one shows.

The notebooks run with ``MRCNN_TINY=1`` (a 64 px model with a five-conv backbone,
2-step epochs; see ``notebooks/nbtools.py``) and ``MRCNN_LOGS`` pointing to a temporary
folder, so nothing is written into the repository. ``train_shapes`` runs first and the
others load its checkpoint (``find_last``) instead of training their own. Each kernel
starts in ``notebooks/``, as Jupyter does.

The stored notebooks must carry no outputs: they are checked for that too.
"""

from __future__ import annotations

import ast
import glob
import os
import re

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")  # the "python3" kernel the notebooks run in

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS_DIR = os.path.join(ROOT_DIR, "notebooks")

# Each notebook and the names its first code cell must define: the one place where a
# user points it at their own config, dataset and weights.
SETTINGS = {
    "train_shapes": {"MODEL_DIR", "config", "dataset_train", "dataset_val", "INIT_WITH"},
    "inspect_data": {"config", "dataset"},
    "inspect_model": {"MODEL_DIR", "config", "dataset", "WEIGHTS_PATH"},
    "inspect_weights": {"MODEL_DIR", "config", "WEIGHTS_PATH"},
    "demo": {"MODEL_DIR", "config", "CLASS_NAMES", "WEIGHTS_PATH", "IMAGE_PATH"},
}
CELL_TIMEOUT = 300  # seconds per cell; a tiny training cell takes ~30 s on 2 cores
MAX_NOTEBOOK_BYTES = 100_000

# Calls that draw a figure: a cell making one must show at least one image.
DRAWING_CALL = re.compile(
    r"\b(display_instances|display_differences|display_top_masks|display_images|draw_boxes|"
    r"draw_rois|draw_refinement|plot_precision_recall|plot_overlaps|plt\.show)\(")


# ------------------------------------------------------------------------------ helpers
def _read(name: str):
    return nbformat.read(os.path.join(NOTEBOOKS_DIR, f"{name}.ipynb"), as_version=4)


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def _assigned_names(source: str) -> set[str]:
    """Names bound at the top level of a code cell (IPython magics dropped)."""
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("%"))
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


def _text(cell) -> str:
    """Everything a cell printed or returned as text."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out:
            parts.append(str(out.data.get("text/plain", "")))
            parts.append(str(out.data.get("text/html", "")))
    return "".join(parts)


def _images(cell) -> int:
    return sum(1 for out in cell.get("outputs", [])
               if "data" in out and "image/png" in out.data)


def _cell(nb, marker: str):
    """The code cell whose source contains ``marker`` (exactly one)."""
    cells = [c for c in _code_cells(nb) if marker in c.source]
    assert len(cells) == 1, f"{len(cells)} cells contain {marker!r}"
    return cells[0]


def _number(nb, pattern: str) -> float:
    """The number a cell printed after ``pattern`` (a regex with one group)."""
    text = "".join(_text(c) for c in _code_cells(nb))
    match = re.search(pattern, text)
    assert match, f"no output matches {pattern!r}"
    return float(match.group(1))


def _execute(name: str, logs_dir: str):
    nb = _read(name)
    env = dict(os.environ)
    env.update(MRCNN_TINY="1", MRCNN_LOGS=logs_dir, TF_CPP_MIN_LOG_LEVEL="2",
               CI="1")  # CI: one line per epoch in Keras' progress output
    env.setdefault("KERAS_BACKEND", "tensorflow")
    env.pop("MPLBACKEND", None)  # the notebooks select the inline backend themselves
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": NOTEBOOKS_DIR}})
    client.execute(env=env)  # raises CellExecutionError, with the traceback, on an error
    return nb


def _check_common(nb) -> None:
    """No error output anywhere, and every drawing cell shows a picture."""
    for cell in _code_cells(nb):
        for out in cell.outputs:
            assert out.output_type != "error", f"{out.ename}: {out.evalue}"
        if DRAWING_CALL.search(cell.source):
            assert _images(cell) >= 1, f"no image from the cell:\n{cell.source}"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def logs_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("notebook_logs"))


@pytest.fixture(scope="module")
def trained(logs_dir):
    """train_shapes, executed once: its checkpoint is what the other notebooks load."""
    return _execute("train_shapes", logs_dir)


# -------------------------------------------------------------------- stored notebooks
def test_notebook_set():
    """Every notebook in notebooks/ is one this file executes."""
    found = {os.path.splitext(os.path.basename(p))[0]
             for p in glob.glob(os.path.join(NOTEBOOKS_DIR, "*.ipynb"))}
    assert found == set(SETTINGS)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_stored_without_outputs(name):
    path = os.path.join(NOTEBOOKS_DIR, f"{name}.ipynb")
    assert os.path.getsize(path) < MAX_NOTEBOOK_BYTES
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in _code_cells(nb):
        assert cell.outputs == [], f"{name}: stored with outputs; strip them"
        assert cell.execution_count is None, f"{name}: stored with execution counts"
    # Readable tutorials: explanations between the code.
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 4


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_settings_in_first_cell(name):
    """One cell at the top names the config, dataset and weights, and no later cell
    redefines them (so that pointing the notebook at other data is a one-cell change)."""
    cells = _code_cells(_read(name))
    first = _assigned_names(cells[0].source)
    assert SETTINGS[name] <= first, f"missing in the first cell: {SETTINGS[name] - first}"
    for cell in cells[1:]:
        again = _assigned_names(cell.source) & SETTINGS[name]
        assert not again, f"{name}: {again} redefined in:\n{cell.source}"


# --------------------------------------------------------------------------- execution
def test_train_shapes(trained, logs_dir):
    _check_common(trained)
    # Heads then all layers: a checkpoint per epoch, in a run folder of the tiny config.
    checkpoints = glob.glob(os.path.join(logs_dir, "tinyshapes*", "mask_rcnn_tinyshapes_*.h5"))
    assert len(checkpoints) == 2, checkpoints
    assert glob.glob(os.path.join(logs_dir, "tinyshapes*", "mask_rcnn_shapes.h5"))
    assert "Epoch 2/2" in _text(_cell(trained, 'layers="all"'))
    assert 0.0 <= _number(trained, r"mAP @ IoU=50 over \d+ images: ([0-9.]+)") <= 1.0
    assert _images(_cell(trained, "display_top_masks")) >= 2
    assert _images(_cell(trained, "model.detect(")) == 1


def test_inspect_data(logs_dir):
    nb = _execute("inspect_data", logs_dir)
    _check_common(nb)
    assert _images(_cell(nb, "display_top_masks")) >= 2
    # Mini masks: the round trip keeps most of each mask.
    ious = [float(v) for v in re.findall(r"round trip ([0-9.]+)", _text(
        _cell(nb, "minimize_mask")))]
    assert ious and all(0.5 < v <= 1.0 for v in ious), ious
    # One anchor panel per pyramid level.
    assert _text(_cell(nb, "generate_pyramid_anchors")).count("Anchors in Level") == 5
    # The data generator made positive anchors and positive ROIs.
    assert _number(nb, r"Positive anchors:\s+(\d+)") > 0
    assert _number(nb, r"Positive ROIs:\s+(\d+)") > 0


def test_inspect_model(trained, logs_dir):
    nb = _execute("inspect_model", logs_dir)
    _check_common(nb)
    assert "Loading weights" in _text(_cell(nb, "find_or_train"))
    assert "Training a quick model" not in _text(_cell(nb, "find_or_train"))
    assert 0.0 <= _number(nb, r"mAP @ IoU=50 over \d+ images: ([0-9.]+)") <= 1.0
    # run_graph returned every requested tensor.
    graph_log = _text(_cell(nb, '("proposals", "ROI")'))
    for name in ["rpn_class", "rpn_bbox", "anchors", "proposals", "probs", "deltas",
                 "detections", "masks"]:
        assert re.search(rf"^{name}\s+shape:", graph_log, re.M), name
    # Matterport's ancestor() names give the proposal layer's steps; the NumPy walk-through
    # finds the same boxes, and the NMS indices pick the layer's proposals.
    rpn_log = _text(_cell(nb, 'model.ancestor(pillar, "ROI/pre_nms_anchors:0")'))
    for name in ["pre_nms_anchors", "refined_anchors", "refined_anchors_clipped",
                 "post_nms_anchor_ix", "proposals"]:
        assert re.search(rf"^{name}\s+shape:", rpn_log, re.M), name
    assert _number(nb, r"refined and clipped anchors: max difference ([0-9.e+-]+)") < 1e-4
    nms_log = _text(_cell(nb, "utils.non_max_suppression(refined_anchors_clipped"))
    assert "post_nms_anchor_ix picks the ROI layer's proposals: True" in nms_log
    match = re.search(r"(\d+) proposals from the ROI layer; (\d+) of them match", nms_log)
    assert match and int(match.group(1)) > 0
    assert int(match.group(2)) >= 0.8 * int(match.group(1))
    assert 0.0 <= _number(nb, r"Recall @ IoU 0.5: ([0-9.]+)") <= 1.0
    # Activations: feature maps of C2..C5 and P2 (one figure), histograms.
    assert _images(_cell(nb, "channel {channel}")) >= 2  # the input image and the maps
    assert "C5" in _text(_cell(nb, "backbone_outputs = "))


def test_inspect_weights(trained, logs_dir):
    nb = _execute("inspect_weights", logs_dir)
    _check_common(nb)
    table = _text(_cell(nb, "display_weight_stats"))
    assert table.count("<tr>") > 20 and "tiny_conv1" in table
    layers = int(_number(nb, r"(\d+) layers of types"))
    assert layers > 10
    assert _images(_cell(nb, "LAYER_TYPES = ")) == 1


def test_demo(trained, logs_dir):
    nb = _execute("demo", logs_dir)
    _check_common(nb)
    assert "Training a quick model" not in _text(_cell(nb, "find_or_train"))
    assert _images(_cell(nb, "model.detect(")) == 1
    assert re.search(r"\d+ instances:", _text(_cell(nb, "model.detect(")))
    assert os.path.getsize(os.path.join(logs_dir, "demo_detections.png")) > 0
