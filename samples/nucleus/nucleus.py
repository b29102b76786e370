"""Mask R-CNN on the nuclei of the 2018 Data Science Bowl (Matterport's samples/nucleus).

Train on the Kaggle DSB2018 stage 1 training images, write a submission in the
competition's run-length format, and measure AP on a validation split::

    # Train from scratch (no download needed), heads then all layers
    python samples/nucleus/nucleus.py train --dataset=/path/to/dsb2018 --subset=train --weights=none

    # Resume the last run
    python samples/nucleus/nucleus.py train --dataset=/path/to/dsb2018 --subset=train --weights=last

    # Submission file (submit.csv) and overlay pictures in results/nucleus/submit_<time>/
    python samples/nucleus/nucleus.py detect --dataset=/path/to/dsb2018 --subset=stage1_test --weights=last

    # AP@0.5 and AP@[.5:.95] on the validation images
    python samples/nucleus/nucleus.py evaluate --dataset=/path/to/dsb2018 --subset=val --weights=last

Dataset layout (as Kaggle ships it)::

    <dataset>/<subset>/<image_id>/images/<image_id>.png
    <dataset>/<subset>/<image_id>/masks/*.png        one PNG per nucleus (training subsets)

Subsets: "stage1_train", "stage1_test", "stage2_test" (folders), and "train" / "val":
stage1_train split into training and validation images (Matterport's 25 VAL_IMAGE_IDS
when they are there, otherwise a seeded 10 %; see ``--val-ids`` and ``--val-fraction``).
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Sequence

import numpy as np

from mrcnn import cli, metrics
from mrcnn.cli import fail
from mrcnn.config import Config
from mrcnn.paths import claim
from mrcnn.datasets.dsb import (  # noqa: F401  (this sample's names since Matterport)
    DEFAULT_VAL_FRACTION,
    TRAINING_SUBSETS,
    VAL_IMAGE_IDS,
    VAL_SEED,
    NucleusDataset,
    mask_files,
    read_mask_png,
    read_val_ids,
    split_val_ids,
    verify_image_and_masks,
)
from mrcnn.progress import track

# Submission files and overlay pictures go to a timestamped folder under this one.
RESULTS_DIR = os.path.abspath(os.path.join("results", "nucleus"))

############################################################
#  Configurations
############################################################

class NucleusConfig(Config):
    """Training on the nucleus dataset: random 512x512 crops of images upscaled 2x."""

    NAME = "nucleus"

    # Adjust to your GPU memory: six 512x512 crops fit in about 12 GB with ResNet-50.
    IMAGES_PER_GPU = 6

    # Background + nucleus.
    NUM_CLASSES = 1 + 1

    # Matterport's values for stage1_train (657 images, 25 for validation). The command
    # line recomputes both from the dataset it loads.
    STEPS_PER_EPOCH = (657 - len(VAL_IMAGE_IDS)) // IMAGES_PER_GPU
    VALIDATION_STEPS = max(1, len(VAL_IMAGE_IDS) // IMAGES_PER_GPU)

    # Keep every detection: the competition metric rewards recall. Matterport kept an ROI
    # only where the head found nucleus likelier than background; "foreground" keeps the
    # doubtful ones too, ranked by their nucleus probability, and an NMS at 0.5 keeps
    # touching nuclei apart. Measured on synthetic nuclei (bench/nucleus_convergence.py,
    # same checkpoint): mask AP50 0.722 -> 0.818, recall at IoU 0.5 0.747 -> 0.871.
    DETECTION_MIN_CONFIDENCE = 0
    DETECTION_SCORE_MODE = "foreground"
    DETECTION_NMS_THRESHOLD = 0.5

    BACKBONE = "resnet50"

    # No pretrained weights can be downloaded here, so the default is training from
    # scratch, where GroupNorm (batch-size independent) works and frozen BatchNorm does
    # not. To fine-tune Matterport's ImageNet/COCO weights instead, set NORM = None
    # (frozen BN, as Matterport trained).
    NORM = "gn"

    # Random 512x512 crops of images scaled up at least 2x (nuclei are small).
    IMAGE_RESIZE_MODE = "crop"
    IMAGE_MIN_DIM = 512
    IMAGE_MAX_DIM = 512
    IMAGE_MIN_SCALE = 2.0

    # Small anchors for small objects.
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)

    # Crowded images: many proposals, and a high NMS threshold so that neighbouring
    # nuclei each keep theirs.
    POST_NMS_ROIS_TRAINING = 1000
    POST_NMS_ROIS_INFERENCE = 2000
    RPN_NMS_THRESHOLD = 0.9

    RPN_TRAIN_ANCHORS_PER_IMAGE = 64

    # Mean pixel (RGB) of the stage 1 training images.
    MEAN_PIXEL = np.array([43.53, 39.56, 48.22])

    USE_MINI_MASK = True
    MINI_MASK_SHAPE = (56, 56)

    TRAIN_ROIS_PER_IMAGE = 128

    # Some images have hundreds of nuclei.
    MAX_GT_INSTANCES = 200
    DETECTION_MAX_INSTANCES = 400


class NucleusInferenceConfig(NucleusConfig):
    """Whole images, one at a time, padded to multiples of 64 rather than cropped."""

    GPU_COUNT = 1
    IMAGES_PER_GPU = 1
    IMAGE_RESIZE_MODE = "pad64"
    RPN_NMS_THRESHOLD = 0.7


############################################################
#  Dataset
############################################################

def load_datasets(dataset_dir: str, subset: str, val_ids: Sequence[str] | None = None,
                  val_fraction: float = DEFAULT_VAL_FRACTION,
                  verify: bool = True) -> tuple[NucleusDataset, NucleusDataset]:
    """Prepared training (``subset``) and validation ("val") datasets."""
    datasets = []
    for name in (subset, "val"):
        dataset = NucleusDataset()
        dataset.load_nucleus(dataset_dir, name, val_ids=val_ids, val_fraction=val_fraction,
                             require_masks=True, verify=verify)
        dataset.prepare()
        datasets.append(dataset)
    return datasets[0], datasets[1]


############################################################
#  Training
############################################################

def build_augmentation():
    """Matterport's nucleus augmentation in albumentations.

    Matterport: ``iaa.SomeOf((0, 2), [Fliplr(0.5), Flipud(0.5), OneOf([rotate 90, 180,
    270]), Multiply((0.8, 1.5)), GaussianBlur(sigma=(0.0, 5.0))])``: 0, 1 or 2 of the five
    (chosen with equal chance), each applied as configured. The rotations are exact
    (pixel-exact on the square training crops), the brightness factor is one number per
    image, and nothing changes the image shape.
    """
    import albumentations as A
    import cv2

    def members():
        return [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.OneOf([A.Rotate(limit=(angle, angle), border_mode=cv2.BORDER_CONSTANT, p=1)
                     for angle in (90, 180, 270)], p=1),
            A.MultiplicativeNoise(multiplier=(0.8, 1.5), per_channel=False, elementwise=False,
                                  p=1),
            A.GaussianBlur(blur_limit=0, sigma_limit=(0.0, 5.0), p=1),
        ]

    # OneOf picks one child with equal chance: none, one or two of the five.
    return A.OneOf([A.NoOp(p=1), A.SomeOf(members(), n=1, p=1),
                    A.SomeOf(members(), n=2, p=1)], p=1)


def train(model, dataset_train: NucleusDataset, dataset_val: NucleusDataset,
          heads_epochs: int = 20, all_epochs: int = 40, learning_rate: float | None = None,
          augmentation: Any = "default", from_scratch: bool = False) -> None:
    """Matterport's schedule: the heads up to ``heads_epochs``, then all layers up to
    ``all_epochs`` (epochs to train up to, so 20 + 20 epochs by default). From random
    weights (``from_scratch``), all layers up to ``all_epochs`` in one stage instead.

    Args:
        model: a training ``MaskRCNN``.
        dataset_train, dataset_val: prepared datasets.
        heads_epochs, all_epochs: epoch to train up to in each stage.
        learning_rate: default ``model.config.LEARNING_RATE``.
        augmentation: an albumentations transform, None, or "default" (``build_augmentation``).
        from_scratch: the model starts from random weights (``cli.trains_from_scratch``).
    """
    lr = learning_rate or model.config.LEARNING_RATE
    if isinstance(augmentation, str) and augmentation == "default":
        augmentation = build_augmentation()
    cli.run_schedule(model, dataset_train, dataset_val, [
        ("Train network heads", "heads", heads_epochs, lr),
        ("Train all layers", "all", all_epochs, lr),
    ], augmentation=augmentation, from_scratch=from_scratch)


############################################################
#  Run-length encoding (the competition's submission format)
############################################################

def rle_encode(mask: np.ndarray) -> str:
    """Run-length encode one mask in the DSB2018 format.

    Pixels are numbered from 1, top to bottom then left to right (column-major, Fortran
    order); the result is "start length start length ...". An empty mask gives "".

    Args:
        mask: [H, W] array, non-zero = foreground.

    Returns:
        The space-separated pairs.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode expects a [height, width] mask, got shape {mask.shape}")
    flat = np.concatenate([[0], (mask != 0).flatten(order="F").astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat)) + 1  # 1-based starts and ends (exclusive)
    runs = edges.reshape(-1, 2)
    runs[:, 1] -= runs[:, 0]
    return " ".join(str(v) for v in runs.ravel())


def rle_decode(rle: str, shape: Sequence[int]) -> np.ndarray:
    """Decode ``rle_encode``'s format into a bool [H, W] mask.

    Args:
        rle: "start length ..." with 1-based, column-major starts ("" for no pixel).
        shape: (height, width).

    Returns:
        bool [height, width].

    Raises:
        ValueError: odd number of values, non-positive lengths or runs outside the image.
    """
    height, width = int(shape[0]), int(shape[1])
    values = np.array(rle.split(), dtype=np.int64)
    if values.size % 2:
        raise ValueError(f"run-length string has an odd number of values ({values.size})")
    runs = values.reshape(-1, 2)
    starts, lengths = runs[:, 0] - 1, runs[:, 1]
    if np.any(starts < 0) or np.any(lengths < 1) or np.any(starts + lengths > height * width):
        raise ValueError(f"run-length runs fall outside a {height}x{width} image or have "
                         "non-positive lengths")
    flat = np.zeros(height * width, dtype=bool)
    for start, length in zip(starts, lengths):
        flat[start:start + length] = True
    return flat.reshape((height, width), order="F")


def dedupe_masks(masks: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make instance masks disjoint: a pixel claimed by several goes to the best score.

    Args:
        masks: [H, W, N] masks.
        scores: [N] scores.

    Returns:
        masks: bool [H, W, K] in descending score order, without instances left empty.
        order: [K] indices of those instances in the input.
    """
    masks = np.asarray(masks, dtype=bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    taken = np.zeros(masks.shape[:2], dtype=bool)
    kept, kept_index = [], []
    for i in order:
        m = masks[:, :, i] & ~taken
        if not m.any():
            continue
        taken |= m
        kept.append(m)
        kept_index.append(int(i))
    out = np.stack(kept, axis=-1) if kept else np.zeros(masks.shape[:2] + (0,), dtype=bool)
    return out, np.array(kept_index, dtype=np.int64)


def mask_to_rle(image_id: str, mask: np.ndarray, scores: np.ndarray) -> str:
    """Submission rows ("ImageId,EncodedPixels") for one image's instance masks.

    Overlaps are removed first (``dedupe_masks``: each pixel belongs to the best-scoring
    instance that covers it, as the competition requires); one row per remaining
    instance, best score first. An image without any instance gets one row with empty
    EncodedPixels ("<image_id>,").

    Args:
        image_id: the image's id.
        mask: [H, W, N] masks.
        scores: [N] scores.

    Returns:
        The rows, joined by newlines (no trailing newline).
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"mask_to_rle expects [H, W, count] masks, got shape {mask.shape}")
    disjoint, _ = dedupe_masks(mask, scores)
    if disjoint.shape[-1] == 0:
        return f"{image_id},"
    return "\n".join(f"{image_id},{rle_encode(disjoint[:, :, k])}"
                     for k in range(disjoint.shape[-1]))


############################################################
#  Detection and evaluation
############################################################

def detect(model, dataset: NucleusDataset, results_dir: str = RESULTS_DIR,
           overlays: bool = True, save_npz: bool = False) -> str:
    """Detect nuclei in every image, write submit.csv (and pictures) to a new folder.

    Args:
        model: an inference ``MaskRCNN``.
        dataset: prepared dataset.
        results_dir: parent of the ``submit_<timestamp>`` folder (``submit_<timestamp>_2``
            when that name is taken).
        overlays: save ``<image_id>.png`` pictures of the detections.
        save_npz: save ``<image_id>.npz`` with the raw detections (rois, class_ids, scores,
            masks) for debugging.

    Returns:
        The folder written.
    """
    from mrcnn import visualize

    # Claimed (created exclusively, suffixed when taken): two runs in the same second
    # never write into one folder.
    submit_dir = claim(os.path.join(results_dir, f"submit_{cli.timestamp()}"), folder=True)
    rows = []
    for image_id in track(dataset.image_ids, label="detect", unit="img"):
        source_id = dataset.image_info[image_id]["id"]
        image = cli.load_dataset_image(dataset, image_id)
        r = model.detect([image], verbose=0)[0]
        rows.append(mask_to_rle(source_id, r["masks"], r["scores"]))
        if save_npz:
            np.savez_compressed(os.path.join(submit_dir, f"{source_id}.npz"), **r)
        if overlays:
            visualize.save_instances_image(
                os.path.join(submit_dir, f"{source_id}.png"), image, r["rois"], r["masks"],
                r["class_ids"], dataset.class_names, r["scores"], show_bbox=False,
                title="Predictions")
    path = os.path.join(submit_dir, "submit.csv")
    with open(path, "w", encoding="utf-8") as f:
        f.write("ImageId,EncodedPixels\n" + "\n".join(rows) + "\n")
    print(f"Saved to {submit_dir}")
    return submit_dir


def evaluate(model, dataset: NucleusDataset, verbose: bool = True) -> dict[str, float]:
    """Mask AP per image at IoU 0.5 and averaged over 0.5:0.95, then averaged over images.

    Detection runs on the original images and is compared with their masks (not with the
    crops or the upscaled images the model sees), with ``metrics.per_image_ap``
    (Matterport's ``compute_ap`` per threshold, not the competition's metric).

    Returns:
        {"AP50": ..., "AP": ..., "images": N}.
    """
    # Rows: images; columns: IoU 0.5, 0.55, ..., 0.95 (column 0 is AP50, a row's mean its AP).
    aps = metrics.per_image_ap(model, dataset, iou_thresholds=np.arange(0.5, 1.0, 0.05),
                               verbose=int(verbose))
    result = {"AP50": float(np.mean(aps[:, 0])), "AP": float(np.mean(aps.mean(axis=1))),
              "images": len(aps)}
    if verbose:
        print(f"AP@0.5: {result['AP50']:.4f}  ({result['images']} images)")
        print(f"AP@[.5:.95]: {result['AP']:.4f}  ({result['images']} images)")
    return result


############################################################
#  Command line
############################################################

DEFAULT_SUBSETS = {"train": "train", "detect": "stage1_test", "evaluate": "val"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nucleus.py",
        description="Mask R-CNN for nuclei counting and segmentation (DSB2018).")
    parser.add_argument("command", choices=("train", "detect", "evaluate"))
    parser.add_argument("--dataset", default=None, metavar="/path/to/dataset/",
                        help="root folder of the dataset (holds stage1_train/, ...); "
                             "required except for detect --images")
    parser.add_argument("--subset", default=None,
                        help="subset: train/val (split of stage1_train), stage1_train, "
                             "stage1_test, stage2_test (default: train for train, "
                             "stage1_test for detect, val for evaluate)")
    cli.add_weights_argument(parser)
    cli.add_common_arguments(parser)
    cli.add_schedule_arguments(parser, [
        (["--heads-epochs"], "train: the heads up to this epoch (default 20)"),
        (["--all-epochs"], "train: then all layers up to this epoch (default 40)")])
    parser.add_argument("--val-ids", default=None, metavar="FILE",
                        help="text file of validation image ids, one per line")
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                        help="validation share of stage1_train when Matterport's validation "
                             "ids are absent and --val-ids is not given (default 0.1)")
    parser.add_argument("--results", default=RESULTS_DIR,
                        help=f"detect: parent folder of submit_<time>/ (default {RESULTS_DIR})")
    parser.add_argument("--no-overlays", action="store_true",
                        help="detect: do not save pictures of the detections")
    parser.add_argument("--save-npz", action="store_true",
                        help="detect: also save the raw detections as <image_id>.npz")
    cli.add_images_argument(parser)
    return parser


def run(args: argparse.Namespace) -> Any:
    """Run a parsed command line (errors of the input raise ``InputError``)."""
    tiny = cli.tiny_requested(args)
    cli.check_weights_spec(args.weights, NucleusConfig, args.logs, tiny)
    if args.images:
        if args.command != "detect":
            fail(f"--images is for detect, not {args.command}")
        paths = cli.image_files(args.images)
        model = cli.setup_model("inference", NucleusInferenceConfig, args.weights,
                                   args.logs, tiny,
                                   settings=cli.settings(args, NucleusInferenceConfig),
                                   exclude_heads=True)
        out = os.path.join(args.results, f"detect_{cli.timestamp()}")
        return cli.detect_files(model, paths, ("BG", "nucleus"), out)
    if not args.dataset:
        fail(f"{args.command} needs --dataset (or detect --images DIR)")
    subset = args.subset or DEFAULT_SUBSETS[args.command]
    val_ids = read_val_ids(args.val_ids) if args.val_ids else None
    print(f"Command: {args.command}  Dataset: {args.dataset}  Subset: {subset}  "
          f"Weights: {args.weights}  Logs: {args.logs}")

    if args.command == "train":
        heads_epochs, all_epochs = cli.stage_epochs(
            [args.heads_epochs, args.all_epochs], [20, 40], tiny)
        dataset_train, dataset_val = load_datasets(args.dataset, subset, val_ids,
                                                   args.val_fraction)
        per_batch = NucleusConfig.IMAGES_PER_GPU * NucleusConfig.GPU_COUNT
        from_scratch = cli.trains_from_scratch(args.weights, NucleusConfig, args.logs)
        model = cli.setup_model(
            "training", NucleusConfig, args.weights, args.logs, tiny,
            settings=cli.settings(args, NucleusConfig), exclude_heads=True,
            from_scratch=from_scratch,
            STEPS_PER_EPOCH=max(1, len(dataset_train.image_ids) // per_batch),
            VALIDATION_STEPS=max(1, len(dataset_val.image_ids) // per_batch),
            **cli.workers_override(args))
        return train(model, dataset_train, dataset_val, heads_epochs, all_epochs, args.lr,
                     from_scratch=from_scratch)

    dataset = NucleusDataset()
    dataset.load_nucleus(args.dataset, subset, val_ids=val_ids, val_fraction=args.val_fraction,
                         require_masks=True if args.command == "evaluate" else None,
                         verify=True)
    dataset.prepare()
    model = cli.setup_model("inference", NucleusInferenceConfig, args.weights, args.logs,
                               tiny,
                               settings=cli.settings(args, NucleusInferenceConfig),
                               exclude_heads=True)
    if args.command == "detect":
        return detect(model, dataset, args.results, overlays=not args.no_overlays,
                      save_npz=args.save_npz)
    return evaluate(model, dataset)


def main(argv: Sequence[str] | None = None) -> Any:
    """Command line entry point; see the module docstring."""
    return cli.run_main(build_parser(), run, argv)


if __name__ == "__main__":
    main()
