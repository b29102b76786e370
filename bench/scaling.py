"""Data-parallel scaling: training step time and images/s on 1 and N devices.

    python bench/scaling.py                                  # TF: 1 and 2 logical CPU devices
    KERAS_BACKEND=jax python bench/scaling.py                # JAX: 1 and 2 host devices
    KERAS_BACKEND=jax python bench/scaling.py --devices 1 8 --size 512 --backbone resnet50

Each device count runs in its own process (TensorFlow's logical devices and JAX's host
device count are fixed at start-up) and trains through ``MaskRCNN.train`` with
``GPU_COUNT = devices`` and ``IMAGES_PER_GPU`` images per device, so the global batch grows
with the devices (weak scaling). Without a GPU the devices are logical CPU devices that
share the same cores: expect no speed-up there, only the cost of the replication. Step time
is the median of the timed steps after ``--warmup`` steps (compilation), measured in
``fit`` (input pipeline included). Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import keras

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from bench.common import bench_config, print_table, shapes_dataset  # noqa: E402


def _configure_devices(count: int) -> str:
    """Make ``count`` devices visible (logical CPU devices when there is no GPU)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return "GPU"
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * max(count, 1))
        return "logical CPU"
    import jax

    return jax.devices()[0].platform.upper() + ("" if jax.default_backend() != "cpu"
                                                else " (host devices)")


class StepTimer(keras.callbacks.Callback):
    """Wall time of each training batch."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        float((logs or {}).get("loss", 0.0))  # wait for the step
        self.times.append(time.perf_counter() - self._start)


def child(args) -> dict:
    """One device count, in this process: returns the measured step."""
    kind = _configure_devices(args.child)
    import numpy as np

    from mrcnn.model import MaskRCNN
    from mrcnn.tiny import tiny_backbone, tiny_backbone_shapes

    overrides = {}
    if args.backbone == "tiny":
        overrides = dict(BACKBONE=staticmethod(tiny_backbone),
                         COMPUTE_BACKBONE_SHAPE=staticmethod(tiny_backbone_shapes))
    config = bench_config(args.size, args.images_per_gpu, norm="gn", rois=args.rois,
                          GPU_COUNT=args.child, STEPS_PER_EPOCH=args.warmup + args.steps,
                          VALIDATION_STEPS=0, **overrides)
    model = MaskRCNN("training", config, "/tmp/mrcnn_bench_scaling")
    timer = StepTimer()
    np.random.seed(0)
    model.train(shapes_dataset(args.size, 4 * config.BATCH_SIZE), None, learning_rate=1e-3,
                epochs=1, layers="all", custom_callbacks=[timer])
    step = float(np.median(timer.times[args.warmup:]))
    return {"devices": f"{args.child} {kind}", "global batch": config.BATCH_SIZE,
            "step s": round(step, 3), "img/s": round(config.BATCH_SIZE / step, 2)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=None,
                        help="device counts (default: 1 and 2 on a CPU, 1 and all GPUs)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images-per-gpu", type=int, default=2)
    parser.add_argument("--rois", type=int, default=64)
    parser.add_argument("--backbone", choices=["tiny", "resnet50"], default="tiny")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args)))
        return
    counts = args.devices or _default_counts()
    rows = []
    for count in counts:
        env = dict(os.environ, CI="1")
        if not _has_gpu():
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                                f" --xla_force_host_platform_device_count={count}").strip()
        cmd = [sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:]),
               "--child", str(count)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
        lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{count} device(s): the run failed")
        rows.append(json.loads(lines[-1][len("RESULT "):]))
    base = rows[0]["img/s"]
    for row in rows:
        row["speed-up"] = round(row["img/s"] / base, 2)
    print_table(f"Data-parallel scaling ({args.backbone} backbone, {args.size} px, "
                f"{args.images_per_gpu} images per device)", rows)


def _has_gpu() -> bool:
    """Whether a GPU is visible, asked in a subprocess (device setup must stay fresh here)."""
    code = ("import keras, sys; b = keras.backend.backend()\n"
            "if b == 'jax':\n import jax; sys.exit(jax.default_backend() == 'cpu')\n"
            "import tensorflow as tf; sys.exit(not tf.config.list_physical_devices('GPU'))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def _device_count() -> int:
    code = ("import keras; b = keras.backend.backend()\n"
            "if b == 'jax':\n import jax; print(jax.device_count())\n"
            "else:\n import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1])


def _default_counts() -> list[int]:
    if not _has_gpu():
        return [1, 2]
    return sorted({1, _device_count()})


if __name__ == "__main__":
    main()
