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
import json
import os
import time
import warnings
import zipfile
from typing import Any, Mapping, Sequence

import numpy as np

from mrcnn import cli, utils
from mrcnn.cli import fail
from mrcnn.config import Config
from mrcnn.progress import track

DEFAULT_DATASET_YEAR = "2017"

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

def _pycocotools():
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    return COCO, mask_utils


def image_folder(dataset_dir: str, subset: str, year: str) -> str:
    """``<dataset>/<subset><year>``; minival and valminusminival images are in val<year>."""
    folder = "val" if subset in ("minival", "valminusminival") else subset
    return os.path.join(dataset_dir, f"{folder}{year}")


def annotation_file(dataset_dir: str, subset: str, year: str) -> str:
    """``<dataset>/annotations/instances_<subset><year>.json``."""
    return os.path.join(dataset_dir, "annotations", f"instances_{subset}{year}.json")


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


def read_coco(path: str):
    """``pycocotools.coco.COCO(path)`` with bad files reported as one InputError line.

    The file is checked first (``check_coco_annotations``), so that a file pycocotools would
    take apart with a traceback, or silently turn into an empty dataset, fails here naming
    the file and what is wrong.
    """
    import contextlib
    import io

    COCO, _ = _pycocotools()
    cli.require_file(path, "annotation file")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        fail(f"{path}: malformed JSON ({err})")
    except (OSError, UnicodeDecodeError) as err:
        fail(f"{path}: cannot read the annotation file ({err})")
    check_coco_annotations(data, path)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO()
            coco.dataset = data
            coco.createIndex()
            return coco
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        fail(f"{path}: not a COCO instances file ({type(err).__name__}: {err})")


# Keys each record of a COCO instances file needs here.
IMAGE_KEYS = ("id", "file_name", "width", "height")
ANNOTATION_KEYS = ("id", "image_id", "category_id", "segmentation")


def _records(data: dict, key: str, path: str) -> list:
    records = data.get(key)
    if records is None:
        fail(f"{path} has no {key!r} list: a COCO instances file needs 'images', "
             "'annotations' and 'categories' (an image-info file without annotations cannot "
             "be used to train or evaluate)")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        fail(f"{path}: {key!r} must be a list of objects, got {type(records).__name__}")
    return records


def _missing_key(records: list, keys: Sequence[str], what: str, path: str) -> None:
    for index, record in enumerate(records):
        missing = [k for k in keys if k not in record]
        if missing:
            fail(f"{path}: {what} #{index} (id {record.get('id')!r}) has no "
                 f"{', '.join(repr(k) for k in missing)}")


def check_coco_annotations(data: Any, path: str) -> None:
    """Check the structure of a parsed COCO instances file; warn about odd polygons.

    Errors (``InputError`` naming ``path``): the top level is not an object; ``images``,
    ``annotations`` or ``categories`` is missing or empty; an image without ``file_name``,
    ``width`` or ``height``; an annotation of an image or category the file does not list.
    Warnings (naming the annotations): a polygon with an odd number of coordinates, or one
    that extends beyond the image by more than a pixel (rasterization clips it).

    Args:
        data: the parsed JSON.
        path: the file, for messages.
    """
    if not isinstance(data, dict):
        fail(f"{path}: not a COCO instances file: the top level is a {type(data).__name__}, "
             "expected an object with 'images', 'annotations' and 'categories'")
    images = _records(data, "images", path)
    annotations = _records(data, "annotations", path)
    categories = _records(data, "categories", path)
    if not annotations:
        fail(f"{path} has an empty 'annotations' list: nothing to train or evaluate on")
    _missing_key(images, IMAGE_KEYS, "image", path)
    _missing_key(categories, ("id", "name"), "category", path)
    _missing_key(annotations, ANNOTATION_KEYS, "annotation", path)
    sizes = {image["id"]: (image["height"], image["width"]) for image in images}
    category_ids = {c["id"] for c in categories}
    odd, outside = [], []
    for ann in annotations:
        if ann["image_id"] not in sizes:
            fail(f"{path}: annotation {ann['id']!r} belongs to image_id {ann['image_id']!r}, "
                 "which is not in 'images'")
        if ann["category_id"] not in category_ids:
            fail(f"{path}: annotation {ann['id']!r} has category_id {ann['category_id']!r}, "
                 f"which is not in 'categories' (ids {sorted(category_ids)[:20]})")
        if not isinstance(ann["segmentation"], list):
            continue  # RLE
        height, width = sizes[ann["image_id"]]
        for polygon in ann["segmentation"]:
            if len(polygon) % 2:
                odd.append(ann["id"])
            xs, ys = polygon[0::2], polygon[1::2]
            if xs and ys and (min(xs) < -1 or min(ys) < -1 or max(xs) > width + 1
                              or max(ys) > height + 1):
                outside.append(ann["id"])
    for ids, problem in ((odd, "have a polygon with an odd number of coordinates (x, y "
                               "pairs expected; the last value is ignored)"),
                         (outside, "have a polygon that extends beyond the image (the mask "
                                   "is clipped to the image)")):
        if ids:
            shown = ", ".join(str(i) for i in ids[:10]) + (", ..." if len(ids) > 10 else "")
            warnings.warn(f"{path}: {len(ids)} annotation(s) {problem}: ids {shown}",
                          stacklevel=3)


class CocoDataset(utils.Dataset):
    """MS COCO (or any dataset in its annotation format) through pycocotools."""

    def load_coco(self, dataset_dir: str, subset: str, year: str = DEFAULT_DATASET_YEAR,
                  class_ids: Sequence[int] | None = None, class_map: Any = None,
                  return_coco: bool = False, auto_download: bool = False):
        """Register the images of a subset.

        Args:
            dataset_dir: root of the dataset.
            subset: "train", "val", or for 2014 "minival" / "valminusminival".
            year: "2014" or "2017", as a string.
            class_ids: load only these COCO category ids (and the images that have them).
            class_map: unused (Matterport's placeholder).
            return_coco: return the ``COCO`` object.
            auto_download: download missing images and annotations (needs network).

        Returns:
            The ``COCO`` object when ``return_coco``.

        Raises:
            InputError: missing files or folders, a malformed annotation file, unknown
                class ids, a failed download.
        """
        year = str(year)
        if auto_download:
            self.auto_download(dataset_dir, subset, year)
        cli.require_dir(dataset_dir, "dataset folder")
        coco = read_coco(annotation_file(dataset_dir, subset, year))
        image_dir = image_folder(dataset_dir, subset, year)
        cli.require_dir(image_dir, "image folder")

        all_class_ids = sorted(coco.getCatIds())
        if class_ids:
            unknown = sorted(set(class_ids) - set(all_class_ids))
            if unknown:
                fail(f"class ids {unknown} are not categories of "
                     f"{annotation_file(dataset_dir, subset, year)}")
            class_ids = sorted(class_ids)
            image_ids = sorted({i for c in class_ids for i in coco.getImgIds(catIds=[c])})
        else:
            # All classes; as Matterport, only images with at least one annotation.
            class_ids = all_class_ids
            image_ids = sorted({i for c in class_ids for i in coco.getImgIds(catIds=[c])})

        for i in class_ids:
            self.add_class("coco", i, coco.loadCats(i)[0]["name"])
        for i in image_ids:
            info = coco.imgs[i]
            self.add_image(
                "coco", image_id=i, path=os.path.join(image_dir, info["file_name"]),
                width=info["width"], height=info["height"],
                annotations=coco.loadAnns(coco.getAnnIds(imgIds=[i], catIds=class_ids,
                                                         iscrowd=None)))
        if return_coco:
            return coco
        return None

    def auto_download(self, dataDir: str, dataType: str, dataYear: str) -> None:
        """Download missing images and annotations (Matterport's method; see download_coco)."""
        download_coco(dataDir, dataType, str(dataYear))

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Instance masks of a COCO image.

        Crowd annotations get NEGATIVE class ids (Matterport's convention): the training
        pipeline uses them to ignore ROIs that mostly cover a crowd, never as targets.
        Annotations whose mask rounds to no pixel are skipped.

        Returns:
            masks: bool [height, width, N].
            class_ids: int32 [N] internal class ids, negative for crowds.
        """
        info = self.image_info[image_id]
        if info["source"] != "coco":
            return super().load_mask(image_id)
        height, width = info["height"], info["width"]
        masks, class_ids = [], []
        for annotation in info["annotations"]:
            class_id = self.class_from_source_map.get(f"coco.{annotation['category_id']}")
            if not class_id:
                continue
            m = self.annToMask(annotation, height, width)
            if m.max() < 1:  # smaller than a pixel
                continue
            if annotation.get("iscrowd"):
                class_id *= -1
                if m.shape != (height, width):  # some crowd RLEs have another size
                    m = np.ones([height, width], dtype=bool)
            masks.append(m.astype(bool))
            class_ids.append(class_id)
        if not class_ids:
            return super().load_mask(image_id)
        return np.stack(masks, axis=2), np.array(class_ids, dtype=np.int32)

    def image_reference(self, image_id: int) -> str:
        """Link to the image on the COCO website."""
        info = self.image_info[image_id]
        if info["source"] == "coco":
            return f"http://cocodataset.org/#explore?id={info['id']}"
        return super().image_reference(image_id)

    # Matterport's versions of pycocotools' COCO.annToRLE / annToMask, with the image
    # size given (our images need no COCO object).
    def annToRLE(self, ann: dict, height: int, width: int) -> dict:
        """Polygons, uncompressed or compressed RLE -> compressed RLE."""
        _, mask_utils = _pycocotools()
        segm = ann["segmentation"]
        if isinstance(segm, list):  # polygons: one object may have several parts
            return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
        if isinstance(segm["counts"], list):  # uncompressed RLE
            return mask_utils.frPyObjects(segm, height, width)
        return segm

    def annToMask(self, ann: dict, height: int, width: int) -> np.ndarray:
        """Annotation -> uint8 [height, width] binary mask."""
        _, mask_utils = _pycocotools()
        return mask_utils.decode(self.annToRLE(ann, height, width))


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
