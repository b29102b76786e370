"""NMS speed: the TF kernel, the per-slot loop and the tiled kernel, on TensorFlow and JAX.

    python bench/nms_speed.py            # quick: 3 settings
    python bench/nms_speed.py --full     # B {1, 2, 8} x N {1000, 6000} x M {100, 1000, 2000}

Boxes look like RPN proposals in normalized coordinates: half jittered around 40 "objects"
(heavy overlap, much suppression), half spread over the image; IoU 0.7, no score threshold
(the proposal layer's setting). Each kernel is compiled (TF: ``tf.function``, with and without
XLA; JAX: ``jax.jit``) and timed as the median of repeated calls after warm-up. The JAX
rows come from a subprocess with ``KERAS_BACKEND=jax``; ``--backend jax`` runs only those (on
a machine without TensorFlow). Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

QUICK = [(2, 6000, 2000), (2, 6000, 100), (1, 1000, 100)]
FULL = [(b, n, m) for b in (1, 2, 8) for n in (1000, 6000) for m in (100, 1000, 2000)]
IOU = 0.7


def proposal_like(batch: int, n: int, seed: int = 0):
    """``[B, N, 4]`` normalized boxes and ``[B, N]`` scores, half clustered on objects."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centers = rng.uniform(0.05, 0.95, size=(batch, n, 2))
    sizes = np.exp(rng.uniform(np.log(0.02), np.log(0.5), size=(batch, n, 2)))
    objects = rng.integers(0, 40, size=(batch, n))
    obj_c = rng.uniform(0.1, 0.9, size=(batch, 40, 2))
    obj_s = np.exp(rng.uniform(np.log(0.05), np.log(0.4), size=(batch, 40, 2)))
    near = rng.random((batch, n)) < 0.5
    pick = lambda a: np.take_along_axis(a, objects[..., None], axis=1)  # noqa: E731
    centers = np.where(near[..., None], pick(obj_c) + rng.normal(0, 0.02, (batch, n, 2)), centers)
    sizes = np.where(near[..., None], pick(obj_s) * rng.uniform(0.8, 1.25, (batch, n, 2)), sizes)
    boxes = np.clip(np.concatenate([centers - sizes / 2, centers + sizes / 2], -1), 0, 1)
    return boxes.astype("float32"), rng.uniform(size=(batch, n)).astype("float32")


def _median_ms(fn, args, repeats: int, sync) -> float:
    sync(fn(*args))  # compile
    sync(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(fn(*args))
        times.append(time.perf_counter() - start)
    times.sort()
    return 1000 * times[len(times) // 2]


def run_backend(settings, repeats: int) -> list[dict]:
    """Time every kernel available on the current Keras backend."""
    import keras

    from mrcnn.ops import nms

    backend = keras.backend.backend()
    kernels = {"loop (per slot)": nms.nms_padded_pure, "tiled": nms.nms_padded_tiled}
    if backend == "tensorflow":
        import tensorflow as tf

        kernels = {"TF kernel": nms.nms_padded_tf, **kernels}
        variants = {"graph": dict(jit_compile=False), "XLA": dict(jit_compile=True)}

        def compile_fn(fn, m, opts):
            return tf.function(lambda b, s: fn(b, s, m, IOU), **opts)

        def sync(out):
            return [t.numpy() for t in out]
    else:
        import jax

        variants = {"jit": {}}

        def compile_fn(fn, m, opts):
            return jax.jit(lambda b, s: fn(b, s, m, IOU))

        def sync(out):
            return jax.block_until_ready(out)

    rows = []
    for batch, n, m in settings:
        boxes, scores = proposal_like(batch, n)
        for name, fn in kernels.items():
            for variant, opts in variants.items():
                ms = _median_ms(compile_fn(fn, m, opts), (boxes, scores), repeats, sync)
                rows.append({"B": batch, "N": n, "M": m, "backend": backend,
                             "kernel": f"{name}, {variant}", "ms": round(ms, 2)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the whole B x N x M grid")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--backend", choices=("both", "tensorflow", "jax"), default="both")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    settings = FULL if args.full else QUICK

    if args.json:  # a worker: this process's backend only, rows as JSON
        print("ROWS " + json.dumps(run_backend(settings, args.repeats)))
        return
    rows = []
    for backend in ("tensorflow", "jax"):
        if args.backend not in ("both", backend):
            continue
        cmd = [sys.executable, os.path.abspath(__file__), "--json", "--repeats",
               str(args.repeats)] + (["--full"] if args.full else [])
        env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=ROOT)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROWS ")]
        if proc.returncode != 0 or not lines:
            print(f"{backend}: failed (is it installed?)\n{proc.stderr[-2000:]}")
            continue
        rows += json.loads(lines[-1][5:])
    rows.sort(key=lambda r: (r["B"], r["N"], r["M"]))
    from bench.common import print_table

    print_table(f"NMS speed (IoU {IOU}, proposal-like boxes, median of {args.repeats})", rows)


if __name__ == "__main__":
    main()
