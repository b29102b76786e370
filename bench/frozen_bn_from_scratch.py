"""Matterport's defaults from scratch: frozen BN, random init, SGD at 0.001 on shapes.

    python bench/frozen_bn_from_scratch.py                      # first-step loss + 40 steps
    python bench/frozen_bn_from_scratch.py --backbone resnet101 --epochs 4 --eval-count 50
    KERAS_BACKEND=jax python bench/frozen_bn_from_scratch.py ...

Matterport's ``ShapesConfig`` (train_shapes notebook): 128x128 images, 8 per batch, 3
classes, anchors 8..128, 32 ROIs per image, 100 steps per epoch, and everything else at
Matterport's defaults: ResNet-101 (``--backbone``), frozen BatchNorm (``TRAIN_BN = False``),
SGD lr 0.001 momentum 0.9, gradient clipping 5, 512-channel RPN, 256-channel FPN/mask head,
1024-wide box head. Training is from random initialization (no pretrained weights here).
JIT_COMPILE is off (XLA compiles ResNet-101 for minutes on a CPU; the numbers do not depend
on it).

Prints three tables:
  1. First-step losses: the five losses of the freshly initialized model (no update),
     averaged over ``--batches`` seeded batches.
  2. Training curve: the loss of every ``--log-every``-th step of ``--steps`` SGD steps
     (``layers="all"``), NaN/inf included as such.
  3. With ``--epochs``: mAP@0.5 on ``--eval-count`` held-out images after each epoch of
     STEPS_PER_EPOCH steps (the shapes schedule: Matterport trained heads 1 epoch then all
     layers 1 epoch; here all layers for ``--epochs`` epochs).
Asserts nothing.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from bench.common import print_table  # noqa: E402


def matterport_shapes_config(backbone: str, steps: int):
    """Matterport's ShapesConfig on top of mrcnn's (Matterport-default) Config."""
    from mrcnn.config import Config

    class MatterportShapesConfig(Config):
        NAME = "shapes_matterport"
        GPU_COUNT = 1
        IMAGES_PER_GPU = 8
        NUM_CLASSES = 1 + 3
        IMAGE_MIN_DIM = 128
        IMAGE_MAX_DIM = 128
        RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
        TRAIN_ROIS_PER_IMAGE = 32
        STEPS_PER_EPOCH = steps
        VALIDATION_STEPS = 5
        BACKBONE = backbone
        JIT_COMPILE = False
        FROM_SCRATCH_RECIPE = "off"  # Matterport's optimizer settings, as measured

    return MatterportShapesConfig()


def fmt(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50",
                        choices=("resnet50", "resnet101"))
    parser.add_argument("--batches", type=int, default=3,
                        help="seeded batches averaged for the first-step losses")
    parser.add_argument("--steps", type=int, default=40, help="training-curve steps")
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=0,
                        help="epochs of 100 steps for the mAP table (0: skip)")
    parser.add_argument("--eval-count", type=int, default=50)
    parser.add_argument("--train-count", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import keras
    import numpy as np

    import mrcnn.model as modellib
    from mrcnn.config import LOSS_NAMES
    from mrcnn.data import DataGenerator
    from samples.shapes import shapes

    logs = tempfile.mkdtemp(prefix="frozen_bn_bench_")
    config = matterport_shapes_config(args.backbone, max(1, args.steps))
    cfg = (f"{config.BACKBONE}/{config.NORM}, {config.IMAGE_MAX_DIM}px, batch "
           f"{config.BATCH_SIZE}, {config.OPTIMIZER} lr {config.LEARNING_RATE}, "
           f"clip {config.GRADIENT_CLIP_NORM}, seed {args.seed}")
    train_set = shapes.make_dataset(args.train_count, shapes.TRAIN_SEED, config)

    # 1. First-step losses of the fresh model.
    keras.utils.set_random_seed(args.seed)
    model = modellib.MaskRCNN("training", config, logs)
    generator = DataGenerator(train_set, config, shuffle=True, seed=args.seed)
    sums = dict.fromkeys(LOSS_NAMES, 0.0)
    for b in range(args.batches):
        np.random.seed(args.seed + b)
        (inputs,) = generator[b]
        net = model.keras_model
        outputs = net(list(inputs), training=True)
        terms = net.loss_terms(list(inputs), outputs)
        for name in LOSS_NAMES:
            sums[name] += float(keras.ops.convert_to_numpy(terms[name])) / args.batches
    row = {"config": cfg, "batches": args.batches}
    row.update({name: fmt(value) for name, value in sums.items()})
    row["total (unweighted)"] = fmt(sum(sums.values()))
    print_table("First-step losses, random init (mean over seeded batches)", [row])

    # 2. Training curve (all layers, from that same initialization).
    class Curve(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.losses: list[float] = []

        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(float(logs["loss"]) if logs else float("nan"))

    if args.steps:
        curve = Curve()
        np.random.seed(args.seed)
        model.train(train_set, None, config.LEARNING_RATE, epochs=1, layers="all",
                    custom_callbacks=[curve])
        # Keras logs the running mean over the epoch; recover each step's own loss.
        means = curve.losses
        per_step = [means[0]] + [(i + 1) * means[i] - i * means[i - 1]
                                 for i in range(1, len(means))]
        rows = [{"config": cfg, "step": i + 1, "loss": fmt(per_step[i]),
                 "running mean": fmt(means[i])}
                for i in range(len(per_step))
                if i == 0 or (i + 1) % args.log_every == 0 or i == len(per_step) - 1]
        print_table(f"Training curve ({args.steps} steps, layers='all')", rows)

    # 3. mAP@0.5 after each epoch of the shapes schedule.
    if args.epochs:
        full = matterport_shapes_config(args.backbone, 100)
        keras.utils.set_random_seed(args.seed)
        model = modellib.MaskRCNN("training", full, logs)
        val_set = shapes.make_dataset(50, shapes.VAL_SEED, full)
        model.train(train_set, val_set, full.LEARNING_RATE, epochs=args.epochs, layers="all")

        class Inference(type(full)):
            IMAGES_PER_GPU = 1
            DETECTION_MIN_CONFIDENCE = 0.5

        inference_config = Inference()
        inference = modellib.MaskRCNN("inference", inference_config, logs)
        test_set = shapes.make_dataset(args.eval_count, shapes.TEST_SEED, inference_config)
        rows = []
        for epoch, path in enumerate(sorted(glob.glob(os.path.join(model.log_dir,
                                                                   "mask_rcnn_*.h5"))), 1):
            inference.load_weights(path)
            m_ap = shapes.evaluate_map(inference, test_set, inference_config, verbose=False)
            rows.append({"config": cfg, "epoch": epoch, "steps": epoch * 100,
                         f"mAP@0.5 ({args.eval_count} held-out)": f"{m_ap:.3f}"})
        print_table("Shapes schedule from scratch: mAP@0.5", rows)


if __name__ == "__main__":
    main()
