"""The ``mrcnn`` command: ``train | evaluate | predict | export | info`` on your own data.

::

    mrcnn train --data annotations.json --weights coco --epochs 20
    mrcnn evaluate --data val.json --weights last
    mrcnn predict --weights last photos/ --out predictions/
    mrcnn export --weights last --out exported/
    mrcnn info

``--data`` takes a COCO json, a VIA json, a DSB2018 folder or ``module:Name`` of your own
``Dataset`` (``mrcnn.datasets.spec``). ``--weights`` takes Matterport's keywords ``none``,
``coco``, ``imagenet``, ``last`` or a path, ``--set KEY=VALUE`` any Config setting; bad input
ends with one line ``mrcnn: error: ...`` and exit status 2 (``mrcnn.cli``).

A training run writes into ``<logs>/<name><timestamp>/``: the checkpoints
(``mask_rcnn_<name>_last.h5``, ``..._best.h5``, and the newest epoch's, which
``--weights last`` resumes), ``results.csv`` (losses and COCO AP per epoch),
``config.json``, ``dataset.json`` (the classes and the command's settings, which
``evaluate``, ``predict`` and ``export`` read back) and TensorBoard logs.

``--tiny`` (or ``MRCNN_TINY=1``) swaps in the seconds-per-step model of ``mrcnn.tiny``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from typing import Any, Sequence

from mrcnn import cli
from mrcnn.cli import fail
from mrcnn.config import Config

PROG = "mrcnn"
DEFAULT_NAME = "mrcnn"
DEFAULT_EPOCHS = 30
RUN_RECORD = "dataset.json"

# Matterport's mask_rcnn_coco.h5 classes, by class id (its demo notebook's list).
COCO_CLASS_NAMES = [
    "BG", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
    "boat", "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird",
    "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe",
    "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush"]


class AppConfig(Config):
    """The ``mrcnn`` command's starting point; the data sets NUM_CLASSES, ``--set`` the rest."""

    NAME = DEFAULT_NAME
    IMAGES_PER_GPU = 2
    # GroupNorm trains from random weights with small batches; --weights coco/imagenet (and
    # checkpoints trained from them) switch to Matterport's frozen BatchNorm
    # (cli.norm_for_weights).
    NORM = "gn"


def app_config(name: str) -> type[Config]:
    """``AppConfig`` with NAME ``name`` (run folders and checkpoints are named after it)."""
    return type("AppConfig", (AppConfig,), {"NAME": name})


############################################################
#  Arguments
############################################################

def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Mask R-CNN on your own data: train, evaluate, predict, "
                               "export. Run 'mrcnn <command> --help' for a command's flags.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    def model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
        cli.add_weights_argument(p, required=required)
        cli.add_common_arguments(p)
        p.add_argument("--name", default=DEFAULT_NAME,
                       help=f"run name (Config.NAME): run folders and checkpoints are named "
                            f"after it; --weights last finds its newest run "
                            f"(default {DEFAULT_NAME})")

    def data_args(p: argparse.ArgumentParser, required: bool) -> None:
        p.add_argument("--data", required=required, metavar="SPEC",
                       help="a COCO .json, a VIA .json, a DSB2018 folder (one subset), or "
                            "module:Name of your own Dataset (class or function)")
        p.add_argument("--images", default=None, metavar="DIR",
                       help="image folder of a json --data (default: the json's folder)")
        p.add_argument("--class-key", default="class", metavar="KEY",
                       help="VIA: the region_attributes key holding each region's class "
                            "(default 'class'; without it in the file, one class)")
        p.add_argument("--allow-outside-paths", action="store_true",
                       help="accept image and mask paths in the data that leave the image "
                            "folder (absolute paths, '..', symlinks); refused by default")

    train = commands.add_parser("train", help="train on your data, AP every epoch")
    data_args(train, required=True)
    train.add_argument("--val", default=None, metavar="SPEC",
                       help="validation data, as --data (default: a seeded 10%% of --data)")
    train.add_argument("--val-images", default=None, metavar="DIR",
                       help="image folder of a json --val (default: the json's folder)")
    model_args(train)
    cli.add_schedule_arguments(train, [(["--epochs"], f"train up to this epoch (default "
                                                      f"{DEFAULT_EPOCHS}; 1 with --tiny)")])
    train.add_argument("--layers", default=None,
                       help="layers to train: heads, 3+, 4+, 5+, all or a regex (default: "
                            "heads from coco/imagenet weights, all otherwise)")
    train.add_argument("--augment", choices=("flip", "none"), default="flip",
                       help="training augmentation: random horizontal flips (default) or none")
    train.add_argument("--eval-images", type=int, default=50, metavar="N",
                       help="validation images scored for AP after each epoch (default 50; "
                            "0: all)")
    train.add_argument("--eval-every", type=int, default=1, metavar="N",
                       help="score AP every N epochs (default 1; always after the last)")
    train.add_argument("--no-eval", action="store_true",
                       help="no AP during training (no results.csv, best or last)")
    from mrcnn.evaluation import COLUMNS

    train.add_argument("--best-metric", default="segm_AP", choices=COLUMNS,
                       help="the results.csv column that picks the best checkpoint "
                            "(default segm_AP: mask AP)")
    train.add_argument("--keep-epochs", action="store_true",
                       help="keep every epoch's checkpoint (default: last, best and the "
                            "newest epoch's, which resumes)")
    train.add_argument("--pictures", type=int, default=3, metavar="N",
                       help="validation images drawn with predicted masks in TensorBoard "
                            "(default 3)")
    train.add_argument("--picture-every", type=int, default=5, metavar="N",
                       help="draw them every N evaluated epochs (default 5)")

    evaluate = commands.add_parser("evaluate", help="COCO box and mask AP on a dataset")
    data_args(evaluate, required=True)
    model_args(evaluate)
    evaluate.add_argument("--limit", type=int, default=0, metavar="N",
                          help="score the first N images only (default: all)")
    evaluate.add_argument("--out", default=None, metavar="FILE",
                          help="json file of the results (default evaluation_<time>.json; "
                               "never overwritten)")

    predict = commands.add_parser(
        "predict", help="detect on images, folders, globs or videos")
    predict.add_argument("sources", nargs="+", metavar="SOURCE",
                         help="image files, folders, glob patterns ('photos/*.jpg') or videos")
    model_args(predict)
    predict.add_argument("--out", default=None, metavar="DIR",
                         help="output folder (default predict_<time>; files there are never "
                              "overwritten)")
    data_args(predict, required=False)
    predict.add_argument("--masks", action="store_true",
                         help="also write masks/<image>.png: 0 background, k the k-th "
                              "detection")
    predict.add_argument("--no-pictures", action="store_true",
                         help="do not draw the detections")
    predict.add_argument("--min-confidence", type=float, default=None, metavar="P",
                         help="keep detections scored at least P (Config."
                              "DETECTION_MIN_CONFIDENCE)")

    export = commands.add_parser("export", help="export the inference model")
    model_args(export)
    export.add_argument("--out", required=True, metavar="DIR",
                        help="output folder (must not exist yet)")
    export.add_argument("--format", choices=("savedmodel", "h5"), default="savedmodel",
                        help="savedmodel: TensorFlow SavedModel with a 'serve' signature "
                             "(uint8 images in, detections out; needs TensorFlow); h5: the "
                             "weights by layer name (default savedmodel)")
    export.add_argument("--image-size", type=int, nargs=2, default=None,
                        metavar=("HEIGHT", "WIDTH"),
                        help="savedmodel: served image size, multiples of 64 (default: "
                             "Config.IMAGE_SHAPE)")

    commands.add_parser("info", help="versions, devices seen and the one used")
    return parser


############################################################
#  Data and configuration
############################################################

def load_data(spec: str, images: str | None, args: argparse.Namespace,
              class_names: list[str] | None = None):
    """``mrcnn.datasets.load_dataset`` with this command's flags."""
    from mrcnn.datasets import load_dataset

    return load_dataset(spec, images, class_key=args.class_key, class_names=class_names,
                        allow_outside=args.allow_outside_paths)


def run_record_path(weights_path: str) -> str:
    """The ``dataset.json`` of the run a weights file belongs to."""
    return os.path.join(os.path.dirname(os.path.abspath(weights_path)), RUN_RECORD)


def read_run_record(weights_path: str | None) -> dict[str, Any]:
    """The classes and settings a training run recorded beside ``weights_path`` ({} when
    there are none: a file from elsewhere)."""
    if not weights_path:
        return {}
    path = run_record_path(weights_path)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as err:
        fail(f"{path}: cannot read the run's record ({err})")
    if not isinstance(record, dict) or not isinstance(record.get("class_names"), list):
        fail(f"{path}: not a run record of the mrcnn command (no 'class_names')")
    return record


def weights_file(args: argparse.Namespace, base: type[Config], tiny: bool) -> str | None:
    """The file ``--weights`` names (None for none/coco/imagenet, which need no record)."""
    keyword = args.weights.lower()
    if keyword in ("none", "coco", "imagenet"):
        return None
    if keyword == "last":
        name = ("tiny" if tiny else "") + str(base.NAME)
        try:
            return cli.find_last(args.logs, name)
        except FileNotFoundError as err:
            fail(f"--weights=last: no checkpoint of '{name}' found under {args.logs} "
                 f"({err.strerror or err}); train first or give a path")
    return args.weights


def settings(args: argparse.Namespace, base: type[Config],
             record: dict[str, Any]) -> dict[str, Any]:
    """The run's recorded ``--set`` values, then this command's (which win)."""
    from mrcnn.config import parse_overrides

    try:
        recorded = parse_overrides(record.get("set", []), base)
    except ValueError as err:
        fail(f"the run's recorded settings: {err}")
    return {**recorded, **cli.settings(args, base)}


def inference_model(args: argparse.Namespace, dataset=None, **overrides: Any):
    """Config, inference model and weights for evaluate/predict/export.

    The classes come from the run record beside the weights, else from ``dataset``, else
    (``--weights coco``) Matterport's COCO classes. Returns (model, class_names, record).
    """
    base = app_config(args.name)
    tiny = cli.tiny_requested(args)
    cli.check_weights_spec(args.weights, base, args.logs, tiny)
    record = read_run_record(weights_file(args, base, tiny))
    tiny = tiny or bool(record.get("tiny"))
    class_names = record.get("class_names")
    if dataset is not None:
        if class_names is not None and list(dataset.class_names) != list(class_names):
            fail(f"the classes of --data {args.data} ({dataset.class_names[1:]}) differ from "
                 f"those the weights were trained on ({class_names[1:]}, "
                 f"{run_record_path(weights_file(args, base, tiny))})")
        class_names = list(dataset.class_names)
    if class_names is None:
        if args.weights.lower() != "coco":
            fail(f"no classes for --weights {args.weights}: it has no {RUN_RECORD} beside it "
                 "(a run of 'mrcnn train' writes one); give --data with the classes")
        class_names = COCO_CLASS_NAMES
    model = cli.setup_model(
        "inference", base, args.weights, args.logs, tiny, settings=settings(args, base, record),
        exclude_heads=len(class_names) != len(COCO_CLASS_NAMES),
        NUM_CLASSES=len(class_names), GPU_COUNT=1, IMAGES_PER_GPU=1, **overrides)
    return model, class_names, record


############################################################
#  Commands
############################################################

def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    """Train on --data, scoring --val after each epoch."""
    from mrcnn.datasets.spec import describe, split_dataset

    base = app_config(args.name)
    tiny = cli.tiny_requested(args)
    cli.check_weights_spec(args.weights, base, args.logs, tiny)
    (epochs,) = cli.stage_epochs([args.epochs], [DEFAULT_EPOCHS], tiny)
    for flag in ("eval_images", "eval_every", "pictures", "picture_every"):
        if getattr(args, flag) < 0:
            fail(f"--{flag.replace('_', '-')} must be 0 or more")
    train = load_data(args.data, args.images, args)
    if args.val:
        val = load_data(args.val, args.val_images, args, class_names=train.class_names[1:])
        if list(val.class_names) != list(train.class_names):
            fail(f"the classes of --val {args.val} ({val.class_names[1:]}) differ from those "
                 f"of --data {args.data} ({train.class_names[1:]})")
    else:
        train, val = split_dataset(train)
    print(f"Data: {len(train.image_ids)} training and {len(val.image_ids)} validation "
          f"images, classes {train.class_names[1:]}")
    from_scratch = cli.trains_from_scratch(args.weights, base, args.logs)
    layers = args.layers or ("heads" if args.weights.lower() in ("coco", "imagenet")
                             else "all")
    per_batch = base.IMAGES_PER_GPU * base.GPU_COUNT
    model = cli.setup_model(
        "training", base, args.weights, args.logs, tiny, settings=cli.settings(args, base),
        exclude_heads=True, from_scratch=from_scratch, NUM_CLASSES=train.num_classes,
        STEPS_PER_EPOCH=max(1, len(train.image_ids) // per_batch),
        VALIDATION_STEPS=max(1, len(val.image_ids) // per_batch),
        **cli.workers_override(args))
    from mrcnn.callbacks import EvaluationCallback, RunRecord

    callbacks = [RunRecord(model, RUN_RECORD, {**describe(train), "data": args.data,
                                               "val": args.val, "set": list(args.set),
                                               "tiny": tiny})]
    if not args.no_eval:
        callbacks.append(EvaluationCallback(
            model, val, images=args.eval_images, metric=args.best_metric,
            every=args.eval_every, pictures=args.pictures, picture_every=args.picture_every,
            keep_epochs=args.keep_epochs))
    augmentation = None
    if args.augment == "flip":
        import albumentations as A

        augmentation = A.HorizontalFlip(p=0.5)
    model.train(train, val, learning_rate=args.lr or model.config.LEARNING_RATE,
                epochs=epochs, layers=layers, augmentation=augmentation,
                custom_callbacks=callbacks)
    print(f"Run folder: {model.log_dir}")
    return {"log_dir": model.log_dir, "epoch": model.epoch}


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """COCO AP of --weights on --data: a table, per-class AP, and a json file."""
    from mrcnn.evaluation import evaluate_dataset
    from mrcnn.paths import claim

    if args.limit < 0:
        fail(f"--limit must be 0 or more, got {args.limit}")
    dataset = load_data(args.data, args.images, args)
    model, class_names, _ = inference_model(args, dataset, DETECTION_MIN_CONFIDENCE=0.0)
    ids = list(dataset.image_ids[:args.limit] if args.limit else dataset.image_ids)
    scores = evaluate_dataset(model, dataset, ids)
    from mrcnn.coco_eval import STAT_NAMES

    print(f"\nCOCO evaluation of {args.weights} on {len(ids)} images of {args.data}")
    print(f"{'':6}" + "".join(f"{n:>8}" for n in STAT_NAMES))
    for iou_type in ("bbox", "segm"):
        print(f"{iou_type:6}" + "".join(f"{scores[iou_type][n]:8.3f}" for n in STAT_NAMES))
    print(f"\n{'class':24}{'box AP':>8}{'mask AP':>8}")
    for class_id, name in enumerate(class_names[1:], start=1):
        print(f"{name[:23]:24}{scores['bbox']['per_class_ap'].get(class_id, float('nan')):8.3f}"
              f"{scores['segm']['per_class_ap'].get(class_id, float('nan')):8.3f}")
    record = {"weights": args.weights, "data": args.data, "images": len(ids),
              **{t: {**{n: scores[t][n] for n in STAT_NAMES},
                     "per_class_ap": {class_names[c]: v
                                      for c, v in scores[t]["per_class_ap"].items()}}
                 for t in ("bbox", "segm")}}
    out = claim(os.path.abspath(args.out or f"evaluation_{cli.timestamp()}.json"))
    with open(out, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, default=_nan_to_none)
    print(f"\nResults written to {out}")
    return record


def _nan_to_none(value: Any) -> Any:
    return None if value != value else float(value)


def cmd_predict(args: argparse.Namespace) -> dict[str, Any]:
    """Detect on the sources; pictures, results.json, detections.json, optional masks."""
    from mrcnn import predict

    try:
        paths = predict.list_sources(args.sources)
    except FileNotFoundError as err:
        fail(str(err))
    dataset = load_data(args.data, args.images, args) if args.data else None
    overrides = {}
    if args.min_confidence is not None:
        overrides["DETECTION_MIN_CONFIDENCE"] = args.min_confidence
    model, class_names, _ = inference_model(args, dataset, **overrides)
    image_ids, category_ids = None, None
    if dataset is not None:
        # A source from the dataset keeps the dataset's own ids (a COCO file's image and
        # category ids), so the results score against it.
        from mrcnn.evaluation import source_category_id, source_image_id

        by_path = {os.path.realpath(info["path"]): i
                   for i, info in enumerate(dataset.image_info) if info.get("path")}
        image_ids = {p: source_image_id(dataset, by_path[os.path.realpath(p)])
                     for p in paths if os.path.realpath(p) in by_path}
        category_ids = [0] + [source_category_id(dataset, c)
                              for c in range(1, dataset.num_classes)]
    out = args.out or f"predict_{cli.timestamp()}"
    summary = predict.detect_images(model, paths, class_names, out,
                                    pictures=not args.no_pictures, image_ids=image_ids,
                                    category_ids=category_ids, instance_masks=args.masks)
    for error in summary["errors"]:
        print(f"warning: skipped {error['file_name']}: {cli.one_line(error['error'])}",
              file=sys.stderr)
    print(f"{summary['images']} images, {summary['detections']} detections; pictures in "
          f"{out}, COCO results in {summary['coco_result_file']}, images and classes in "
          f"{summary['result_file']}")
    if summary["errors"]:
        print(f"{len(summary['errors'])} file(s) could not be read: "
              + ", ".join(e["file_name"] for e in summary["errors"]), file=sys.stderr)
    return summary


def cmd_export(args: argparse.Namespace) -> str:
    """Export the inference model (and its classes) to a new folder."""
    if os.path.exists(args.out):
        fail(f"--out {args.out} exists already; export into a new folder")
    model, class_names, _ = inference_model(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.format == "savedmodel":
        if importlib.util.find_spec("tensorflow") is None:
            fail("--format savedmodel needs TensorFlow (pip install tensorflow), or use "
                 "--format h5")
        try:
            model.export(args.out, image_size=args.image_size)
        except ValueError as err:
            fail(f"cannot export: {cli.one_line(err)}")
    else:
        os.makedirs(args.out)
        model.save_weights(os.path.join(args.out, "mask_rcnn.h5"))
    with open(os.path.join(args.out, "classes.json"), "w", encoding="utf-8") as f:
        json.dump({"class_names": list(class_names)}, f, indent=1)
    print(f"Exported ({args.format}) to {args.out}")
    return args.out


def cmd_info(args: argparse.Namespace) -> dict[str, Any]:
    """Versions of mrcnn, Keras and the backend; devices seen and the one used."""
    from mrcnn.ops.device import devices
    from mrcnn.runs import versions

    info = {**versions(), **devices()}
    for key, value in info.items():
        print(f"{key:10} {', '.join(value) if isinstance(value, list) else value}")
    return info


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "export": cmd_export, "info": cmd_info}


def main(argv: Sequence[str] | None = None) -> Any:
    """Entry point of the ``mrcnn`` console script and ``python -m mrcnn``.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        What the subcommand returns (tests call ``main([...])`` in-process).
    """
    return cli.run_main(build_parser(), lambda args: COMMANDS[args.command](args), argv)

