"""Shapes convergence: train the shapes sample from scratch, report wall time and mAP@0.5.

    python bench/shapes_convergence.py [--epochs 4] [--steps 100] [--eval-count 50]
    KERAS_BACKEND=jax python bench/shapes_convergence.py ...

Uses ShapesConfig (the sample's defaults) with STEPS_PER_EPOCH overridden, trains all
layers from scratch, then evaluates every epoch's checkpoint on held-out images (their own
seed, never trained on). One row per epoch: steps so far, cumulative training wall time
(graph tracing included) and mAP@0.5, so "time to mAP 0.9" can be read off the table.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from bench.common import print_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100, help="steps per epoch")
    parser.add_argument("--train-count", type=int, default=2000)
    parser.add_argument("--eval-count", type=int, default=50)
    parser.add_argument("--logs", default=None, help="default: a temporary folder")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="ShapesConfig overrides for training and evaluation, e.g. "
                             "--set NORM=bn BOX_HEAD=4conv1fc")
    args = parser.parse_args()

    import keras
    import numpy as np

    import mrcnn.model as modellib
    from mrcnn import metrics
    from mrcnn.config import parse_overrides
    from mrcnn.ops import resolve_jit_compile
    from samples.shapes import shapes

    logs = args.logs or tempfile.mkdtemp(prefix="shapes_bench_")
    overrides = parse_overrides(args.set, shapes.ShapesConfig)
    BenchConfig = type("BenchConfig", (shapes.ShapesConfig,),
                       {"STEPS_PER_EPOCH": args.steps, **overrides})

    class EpochClock(keras.callbacks.Callback):
        """Wall and process CPU time since the start of train() at the end of each epoch."""

        def __init__(self, start: float):
            super().__init__()
            self.start = start
            self.seconds: list[float] = []
            self.cpu_start = time.process_time()
            self.cpu: list[float] = []

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)
            self.cpu.append(time.process_time() - self.cpu_start)

    config = BenchConfig()
    train_set = shapes.make_dataset(args.train_count, shapes.TRAIN_SEED, config)
    val_set = shapes.make_dataset(50, shapes.VAL_SEED, config)
    model = modellib.MaskRCNN("training", config, logs)
    clock = EpochClock(time.perf_counter())
    model.train(train_set, val_set, config.LEARNING_RATE, epochs=args.epochs, layers="all",
                custom_callbacks=[clock])

    # The inference model shares the overridden model settings, not the batch or schedule.
    model_settings = {k: v for k, v in overrides.items()
                      if k not in ("GPU_COUNT", "IMAGES_PER_GPU", "STEPS_PER_EPOCH",
                                   "VALIDATION_STEPS")}
    inference_config = type("BenchInference", (shapes.ShapesInferenceConfig,),
                            model_settings)()
    inference = modellib.MaskRCNN("inference", inference_config, logs)
    test_set = shapes.make_dataset(args.eval_count, shapes.TEST_SEED, inference_config)
    checkpoints = sorted(glob.glob(os.path.join(model.log_dir, "mask_rcnn_*.h5")))
    cfg = (f"{config.BACKBONE}/{config.NORM}/{config.BOX_HEAD}, {config.IMAGE_MAX_DIM}px, batch "
           f"{config.BATCH_SIZE}, {config.OPTIMIZER} lr {config.LEARNING_RATE} "
           f"{config.LR_SCHEDULE}, jit {resolve_jit_compile(config.JIT_COMPILE)}")
    rows = []
    for epoch, (path, seconds) in enumerate(zip(checkpoints, clock.seconds), start=1):
        inference.load_weights(path)
        start = time.perf_counter()
        # Mask AP per image at IoU .50:.95 (Matterport's compute_ap at each threshold):
        # the first column is the sample's mAP@0.5, the mean of all is mAP@[.5:.95].
        aps = metrics.per_image_ap(inference, test_set, config=inference_config,
                                   iou_thresholds=np.arange(0.5, 1.0, 0.05),
                                   batch_size=inference_config.BATCH_SIZE)
        # Step time after the first epoch (graph tracing), validation steps included.
        later = epoch > 1
        step_wall = (seconds - clock.seconds[0]) / ((epoch - 1) * args.steps) if later else None
        step_cpu = ((clock.cpu[epoch - 1] - clock.cpu[0]) / ((epoch - 1) * args.steps)
                    if later else None)
        rows.append({
            "config": cfg,
            "epoch": epoch,
            "steps": epoch * args.steps,
            "train wall (s)": f"{seconds:.0f}",
            "s/step wall, CPU": f"{step_wall:.2f}, {step_cpu:.2f}" if later else "",
            f"mAP@0.5 ({args.eval_count} held-out)": f"{aps[:, 0].mean():.3f}",
            "mAP@[.5:.95]": f"{aps.mean():.3f}",
            "eval wall (s)": f"{time.perf_counter() - start:.0f}",
        })
    print_table("Shapes convergence (from scratch)", rows)


if __name__ == "__main__":
    main()
