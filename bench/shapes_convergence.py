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
    args = parser.parse_args()

    import keras

    import mrcnn.model as modellib
    from mrcnn.ops import resolve_jit_compile
    from samples.shapes import shapes

    logs = args.logs or tempfile.mkdtemp(prefix="shapes_bench_")

    class BenchConfig(shapes.ShapesConfig):
        STEPS_PER_EPOCH = args.steps

    class EpochClock(keras.callbacks.Callback):
        """Wall time since the start of train() at the end of each epoch."""

        def __init__(self, start: float):
            super().__init__()
            self.start = start
            self.seconds: list[float] = []

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    config = BenchConfig()
    train_set = shapes.make_dataset(args.train_count, shapes.TRAIN_SEED, config)
    val_set = shapes.make_dataset(50, shapes.VAL_SEED, config)
    model = modellib.MaskRCNN("training", config, logs)
    clock = EpochClock(time.perf_counter())
    model.train(train_set, val_set, config.LEARNING_RATE, epochs=args.epochs, layers="all",
                custom_callbacks=[clock])

    inference_config = shapes.ShapesInferenceConfig()
    inference = modellib.MaskRCNN("inference", inference_config, logs)
    test_set = shapes.make_dataset(args.eval_count, shapes.TEST_SEED, inference_config)
    checkpoints = sorted(glob.glob(os.path.join(model.log_dir, "mask_rcnn_*.h5")))
    cfg = (f"{config.BACKBONE}/{config.NORM}, {config.IMAGE_MAX_DIM}px, batch "
           f"{config.BATCH_SIZE}, {config.OPTIMIZER} lr {config.LEARNING_RATE} "
           f"{config.LR_SCHEDULE}, jit {resolve_jit_compile(config.JIT_COMPILE)}")
    rows = []
    for epoch, (path, seconds) in enumerate(zip(checkpoints, clock.seconds), start=1):
        inference.load_weights(path)
        start = time.perf_counter()
        m_ap = shapes.evaluate_map(inference, test_set, inference_config, verbose=False)
        rows.append({
            "config": cfg,
            "epoch": epoch,
            "steps": epoch * args.steps,
            "train wall (s)": f"{seconds:.0f}",
            f"mAP@0.5 ({args.eval_count} held-out)": f"{m_ap:.3f}",
            "eval wall (s)": f"{time.perf_counter() - start:.0f}",
        })
    print_table("Shapes convergence (from scratch)", rows)


if __name__ == "__main__":
    main()
