"""Shapes: a synthetic instance-segmentation dataset that needs no download.

Each image has a random background color and 1 to 4 squares, circles and triangles of
random colors, sizes and positions. It trains in minutes and is the smoke test of the
whole pipeline, as in Matterport's ``samples/shapes``::

    from samples.shapes.shapes import ShapesConfig, ShapesDataset

    config = ShapesConfig()
    dataset = ShapesDataset()
    dataset.load_shapes(500, config.IMAGE_SHAPE[0], config.IMAGE_SHAPE[1], seed=0)
    dataset.prepare()

Images are described by specs (background color and a list of shapes) generated from a
seeded ``np.random.default_rng`` and drawn on the fly with OpenCV, so a dataset is cheap
to hold and the same seed always gives the same images and masks.
"""

from __future__ import annotations

import math
import os
from typing import Any

import cv2
import numpy as np

from mrcnn import cli, metrics, utils
from mrcnn.config import Config
from mrcnn.tiny import TINY_ENV, tiny_requested

# Default --output: out/ beside this file.
SAMPLE_DIR = os.path.dirname(os.path.abspath(__file__))

# Class names in id order (id 0 is the background). The ids are fixed so that load_mask
# works before prepare(); with this dataset as the only source they equal the internal ids.
SHAPE_CLASSES = ("square", "circle", "triangle")
CLASS_IDS = {name: i + 1 for i, name in enumerate(SHAPE_CLASSES)}

# Shapes drawn per image, before overlap filtering.
MIN_SHAPES, MAX_SHAPES = 1, 4

# Shape boxes overlapping an already kept (later-drawn) one by more than this IoU are
# dropped, so that no shape hides most of another.
SHAPE_NMS_THRESHOLD = 0.3

Spec = tuple[str, tuple[int, int, int], tuple[int, int, int]]  # (shape, color, (x, y, s))


class ShapesConfig(Config):
    """Configuration for training on the shapes dataset (128x128 images, 3 classes)."""

    NAME = "shapes"

    # One replica with 8 small images: a 128x128 batch of 8 fits easily on a CPU or GPU.
    GPU_COUNT = 1
    IMAGES_PER_GPU = 8

    # Background + square, circle, triangle.
    NUM_CLASSES = 1 + len(SHAPE_CLASSES)

    # Small images: fast steps, and the shapes (20-32 px radius) stay large enough.
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128

    # Anchors scaled to the small images and objects (side 8..128 px on P2..P6).
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)

    # No pretrained weights can be downloaded here, so shapes trains from scratch on a CPU.
    # ResNet-18 with GroupNorm learns this easy task well; ResNet-50/101 would mostly add
    # step time. GroupNorm because frozen BN from random weights normalizes nothing and
    # BatchNorm statistics of 8 small images are noisy.
    BACKBONE = "resnet18"
    NORM = "gn"

    # Slim pyramid and heads: at 128 px with a handful of objects, 64-128 channels carry
    # enough information, and the RPN conv (on every level) and the mask head (on every
    # positive ROI) are the dominant CPU costs at their paper widths (512 / 256).
    TOP_DOWN_PYRAMID_SIZE = 64
    RPN_CONV_CHANNELS = 128
    MASK_HEAD_CHANNELS = 64
    FPN_CLASSIF_FC_LAYERS_SIZE = 256

    # From scratch, AdamW with a moderate rate converges much faster than Matterport's SGD
    # at 0.001 (tuned for fine-tuning pretrained weights). Cosine decay over each train()
    # call settles the weights at the end of the short schedule.
    OPTIMIZER = "adamw"
    LEARNING_RATE = 0.001
    LR_SCHEDULE = "cosine"
    LR_MIN_FACTOR = 0.05
    # No warm-up: this schedule was measured without one, and the shapes train in a few
    # hundred steps. (Setting it here also keeps the library's from-scratch recipe from
    # adding its 50-step warm-up: the recipe only fills what a Config leaves unset.)
    LR_WARMUP_STEPS = 0

    # Few objects per image, so few ROIs suffice to keep the 1:3 positive ratio.
    TRAIN_ROIS_PER_IMAGE = 32

    # Short epochs: frequent checkpoints and validation on a dataset that is cheap to draw.
    STEPS_PER_EPOCH = 100
    VALIDATION_STEPS = 5

    # At most MAX_SHAPES instances per image: padding ground truth to 100 (the default)
    # would only cost memory in the mask targets.
    MAX_GT_INSTANCES = MAX_SHAPES

    # A 128x128 image has about 4,000 anchors and at most 4 objects, so the proposal
    # budgets can be far below the COCO defaults (6000 / 2000 / 1000). Fewer proposals make
    # NMS and ROI align cheaper; too few would miss objects early in training when the RPN
    # is still poor.
    PRE_NMS_LIMIT = 2000
    POST_NMS_ROIS_TRAINING = 500
    POST_NMS_ROIS_INFERENCE = 250

    # Anchors sampled per image for the RPN loss. With at most 4 objects few anchors are
    # positive anyway; 64 keeps the loss less dominated by easy negatives.
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64

    # Detections per image: a handful of objects at most, and each detection costs a mask.
    DETECTION_MAX_INSTANCES = 16



class ShapesDataset(utils.Dataset):
    """Randomly generated images of squares, circles and triangles.

    ``load_shapes`` registers image specs; ``load_image`` draws them and ``load_mask``
    derives the instance masks from the same specs, so images and masks always agree.
    """

    def load_shapes(self, count: int, height: int, width: int, seed: int | None = None) -> None:
        """Register ``count`` random images of the given size.

        Args:
            count: number of images.
            height: image height in pixels (at least 40).
            width: image width in pixels (at least 40).
            seed: seed of the ``np.random.default_rng`` that generates the specs; the same
                seed gives the same dataset (and a larger ``count`` with the same seed
                starts with the same images). None: a different dataset each time.
        """
        if min(height, width) < 40:
            raise ValueError(f"shapes images must be at least 40x40 pixels, got "
                             f"{height}x{width}")
        for name in SHAPE_CLASSES:
            self.add_class("shapes", CLASS_IDS[name], name)
        rng = np.random.default_rng(seed)
        for i in range(count):
            bg_color, shapes = self.random_image(height, width, rng)
            self.add_image("shapes", image_id=i, path=None, width=width, height=height,
                           bg_color=bg_color, shapes=shapes)

    def load_image(self, image_id: int) -> np.ndarray:
        """Draw an image from its spec.

        Args:
            image_id: internal image id.

        Returns:
            uint8 array [height, width, 3]; shapes are drawn in spec order, later ones on top.
        """
        info = self.image_info[image_id]
        image = np.empty([info["height"], info["width"], 3], dtype=np.uint8)
        image[:] = info["bg_color"]
        for shape, color, dims in info["shapes"]:
            image = self.draw_shape(image, shape, dims, color)
        return image

    def image_reference(self, image_id: int) -> str:
        """Describe an image by its spec.

        Args:
            image_id: internal image id.

        Returns:
            "shapes" followed by the background color and the (shape, color, (x, y, s))
            list, or the base class answer for images of other sources.
        """
        info = self.image_info[image_id]
        if info["source"] != "shapes":
            return super().image_reference(image_id)
        return f"shapes: bg_color={info['bg_color']}, shapes={info['shapes']}"

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Instance masks of an image, with occlusion.

        Shapes are drawn in spec order, so a later shape hides the parts of earlier ones
        it covers: those pixels are removed from the earlier masks (as in Matterport). An
        instance that ends up with no visible pixel is dropped entirely (Matterport kept
        it as an empty mask), so every returned instance has at least one pixel.

        Args:
            image_id: internal image id.

        Returns:
            masks: bool [height, width, N], the visible pixels of each shape.
            class_ids: int32 [N], 1 square, 2 circle, 3 triangle.
        """
        info = self.image_info[image_id]
        height, width = info["height"], info["width"]
        shapes = info["shapes"]
        masks = np.zeros([height, width, len(shapes)], dtype=bool)
        for i, (shape, _, dims) in enumerate(shapes):
            canvas = np.zeros([height, width], dtype=np.uint8)
            masks[:, :, i] = self.draw_shape(canvas, shape, dims, 1).astype(bool)
        # Walk from the top shape down, removing what the shapes above already cover.
        covered = np.zeros([height, width], dtype=bool)
        for i in range(len(shapes) - 1, -1, -1):
            masks[:, :, i] &= ~covered
            covered |= masks[:, :, i]
        class_ids = np.array([CLASS_IDS[s[0]] for s in shapes], dtype=np.int32)
        visible = masks.any(axis=(0, 1))
        return masks[:, :, visible], class_ids[visible]

    @staticmethod
    def draw_shape(image: np.ndarray, shape: str, dims: tuple[int, int, int],
                   color: Any) -> np.ndarray:
        """Draw a filled shape on an image, in place.

        Args:
            image: uint8 array [H, W] or [H, W, C] (C-contiguous, as OpenCV needs).
            shape: "square", "circle" or "triangle".
            dims: (x, y, s): center and size (half side, radius, or half height).
            color: a number for single-channel images, a 3-tuple for color images.

        Returns:
            The same ``image``.
        """
        x, y, s = (int(v) for v in dims)
        color = tuple(int(c) for c in color) if np.ndim(color) else int(color)
        if shape == "square":
            cv2.rectangle(image, (x - s, y - s), (x + s, y + s), color, -1)
        elif shape == "circle":
            cv2.circle(image, (x, y), s, color, -1)
        elif shape == "triangle":
            # Equilateral, apex up, height 2s.
            half_base = s / math.sin(math.radians(60))
            points = np.array([[(x, y - s), (x - half_base, y + s), (x + half_base, y + s)]],
                              dtype=np.int32)
            cv2.fillPoly(image, points, color)
        else:
            raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPE_CLASSES}")
        return image

    @staticmethod
    def random_shape(height: int, width: int, rng: np.random.Generator) -> Spec:
        """Spec of one random shape that lies mostly inside the image.

        Args:
            height: image height.
            width: image width.
            rng: random generator.

        Returns:
            (shape name, (r, g, b) color, (x, y, s) center and size).
        """
        shape = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        # Keep centers `buffer` pixels from the border; sizes from buffer to a quarter of
        # the image. 20 px as in Matterport for 128-px images, less for smaller ones.
        buffer = min(20, min(height, width) // 5)
        y = int(rng.integers(buffer, height - buffer))
        x = int(rng.integers(buffer, width - buffer))
        s = int(rng.integers(buffer, max(buffer, min(height, width) // 4) + 1))
        return shape, color, (x, y, s)

    @classmethod
    def random_image(cls, height: int, width: int,
                     rng: np.random.Generator) -> tuple[tuple[int, int, int], list[Spec]]:
        """Spec of one random image: background color and 1-4 shapes.

        Shapes whose boxes overlap a later shape's box by more than SHAPE_NMS_THRESHOLD
        IoU are dropped (later shapes win, as they are drawn on top), so that occlusion
        stays moderate. Small shapes inside big ones can still be fully hidden;
        ``load_mask`` drops those.

        Args:
            height: image height.
            width: image width.
            rng: random generator.

        Returns:
            ((r, g, b) background color, list of shape specs in drawing order).
        """
        bg_color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        n = int(rng.integers(MIN_SHAPES, MAX_SHAPES + 1))
        shapes = [cls.random_shape(height, width, rng) for _ in range(n)]
        boxes = np.array([[y - s, x - s, y + s, x + s] for _, _, (x, y, s) in shapes])
        # Scores 0..n-1: the NMS keeps later shapes first.
        keep = set(utils.non_max_suppression(boxes, np.arange(n), SHAPE_NMS_THRESHOLD).tolist())
        return bg_color, [spec for i, spec in enumerate(shapes) if i in keep]


# --- command line: added with the model ---

# Held-out images come from their own seed range, never seen in training or validation.
TRAIN_SEED, VAL_SEED, TEST_SEED = 0, 1, 2


class ShapesInferenceConfig(ShapesConfig):
    """Inference on one image at a time; keep every detection above 0.5."""
    IMAGES_PER_GPU = 1
    DETECTION_MIN_CONFIDENCE = 0.5


def make_dataset(count: int, seed: int, config: Config) -> ShapesDataset:
    """A prepared shapes dataset of ``count`` images at the config's image size."""
    dataset = ShapesDataset()
    dataset.load_shapes(count, int(config.IMAGE_SHAPE[0]), int(config.IMAGE_SHAPE[1]),
                        seed=seed)
    dataset.prepare()
    return dataset


def evaluate_map(model, dataset: ShapesDataset, config: Config,
                 iou_threshold: float = 0.5, verbose: bool = True) -> float:
    """Mean over images of the VOC-style AP at ``iou_threshold`` (Matterport's metric).

    Args:
        model: a ``MaskRCNN`` in inference mode.
        dataset: prepared dataset to evaluate on.
        config: the inference config (for ``load_image_gt``).
        iou_threshold: mask IoU for a match.
        verbose: print the result.

    Returns:
        mAP over the dataset's images.
    """
    aps = metrics.per_image_ap(model, dataset, config=config, iou_thresholds=[iou_threshold],
                               batch_size=config.BATCH_SIZE, verbose=int(verbose))[:, 0]
    m_ap = float(np.mean(aps)) if len(aps) else 0.0
    if verbose:
        print(f"mAP@{iou_threshold:.2f} over {len(aps)} held-out images: {m_ap:.3f}")
    return m_ap


def save_detection_grid(model, dataset: ShapesDataset, path: str, count: int = 6) -> str:
    """Save a grid of detections on the first ``count`` images of ``dataset`` to ``path``."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from mrcnn import visualize

    ids = list(dataset.image_ids)[:count]
    images = [dataset.load_image(i) for i in ids]
    results = model.detect(images)
    cols = min(3, len(ids))
    rows = math.ceil(len(ids) / cols)
    fig = Figure(figsize=(4 * cols, 4 * rows))
    for k, (image, r) in enumerate(zip(images, results)):
        ax = fig.add_subplot(rows, cols, k + 1)
        visualize.display_instances(image, r["rois"], r["masks"], r["class_ids"],
                                    dataset.class_names, r["scores"], ax=ax,
                                    title=f"image {ids[k]}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)
    return path


def _resolve_weights(model, weights: str) -> str | None:
    """'none' -> None, 'last' -> model.find_last(), else the path itself."""
    if weights.lower() == "none":
        return None
    if weights.lower() != "last":
        if not os.path.isfile(weights):
            cli.fail(f"--weights {weights}: no such file")
        return weights
    try:
        return model.find_last()
    except FileNotFoundError as err:
        cli.fail(f"--weights=last: no checkpoint to load ({err}); train first or "
                     f"give a checkpoint path")


def _make_config(args, base: type[Config], **overrides) -> Config:
    """``base`` with ``overrides`` then ``--set``; with --tiny (or MRCNN_TINY=1), the tiny
    variant with the tiny overrides every sample uses (``cli.make_config``)."""
    return cli.make_config(base, tiny_requested(args), settings=cli.settings(args, base),
                           **overrides)


def _inference_model(args):
    from mrcnn import model as modellib

    config = _make_config(args, ShapesInferenceConfig)
    model = modellib.MaskRCNN("inference", config, args.logs)
    path = _resolve_weights(model, args.weights)
    if path is None:
        cli.fail("--weights=none: evaluating an untrained model is pointless; give "
                     "'last' or a checkpoint path")
    print(f"Loading weights {path}")
    model.load_weights(path)
    return model, config


def _train_config(args) -> Config:
    """ShapesConfig with --steps (when given: it wins over --tiny's one step) and --workers
    (DATA_WORKERS) applied."""
    steps = {"STEPS_PER_EPOCH": args.steps} if args.steps is not None else {}
    return cli.make_config(ShapesConfig, tiny_requested(args),
                           settings={**steps, **cli.settings(args, ShapesConfig)},
                           **cli.workers_override(args))


def cmd_train(args) -> float:
    """Train from scratch (or from --weights), then evaluate and save a picture."""
    from mrcnn import model as modellib

    config = _train_config(args)
    config.display()
    train_set = make_dataset(args.train_count, TRAIN_SEED, config)
    val_set = make_dataset(max(args.val_count, 1), VAL_SEED, config)
    model = modellib.MaskRCNN("training", config, args.logs)
    path = _resolve_weights(model, args.weights)
    if path:
        print(f"Loading weights {path}")
        model.load_weights(path)
    # From scratch, every layer trains; with --weights the same schedule fine-tunes.
    model.train(train_set, val_set, learning_rate=config.LEARNING_RATE,
                epochs=args.epochs, layers="all")
    args.weights = "last"
    return cmd_evaluate(args)


def cmd_evaluate(args) -> float:
    """mAP@0.5 on held-out images and a picture of detections."""
    model, config = _inference_model(args)
    test_set = make_dataset(args.eval_count, TEST_SEED, config)
    m_ap = evaluate_map(model, test_set, config)
    out = save_detection_grid(model, test_set, os.path.join(args.output, "shapes_detections.png"))
    print(f"Saved detections to {out}")
    return m_ap


def cmd_detect(args) -> None:
    """Detect shapes in --image (or a random shapes image) and save the picture."""
    from mrcnn import visualize

    model, config = _inference_model(args)
    if args.images:
        cli.detect_files(model, args.images, ("BG",) + SHAPE_CLASSES, args.output)
        return None
    if args.image:
        image = utils.load_image_file(args.image)  # gray, RGBA, 16-bit too
        name = os.path.splitext(os.path.basename(args.image))[0]
    else:
        image = make_dataset(1, TEST_SEED, config).load_image(0)
        name = "random"
    r = model.detect([image])[0]
    for cid, score, box in zip(r["class_ids"], r["scores"], r["rois"]):
        print(f"{SHAPE_CLASSES[cid - 1]:9} score {score:.3f} box {box.tolist()}")
    out = visualize.save_instances_image(
        os.path.join(args.output, f"detect_{name}.png"), image, r["rois"], r["masks"],
        r["class_ids"], ("BG",) + SHAPE_CLASSES, r["scores"])
    print(f"Saved detections to {out}")


def main(argv: list[str] | None = None) -> float | None:
    """Command line: ``train``, ``evaluate`` and ``detect`` on the shapes dataset.

    Args:
        argv: arguments (default: ``sys.argv[1:]``).

    Returns:
        mAP@0.5 on the held-out images for ``train`` and ``evaluate``; None for ``detect``.
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="shapes.py",
        description="Train and evaluate Mask R-CNN on synthetic shapes (no download).")
    parser.add_argument("command", choices=("train", "evaluate", "detect"))
    parser.add_argument("--logs", default=cli.DEFAULT_LOGS_DIR,
                        help=f"logs and checkpoints folder (default: {cli.DEFAULT_LOGS_DIR})")
    parser.add_argument("--weights", default=None,
                        help="'none', 'last' or a checkpoint path (default: none for "
                             "train, last otherwise)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs to train up to (default 4; 1 with --tiny)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"steps per epoch (default {ShapesConfig.STEPS_PER_EPOCH}; 1 "
                             "with --tiny)")
    parser.add_argument("--train-count", type=int, default=2000,
                        help="training images (drawn on the fly)")
    parser.add_argument("--val-count", type=int, default=None,
                        help="validation images (default 50; 2 with --tiny)")
    parser.add_argument("--eval-count", type=int, default=None,
                        help="held-out images for the mAP (default 50; 4 with --tiny)")
    parser.add_argument("--image", default=None, help="image file for 'detect'")
    parser.add_argument("--images", default=None, metavar="DIR or GLOB",
                        help="detect: image files (a folder or a glob); writes "
                             "detect_<name>.png pictures and detections.json to --output")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override ShapesConfig settings, e.g. --set BACKBONE=resnet34 "
                             "LEARNING_RATE=0.002 (Python literals; bare words are strings)")
    parser.add_argument("--tiny", action="store_true",
                        help="64 px five-conv model (mrcnn.tiny) that runs in seconds: for "
                             f"smoke tests of the command line, not for results; also "
                             f"{TINY_ENV}=1")
    parser.add_argument("--output", default=os.path.join(SAMPLE_DIR, "out"),
                        help="folder for the pictures (default: out/ beside this file)")
    cli.add_workers_argument(parser)
    return cli.run_main(parser, _run, argv)


def _run(args) -> float | None:
    """Run the parsed command line of ``main``; bad input raises ``cli.InputError``."""
    if args.workers is not None and args.workers < 0:
        cli.fail(f"--workers must be 0 or more, got {args.workers}")
    if args.weights is None:
        args.weights = "none" if args.command == "train" else "last"
    # --tiny is a smoke test in seconds: one epoch, a few images (explicit values win).
    tiny = tiny_requested(args)
    for name, default, tiny_default in (("epochs", 4, 1), ("val_count", 50, 2),
                                        ("eval_count", 50, 4)):
        if getattr(args, name) is None:
            setattr(args, name, tiny_default if tiny else default)
    if args.image and not os.path.isfile(args.image):
        cli.fail(f"--image {args.image}: no such file")
    if args.images:
        args.images = cli.image_files(args.images)
    return {"train": cmd_train, "evaluate": cmd_evaluate,
            "detect": cmd_detect}[args.command](args)


if __name__ == "__main__":
    main()
