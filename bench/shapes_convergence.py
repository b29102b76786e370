"""Shapes convergence: train the shapes sample from scratch, report wall time and mAP@0.5.

    python bench/shapes_convergence.py [--epochs 6] [--steps 100] [--eval-count 50]

Uses ShapesConfig (the sample's defaults) unless overridden; evaluates on 50 held-out images
(their own seed, never trained on). Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from bench.common import print_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--train-count", type=int, default=2000)
    parser.add_argument("--eval-count", type=int, default=50)
    parser.add_argument("--logs", default=None, help="default: a temporary folder")
    args = parser.parse_args()

    import mrcnn.model as modellib
    from samples.shapes import shapes

    logs = args.logs or tempfile.mkdtemp(prefix="shapes_bench_")

    class BenchConfig(shapes.ShapesConfig):
        STEPS_PER_EPOCH = args.steps

    config = BenchConfig()
    train_set = shapes.make_dataset(args.train_count, shapes.TRAIN_SEED, config)
    val_set = shapes.make_dataset(50, shapes.VAL_SEED, config)
    model = modellib.MaskRCNN("training", config, logs)

    start = time.perf_counter()
    model.train(train_set, val_set, config.LEARNING_RATE, epochs=args.epochs, layers="all")
    train_seconds = time.perf_counter() - start

    inference_config = shapes.ShapesInferenceConfig()
    inference = modellib.MaskRCNN("inference", inference_config, logs)
    inference.load_weights(model.find_last())
    test_set = shapes.make_dataset(args.eval_count, shapes.TEST_SEED, inference_config)
    start = time.perf_counter()
    m_ap = shapes.evaluate_map(inference, test_set, inference_config, verbose=False)
    eval_seconds = time.perf_counter() - start

    cfg = (f"{config.BACKBONE}/{config.NORM}, {config.IMAGE_MAX_DIM}px, batch "
           f"{config.BATCH_SIZE}, {config.OPTIMIZER} lr {config.LEARNING_RATE} "
           f"{config.LR_SCHEDULE}, jit {config.JIT_COMPILE}")
    print_table("Shapes convergence (from scratch)", [{
        "config": cfg,
        "steps": args.epochs * args.steps,
        "train wall (s)": f"{train_seconds:.0f}",
        "eval wall (s)": f"{eval_seconds:.0f}",
        f"mAP@0.5 ({args.eval_count} held-out)": f"{m_ap:.3f}",
    }])


if __name__ == "__main__":
    main()
