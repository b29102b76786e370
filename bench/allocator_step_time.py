"""Training step time and kernel time with and without Config.MALLOC_MMAP_THRESHOLD.

    python bench/allocator_step_time.py [--steps 25] [--thresholds 33554432 0]

Each threshold runs in its own process (glibc's malloc settings are per process):
``MaskRCNN.train`` on the shapes sample (ShapesConfig, all layers, 2 epochs of ``--steps``
steps, 5 validation steps each). The table gives the median step time of each epoch (the
first step, which traces the graph, left out) and, from ``getrusage`` of the child, its
system CPU time, minor page faults and peak resident memory. 0 is the allocator as
TensorFlow's ``from_generator`` op leaves it. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from bench.common import print_table  # noqa: E402

CHILD = """
import json, sys, tempfile, time
sys.path.insert(0, {root!r})
import keras
import numpy as np
import mrcnn.model as modellib
from samples.shapes import shapes

steps, threshold = {steps}, {threshold}
config = type("BenchConfig", (shapes.ShapesConfig,),
              {{"STEPS_PER_EPOCH": steps, "MALLOC_MMAP_THRESHOLD": threshold}})()
train = shapes.make_dataset(16 * steps, 0, config)
val = shapes.make_dataset(40, 1, config)
ends = []

class StepEnds(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        ends.append(time.perf_counter())

keras.utils.set_random_seed(0)
model = modellib.MaskRCNN("training", config, tempfile.mkdtemp())
model.train(train, val, config.LEARNING_RATE, epochs=2, layers="all",
            custom_callbacks=[StepEnds()])
gaps = np.diff(ends)
print("BENCH" + json.dumps([float(np.median(gaps[:steps - 1])),
                            float(np.median(gaps[steps:]))]))
"""


def run_one(steps: int, threshold: int) -> dict:
    code = CHILD.format(root=ROOT, steps=steps, threshold=threshold)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        lines = [line for line in out.read().splitlines() if line.startswith("BENCH")]
        if child.returncode != 0 or not lines:
            raise SystemExit(f"threshold {threshold}: the training process failed:\n"
                             f"{err.read()[-3000:]}")
    epoch1, epoch2 = json.loads(lines[-1][len("BENCH"):])
    return {
        "MALLOC_MMAP_THRESHOLD": threshold,
        "epoch 1 step (s)": f"{epoch1:.2f}",
        "epoch 2 step (s)": f"{epoch2:.2f}",
        "process wall (s)": f"{wall:.0f}",
        "system CPU (s)": f"{usage.ru_stime:.1f}",
        "minor page faults (M)": f"{usage.ru_minflt / 1e6:.2f}",
        "peak RSS (GB)": f"{usage.ru_maxrss / 1e6:.2f}",  # ru_maxrss is in KB on Linux
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=25, help="steps per epoch")
    parser.add_argument("--thresholds", type=int, nargs="+", default=[0, 32 * 1024 * 1024],
                        help="bytes; 0 leaves glibc as TensorFlow sets it")
    args = parser.parse_args()
    rows = [run_one(args.steps, threshold) for threshold in args.thresholds]
    print_table("Training step time vs glibc mmap threshold (shapes, 128 px, batch 8)", rows)


if __name__ == "__main__":
    main()
