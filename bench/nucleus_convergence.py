"""Nucleus sample from scratch on synthetic nuclei: COCO mask AP50 / AP per recipe.

    python bench/nucleus_convergence.py                      # CPU, reduced size (~13 min on 2 cores)
    python bench/nucleus_convergence.py --recipes adamw sgd matterport --epochs 8
    python bench/nucleus_convergence.py --epochs 4 --set "RPN_ANCHOR_SCALES=(4,8,16,32,64)" \
        --sweep DETECTION_SCORE_MODE=foreground "DETECTION_MAX_INSTANCES=100"
    KERAS_BACKEND=jax python bench/nucleus_convergence.py --full   # the sample's real size

Writes a synthetic DSB2018-layout dataset (``samples/nucleus/synthetic.py``: dense,
touching, occluding nuclei with blur and shot noise), trains the nucleus sample's model
from random weights with each recipe, and after every epoch evaluates the last checkpoint
on held-out synthetic images with pycocotools (``mrcnn.coco_eval``, iou_type "segm").
Prints one row per (recipe, epoch): images seen, cumulative training wall time and
mask AP50 / AP / recall at IoU 0.5, and the training step time (wall and process CPU).
Timings are what they are on this machine; it asserts nothing.

Recipes (Config overrides on ``NucleusConfig`` plus the layers trained per stage):

- ``matterport``: the sample's old ``--weights=none`` path, Matterport's fine-tuning
  schedule: heads only for the first half, then all layers; SGD 0.001.
- ``sgd``: all layers from the first step, SGD with momentum at a from-scratch rate.
- ``adamw``: all layers from the first step, AdamW + ReduceLROnPlateau (reference
  document 003's recommendation for mask recall).
- ``adamw_warmup`` (the default, the samples' ``mrcnn.cli.FROM_SCRATCH``), ``sgd_warmup``:
  the same at twice the rate, after a 50-step linear warm-up (``LR_WARMUP_STEPS``); SGD at
  torchvision's from-scratch rate 0.02.

``--set`` changes the model of a run (normalization, box head, anchors, resolution),
``--sweep`` evaluates its last checkpoint again under other inference settings (detections
per image, NMS threshold, score mode), one row each: the knobs of reference document 003.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.common import add_nucleus_size_arguments, device_description  # noqa: E402
from mrcnn.cli import FROM_SCRATCH  # noqa: E402
from mrcnn.config import parse_overrides  # noqa: E402

RECIPES = {
    "matterport": {"stages": [("heads", 0.5), ("all", 1.0)],
                   "config": {"OPTIMIZER": "sgd", "LEARNING_RATE": 0.001,
                              "LR_SCHEDULE": "constant"}},
    "sgd": {"stages": [("all", 1.0)],
            "config": {"OPTIMIZER": "sgd", "LEARNING_RATE": 0.01, "LR_SCHEDULE": "cosine",
                       "LR_MIN_FACTOR": 0.05}},
    "adamw": {"stages": [("all", 1.0)],
              "config": {"OPTIMIZER": "adamw", "LEARNING_RATE": 0.001,
                         "LR_SCHEDULE": "plateau", "LR_PLATEAU_PATIENCE": 2}},
    # The chosen recipe, what the samples train from scratch with (mrcnn.cli.FROM_SCRATCH).
    "adamw_warmup": {"stages": [("all", 1.0)], "config": dict(FROM_SCRATCH)},
    "sgd_warmup": {"stages": [("all", 1.0)],
                   "config": {"OPTIMIZER": "sgd", "LEARNING_RATE": 0.02,
                              "LR_SCHEDULE": "cosine", "LR_MIN_FACTOR": 0.05,
                              "LR_WARMUP_STEPS": 50}},
}


def build_datasets(root: str, args):
    from samples.nucleus import nucleus, synthetic

    out = synthetic.write_dataset(root, train_images=args.train_images,
                                  test_images=args.test_images,
                                  size=(args.field, args.field), seed=args.seed)
    train = nucleus.NucleusDataset()
    train.load_nucleus(root, "stage1_train")
    train.prepare()
    test = nucleus.NucleusDataset()
    test.load_nucleus(root, "stage1_test", require_masks=True)
    test.prepare()
    return train, test, out


def coco_scores(model, dataset) -> dict[str, float]:
    """COCO mask AP50 / AP and recall at IoU 0.5 of ``model`` on ``dataset`` (original image
    coordinates)."""
    from mrcnn import coco_eval, utils

    gt_list, det_list = [], []
    for image_id in dataset.image_ids:
        image = dataset.load_image(image_id)
        masks, class_ids = dataset.load_mask(image_id)
        gt_list.append(dict(image_id=int(image_id), height=image.shape[0],
                            width=image.shape[1], boxes=utils.extract_bboxes(masks),
                            class_ids=class_ids, masks=masks))
        r = model.detect([image])[0]
        det_list.append(dict(image_id=int(image_id), **r))
    # Dense fields hold more nuclei than COCO's 100 detections per image.
    most = max(len(g["class_ids"]) for g in gt_list)
    stats = coco_eval.evaluate(gt_list, det_list, iou_type="segm",
                               class_names=["BG", "nucleus"], verbose=False,
                               max_dets=max(100, most, int(model.config.DETECTION_MAX_INSTANCES)))
    return {"AP50": stats["AP50"], "AP": stats["AP"], "recall50": stats["recall50"],
            "detections": int(sum(len(d["scores"]) for d in det_list))}


# Settings the inference model keeps its own value of (one whole image per batch).
TRAIN_ONLY = ("GPU_COUNT", "IMAGES_PER_GPU", "IMAGE_RESIZE_MODE", "IMAGE_MIN_DIM",
              "IMAGE_MAX_DIM", "STEPS_PER_EPOCH", "VALIDATION_STEPS")


def inference_model(args, name: str, overrides: dict, logs: str):
    """The nucleus inference model of a run, with the run's model settings and ``overrides``."""
    from mrcnn import model as modellib
    from samples.nucleus import nucleus

    model_settings = {k: v for k, v in args.overrides.items() if k not in TRAIN_ONLY}
    config = type("I", (nucleus.NucleusInferenceConfig,),
                  {"BACKBONE": args.backbone, "NAME": f"nucbench_{name}",
                   **model_settings, **args.infer_overrides, **overrides})()
    return modellib.MaskRCNN("inference", config, logs)


def run_recipe(name: str, train, test, args, logs: str) -> list[dict]:
    """Train one recipe stage by stage (one ``train()`` call, one graph trace, per stage);
    a callback scores every epoch's checkpoint, its time kept out of the training wall."""
    import keras

    from mrcnn import model as modellib
    from samples.nucleus import nucleus

    recipe = RECIPES[name]
    label = name if not args.label else (
        args.label if len(args.recipes) == 1 else f"{args.label} {name}")
    size = dict(BACKBONE=args.backbone, IMAGE_MIN_DIM=args.crop, IMAGE_MAX_DIM=args.crop,
                IMAGES_PER_GPU=args.batch, STEPS_PER_EPOCH=args.steps, VALIDATION_STEPS=2,
                NAME=f"nucbench_{name}")
    train_cfg = type("C", (nucleus.NucleusConfig,),
                     {**size, "FROM_SCRATCH_RECIPE": "off",  # each recipe as written
                      **recipe["config"], **args.overrides})()
    model = modellib.MaskRCNN("training", train_cfg, logs)
    infer = inference_model(args, name, {}, logs)
    rows: list[dict] = []
    # Wall and process CPU time of training only: evaluation time is subtracted.
    clock = {"start": time.perf_counter(), "cpu": time.process_time(), "eval": 0.0,
             "eval_cpu": 0.0}

    class Score(keras.callbacks.Callback):
        def __init__(self, layers: str):
            super().__init__()
            self.layers = layers

        def on_epoch_end(self, epoch, logs=None):
            t, c = time.perf_counter(), time.process_time()
            infer.load_weights(model.find_last())
            scores = coco_scores(infer, test)
            clock["eval"] += time.perf_counter() - t
            clock["eval_cpu"] += time.process_time() - c
            wall = time.perf_counter() - clock["start"] - clock["eval"]
            cpu = time.process_time() - clock["cpu"] - clock["eval_cpu"]
            rows.append(dict(recipe=label, epoch=epoch + 1, layers=self.layers,
                             images=(epoch + 1) * args.steps * args.batch, wall=wall,
                             cpu=cpu, **scores))
            print(f"  {label} epoch {epoch + 1}: AP50 {scores['AP50']:.3f} "
                  f"AP {scores['AP']:.3f} recall50 {scores['recall50']:.3f} "
                  f"({wall:.0f} s)", flush=True)

    start_epoch = 0
    for layers, fraction in recipe["stages"]:
        end_epoch = max(start_epoch + 1, int(round(args.epochs * fraction)))
        model.train(train, test, learning_rate=train_cfg.LEARNING_RATE, epochs=end_epoch,
                    layers=layers, augmentation=nucleus.build_augmentation(),
                    custom_callbacks=[Score(layers)])
        start_epoch = end_epoch

    # Inference settings on the last checkpoint: one model per variant (static shapes).
    last = model.find_last()
    for pairs in args.sweep:
        overrides = parse_overrides(pairs.split(), nucleus.NucleusInferenceConfig)
        variant = inference_model(args, name, overrides, logs)
        variant.load_weights(last)
        scores = coco_scores(variant, test)
        rows.append(dict(recipe=label, epoch=start_epoch, layers=f"+ {pairs}",
                         images=start_epoch * args.steps * args.batch, wall=float("nan"),
                         cpu=float("nan"), **scores))
        print(f"  {label} {pairs}: AP50 {scores['AP50']:.3f} AP {scores['AP']:.3f} "
              f"recall50 {scores['recall50']:.3f}", flush=True)
    return rows


def step_seconds(rows: list[dict], args) -> tuple[float, float]:
    """Mean wall and process-CPU seconds per training step after the first epoch (which
    traces the graph); validation steps included."""
    trained = [r for r in rows if not r["layers"].startswith("+")]
    if len(trained) < 2:
        return float("nan"), float("nan")
    steps = (trained[-1]["epoch"] - trained[0]["epoch"]) * args.steps
    return ((trained[-1]["wall"] - trained[0]["wall"]) / steps,
            (trained[-1]["cpu"] - trained[0]["cpu"]) / steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["adamw_warmup"],
                        choices=sorted(RECIPES))
    add_nucleus_size_arguments(parser, epochs=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="NucleusConfig overrides on top of each recipe (model settings "
                             "also apply to the inference model), e.g. --set NORM=bn "
                             "BOX_HEAD=4conv1fc or RPN_ANCHOR_SCALES='(4,8,16,32,64)'")
    parser.add_argument("--infer-set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="NucleusInferenceConfig overrides for every evaluation, e.g. "
                             "--infer-set IMAGE_MIN_DIM=256 with --set IMAGE_MIN_SCALE=1.0 "
                             "(inference pads whole images and scales them up to "
                             "IMAGE_MIN_DIM, 512 by default)")
    parser.add_argument("--label", default=None,
                        help="row name (default: the recipe's name)")
    parser.add_argument("--sweep", nargs="+", default=[], metavar="'KEY=VALUE ...'",
                        help="inference settings to evaluate the last checkpoint with, one "
                             "row each, e.g. --sweep DETECTION_MAX_INSTANCES=100 "
                             "DETECTION_NMS_THRESHOLD=0.5")
    parser.add_argument("--full", action="store_true",
                        help="the sample's real size (ResNet-50, 512 px crops, batch 6): "
                             "for a GPU")
    args = parser.parse_args()
    from samples.nucleus import nucleus

    args.overrides = parse_overrides(args.set, nucleus.NucleusConfig)
    args.infer_overrides = parse_overrides(args.infer_set, nucleus.NucleusInferenceConfig)
    if args.full:
        args.backbone, args.crop, args.batch, args.field = "resnet50", 512, 6, 512
        args.steps, args.epochs, args.train_images = 100, 20, 200

    import keras

    np.random.seed(args.seed)
    keras.utils.set_random_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="nucbench_") as tmp:
        train, test, info = build_datasets(os.path.join(tmp, "data"), args)
        per_image = np.mean(list(info["instances"].values()))
        rows = []
        for name in args.recipes:
            rows += run_recipe(name, train, test, args, os.path.join(tmp, "logs"))

    print()
    print("command: python bench/nucleus_convergence.py " + " ".join(sys.argv[1:]))
    print(device_description())
    norm = args.overrides.get("NORM", nucleus.NucleusConfig.NORM)
    print(f"data: {args.train_images} train / {args.test_images} held-out synthetic fields of "
          f"{args.field} px, {per_image:.0f} nuclei per image; model: {args.backbone} "
          f"{norm}, {args.crop} px crops, batch {args.batch}, {args.steps} steps per epoch; "
          f"settings: {args.overrides or 'as the recipe'}, inference: "
          f"{args.infer_overrides or 'NucleusInferenceConfig'}")
    wall_step, cpu_step = step_seconds(rows, args)
    print(f"training step after epoch 1: {wall_step:.2f} s wall, {cpu_step:.2f} s process "
          "CPU (validation steps included)")
    print()
    print("| recipe | epoch | layers / inference settings | images seen | train wall (s) | "
          "mask AP50 | mask AP | recall@0.5 | detections |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        wall = "" if np.isnan(r["wall"]) else f"{r['wall']:.0f}"
        print(f"| {r['recipe']} | {r['epoch']} | {r['layers']} | {r['images']} | "
              f"{wall} | {r['AP50']:.3f} | {r['AP']:.3f} | {r['recall50']:.3f} | "
              f"{r['detections']} |")


if __name__ == "__main__":
    main()
