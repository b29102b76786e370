"""Nucleus sample from scratch on synthetic nuclei: COCO mask AP50 / AP per recipe.

    python bench/nucleus_convergence.py                      # CPU, reduced size (~30 min)
    python bench/nucleus_convergence.py --recipes adamw sgd --epochs 8 --steps 50
    KERAS_BACKEND=jax python bench/nucleus_convergence.py --full   # the sample's real size

Writes a synthetic DSB2018-layout dataset (``samples/nucleus/synthetic.py``: dense,
touching, occluding nuclei with blur and shot noise), trains the nucleus sample's model
from random weights with each recipe, and after every epoch evaluates the last checkpoint
on held-out synthetic images with pycocotools (``mrcnn.coco_eval``, iou_type "segm").
Prints one row per (recipe, epoch): images seen, cumulative training wall time and
mask AP50 / AP. Timings are what they are on this machine; it asserts nothing.

Recipes (Config overrides on ``NucleusConfig`` plus the layers trained per stage):

- ``matterport``: the sample's old ``--weights=none`` path, Matterport's fine-tuning
  schedule: heads only for the first half, then all layers; SGD 0.001.
- ``sgd``: all layers from the first step, SGD with momentum at a from-scratch rate.
- ``adamw``: all layers from the first step, AdamW + ReduceLROnPlateau (reference
  document 003's recommendation for mask recall).
- ``adamw_warmup``, ``sgd_warmup``: the same at twice the rate, after a 50-step linear
  warm-up (``LR_WARMUP_STEPS``); SGD at torchvision's from-scratch rate 0.02.
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

from bench.common import device_description  # noqa: E402

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
    "adamw_warmup": {"stages": [("all", 1.0)],
                     "config": {"OPTIMIZER": "adamw", "LEARNING_RATE": 0.002,
                                "LR_SCHEDULE": "plateau", "LR_PLATEAU_PATIENCE": 2,
                                "LR_WARMUP_STEPS": 50}},
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
    """COCO mask AP50 / AP of ``model`` on ``dataset`` (original image coordinates)."""
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
    return {"AP50": stats["AP50"], "AP": stats["AP"],
            "detections": int(sum(len(d["scores"]) for d in det_list))}


def run_recipe(name: str, train, test, args, logs: str) -> list[dict]:
    """Train one recipe stage by stage (one ``train()`` call, one graph trace, per stage);
    a callback scores every epoch's checkpoint, its time kept out of the training wall."""
    import keras

    from mrcnn import model as modellib
    from samples.nucleus import nucleus

    recipe = RECIPES[name]
    size = dict(BACKBONE=args.backbone, IMAGE_MIN_DIM=args.crop, IMAGE_MAX_DIM=args.crop,
                IMAGES_PER_GPU=args.batch, STEPS_PER_EPOCH=args.steps, VALIDATION_STEPS=2,
                NAME=f"nucbench_{name}")
    train_cfg = type("C", (nucleus.NucleusConfig,), {**size, **recipe["config"]})()
    infer_cfg = type("I", (nucleus.NucleusInferenceConfig,),
                     {"BACKBONE": args.backbone, "NAME": f"nucbench_{name}"})()
    model = modellib.MaskRCNN("training", train_cfg, logs)
    infer = modellib.MaskRCNN("inference", infer_cfg, logs)
    rows: list[dict] = []
    clock = {"start": time.perf_counter(), "eval": 0.0}

    class Score(keras.callbacks.Callback):
        def __init__(self, layers: str):
            super().__init__()
            self.layers = layers

        def on_epoch_end(self, epoch, logs=None):
            t = time.perf_counter()
            infer.load_weights(model.find_last())
            scores = coco_scores(infer, test)
            clock["eval"] += time.perf_counter() - t
            wall = time.perf_counter() - clock["start"] - clock["eval"]
            rows.append(dict(recipe=name, epoch=epoch + 1, layers=self.layers,
                             images=(epoch + 1) * args.steps * args.batch, wall=wall,
                             **scores))
            print(f"  {name} epoch {epoch + 1}: AP50 {scores['AP50']:.3f} "
                  f"AP {scores['AP']:.3f} ({wall:.0f} s)", flush=True)

    start_epoch = 0
    for layers, fraction in recipe["stages"]:
        end_epoch = max(start_epoch + 1, int(round(args.epochs * fraction)))
        model.train(train, test, learning_rate=train_cfg.LEARNING_RATE, epochs=end_epoch,
                    layers=layers, augmentation=nucleus.build_augmentation(),
                    custom_callbacks=[Score(layers)])
        start_epoch = end_epoch
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["adamw", "sgd", "matterport"],
                        choices=sorted(RECIPES))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=25, help="steps per epoch")
    parser.add_argument("--batch", type=int, default=4, help="crops per step")
    parser.add_argument("--crop", type=int, default=256, help="training crop size")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--field", type=int, default=256, help="synthetic image size")
    parser.add_argument("--train-images", type=int, default=40)
    parser.add_argument("--test-images", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full", action="store_true",
                        help="the sample's real size (ResNet-50, 512 px crops, batch 6): "
                             "for a GPU")
    args = parser.parse_args()
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
    print(f"data: {args.train_images} train / {args.test_images} held-out synthetic fields of "
          f"{args.field} px, {per_image:.0f} nuclei per image; model: {args.backbone} GN, "
          f"{args.crop} px crops, batch {args.batch}, {args.steps} steps per epoch")
    print()
    print("| recipe | epoch | layers | images seen | train wall (s) | mask AP50 | mask AP | "
          "detections |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['epoch']} | {r['layers']} | {r['images']} | "
              f"{r['wall']:.0f} | {r['AP50']:.3f} | {r['AP']:.3f} | {r['detections']} |")


if __name__ == "__main__":
    main()
