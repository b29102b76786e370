"""Mask R-CNN on MS COCO: training and the official evaluation (Matterport's samples/coco).

Uses pycocotools to read the annotations and to compute the COCO metrics::

    # Train from scratch (no download needed); heads, then ResNet stage 4+, then all
    python samples/coco/coco.py train --dataset=/path/to/coco --year=2017 --model=none

    # Continue the last run
    python samples/coco/coco.py train --dataset=/path/to/coco --year=2017 --model=last

    # Evaluate Matterport's released weights (mask_rcnn_coco.h5 in the repository root or
    # downloaded with network) on the first 500 val2017 images, boxes and masks
    python samples/coco/coco.py evaluate --dataset=/path/to/coco --year=2017 --model=coco --limit=500

Dataset layout (as cocodataset.org ships it; ``--download`` fetches it with network)::

    <dataset>/annotations/instances_<subset><year>.json
    <dataset>/<subset><year>/<file_name>            e.g. val2017/000000000139.jpg

2014 also knows Matterport's "minival" and "valminusminival" annotation files (their images
are in val2014/).
"""

from __future__ import annotations

import argparse
import os
import time
import zipfile
from typing import Any, Mapping, Sequence

import numpy as np

from mrcnn import cli
from mrcnn.cli import fail
from mrcnn.config import Config
from mrcnn.datasets import coco as coco_data
from mrcnn.datasets.coco import (  # noqa: F401  (this sample's names since Matterport)
    ANNOTATION_KEYS,
    DEFAULT_DATASET_YEAR,
    IMAGE_KEYS,
    annotation_file,
    check_coco_annotations,
    image_folder,
    read_coco,
)
from mrcnn.progress import track

# Matterport's released COCO weights (downloaded there by --model=coco when missing).
COCO_MODEL_PATH = cli.COCO_WEIGHTS_PATH

IMAGES_URL = "https://images.cocodataset.org/zips/{subset}{year}.zip"
ANNOTATIONS_URL = "https://images.cocodataset.org/annotations/annotations_trainval{year}.zip"
# Matterport's minival / valminusminival splits of val2014 (hosted by Matterport).
MINIVAL_URLS = {
    "minival": "https://dl.dropboxusercontent.com/s/o43o90bna78omob/"
               "instances_minival2014.json.zip?dl=0",
    "valminusminival": "https://dl.dropboxusercontent.com/s/s3tw5zcg7395368/"
                       "instances_valminusminival2014.json.zip?dl=0",
}

# The 12 numbers of COCOeval.stats, in order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


############################################################
#  Configurations
############################################################

class CocoConfig(Config):
    """Training on MS COCO (80 classes)."""

    NAME = "coco"

    # A 12 GB GPU fits two 1024x1024 images.
    IMAGES_PER_GPU = 2

    # Background + 80 classes. The command line takes the count from the annotation file
    # (the same on the real dataset; smaller with a class subset).
    NUM_CLASSES = 1 + 80

    # NORM stays Matterport's frozen BatchNorm so that Matterport's mask_rcnn_coco.h5 and
    # ImageNet weights load. Training from scratch (--model=none), set NORM = "gn"
    # (frozen BN from random weights normalizes nothing).


class CocoInferenceConfig(CocoConfig):
    """One image at a time; every detection counts for COCO's AP."""

    GPU_COUNT = 1
    IMAGES_PER_GPU = 1
    DETECTION_MIN_CONFIDENCE = 0


############################################################
#  Dataset
############################################################

def _download(url: str, path: str, hashes: Mapping[str, str] | None = None) -> None:
    """Download ``url`` to ``path`` (``mrcnn.download``: https, progress, .part file, the
    SHA-256 in ``hashes`` under the file's name checked when given); InputError on failure."""
    from mrcnn.download import DownloadError, download

    try:
        download(url, path, file_hash=(hashes or {}).get(os.path.basename(path)))
    except DownloadError as err:
        fail(str(err))


def _unzip(zip_path: str, target_dir: str) -> None:
    """Unpack after checking that every member stays in ``target_dir``
    (``mrcnn.download.extract_zip``); InputError naming the archive otherwise."""
    from mrcnn.download import extract_zip

    print(f"Unzipping {zip_path} ...")
    try:
        extract_zip(zip_path, target_dir)
    except (zipfile.BadZipFile, OSError) as err:
        fail(f"cannot unzip {zip_path}: {cli.one_line(err)}")


def download_coco(dataset_dir: str, subset: str, year: str,
                  hashes: Mapping[str, str] | None = None) -> None:
    """Download and unzip the images and annotations of a subset when missing (Matterport).

    Images come from images.cocodataset.org/zips/<subset><year>.zip, annotations from
    annotations_trainval<year>.zip (or Matterport's minival files for 2014), over https.
    The COCO site publishes no checksums, so none is built in: pass ``hashes`` to have the
    archives checked. Archives are unpacked only after every member path is checked.

    Args:
        dataset_dir: the COCO folder.
        subset: train, val, minival, valminusminival.
        year: 2014 or 2017.
        hashes: SHA-256 by archive file name (e.g. ``{"val2017.zip": "..."}``), optional.

    Raises:
        InputError: a download or an unzip failed (no network, a hash mismatch, a member
            leaving the folder, ...).
    """
    if subset in ("minival", "valminusminival") and year != "2014":
        fail(f"subset {subset!r} exists for year 2014 only, not {year}")
    os.makedirs(dataset_dir, exist_ok=True)
    image_dir = image_folder(dataset_dir, subset, year)
    if not os.path.isdir(image_dir):
        zip_path = image_dir + ".zip"
        folder = "val" if subset in MINIVAL_URLS else subset
        _download(IMAGES_URL.format(subset=folder, year=year), zip_path, hashes)
        _unzip(zip_path, dataset_dir)
    print(f"Will use images in {image_dir}")

    ann_dir = os.path.join(dataset_dir, "annotations")
    ann_file = annotation_file(dataset_dir, subset, year)
    os.makedirs(ann_dir, exist_ok=True)
    if not os.path.isfile(ann_file):
        if subset in MINIVAL_URLS:
            url, zip_path, unzip_dir = (MINIVAL_URLS[subset],
                                        os.path.join(dataset_dir,
                                                     f"instances_{subset}2014.json.zip"),
                                        ann_dir)
        else:
            url, zip_path, unzip_dir = (ANNOTATIONS_URL.format(year=year),
                                        os.path.join(dataset_dir,
                                                     f"annotations_trainval{year}.zip"),
                                        dataset_dir)
        if not os.path.isfile(zip_path):
            _download(url, zip_path, hashes)
        _unzip(zip_path, unzip_dir)
    print(f"Will use annotations in {ann_file}")


class CocoDataset(coco_data.CocoDataset):
    """MS COCO (or any dataset in its annotation format): ``mrcnn.datasets.coco`` with
    Matterport's download and links to the COCO website."""

    def auto_download(self, dataDir: str, dataType: str, dataYear: str) -> None:
        """Download missing images and annotations (Matterport's method; see download_coco)."""
        download_coco(dataDir, dataType, str(dataYear))

    def image_reference(self, image_id: int) -> str:
        """Link to the image on the COCO website."""
        info = self.image_info[image_id]
        if info["source"] == "coco":
            return f"http://cocodataset.org/#explore?id={info['id']}"
        return super().image_reference(image_id)


############################################################
#  COCO evaluation
############################################################

def detect_coco(model, dataset: CocoDataset, limit: int = 0,
                image_ids: Sequence[int] | None = None) -> tuple[list[dict], list[int], float]:
    """Run the model on the images and collect COCO result dicts, image by image.

    Returns:
        results (``mrcnn.coco_eval.build_coco_results``, with COCO image and category
        ids), the COCO image ids, prediction seconds.
    """
    from mrcnn import coco_eval

    image_ids = list(dataset.image_ids if image_ids is None else image_ids)
    if limit:
        image_ids = image_ids[:limit]
    coco_image_ids = [dataset.image_info[i]["id"] for i in image_ids]
    # Internal class id -> COCO category id (0, the background, is never detected).
    categories = np.array([0] + [dataset.get_source_class_id(c, "coco")
                                 for c in dataset.class_ids[1:]])
    results, t_prediction = [], 0.0
    for image_id, coco_id in zip(track(image_ids, label="detect", unit="img"),
                                 coco_image_ids):
        image = cli.load_dataset_image(dataset, image_id)
        t = time.time()
        r = model.detect([image], verbose=0)[0]
        t_prediction += time.time() - t
        # One image at a time: its masks are RLE-encoded here, never all held at once.
        results.extend(coco_eval.build_coco_results([{
            **r, "image_id": coco_id, "class_ids": categories[np.asarray(r["class_ids"])]}]))
    return results, coco_image_ids, t_prediction


def evaluate_coco(model, dataset: CocoDataset, coco, eval_type: str = "bbox", limit: int = 0,
                  image_ids: Sequence[int] | None = None) -> np.ndarray:
    """Official COCO evaluation of ``model`` on ``dataset`` (Matterport's function).

    Args:
        model: an inference ``MaskRCNN``.
        dataset: prepared ``CocoDataset`` (loaded with ``return_coco=True`` for ``coco``).
        coco: the ``COCO`` ground truth object.
        eval_type: "bbox" or "segm".
        limit: evaluate the first ``limit`` images only (0: all).
        image_ids: internal image ids to use (default: all of the dataset).

    Returns:
        The 12 COCOeval stats.
    """
    from mrcnn import coco_eval

    t_start = time.time()
    results, coco_image_ids, t_prediction = detect_coco(model, dataset, limit, image_ids)
    stats = coco_eval.evaluate_results(coco, results, eval_type, coco_image_ids)["stats"]
    count = max(len(coco_image_ids), 1)
    print(f"Prediction time: {t_prediction:.1f} s. Average {t_prediction / count:.3f} s/image")
    print(f"Total time: {time.time() - t_start:.1f} s")
    return stats


############################################################
#  Command line
############################################################

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coco.py", description="Train Mask R-CNN on MS COCO.")
    parser.add_argument("command", choices=("train", "evaluate"))
    parser.add_argument("--dataset", required=True, metavar="/path/to/coco/",
                        help="root folder of the MS-COCO dataset")
    parser.add_argument("--year", default=DEFAULT_DATASET_YEAR, choices=("2014", "2017"),
                        help=f"dataset year (default {DEFAULT_DATASET_YEAR})")
    cli.add_weights_argument(parser, "--model")
    cli.add_common_arguments(parser)
    parser.add_argument("--limit", type=int, default=500,
                        help="evaluate: images to use, 0 for all (default 500)")
    parser.add_argument("--eval-type", choices=("bbox", "segm", "both"), default="both",
                        help="evaluate: box AP, mask AP or both (default both)")
    parser.add_argument("--download", action="store_true",
                        help="download and unzip missing MS-COCO files (needs network)")
    cli.add_schedule_arguments(parser, [
        (["--heads-epochs"], "train: heads up to this epoch (default 40)"),
        (["--fourplus-epochs"], "train: then ResNet stage 4 and up to this epoch (default 120)"),
        (["--all-epochs"], "train: then all layers, at lr/10, up to this epoch (default 160)")])
    return parser


def _exclude_heads(spec: str, num_classes: int) -> bool:
    if spec.lower() == "coco" and num_classes != CocoConfig.NUM_CLASSES:
        print(f"{num_classes - 1} classes instead of 80: the class-specific heads of the "
              "COCO weights are not loaded")
        return True
    return False


def run(args: argparse.Namespace) -> Any:
    """Run a parsed command line (errors of the input raise ``InputError``)."""
    tiny = cli.tiny_requested(args)
    cli.check_weights_spec(args.model, CocoConfig, args.logs, tiny)
    year = args.year
    print(f"Command: {args.command}  Model: {args.model}  Dataset: {args.dataset}  "
          f"Year: {year}  Logs: {args.logs}  Auto download: {args.download}")
    val_type = "val" if year == "2017" else "minival"

    if args.command == "train":
        epochs = cli.stage_epochs(
            [args.heads_epochs, args.fourplus_epochs, args.all_epochs], [40, 120, 160], tiny)
        # As in the Mask R-CNN paper: train + valminusminival (35k val images) for 2014.
        dataset_train = CocoDataset()
        dataset_train.load_coco(args.dataset, "train", year=year, auto_download=args.download)
        if year == "2014":
            dataset_train.load_coco(args.dataset, "valminusminival", year=year,
                                    auto_download=args.download)
        dataset_train.prepare()
        dataset_val = CocoDataset()
        dataset_val.load_coco(args.dataset, val_type, year=year, auto_download=args.download)
        dataset_val.prepare()

        num_classes = dataset_train.num_classes
        from_scratch = cli.trains_from_scratch(args.model, CocoConfig, args.logs)
        model = cli.setup_model("training", CocoConfig, args.model, args.logs, tiny,
                                settings=cli.settings(args, CocoConfig),
                                exclude_heads=_exclude_heads(args.model, num_classes),
                                from_scratch=from_scratch,
                                   NUM_CLASSES=num_classes, **cli.workers_override(args))
        import albumentations as A

        lr = args.lr or model.config.LEARNING_RATE
        cli.run_schedule(model, dataset_train, dataset_val, [
            ("Training network heads", "heads", epochs[0], lr),
            ("Fine tune Resnet stage 4 and up", "4+", epochs[1], lr),
            ("Fine tune all layers", "all", epochs[2], lr / 10),
        ], augmentation=A.HorizontalFlip(p=0.5), from_scratch=from_scratch)
        return None

    dataset_val = CocoDataset()
    coco = dataset_val.load_coco(args.dataset, val_type, year=year, return_coco=True,
                                 auto_download=args.download)
    dataset_val.prepare()
    num_classes = dataset_val.num_classes
    model = cli.setup_model("inference", CocoInferenceConfig, args.model, args.logs, tiny,
                               settings=cli.settings(args, CocoInferenceConfig),
                               exclude_heads=_exclude_heads(args.model, num_classes),
                               NUM_CLASSES=num_classes)
    eval_types = ("bbox", "segm") if args.eval_type == "both" else (args.eval_type,)
    count = min(args.limit, len(dataset_val.image_ids)) if args.limit else len(
        dataset_val.image_ids)
    print(f"Running COCO evaluation on {count} images.")
    t_start = time.time()
    # Detect once, evaluate boxes and masks from the same detections.
    results, coco_image_ids, t_prediction = detect_coco(model, dataset_val, args.limit)
    from mrcnn import coco_eval

    stats = {}
    for eval_type in eval_types:
        stats[eval_type] = coco_eval.evaluate_results(coco, results, eval_type,
                                                      coco_image_ids)["stats"]
        print(f"{eval_type} stats: " + " ".join(f"{v:.4f}" for v in stats[eval_type]))
    print(f"Prediction time: {t_prediction:.1f} s. Average "
          f"{t_prediction / max(len(coco_image_ids), 1):.3f} s/image")
    print(f"Total time: {time.time() - t_start:.1f} s")
    return stats


def main(argv: Sequence[str] | None = None) -> Any:
    """Command line entry point; see the module docstring."""
    return cli.run_main(build_parser(), run, argv)


if __name__ == "__main__":
    main()
