"""Drawing helpers for images, masks, boxes, ROIs, metrics and weights (matplotlib).

The functions keep the names, arguments and look of Matterport's ``mrcnn/visualize.py``,
so notebooks written for it run unchanged. Additions:

- every drawing function takes ``save_path=None``; when given, the figure is written there
  (PNG unless the extension names another format);
- drawing functions return the Axes they drew on (``display_images`` and
  ``display_top_masks`` return the list of Axes), so scripts can keep working on them;
- ``random_colors`` and ``draw_rois`` accept a ``seed`` for reproducible pictures;
- ``save_instances_image`` renders ``display_instances`` straight to a file;
- ``weight_stats`` returns the numbers that ``display_weight_stats`` shows.

Headless use: importing this module on a machine with no display (no ``DISPLAY`` /
``WAYLAND_DISPLAY``, no ``MPLBACKEND``, pyplot not imported yet, not inside a Jupyter
kernel) selects matplotlib's Agg backend, and ``plt.show()`` is only called on interactive
backends (Jupyter's inline backend counts as interactive, so notebooks still show figures).
On Agg, figures created without ``save_path`` stay open in pyplot, so the Matterport-era
habit ``display_instances(...); plt.savefig("out.png")`` keeps working; figures that this
module created and saved to ``save_path`` are closed.

Importing this module does not import TensorFlow or Keras.
"""

from __future__ import annotations

import colorsys
import html
import itertools
import os
import random
import sys
from typing import Any, Sequence

import matplotlib

# Choose a backend before pyplot is imported, and only when nobody else has chosen one:
# MPLBACKEND (set by ipykernel for the inline backend, or by the user) and an already
# imported pyplot both win.
if ("matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND")
        and "ipykernel" not in sys.modules and sys.platform.startswith("linux")
        and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY")):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import lines, patches  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Polygon  # noqa: E402
from skimage.measure import find_contours  # noqa: E402

from mrcnn import utils  # noqa: E402
from mrcnn.metrics import compute_matches  # noqa: E402

# Backends that cannot show a window; plt.show() on them only warns.
_NON_INTERACTIVE_BACKENDS = {"agg", "pdf", "ps", "svg", "pgf", "cairo", "template"}

NO_INSTANCES = "No instances to display"


############################################################
#  Figure plumbing
############################################################


def _is_interactive_backend() -> bool:
    return matplotlib.get_backend().lower() not in _NON_INTERACTIVE_BACKENDS


def _finish(fig: Figure, save_path: str | os.PathLike | None, owned: bool) -> None:
    """Save and/or show a figure once drawing is done.

    Args:
        fig: the figure drawn on.
        save_path: where to save it, or None.
        owned: True when this module created the figure (the caller passed no ``ax``);
            only then is it shown or closed, as Matterport only showed its own figures.
    """
    if save_path is not None:
        fig.savefig(os.fspath(save_path), bbox_inches="tight")
    if not owned:
        return
    if _is_interactive_backend():
        plt.show()
    elif save_path is not None:
        # Saved and not showable: free it so loops over many images do not pile up figures.
        plt.close(fig)


def _new_axes(figsize: tuple[float, float]) -> Axes:
    _, ax = plt.subplots(1, figsize=figsize)
    return ax


def _rgb(color: Any) -> tuple[float, float, float]:
    """Any matplotlib color spec (name, RGB or RGBA in 0..1) as an RGB tuple in 0..1."""
    return tuple(float(c) for c in to_rgb(color))  # type: ignore[return-value]


def _draw_mask_contours(ax: Axes, mask: np.ndarray, color: Any) -> None:
    """Outline a mask with polygons.

    The mask is padded by one pixel so that find_contours also closes the outlines of
    masks that touch the image border.
    """
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=np.uint8)
    padded[1:-1, 1:-1] = mask
    for verts in find_contours(padded, 0.5):
        # (row, col) -> (x, y), minus the padding offset.
        ax.add_patch(Polygon(np.fliplr(verts) - 1, facecolor="none", edgecolor=color))


def _frame_axes(ax, image_shape, margin: int, title: str, count: int) -> None:
    """Axes limits with a margin (so border boxes stay visible), no ticks, the title, and
    the "No instances" note when ``count`` is 0."""
    height, width = image_shape[:2]
    ax.set_ylim(height + margin, -margin)
    ax.set_xlim(-margin, width + margin)
    ax.axis("off")
    ax.set_title(title)
    if not count:
        _draw_no_instances(ax)


def _draw_no_instances(ax: Axes) -> None:
    print(f"\n*** {NO_INSTANCES} *** \n")
    ax.text(0.5, 0.5, NO_INSTANCES, transform=ax.transAxes, ha="center", va="center",
            color="w", size=14, bbox={"facecolor": "black", "alpha": 0.5, "edgecolor": "none"})


############################################################
#  Visualization
############################################################


def display_images(images: Sequence[np.ndarray], titles: Sequence[str] | None = None,
                   cols: int = 4, cmap: Any = None, norm: Any = None,
                   interpolation: str | None = None, *,
                   save_path: str | os.PathLike | None = None) -> list[Axes]:
    """Show images side by side in a grid, with optional titles.

    Args:
        images: list of images ([H, W] or [H, W, 3]); values are cast to uint8.
        titles: one title per image (default "Image (i)").
        cols: images per row.
        cmap: colormap, e.g. "Blues" (used for single-channel images).
        norm: matplotlib ``Normalize`` for the colormap.
        interpolation: matplotlib image interpolation.
        save_path: save the figure there (PNG by default).

    Returns:
        The Axes of each image, in order (empty when ``images`` is empty).
    """
    if len(images) == 0:
        print("No images to display")
        return []
    titles = list(titles) if titles is not None else [None] * len(images)
    cols = max(1, min(cols, len(images)))
    rows = -(-len(images) // cols)  # ceil: Matterport added an empty row on exact fits
    fig = plt.figure(figsize=(14, max(1.0, 14 * rows / cols)))
    axes = []
    for i, (image, title) in enumerate(zip(images, titles), start=1):
        ax = fig.add_subplot(rows, cols, i)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        ax.imshow(np.asarray(image).astype(np.uint8), cmap=cmap, norm=norm,
                  interpolation=interpolation)
        axes.append(ax)
    _finish(fig, save_path, owned=True)
    return axes


def random_colors(N: int, bright: bool = True,
                  seed: int | None = None) -> list[tuple[float, float, float]]:
    """Generate N visually distinct colors.

    Hues are spread evenly around the HSV circle, then shuffled so that neighbouring
    instances do not get neighbouring hues.

    Args:
        N: number of colors.
        bright: full brightness (True) or 70% (False).
        seed: seed of the shuffle for reproducible colors. None shuffles with Python's
            global ``random`` module, as Matterport did (so ``random.seed`` also works).

    Returns:
        List of N RGB tuples with values in 0..1.
    """
    brightness = 1.0 if bright else 0.7
    colors = [colorsys.hsv_to_rgb(i / N, 1, brightness) for i in range(N)]
    shuffler = random.Random(seed) if seed is not None else random
    shuffler.shuffle(colors)
    return colors


def apply_mask(image: np.ndarray, mask: np.ndarray, color: Any,
               alpha: float = 0.5) -> np.ndarray:
    """Blend a color into the pixels of an image that a mask covers.

    A covered pixel becomes ``image * (1 - alpha) + alpha * 255 * color`` per channel;
    other pixels are unchanged. Unlike Matterport's version, the input is NOT modified:
    a new array is returned (Matterport's also returned the image, and its own callers
    always used the return value, so ``img = apply_mask(img, ...)`` behaves the same).

    Args:
        image: [H, W, C] image with C >= 3; only the first 3 channels are blended.
        mask: [H, W]; pixels where ``mask == 1`` (True for bool masks) are colored.
        color: RGB (or RGBA, alpha ignored) with values in 0..1, or a matplotlib color name.
        alpha: opacity of the color.

    Returns:
        New array of the same shape and dtype as ``image``. For integer dtypes the blended
        values are truncated towards zero, as Matterport's in-place assignment did.
    """
    image = np.asarray(image)
    covered = (np.asarray(mask) == 1)[..., None]
    rgb = np.asarray(_rgb(color), dtype=np.float64) * 255
    channels = image[..., :3]
    blended = channels * (1 - alpha) + alpha * rgb
    out = image.copy()
    out[..., :3] = np.where(covered, blended, channels).astype(image.dtype)
    return out


def display_instances(image: np.ndarray, boxes: np.ndarray, masks: np.ndarray,
                      class_ids: np.ndarray, class_names: Sequence[str],
                      scores: np.ndarray | None = None, title: str = "",
                      figsize: tuple[float, float] = (16, 16), ax: Axes | None = None,
                      show_mask: bool = True, show_bbox: bool = True,
                      colors: Sequence[Any] | None = None,
                      captions: Sequence[str] | None = None, *,
                      save_path: str | os.PathLike | None = None) -> Axes:
    """Draw instances: tinted masks with outlines, dashed boxes and captions.

    Args:
        image: [H, W, 3] image.
        boxes: [N, (y1, x1, y2, x2)] in pixels. All-zero rows (padding) are skipped.
        masks: [H, W, N] instance masks.
        class_ids: [N] class ids (indices into ``class_names``).
        class_names: class names of the dataset.
        scores: [N] confidences, shown in captions if given.
        title: figure title.
        figsize: size of the figure created when ``ax`` is None.
        ax: draw on these Axes instead of a new figure (then nothing is shown).
        show_mask: tint the masks (outlines are always drawn).
        show_bbox: draw the boxes.
        colors: one color per instance (default: ``random_colors(N)``).
        captions: one caption per instance instead of "class score".
        save_path: save the figure there (PNG by default).

    Returns:
        The Axes drawn on.
    """
    boxes = np.zeros((0, 4)) if boxes is None else np.asarray(boxes)
    N = boxes.shape[0]
    if N:
        assert boxes.shape[0] == masks.shape[-1] == len(class_ids), \
            "boxes, masks and class_ids must describe the same number of instances"
    owned = ax is None
    if owned:
        ax = _new_axes(figsize)
    colors = list(colors) if colors is not None else random_colors(N)

    _frame_axes(ax, image.shape, 10, title, N)

    # uint32 so that blending cannot wrap around; converted back for imshow.
    masked_image = np.asarray(image).astype(np.uint32).copy()
    for i in range(N):
        color = colors[i]
        if not np.any(boxes[i]):
            continue  # zero padding (e.g. unused detection slots)
        y1, x1, y2, x2 = boxes[i]
        if show_bbox:
            ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, linewidth=2, alpha=0.7,
                                           linestyle="dashed", edgecolor=color,
                                           facecolor="none"))
        if captions is None:
            label = class_names[int(class_ids[i])]
            score = scores[i] if scores is not None else None
            caption = f"{label} {score:.3f}" if score else label
        else:
            caption = captions[i]
        ax.text(x1, y1 + 8, caption, color="w", size=11, backgroundcolor="none")

        mask = masks[:, :, i]
        if show_mask:
            masked_image = apply_mask(masked_image, mask, color)
        _draw_mask_contours(ax, mask, color)
    ax.imshow(masked_image.astype(np.uint8))
    _finish(ax.figure, save_path, owned)
    return ax


def save_instances_image(path: str | os.PathLike, image: np.ndarray, boxes: np.ndarray,
                         masks: np.ndarray, class_ids: np.ndarray,
                         class_names: Sequence[str], scores: np.ndarray | None = None,
                         figsize: tuple[float, float] = (8, 8), dpi: int = 100,
                         **kwargs: Any) -> str:
    """Render ``display_instances`` into an image file, without showing anything.

    The figure is a standalone ``matplotlib.figure.Figure`` (not registered with pyplot),
    so this is safe in loops and on any backend.

    Args:
        path: output file (PNG unless the extension names another format).
        image, boxes, masks, class_ids, class_names, scores: as ``display_instances``.
        figsize: figure size in inches.
        dpi: resolution of the file.
        **kwargs: other ``display_instances`` arguments (title, show_mask, show_bbox,
            colors, captions).

    Returns:
        The path written, as a string.
    """
    fig = Figure(figsize=figsize, dpi=dpi)
    ax = fig.add_subplot(1, 1, 1)
    display_instances(image, boxes, masks, class_ids, class_names, scores, ax=ax, **kwargs)
    fig.savefig(os.fspath(path), bbox_inches="tight")
    return os.fspath(path)


def display_differences(image: np.ndarray, gt_box: np.ndarray, gt_class_id: np.ndarray,
                        gt_mask: np.ndarray, pred_box: np.ndarray,
                        pred_class_id: np.ndarray, pred_score: np.ndarray,
                        pred_mask: np.ndarray, class_names: Sequence[str], title: str = "",
                        ax: Axes | None = None, show_mask: bool = True,
                        show_box: bool = True, iou_threshold: float = 0.5,
                        score_threshold: float = 0.5, *,
                        save_path: str | os.PathLike | None = None) -> Axes:
    """Draw ground truth (green) and predictions (red) together.

    Each prediction is captioned "score / IoU", where IoU is the mask IoU with the ground
    truth it matched (``metrics.compute_matches``) or, when unmatched, its best IoU with any
    ground truth.

    Args:
        image: [H, W, 3] image.
        gt_box, gt_class_id, gt_mask: ground truth ([N, 4], [N], [H, W, N]).
        pred_box, pred_class_id, pred_score, pred_mask: predictions ([P, 4], [P], [P],
            [H, W, P]).
        class_names: class names of the dataset.
        title: figure title (default explains the colors).
        ax: draw on these Axes instead of a new figure.
        show_mask: tint the masks.
        show_box: draw the boxes.
        iou_threshold: minimum mask IoU for a match.
        score_threshold: passed to ``compute_matches`` (which, like Matterport's, compares
            it to IoUs).
        save_path: save the figure there (PNG by default).

    Returns:
        The Axes drawn on.
    """
    # Drop zero padding and sort predictions by decreasing score (stable, like
    # compute_matches), so that pred_match and overlaps rows line up with what we draw.
    gt_box, gt_class_id, gt_mask = _trim_padding(gt_box, gt_class_id, gt_mask)
    pred_box, keep = _trim_boxes(pred_box)
    order = np.argsort(-np.asarray(pred_score)[keep], kind="stable")
    pred_box = pred_box[order]
    pred_class_id = np.asarray(pred_class_id)[keep][order]
    pred_score = np.asarray(pred_score)[keep][order]
    pred_mask = np.asarray(pred_mask)[..., keep][..., order]

    gt_match, pred_match, overlaps = compute_matches(
        gt_box, gt_class_id, gt_mask, pred_box, pred_class_id, pred_score, pred_mask,
        iou_threshold=iou_threshold, score_threshold=score_threshold)
    n_gt, n_pred = len(gt_match), len(pred_match)
    colors = [(0, 1, 0, .8)] * n_gt + [(1, 0, 0, 1)] * n_pred
    class_ids = np.concatenate([gt_class_id, pred_class_id]).astype(np.int32)
    scores = np.concatenate([np.zeros([n_gt]), pred_score])
    boxes = np.concatenate([gt_box.reshape(-1, 4), pred_box.reshape(-1, 4)])
    masks = np.concatenate([_as_masks(gt_mask, image, n_gt), _as_masks(pred_mask, image, n_pred)],
                           axis=-1)

    def iou_of(i: int) -> float:
        if overlaps.shape[1] == 0:
            return 0.0
        j = int(pred_match[i])
        return float(overlaps[i, j] if j > -1 else overlaps[i].max())

    captions = [""] * n_gt + [f"{pred_score[i]:.2f} / {iou_of(i):.2f}" for i in range(n_pred)]
    title = title or "Ground Truth and Detections\n GT=green, pred=red, captions: score/IoU"
    return display_instances(image, boxes, masks, class_ids, class_names, scores, ax=ax,
                             show_bbox=show_box, show_mask=show_mask, colors=colors,
                             captions=captions, title=title, save_path=save_path)


def _trim_boxes(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.asarray(boxes).reshape(-1, 4)
    keep = np.where(np.any(boxes != 0, axis=1))[0]
    return boxes[keep], keep


def _trim_padding(boxes: np.ndarray, class_ids: np.ndarray,
                  masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes, keep = _trim_boxes(boxes)
    return boxes, np.asarray(class_ids)[keep], np.asarray(masks)[..., keep]


def _as_masks(masks: np.ndarray, image: np.ndarray, n: int) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 3:  # e.g. an empty [0] array for no instances
        masks = np.zeros(image.shape[:2] + (n,), dtype=bool)
    return masks


def draw_rois(image: np.ndarray, rois: np.ndarray, refined_rois: np.ndarray,
              mask: np.ndarray, class_ids: np.ndarray, class_names: Sequence[str],
              limit: int = 10, *, ax: Axes | None = None, seed: int | None = None,
              save_path: str | os.PathLike | None = None) -> Axes:
    """Draw ROIs (dashed; gray for background) with their refined boxes and masks.

    For each positive ROI (class id > 0): the refined box (solid), a line joining the
    top-left corners of ROI and refined box, the class name and the mask pasted into the
    ROI. Prints the positive/negative ROI counts.

    Args:
        image: [H, W, 3] image.
        rois: [N, (y1, x1, y2, x2)] ROIs in pixels.
        refined_rois: [N, (y1, x1, y2, x2)] the ROIs after applying the box deltas.
        mask: [N, mask_h, mask_w] float masks (class channel already selected).
        class_ids: [N] class id of each ROI (0: background).
        class_names: class names of the dataset.
        limit: draw at most this many ROIs (a random subset when there are more).
        ax: draw on these Axes instead of a new figure.
        seed: seed for the subset and the colors; None uses NumPy's global random state,
            as Matterport did.
        save_path: save the figure there (PNG by default).

    Returns:
        The Axes drawn on.
    """
    rng = np.random.default_rng(seed) if seed is not None else np.random
    rois = np.asarray(rois).reshape(-1, 4)
    class_ids = np.asarray(class_ids)
    masked_image = np.asarray(image).copy()
    ids = np.arange(rois.shape[0], dtype=np.int32)
    if ids.shape[0] > limit:
        ids = rng.choice(ids, limit, replace=False)
    owned = ax is None
    if owned:
        ax = _new_axes((12, 12))
    if rois.shape[0] > limit:
        ax.set_title(f"Showing {len(ids)} random ROIs out of {rois.shape[0]}")
    else:
        ax.set_title(f"{len(ids)} ROIs")
    # Show the area outside the image: ROIs may cross its border.
    ax.set_ylim(image.shape[0] + 20, -20)
    ax.set_xlim(-50, image.shape[1] + 20)
    ax.axis("off")

    for roi_id in ids:
        color = tuple(rng.random(3))
        class_id = int(class_ids[roi_id])
        y1, x1, y2, x2 = rois[roi_id]
        ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, linewidth=2,
                                       edgecolor=color if class_id else "gray",
                                       facecolor="none", linestyle="dashed"))
        if class_id:
            ry1, rx1, ry2, rx2 = refined_rois[roi_id]
            ax.add_patch(patches.Rectangle((rx1, ry1), rx2 - rx1, ry2 - ry1, linewidth=2,
                                           edgecolor=color, facecolor="none"))
            ax.add_line(lines.Line2D([x1, rx1], [y1, ry1], color=color))
            ax.text(rx1, ry1 + 8, f"{class_names[class_id]}", color="w", size=11,
                    backgroundcolor="none")
            m = utils.unmold_mask(mask[roi_id], rois[roi_id][:4].astype(np.int32), image.shape)
            masked_image = apply_mask(masked_image, m, color)
    ax.imshow(masked_image)

    n_pos = int(np.sum(class_ids > 0))
    n_neg = int(np.sum(class_ids == 0))
    print("Positive ROIs: ", n_pos)
    print("Negative ROIs: ", n_neg)
    if class_ids.shape[0]:
        print(f"Positive Ratio: {n_pos / class_ids.shape[0]:.2f}")
    _finish(ax.figure, save_path, owned)
    return ax


def draw_box(image: np.ndarray, box: Sequence[int], color: Any) -> np.ndarray:
    """Draw a 1-pixel rectangle on an image array, in place.

    The outline runs along the outermost pixels of the box: rows ``y1`` and ``y2 - 1``,
    columns ``x1`` and ``x2 - 1`` (``y2``/``x2`` are exclusive, as ``utils.extract_bboxes``
    returns them). Parts outside the image are clipped. Matterport drew 2-pixel lines,
    partly outside the box.

    Args:
        image: [H, W, C] array, modified in place.
        box: (y1, x1, y2, x2) integer pixel coordinates.
        color: value(s) assigned to the outline pixels, e.g. (255, 0, 0).

    Returns:
        The same ``image`` array, for chaining.
    """
    height, width = image.shape[:2]
    y1, x1, y2, x2 = (int(v) for v in box[:4])
    if y2 <= y1 or x2 <= x1:
        return image
    # Clip the spans to the image, and draw an edge only when its row/column is inside
    # (negative indices would otherwise wrap around to the other side).
    cy1, cx1, cy2, cx2 = max(y1, 0), max(x1, 0), min(y2, height), min(x2, width)
    if cy2 <= cy1 or cx2 <= cx1:
        return image
    if 0 <= y1 < height:
        image[y1, cx1:cx2] = color
    if 0 <= y2 - 1 < height:
        image[y2 - 1, cx1:cx2] = color
    if 0 <= x1 < width:
        image[cy1:cy2, x1] = color
    if 0 <= x2 - 1 < width:
        image[cy1:cy2, x2 - 1] = color
    return image


def display_top_masks(image: np.ndarray, mask: np.ndarray, class_ids: np.ndarray,
                      class_names: Sequence[str], limit: int = 4, *,
                      save_path: str | os.PathLike | None = None) -> list[Axes]:
    """Show the image next to the masks of its ``limit`` largest classes (by mask area).

    Args:
        image: [H, W, 3] image.
        mask: [H, W, N] instance masks.
        class_ids: [N] class ids.
        class_names: class names of the dataset.
        limit: number of class panels ("-" panels fill up when there are fewer classes).
        save_path: save the figure there (PNG by default).

    Returns:
        The Axes of the panels (image first).
    """
    mask = np.asarray(mask)
    class_ids = np.asarray(class_ids)
    to_display = [image]
    titles = [f"H x W={image.shape[0]}x{image.shape[1]}"]
    unique_class_ids = np.unique(class_ids)
    mask_area = [np.sum(mask[:, :, np.where(class_ids == i)[0]]) for i in unique_class_ids]
    top_ids = [cid for cid, area in sorted(zip(unique_class_ids, mask_area),
                                           key=lambda r: r[1], reverse=True) if area > 0]
    for i in range(limit):
        class_id = top_ids[i] if i < len(top_ids) else -1
        # All instances of the class in one panel, each with its own level (1, 2, ...).
        m = mask[:, :, np.where(class_ids == class_id)[0]]
        m = np.sum(m * np.arange(1, m.shape[-1] + 1), -1)
        to_display.append(m)
        titles.append(class_names[int(class_id)] if class_id != -1 else "-")
    return display_images(to_display, titles=titles, cols=limit + 1, cmap="Blues_r",
                          save_path=save_path)


def plot_precision_recall(AP: float, precisions: np.ndarray, recalls: np.ndarray, *,
                          ax: Axes | None = None,
                          save_path: str | os.PathLike | None = None) -> Axes:
    """Plot a precision-recall curve.

    Args:
        AP: average precision at IoU 0.5, shown in the title.
        precisions: precision values (as returned by ``metrics.compute_ap``).
        recalls: recall values, same length.
        ax: draw on these Axes instead of a new figure.
        save_path: save the figure there (PNG by default).

    Returns:
        The Axes drawn on.
    """
    owned = ax is None
    if owned:
        _, ax = plt.subplots(1)
    ax.set_title(f"Precision-Recall Curve. AP@50 = {AP:.3f}")
    ax.set_ylim(0, 1.1)
    ax.set_xlim(0, 1.1)
    ax.plot(recalls, precisions)
    _finish(ax.figure, save_path, owned)
    return ax


def plot_overlaps(gt_class_ids: np.ndarray, pred_class_ids: np.ndarray,
                  pred_scores: np.ndarray, overlaps: np.ndarray,
                  class_names: Sequence[str], threshold: float = 0.5, *,
                  ax: Axes | None = None,
                  save_path: str | os.PathLike | None = None) -> Axes:
    """Show the IoU grid of predictions (rows) against ground truth (columns).

    Cells above ``threshold`` are labelled "match" (same class) or "wrong".

    Args:
        gt_class_ids: [N] ground-truth class ids (0 entries are padding, dropped).
        pred_class_ids: [P] predicted class ids (0 entries dropped).
        pred_scores: [P] prediction scores.
        overlaps: [P, N] IoUs, e.g. from ``metrics.compute_matches``.
        class_names: class names of the dataset.
        threshold: IoU from which a cell is labelled.
        ax: draw on these Axes instead of a new figure.
        save_path: save the figure there (PNG by default).

    Returns:
        The Axes drawn on.
    """
    gt_class_ids = np.asarray(gt_class_ids)
    pred_class_ids = np.asarray(pred_class_ids)
    gt_class_ids = gt_class_ids[gt_class_ids != 0]
    pred_class_ids = pred_class_ids[pred_class_ids != 0]
    overlaps = np.asarray(overlaps, dtype=np.float64)
    if overlaps.ndim != 2:  # e.g. np.array([]) when there is nothing to match
        overlaps = overlaps.reshape(len(pred_class_ids), len(gt_class_ids))
    owned = ax is None
    if owned:
        _, ax = plt.subplots(1, figsize=(12, 10))
    ax.imshow(overlaps if overlaps.size else np.zeros((1, 1)), interpolation="nearest",
              cmap=plt.cm.Blues, vmin=0, vmax=1)
    ax.set_yticks(np.arange(len(pred_class_ids)),
                  [f"{class_names[int(cid)]} ({pred_scores[i]:.2f})"
                   for i, cid in enumerate(pred_class_ids)])
    ax.set_xticks(np.arange(len(gt_class_ids)),
                  [class_names[int(cid)] for cid in gt_class_ids], rotation=90)
    # White text on dark cells, black on light ones, grey on zeros.
    thresh = overlaps.max() / 2. if overlaps.size else 0.
    for i, j in itertools.product(range(overlaps.shape[0]), range(overlaps.shape[1])):
        text = ""
        if overlaps[i, j] > threshold:
            text = "match" if gt_class_ids[j] == pred_class_ids[i] else "wrong"
        color = ("white" if overlaps[i, j] > thresh
                 else "black" if overlaps[i, j] > 0 else "grey")
        ax.text(j, i, f"{overlaps[i, j]:.3f}\n{text}", horizontalalignment="center",
                verticalalignment="center", fontsize=9, color=color)
    if not overlaps.size:
        ax.set_title("No overlaps to display")
    ax.figure.tight_layout()
    ax.set_xlabel("Ground Truth")
    ax.set_ylabel("Predictions")
    _finish(ax.figure, save_path, owned)
    return ax


def draw_boxes(image: np.ndarray, boxes: np.ndarray | None = None,
               refined_boxes: np.ndarray | None = None, masks: np.ndarray | None = None,
               captions: Sequence[str] | None = None,
               visibilities: Sequence[int] | None = None, title: str = "",
               ax: Axes | None = None, *,
               save_path: str | os.PathLike | None = None) -> Axes:
    """Draw boxes, refined boxes, masks and captions (e.g. anchors and their refinements).

    Args:
        image: [H, W, 3] image.
        boxes: [N, (y1, x1, y2, x2)] boxes (dotted or solid by visibility).
        refined_boxes: [N, 4] second set of boxes, drawn solid and joined to ``boxes``.
        masks: [H, W, N] masks to tint and outline.
        captions: one caption per box.
        visibilities: per box 0 (gray, faint), 1 (dotted, default) or 2 (solid, emphasized).
        title: figure title.
        ax: draw on these Axes instead of a new figure.
        save_path: save the figure there (PNG by default).

    Returns:
        The Axes drawn on.
    """
    assert boxes is not None or refined_boxes is not None, \
        "draw_boxes needs boxes or refined_boxes"
    N = np.shape(boxes)[0] if boxes is not None else np.shape(refined_boxes)[0]
    owned = ax is None
    if owned:
        ax = _new_axes((12, 12))
    colors = random_colors(N)
    _frame_axes(ax, image.shape, image.shape[0] // 10, title, N)

    masked_image = np.asarray(image).astype(np.uint32).copy()
    for i in range(N):
        visibility = visibilities[i] if visibilities is not None else 1
        if visibility == 0:
            color, style, alpha = "gray", "dotted", 0.5
        elif visibility == 1:
            color, style, alpha = colors[i], "dotted", 1
        else:
            color, style, alpha = colors[i], "solid", 1
        x1 = y1 = None
        if boxes is not None:
            if not np.any(boxes[i]):
                continue  # zero padding
            y1, x1, y2, x2 = boxes[i]
            ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, linewidth=2,
                                           alpha=alpha, linestyle=style, edgecolor=color,
                                           facecolor="none"))
        if refined_boxes is not None and visibility > 0:
            ry1, rx1, ry2, rx2 = np.asarray(refined_boxes[i]).astype(np.int32)
            ax.add_patch(patches.Rectangle((rx1, ry1), rx2 - rx1, ry2 - ry1, linewidth=2,
                                           edgecolor=color, facecolor="none"))
            if boxes is not None:
                ax.add_line(lines.Line2D([x1, rx1], [y1, ry1], color=color))
        if captions is not None:
            # Caption the refined box when there is one.
            if refined_boxes is not None:
                y1, x1 = np.asarray(refined_boxes[i])[:2]
            ax.text(x1, y1, captions[i], size=11, verticalalignment="top", color="w",
                    backgroundcolor="none",
                    bbox={"facecolor": color, "alpha": 0.5, "pad": 2, "edgecolor": "none"})
        if masks is not None:
            mask = masks[:, :, i]
            masked_image = apply_mask(masked_image, mask, color)
            _draw_mask_contours(ax, mask, color)
    ax.imshow(masked_image.astype(np.uint8))
    _finish(ax.figure, save_path, owned)
    return ax


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (where HTML output renders)."""
    if "IPython" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def display_table(table: Sequence[Sequence[Any]]) -> None:
    """Display a table: HTML in Jupyter, aligned plain text otherwise.

    Args:
        table: rows of cells; the first row is usually the header. Cells are shown with
            ``str()``.
    """
    rows = [[str(cell) for cell in row] for row in table]
    if _in_notebook():
        from IPython.display import HTML, display
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c):40}</td>" for c in row)
                       + "</tr>" for row in rows)
        display(HTML("<table>" + body + "</table>"))
        return
    n_cols = max((len(row) for row in rows), default=0)
    widths = [max((len(row[c]) for row in rows if c < len(row)), default=0)
              for c in range(n_cols)]
    for row in rows:
        print("  ".join(cell.ljust(widths[c]) for c, cell in enumerate(row)).rstrip())


# Weights that legitimately start (and may stay) constant: biases and normalization
# parameters. Only other weights (kernels, embeddings) are flagged when constant.
_CONSTANT_OK = ("bias", "beta", "gamma", "moving_mean", "moving_variance")


def _iter_leaf_layers(layer: Any) -> Any:
    """Yield the leaf layers of a (possibly nested) Keras model."""
    sublayers = getattr(layer, "layers", None)
    if sublayers:  # Functional / Sequential / subclassed models, including nested ones
        for sub in sublayers:
            yield from _iter_leaf_layers(sub)
    else:
        yield layer


def weight_stats(model: Any) -> list[dict[str, Any]]:
    """Statistics of every weight of a Keras model (nested models included).

    Args:
        model: a ``keras.Model``, or an object with a ``keras_model`` attribute (the
            ``MaskRCNN`` facade).

    Returns:
        One dict per weight, in layer order: ``name`` (the variable path, e.g.
        "conv1/kernel"), ``layer`` (layer name), ``shape`` (tuple), ``min``, ``max``,
        ``std`` (floats) and ``alerts`` (list of str: "dead?" when a kernel-like weight is
        constant, "overflow?" when a value exceeds 1000 in magnitude or the std does).
    """
    import keras  # lazy: importing visualize must not import a backend

    model = getattr(model, "keras_model", model)
    seen: set[int] = set()
    stats = []
    for layer in _iter_leaf_layers(model):
        for var in layer.weights:
            if id(var) in seen:
                continue  # shared layers/variables: report once
            seen.add(id(var))
            w = np.asarray(keras.ops.convert_to_numpy(var), dtype=np.float64)
            name = getattr(var, "path", None) or var.name
            short = name.rsplit("/", 1)[-1]
            w_min = float(w.min()) if w.size else 0.0
            w_max = float(w.max()) if w.size else 0.0
            w_std = float(w.std()) if w.size else 0.0
            alerts = []
            if w.size and short not in _CONSTANT_OK and np.isclose(w_std, 0.0, atol=1e-12):
                alerts.append("dead?")
            if max(abs(w_min), abs(w_max)) > 1000 or w_std > 1000:
                alerts.append("overflow?")
            stats.append({"name": name, "layer": layer.name, "shape": tuple(w.shape),
                          "min": w_min, "max": w_max, "std": w_std, "alerts": alerts})
    return stats


def display_weight_stats(model: Any) -> None:
    """Display a table of every weight's name, shape, min, max and std.

    Suspicious weights are flagged after their name: "*** dead?" (a non-bias,
    non-normalization weight that is constant) and "*** overflow?" (values or std above
    1000). See ``weight_stats`` for the numbers.

    Args:
        model: a ``keras.Model`` or the ``MaskRCNN`` facade.
    """
    table = [["WEIGHT NAME", "SHAPE", "MIN", "MAX", "STD"]]
    for s in weight_stats(model):
        flags = "".join(f"  *** {a}" for a in s["alerts"])
        table.append([s["name"] + flags, str(s["shape"]), f"{s['min']:+9.4f}",
                      f"{s['max']:+10.4f}", f"{s['std']:+9.4f}"])
    display_table(table)
