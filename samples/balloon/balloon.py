"""Mask R-CNN on balloons annotated with the VGG Image Annotator (Matterport's samples/balloon).

Train a one-class model on polygons drawn with VIA, then apply the "color splash"
effect: the picture in grayscale with the detected balloons kept in color::

    # Train from scratch (no download needed): all layers
    python samples/balloon/balloon.py train --dataset=/path/to/balloon --weights=none

    # Fine-tune Matterport's COCO weights (needs network or mask_rcnn_coco.h5): heads only
    python samples/balloon/balloon.py train --dataset=/path/to/balloon --weights=coco

    # Color splash on an image or a video
    python samples/balloon/balloon.py splash --weights=last --image=<file>
    python samples/balloon/balloon.py splash --weights=last --video=<file>

Dataset layout::

    <dataset>/train/via_region_data.json   VIA 1.x/2.x export (or a VIA 2 project file)
    <dataset>/train/<image files>
    <dataset>/val/via_region_data.json
    <dataset>/val/<image files>

Regions are polygons (``shape_attributes`` with ``all_points_x``/``all_points_y``);
rectangles, circles and ellipses are accepted too. ``regions`` may be a dict (VIA 1.x) or
a list (VIA 2.x). Images without regions are skipped with a warning.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Sequence

import numpy as np

from mrcnn import cli
from mrcnn.cli import fail
from mrcnn.config import Config
from mrcnn.datasets.via import (  # noqa: F401  (this sample's names since Matterport)
    ANNOTATION_FILE,
    SHAPE_ATTRIBUTES,
    ViaDataset,
    draw_shape,
    read_via_annotations,
)
from mrcnn.progress import Progress

# Gray of the splash background: ITU-R BT.709 luma, as skimage.color.rgb2gray.
GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)


############################################################
#  Configurations
############################################################

class BalloonConfig(Config):
    """Training on the balloon dataset."""

    NAME = "balloon"

    # A 12 GB GPU fits two 1024x1024 images.
    IMAGES_PER_GPU = 2

    # Background + balloon.
    NUM_CLASSES = 1 + 1

    STEPS_PER_EPOCH = 100

    # Skip detections with less than 90% confidence.
    DETECTION_MIN_CONFIDENCE = 0.9

    # No pretrained weights can be downloaded here, so the default is training from
    # scratch, where GroupNorm (batch-size independent) works and frozen BatchNorm does
    # not. To fine-tune Matterport's COCO weights as the original sample did, set
    # NORM = None (frozen BN).
    NORM = "gn"


class BalloonInferenceConfig(BalloonConfig):
    """One image at a time."""

    GPU_COUNT = 1
    IMAGES_PER_GPU = 1


############################################################
#  Dataset
############################################################

class BalloonDataset(ViaDataset):
    """Balloons from a VIA annotation file: one class (``mrcnn.datasets.via``)."""

    source = "balloon"

    def load_balloon(self, dataset_dir: str, subset: str) -> None:
        """Register the images of ``<dataset_dir>/<subset>/``.

        Args:
            dataset_dir: root folder of the dataset.
            subset: "train" or "val" (any sub-folder with a via_region_data.json works).

        Raises:
            InputError: missing folder, annotation file or image; malformed annotations.
        """
        cli.require_dir(dataset_dir, "dataset folder")
        subset_dir = os.path.join(dataset_dir, subset)
        cli.require_dir(subset_dir, "subset folder")
        # One class whatever the regions' attributes say, as Matterport's sample.
        self.load_via(os.path.join(subset_dir, ANNOTATION_FILE), subset_dir, class_key="",
                      class_names=["balloon"], default_class="balloon")


############################################################
#  Training
############################################################

def train(model, dataset_dir: str, heads_epochs: int = 30, layers: str = "heads",
          learning_rate: float | None = None, from_scratch: bool = False) -> None:
    """Train on ``<dataset>/train``, validating on ``<dataset>/val``.

    Matterport fine-tuned the heads of COCO weights for 30 epochs on this small dataset;
    from scratch, pass ``layers="all"`` (and ``from_scratch=True`` for the schedule of
    ``cli.run_schedule``).
    """
    dataset_train, dataset_val = load_datasets(dataset_dir)
    lr = learning_rate or model.config.LEARNING_RATE
    cli.run_schedule(model, dataset_train, dataset_val,
                     [(f"Training layers={layers}", layers, heads_epochs, lr)],
                     from_scratch=from_scratch)


def load_datasets(dataset_dir: str) -> tuple[BalloonDataset, BalloonDataset]:
    """Prepared "train" and "val" datasets."""
    out = []
    for subset in ("train", "val"):
        dataset = BalloonDataset()
        dataset.load_balloon(dataset_dir, subset)
        dataset.prepare()
        out.append(dataset)
    return out[0], out[1]


############################################################
#  Color splash
############################################################

def grayscale(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 gray copy of an RGB image (BT.709 luma, rounded)."""
    rgb = np.asarray(image, dtype=np.float64)
    gray = rgb[..., 0] * GRAY_WEIGHTS[0] + rgb[..., 1] * GRAY_WEIGHTS[1] + \
        rgb[..., 2] * GRAY_WEIGHTS[2]
    gray = np.clip(np.round(gray), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def color_splash(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Grayscale image with the masked pixels kept in color.

    Args:
        image: RGB uint8 [H, W, 3].
        mask: instance masks [H, W, N] (N may be 0).

    Returns:
        uint8 [H, W, 3].
    """
    image = np.asarray(image)
    gray = grayscale(image)
    mask = np.asarray(mask)
    if mask.ndim != 3 or mask.shape[-1] == 0:
        return gray
    keep = np.any(mask, axis=-1, keepdims=True)
    return np.where(keep, image, gray).astype(np.uint8)


def splash_video(model, video_path: str, output: str) -> int:
    """Color splash every frame of a video (OpenCV reads and writes it).

    Args:
        model: an inference ``MaskRCNN`` (anything with Matterport's ``detect``).
        video_path: input video (any format OpenCV's build can read).
        output: output video; ".mp4" is written with the mp4v codec, anything else as
            Motion-JPEG (".avi").

    Returns:
        Number of frames written.

    Raises:
        InputError: the input cannot be read or the output cannot be written.
    """
    import cv2

    cli.require_file(video_path, "video file")
    capture = cv2.VideoCapture(video_path)
    if not capture.isOpened():
        fail(f"cannot read video {video_path} (OpenCV could not open it)")
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and np.isfinite(fps) and fps > 0 else 25.0
    codec = "mp4v" if output.lower().endswith(".mp4") else "MJPG"
    writer = cv2.VideoWriter(output, cv2.VideoWriter_fourcc(*codec), fps, (width, height))
    if not writer.isOpened():
        capture.release()
        fail(f"cannot write video {output} with codec {codec} (use .avi or .mp4)")
    count = 0
    # The container's frame count can be missing (0) or approximate: then no ETA.
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    progress = Progress(frames, label="splash", unit="frame")
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            image = np.ascontiguousarray(frame[..., ::-1])  # OpenCV is BGR
            r = model.detect([image], verbose=0)[0]
            splash = color_splash(image, r["masks"])
            writer.write(np.ascontiguousarray(splash[..., ::-1]))
            count += 1
            progress.update()
    finally:
        progress.close()
        capture.release()
        writer.release()
    if count == 0:
        fail(f"cannot read video {video_path}: no frame could be decoded")
    return count


def detect_and_color_splash(model, image_path: str | None = None,
                            video_path: str | None = None, output: str | None = None) -> str:
    """Color splash an image or a video; Matterport's function.

    Args:
        model: an inference ``MaskRCNN``.
        image_path / video_path: the input (one of them).
        output: output file; default ``splash_<timestamp>.png`` (image) or ``.avi``
            (video) in the current folder, as Matterport.

    Returns:
        The path written.
    """
    import skimage.io

    if bool(image_path) == bool(video_path):
        fail("give --image or --video (one of them)")
    if image_path:
        image = cli.read_image(image_path)
        output = output or f"splash_{cli.timestamp()}.png"
        r = model.detect([image], verbose=0)[0]
        print(f"{image_path}: {len(r['scores'])} balloons")
        splash = color_splash(image, r["masks"])
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        skimage.io.imsave(output, splash, check_contrast=False)
    else:
        output = output or f"splash_{cli.timestamp()}.avi"
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        splash_video(model, video_path, output)
    print(f"Saved to {output}")
    return output


############################################################
#  Command line
############################################################

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="balloon.py", description="Train Mask R-CNN to detect balloons; color splash.")
    parser.add_argument("command", choices=("train", "splash", "detect"))
    parser.add_argument("--dataset", metavar="/path/to/balloon/dataset/",
                        help="train: folder with train/ and val/")
    cli.add_weights_argument(parser)
    cli.add_common_arguments(parser)
    parser.add_argument("--image", metavar="path to image",
                        help="splash: image to apply the color splash effect on")
    parser.add_argument("--video", metavar="path to video",
                        help="splash: video to apply the color splash effect on")
    parser.add_argument("--output", default=None,
                        help="splash: output file (default splash_<time>.png / .avi); "
                             "detect: output folder (default detect_<time>)")
    cli.add_images_argument(parser)
    parser.add_argument("--layers", default=None,
                        help="train: layers to train: heads, 3+, 4+, 5+, all or a regex "
                             "(default: heads from pretrained weights, all with --weights=none)")
    cli.add_schedule_arguments(parser, [
        (["--epochs", "--heads-epochs"], "train: train up to this epoch (default 30)")])
    return parser


def run(args: argparse.Namespace) -> Any:
    """Run a parsed command line (errors of the input raise ``InputError``)."""
    tiny = cli.tiny_requested(args)
    cli.check_weights_spec(args.weights, BalloonConfig, args.logs, tiny)
    if args.command == "train":
        cli.require_dir(args.dataset, "dataset folder", "--dataset")
        (epochs,) = cli.stage_epochs([args.epochs], [30], tiny)
        layers = args.layers or ("all" if args.weights.lower() == "none" else "heads")
        load_datasets(args.dataset)  # validate the annotations before building the model
        from_scratch = layers == "all" and cli.trains_from_scratch(args.weights, BalloonConfig,
                                                                  args.logs)
        model = cli.setup_model("training", BalloonConfig, args.weights, args.logs, tiny,
                                settings=cli.settings(args, BalloonConfig),
                                exclude_heads=True, from_scratch=from_scratch,
                                **cli.workers_override(args))
        return train(model, args.dataset, epochs, layers, args.lr, from_scratch=from_scratch)

    if args.command == "detect":
        if not args.images:
            fail("detect needs --images DIR or GLOB")
        paths = cli.image_files(args.images)
        model = cli.setup_model("inference", BalloonInferenceConfig, args.weights,
                                   args.logs, tiny,
                                   settings=cli.settings(args, BalloonInferenceConfig),
                                   exclude_heads=True)
        out = args.output or f"detect_{cli.timestamp()}"
        return cli.detect_files(model, paths, ("BG", "balloon"), out)
    if bool(args.image) == bool(args.video):
        fail("splash needs --image or --video (one of them)")
    if args.image:
        cli.read_image(args.image)  # fail on a bad file before building the model
    else:
        cli.require_file(args.video, "video file")
    model = cli.setup_model("inference", BalloonInferenceConfig, args.weights, args.logs,
                               tiny,
                               settings=cli.settings(args, BalloonInferenceConfig),
                               exclude_heads=True)
    return detect_and_color_splash(model, image_path=args.image, video_path=args.video,
                                   output=args.output)


def main(argv: Sequence[str] | None = None) -> Any:
    """Command line entry point; see the module docstring."""
    return cli.run_main(build_parser(), run, argv)


if __name__ == "__main__":
    main()
