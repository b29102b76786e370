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
import json
import os
import warnings
from typing import Any, Sequence

import numpy as np

from mrcnn import cli, utils
from mrcnn.cli import fail
from mrcnn.config import Config
from mrcnn.progress import Progress

ANNOTATION_FILE = "via_region_data.json"

# VIA region shapes that become masks, with the attributes each needs.
SHAPE_ATTRIBUTES = {
    "polygon": ("all_points_x", "all_points_y"),
    "rect": ("x", "y", "width", "height"),
    "circle": ("cx", "cy", "r"),
    "ellipse": ("cx", "cy", "rx", "ry"),
}

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

def _number_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def _check_region(json_path: str, filename: str, index: int, region: Any) -> dict:
    """The ``shape_attributes`` of a region, validated; InputError naming the region."""
    where = f"{json_path}: image {filename!r}, region {index}"
    if not isinstance(region, dict) or not isinstance(region.get("shape_attributes"), dict):
        fail(f"{where}: expected an object with 'shape_attributes'")
    shape = region["shape_attributes"]
    name = shape.get("name")
    if name not in SHAPE_ATTRIBUTES:
        fail(f"{where}: unsupported shape {name!r} (supported: "
             f"{', '.join(SHAPE_ATTRIBUTES)})")
    missing = [a for a in SHAPE_ATTRIBUTES[name] if a not in shape]
    if missing:
        fail(f"{where}: {name} without {', '.join(missing)}")
    if name == "polygon":
        xs, ys = shape["all_points_x"], shape["all_points_y"]
        if not (_number_list(xs) and _number_list(ys)) or len(xs) != len(ys) or len(xs) < 3:
            fail(f"{where}: polygon needs all_points_x and all_points_y as lists of at least "
                 "3 numbers of equal length")
    else:
        bad = [a for a in SHAPE_ATTRIBUTES[name]
               if not isinstance(shape[a], (int, float)) or isinstance(shape[a], bool)]
        if bad:
            fail(f"{where}: {name} attributes {', '.join(bad)} must be numbers")
    return shape


def _polygon_in_image(shape: dict, where: str, height: int, width: int) -> dict:
    """Warn (naming the region) about polygon points that cannot make a mask.

    NaN / infinite points (JSON allows NaN) are dropped, with a warning: rasterizing them
    is undefined. A polygon entirely outside the image gives no mask (``load_mask`` drops
    it), which usually means the annotation belongs to another image or size.

    Returns:
        The shape, without its non-finite points.
    """
    if shape["name"] != "polygon":
        return shape
    xs = np.asarray(shape["all_points_x"], dtype=np.float64)
    ys = np.asarray(shape["all_points_y"], dtype=np.float64)
    finite = np.isfinite(xs) & np.isfinite(ys)
    if not finite.all():
        warnings.warn(f"{where}: polygon has {int((~finite).sum())} NaN or infinite point(s) "
                      f"of {len(xs)}; they are dropped", stacklevel=3)
        xs, ys = xs[finite], ys[finite]
        shape = {**shape, "all_points_x": xs.tolist(), "all_points_y": ys.tolist()}
    if len(xs) and (xs.max() < 0 or ys.max() < 0 or xs.min() > width or ys.min() > height):
        warnings.warn(f"{where}: polygon lies entirely outside the {width}x{height} image "
                      f"(x {xs.min():g}..{xs.max():g}, y {ys.min():g}..{ys.max():g}); it "
                      "gives no mask", stacklevel=3)
    return shape


def read_via_annotations(json_path: str) -> list[dict]:
    """Read a VIA annotation file into [{"filename", "shapes": [shape_attributes...]}].

    Accepts VIA 1.x and 2.x exports (a dict of entries, ``regions`` a dict or a list) and
    VIA 2 project files (entries under ``_via_img_metadata``). Entries without regions
    are skipped with a warning.

    Raises:
        InputError: missing or malformed file, an unsupported or malformed region (the
            message names the file, the image and the region).
    """
    cli.require_file(json_path, "annotation file")
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        fail(f"{json_path}: malformed JSON ({err})")
    if isinstance(data, dict) and isinstance(data.get("_via_img_metadata"), dict):
        data = data["_via_img_metadata"]  # VIA 2 project file
    if not isinstance(data, dict):
        fail(f"{json_path}: expected a VIA export (an object of image entries), got "
             f"{type(data).__name__}")
    entries = []
    for key, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            fail(f"{json_path}: entry {key!r} is not a VIA image entry (no 'filename')")
        filename = entry["filename"]
        regions = entry.get("regions")
        if isinstance(regions, dict):  # VIA 1.x: {"0": region, "1": region}
            regions = list(regions.values())
        if regions is None or regions == []:
            warnings.warn(f"{json_path}: skipping image {filename!r}: no regions", stacklevel=2)
            continue
        if not isinstance(regions, list):
            fail(f"{json_path}: image {filename!r}: 'regions' must be a list or an object")
        shapes = [_check_region(json_path, filename, k, r) for k, r in enumerate(regions)]
        entries.append({"filename": filename, "shapes": shapes})
    return entries


def draw_shape(shape: dict, height: int, width: int) -> np.ndarray:
    """Rasterize one VIA shape into a bool [height, width] mask (clipped to the image)."""
    import skimage.draw

    mask = np.zeros([height, width], dtype=bool)
    name = shape["name"]
    if name == "polygon":
        rr, cc = skimage.draw.polygon(np.asarray(shape["all_points_y"], dtype=np.float64),
                                      np.asarray(shape["all_points_x"], dtype=np.float64),
                                      shape=(height, width))
        mask[rr, cc] = True
    elif name == "rect":
        x0, y0 = int(round(shape["x"])), int(round(shape["y"]))
        x1, y1 = int(round(shape["x"] + shape["width"])), int(round(shape["y"] + shape["height"]))
        mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    elif name == "circle":
        rr, cc = skimage.draw.disk((shape["cy"], shape["cx"]), shape["r"], shape=(height, width))
        mask[rr, cc] = True
    elif name == "ellipse":
        # VIA draws on a canvas (y down) rotated by theta radians.
        cx, cy, rx, ry = (float(shape[k]) for k in ("cx", "cy", "rx", "ry"))
        theta = float(shape.get("theta", 0.0) or 0.0)
        yy, xx = np.mgrid[:height, :width]
        dx, dy = xx - cx, yy - cy
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        mask = (u / max(rx, 1e-6)) ** 2 + (v / max(ry, 1e-6)) ** 2 <= 1
    else:
        raise ValueError(f"unsupported shape {name!r}")
    return mask


class BalloonDataset(utils.Dataset):
    """Balloons from a VIA annotation file: one class."""

    def load_balloon(self, dataset_dir: str, subset: str) -> None:
        """Register the images of ``<dataset_dir>/<subset>/``.

        Args:
            dataset_dir: root folder of the dataset.
            subset: "train" or "val" (any sub-folder with a via_region_data.json works).

        Raises:
            InputError: missing folder, annotation file or image; malformed annotations.
        """
        self.add_class("balloon", 1, "balloon")
        cli.require_dir(dataset_dir, "dataset folder")
        subset_dir = os.path.join(dataset_dir, subset)
        cli.require_dir(subset_dir, "subset folder")
        json_path = os.path.join(subset_dir, ANNOTATION_FILE)
        entries = read_via_annotations(json_path)
        if not entries:
            fail(f"{json_path}: no image with regions")
        for entry in entries:
            path = os.path.join(subset_dir, entry["filename"])
            if not os.path.isfile(path):
                fail(f"{json_path}: image {entry['filename']!r}: file not found: {path}")
            height, width = cli.verify_image(path)
            where = f"{json_path}: image {entry['filename']!r}"
            shapes = [_polygon_in_image(shape, f"{where}, region {k}", height, width)
                      for k, shape in enumerate(entry["shapes"])]
            self.add_image("balloon", image_id=entry["filename"], path=path, width=width,
                           height=height, polygons=shapes)

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """One mask per region (regions entirely outside the image are dropped).

        Returns:
            masks: bool [height, width, N].
            class_ids: int32 [N] of ones.
        """
        info = self.image_info[image_id]
        if info["source"] != "balloon":
            return super().load_mask(image_id)
        height, width = info["height"], info["width"]
        return cli.stack_instance_masks(
            [draw_shape(s, height, width) for s in info["polygons"]], height, width)

    def image_reference(self, image_id: int) -> str:
        """The image's path."""
        info = self.image_info[image_id]
        if info["source"] == "balloon":
            return info["path"]
        return super().image_reference(image_id)


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
