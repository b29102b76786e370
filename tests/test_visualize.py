"""visualize: every function runs headless (Agg), saves PNGs, and the NumPy helpers are exact."""

import os
import subprocess
import sys

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")  # conftest sets MPLBACKEND=Agg too; be explicit for direct runs

import matplotlib.pyplot as plt  # noqa: E402

from mrcnn import visualize  # noqa: E402

CLASS_NAMES = ["BG", "square", "circle", "triangle"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _small_and_clean():
    # Low resolution keeps savefig fast; close everything so figures do not pile up.
    with matplotlib.rc_context({"savefig.dpi": 30, "figure.dpi": 30}):
        yield
    plt.close("all")


def assert_png(path, min_bytes=1000):
    assert os.path.exists(path), path
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert os.path.getsize(path) > min_bytes


def scene(n=2, height=48, width=64):
    """An image with n rectangular instances, and their boxes, masks and class ids."""
    image = np.full((height, width, 3), 40, np.uint8)
    boxes = np.array([[4 + 10 * i, 5 + 12 * i, 20 + 10 * i, 25 + 12 * i] for i in range(n)],
                     dtype=np.int32).reshape(-1, 4)
    masks = np.zeros((height, width, n), bool)
    for i, (y1, x1, y2, x2) in enumerate(boxes):
        masks[y1:y2, x1:x2, i] = True
        image[y1:y2, x1:x2] = (200, 50 * i, 100)
    class_ids = (np.arange(n) % 3 + 1).astype(np.int32)
    return image, boxes, masks, class_ids


# ----------------------------------------------------------------------------- NumPy helpers

def test_apply_mask_exact_blend_and_no_side_effects():
    image = np.full((4, 5, 3), 100, np.uint8)
    image[0, 0] = (10, 20, 30)
    original = image.copy()
    mask = np.zeros((4, 5), bool)
    mask[1, 2] = mask[3, 4] = True
    out = visualize.apply_mask(image, mask, (1.0, 0.0, 0.5), alpha=0.5)
    np.testing.assert_array_equal(image, original)  # input untouched
    assert out.dtype == np.uint8 and out.shape == image.shape
    # 100 * 0.5 + 0.5 * 255 * c, truncated to an integer.
    assert out[1, 2].tolist() == [177, 50, 113]
    assert out[3, 4].tolist() == [177, 50, 113]
    np.testing.assert_array_equal(out[~mask], original[~mask])

    image_f = np.full((2, 2, 3), 0.25 * 255)
    out_f = visualize.apply_mask(image_f, np.eye(2, dtype=np.uint8), (0.2, 0.4, 1.0), alpha=0.3)
    np.testing.assert_allclose(out_f[0, 0], 0.25 * 255 * 0.7 + 0.3 * 255 * np.array([.2, .4, 1.]))
    np.testing.assert_array_equal(out_f[0, 1], image_f[0, 1])


def test_draw_box_colors_exactly_the_border():
    image = np.zeros((10, 12, 3), np.uint8)
    result = visualize.draw_box(image, (2, 3, 7, 9), (255, 0, 7))
    assert result is image  # drawn in place
    expected = np.zeros((10, 12), bool)
    expected[2, 3:9] = expected[6, 3:9] = True
    expected[2:7, 3] = expected[2:7, 8] = True
    np.testing.assert_array_equal(image.any(axis=-1), expected)
    assert (image[expected] == (255, 0, 7)).all()


def test_draw_box_clips_without_wrapping():
    image = np.zeros((8, 8), np.uint8)
    visualize.draw_box(image, (-2, -3, 4, 5), 9)
    expected = np.zeros((8, 8), np.uint8)
    expected[3, 0:5] = 9  # bottom edge (y2 - 1)
    expected[0:4, 4] = 9  # right edge (x2 - 1)
    np.testing.assert_array_equal(image, expected)


def test_random_colors():
    colors = visualize.random_colors(6, seed=3)
    assert colors == visualize.random_colors(6, seed=3)
    assert len(set(colors)) == 6
    assert all(len(c) == 3 and max(c) == 1.0 for c in colors)
    assert max(max(c) for c in visualize.random_colors(5, bright=False, seed=0)) == 0.7
    assert visualize.random_colors(0) == []


# ----------------------------------------------------------------------------- drawing

@pytest.mark.parametrize("n", [3, 0])
def test_display_instances(tmp_path, n, capsys):
    image, boxes, masks, class_ids = scene(n)
    scores = np.linspace(0.9, 0.5, n)
    path = tmp_path / "inst.png"
    ax = visualize.display_instances(image, boxes, masks, class_ids, CLASS_NAMES, scores,
                                     title="t", figsize=(3, 3), save_path=path)
    assert_png(path)
    texts = [t.get_text() for t in ax.texts]
    if n:
        assert texts == [f"{CLASS_NAMES[c]} {s:.3f}" for c, s in zip(class_ids, scores)]
        # One dashed box and at least one outline per instance.
        assert sum(isinstance(p, matplotlib.patches.Rectangle) for p in ax.patches) == n
        assert sum(isinstance(p, matplotlib.patches.Polygon) for p in ax.patches) >= n
    else:
        assert "No instances" in capsys.readouterr().out
        assert any("No instances" in t for t in texts)


def test_display_instances_on_given_axes_skips_padding():
    image, boxes, masks, class_ids = scene(2)
    boxes = np.concatenate([boxes, np.zeros((1, 4), np.int32)])
    masks = np.concatenate([masks, np.zeros(masks.shape[:2] + (1,), bool)], axis=-1)
    class_ids = np.append(class_ids, 0)
    fig, ax = plt.subplots(1, 2)
    out = visualize.display_instances(image, boxes, masks, class_ids, CLASS_NAMES, ax=ax[1],
                                      captions=["a", "b", "c"], show_mask=False)
    assert out is ax[1]
    assert [t.get_text() for t in ax[1].texts] == ["a", "b"]
    # show_mask=False: the displayed image is the input image.
    np.testing.assert_array_equal(ax[1].images[0].get_array(), image)


def test_save_instances_image(tmp_path):
    image, boxes, masks, class_ids = scene(2)
    n_figs = len(plt.get_fignums())
    path = visualize.save_instances_image(tmp_path / "s.png", image, boxes, masks, class_ids,
                                          CLASS_NAMES, np.array([0.9, 0.8]), figsize=(2, 2),
                                          title="saved")
    assert path == str(tmp_path / "s.png")
    assert_png(path)
    assert len(plt.get_fignums()) == n_figs  # nothing left open in pyplot
    visualize.save_instances_image(tmp_path / "e.png", image, np.zeros((0, 4)),
                                   np.zeros(image.shape[:2] + (0,), bool), np.zeros(0, int),
                                   CLASS_NAMES, figsize=(2, 2))
    assert_png(tmp_path / "e.png")


def test_display_differences_captions_follow_matches(tmp_path):
    image, gt_boxes, gt_masks, gt_ids = scene(2)
    # Predictions in increasing score order: the captions must still pair each score with
    # its own IoU. Low score: exactly gt 1. High score: the left half of gt 0.
    pred_masks = np.zeros_like(gt_masks)
    pred_masks[..., 0] = gt_masks[..., 1]
    y1, x1, y2, x2 = gt_boxes[0]
    pred_masks[y1:y2, x1:x1 + (x2 - x1) // 2, 1] = True
    pred_boxes = np.array([gt_boxes[1], [y1, x1, y2, x1 + (x2 - x1) // 2]])
    pred_ids = gt_ids[[1, 0]]
    pred_scores = np.array([0.6, 0.9])
    path = tmp_path / "diff.png"
    ax = visualize.display_differences(image, gt_boxes, gt_ids, gt_masks, pred_boxes, pred_ids,
                                       pred_scores, pred_masks, CLASS_NAMES, save_path=path)
    assert_png(path)
    captions = [t.get_text() for t in ax.texts if t.get_text()]
    assert sorted(captions) == ["0.60 / 1.00", "0.90 / 0.50"]
    assert "GT=green" in ax.get_title()

    # No predictions at all.
    ax = visualize.display_differences(image, gt_boxes, gt_ids, gt_masks, np.zeros((0, 4)),
                                       np.zeros(0, int), np.zeros(0),
                                       np.zeros(image.shape[:2] + (0,), bool), CLASS_NAMES)
    assert [t.get_text() for t in ax.texts] == ["", ""]


@pytest.mark.parametrize("n", [6, 0])
def test_draw_rois(tmp_path, n, capsys):
    image, _, _, _ = scene(0)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 30, n)
    x = rng.integers(0, 40, n)
    rois = np.stack([y, x, y + 12, x + 16], axis=1).astype(np.int32)
    refined = rois + 2
    masks = rng.random((n, 7, 7)).astype(np.float32)
    class_ids = np.array([1, 0, 2, 0, 3, 1][:n])
    path = tmp_path / "rois.png"
    ax = visualize.draw_rois(image, rois, refined, masks, class_ids, CLASS_NAMES, limit=4,
                             seed=0, save_path=path)
    assert_png(path, min_bytes=500)
    out = capsys.readouterr().out
    assert f"Positive ROIs:  {int((class_ids > 0).sum())}" in out
    if n:
        assert ax.get_title() == "Showing 4 random ROIs out of 6"
        assert "Positive Ratio: 0.67" in out


def test_display_top_masks_and_images(tmp_path):
    image, _, masks, class_ids = scene(3)
    path = tmp_path / "top.png"
    axes = visualize.display_top_masks(image, masks, class_ids, CLASS_NAMES, limit=4,
                                       save_path=path)
    assert_png(path)
    assert [a.get_title() for a in axes] == ["H x W=48x64", "square", "circle", "triangle",
                                             "-"]
    axes = visualize.display_top_masks(image, masks[..., :0], class_ids[:0], CLASS_NAMES,
                                       limit=2)
    assert [a.get_title() for a in axes][1:] == ["-", "-"]
    axes = visualize.display_images([image, image[..., 0]], titles=["a", "b"], cols=4,
                                    save_path=tmp_path / "imgs.png")
    assert len(axes) == 2
    assert_png(tmp_path / "imgs.png")
    assert visualize.display_images([]) == []


def test_plot_precision_recall_and_overlaps(tmp_path):
    ax = visualize.plot_precision_recall(0.75, np.array([1, 1, 0.5, 0.5]),
                                         np.array([0, 0.5, 0.5, 1]),
                                         save_path=tmp_path / "pr.png")
    assert_png(tmp_path / "pr.png")
    assert "0.750" in ax.get_title()

    overlaps = np.array([[0.9, 0.1], [0.0, 0.6], [0.7, 0.0]])
    ax = visualize.plot_overlaps(np.array([1, 2, 0]), np.array([1, 3, 2]),
                                 np.array([0.9, 0.8, 0.7]), overlaps, CLASS_NAMES,
                                 save_path=tmp_path / "ov.png")
    assert_png(tmp_path / "ov.png")
    labels = [t.get_text().split("\n")[1] for t in ax.texts]
    assert labels == ["match", "", "", "wrong", "wrong", ""]
    # Nothing to compare.
    visualize.plot_overlaps(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros((0, 0)),
                            CLASS_NAMES, save_path=tmp_path / "ov0.png")
    assert_png(tmp_path / "ov0.png", min_bytes=200)


@pytest.mark.parametrize("n", [3, 0])
def test_draw_boxes(tmp_path, n):
    image, boxes, masks, _ = scene(n)
    ax = visualize.draw_boxes(image, boxes=boxes, refined_boxes=boxes + 1, masks=masks,
                              captions=[f"c{i}" for i in range(n)],
                              visibilities=[0, 1, 2][:n], title="boxes",
                              save_path=tmp_path / "b.png")
    assert_png(tmp_path / "b.png")
    assert [t.get_text() for t in ax.texts if t.get_text().startswith("c")] == \
        [f"c{i}" for i in range(n)]
    visualize.draw_boxes(image, refined_boxes=boxes)  # refined boxes only


def test_figures_saved_with_save_path_are_closed_others_stay(tmp_path):
    image, boxes, masks, class_ids = scene(1)
    before = len(plt.get_fignums())
    visualize.display_instances(image, boxes, masks, class_ids, CLASS_NAMES, figsize=(2, 2),
                                save_path=tmp_path / "x.png")
    assert len(plt.get_fignums()) == before
    # Without save_path the figure stays open, so plt.savefig() afterwards still works.
    ax = visualize.display_instances(image, boxes, masks, class_ids, CLASS_NAMES,
                                     figsize=(2, 2))
    assert plt.gcf() is ax.figure
    plt.savefig(tmp_path / "y.png")
    assert_png(tmp_path / "y.png", min_bytes=500)


def test_display_table_text_and_html(capsys, monkeypatch):
    visualize.display_table([["NAME", "VALUE"], ["a", 1.5], ["long_name", "<x>"]])
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["NAME       VALUE", "a          1.5", "long_name  <x>"]

    shown = []
    monkeypatch.setattr(visualize, "_in_notebook", lambda: True)
    monkeypatch.setattr("IPython.display.display", shown.append)
    visualize.display_table([["a", "<b>"]])
    assert len(shown) == 1
    markup = shown[0].data
    assert markup.startswith("<table><tr><td>a") and "&lt;b&gt;" in markup


def test_import_is_headless_and_backend_free():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY",
                                                             "MPLBACKEND")}
    code = ("import sys, matplotlib; import mrcnn.visualize; "
            "print(matplotlib.get_backend().lower(), 'tensorflow' in sys.modules, "
            "'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.split() == ["agg", "False", "False"]


# ----------------------------------------------------------------------------- weights

def test_weight_stats_match_numpy(capsys):
    keras = pytest.importorskip("keras")
    inner = keras.Sequential([keras.layers.Dense(2, name="inner_dense")], name="inner")
    inputs = keras.Input((4,))
    x = keras.layers.Dense(3, name="outer_dense")(inputs)
    x = inner(x)
    outputs = keras.layers.BatchNormalization(name="bn")(x)
    model = keras.Model(inputs, outputs)

    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(4, 3)).astype(np.float32)
    model.get_layer("outer_dense").set_weights([kernel, np.zeros(3, np.float32)])
    # Constant kernel -> "dead?"; huge bias -> "overflow?" (a constant bias alone is fine).
    inner.get_layer("inner_dense").set_weights([np.full((3, 2), 0.5, np.float32),
                                                np.array([0.0, 5000.0], np.float32)])

    stats = {s["name"]: s for s in visualize.weight_stats(model)}
    expected = {"outer_dense/kernel": kernel}
    for layer in (model.get_layer("outer_dense"), inner.get_layer("inner_dense"),
                  model.get_layer("bn")):
        for var in layer.weights:
            expected[var.path] = np.asarray(var.numpy())
    assert set(stats) == set(expected)  # nested model's weights included, once
    for name, value in expected.items():
        s = stats[name]
        assert s["shape"] == value.shape
        assert s["min"] == pytest.approx(float(value.min()))
        assert s["max"] == pytest.approx(float(value.max()))
        assert s["std"] == pytest.approx(float(value.std()), abs=1e-7)
    assert stats["outer_dense/kernel"]["min"] == pytest.approx(float(kernel.min()))
    assert stats["outer_dense/kernel"]["alerts"] == []
    inner_kernel = inner.get_layer("inner_dense").kernel.path
    inner_bias = inner.get_layer("inner_dense").bias.path
    assert stats[inner_kernel]["alerts"] == ["dead?"]
    assert stats[inner_bias]["alerts"] == ["overflow?"]
    assert all(not s["alerts"] for n, s in stats.items() if n.startswith("bn/"))

    # The MaskRCNN facade (anything with .keras_model) works too, and the table prints.
    class Facade:
        keras_model = model

    visualize.display_weight_stats(Facade())
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["WEIGHT", "NAME", "SHAPE", "MIN", "MAX", "STD"]
    row = next(line for line in out.splitlines() if line.startswith("outer_dense/kernel"))
    assert "(4, 3)" in row and f"{kernel.min():+9.4f}".strip() in row
    assert f"{inner_kernel}  *** dead?" in out
