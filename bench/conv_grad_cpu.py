"""One convolution's forward and gradients on the CPU: TensorFlow vs JAX (XLA:CPU), per flag.

    python bench/conv_grad_cpu.py                         # every engine and flag set below
    python bench/conv_grad_cpu.py --engines jax tf --repeats 5 --hlo

A ResNet/FPN-like 3x3 convolution (batch 2, 64x64, 256 -> 256 channels, NHWC, float32),
the mask head's 3x3 convolution (64 ROIs of 14x14, 256 -> 256; training runs ~170 ROIs per
image), a 1x1 one (128x128, 256 -> 64) and the 7x7 stride-2 stem (256x256x3 -> 64), each timed as
forward only, gradient with respect to the input, gradient with respect to the kernel,
and both gradients. Engines, each in its own process pinned to the same ``--threads``
cores: "tf" (a ``tf.function``: TensorFlow's oneDNN kernels, how Keras' TensorFlow backend
trains on a CPU without XLA), "tf-xla" (``jit_compile=True``: XLA:CPU inside TensorFlow),
and JAX under each XLA_FLAGS set of ``FLAG_SETS``. ``--hlo`` prints, for the default JAX
engine, how XLA:CPU compiled each convolution of the two-gradient program (a library call
or a generated loop nest). Median process CPU milliseconds (all threads) of ``--repeats``
calls after one compiling call (the machine may be shared: CPU time is the work done,
wall time would mostly measure the load); GFLOP/s of CPU time from 2*MACs of the forward
convolution (each gradient has the same MACs).
Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

# (name, batch, height, width, in channels, out channels, kernel, stride)
CASES = [("3x3 256->256 @64x64", 2, 64, 64, 256, 256, 3, 1),
         ("3x3 256->256 @14x14, 64 ROIs", 64, 14, 14, 256, 256, 3, 1),
         ("1x1 256->64 @128x128", 2, 128, 128, 256, 64, 1, 1),
         ("7x7/2 3->64 @256x256", 2, 256, 256, 3, 64, 7, 2)]
PARTS = ("forward", "d input", "d kernel", "d input + d kernel")
FLAG_SETS = {
    "jax": "",
    "jax onednn": "--xla_cpu_use_onednn=true",
    "jax xnnpack": "--xla_cpu_use_xnnpack=true",
    "jax no thunk runtime": "--xla_cpu_use_thunk_runtime=false",
    "jax eigen 1-thread": "--xla_cpu_multi_thread_eigen=false",
}


def _macs(case) -> float:
    _, b, h, w, cin, cout, k, s = case
    return b * (h // s) * (w // s) * cin * cout * k * k


def _median_ms(fn, repeats: int) -> float:
    # Process CPU time, not wall time: on a shared, loaded machine the wall time of a call
    # mostly measures the other processes; the CPU time is the work the call did.
    from bench.common import median_ms

    return median_ms(fn, repeats, clock=time.process_time)


def child_tf(xla: bool, repeats: int) -> dict:
    import numpy as np
    import tensorflow as tf

    out = {}
    for case in CASES:
        name, b, h, w, cin, cout, k, s = case
        rng = np.random.default_rng(0)
        x = tf.constant(rng.standard_normal((b, h, w, cin), dtype=np.float32))
        kern = tf.Variable(rng.standard_normal((k, k, cin, cout), dtype=np.float32) * 0.01)

        def conv(x):
            return tf.nn.conv2d(x, kern, s, "SAME")

        def grads(wrt_x: bool, wrt_k: bool):
            @tf.function(jit_compile=xla)
            def f(x):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = tf.reduce_sum(conv(x))
                targets = ([x] if wrt_x else []) + ([kern] if wrt_k else [])
                return tape.gradient(y, targets)
            return lambda: [g.numpy() for g in f(x)]

        fwd = tf.function(conv, jit_compile=xla)
        fns = [lambda: fwd(x).numpy(), grads(True, False), grads(False, True),
               grads(True, True)]
        out[name] = [_median_ms(fn, repeats) for fn in fns]
    return out


def child_jax(repeats: int, hlo: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    out, texts = {}, {}
    for case in CASES:
        name, b, h, w, cin, cout, k, s = case
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((b, h, w, cin), dtype=np.float32))
        kern = jnp.asarray(rng.standard_normal((k, k, cin, cout), dtype=np.float32) * 0.01)

        def conv(x, kern):
            return jax.lax.conv_general_dilated(x, kern, (s, s), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))

        def total(x, kern):
            return jnp.sum(conv(x, kern))

        jitted = [jax.jit(conv), jax.jit(jax.grad(total, 0)), jax.jit(jax.grad(total, 1)),
                  jax.jit(jax.grad(total, (0, 1)))]
        out[name] = [_median_ms(lambda f=f: jax.block_until_ready(f(x, kern)), repeats)
                     for f in jitted]
        if hlo:
            texts[name] = jitted[3].lower(x, kern).compile().as_text()
    if hlo:
        out["hlo"] = {name: _conv_lines(text) for name, text in texts.items()}
    return out


def _conv_lines(text: str) -> list[str]:
    """Where each convolution of an optimized HLO module went: its fusion kind or call."""
    lines = []
    for line in text.splitlines():
        if "convolution(" in line or "custom_call_target=" in line:
            line = re.sub(r"metadata=\{[^}]*\}", "", line.strip())
            lines.append(line[:220])
    # A convolution inside a fusion is emitted as a loop nest; one at the entry level is
    # a library call (Eigen, oneDNN or XNNPACK).
    fusions = re.findall(r"fused_computation[^\n]*\{([^}]*)\}", text)
    if any("convolution(" in f for f in fusions):
        lines.append("(a convolution is inside a fusion: generated loops, no library call)")
    return lines


def _run(engine: str, args) -> dict | str:
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS=str(args.threads),
               TF_CPP_MIN_LOG_LEVEL="2")
    if engine.startswith("jax"):
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + FLAG_SETS[engine]).strip()
    task = {"engine": engine, "repeats": args.repeats, "threads": args.threads,
            "hlo": args.hlo and engine == "jax"}
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                           json.dumps(task)], capture_output=True, text=True, env=env)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode or not lines:
        return "failed: " + " ".join((done.stderr or "").strip().splitlines()[-1:])[:120]
    return json.loads(lines[-1][7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+",
                        default=["tf", "tf-xla", *FLAG_SETS],
                        choices=["tf", "tf-xla", *FLAG_SETS])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--hlo", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        task = json.loads(args.child)
        os.sched_setaffinity(0, set(range(task["threads"])))
        if task["engine"].startswith("tf"):
            result = child_tf(task["engine"] == "tf-xla", task["repeats"])
        else:
            result = child_jax(task["repeats"], task["hlo"])
        print("RESULT " + json.dumps(result))
        return

    sys.path.insert(0, ROOT)
    from bench.common import print_table

    results = {engine: _run(engine, args) for engine in args.engines}
    rows = []
    for case in CASES:
        for i, part in enumerate(PARTS):
            row = {"convolution": case[0], "computes": part}
            for engine, r in results.items():
                row[f"{engine} ms"] = r if isinstance(r, str) else f"{r[case[0]][i]:.1f}"
            tf_ms = results.get("tf")
            if isinstance(tf_ms, dict) and isinstance(results.get("jax"), dict):
                row["jax / tf"] = f"{results['jax'][case[0]][i] / tf_ms[case[0]][i]:.1f}x"
            macs = _macs(case) * (2 if i == 3 else 1)
            best = min((r[case[0]][i] for r in results.values() if isinstance(r, dict)),
                       default=float("nan"))
            row["best GFLOP/s"] = f"{2 * macs / best / 1e6:.0f}"
            rows.append(row)
    print_table(f"One convolution on the CPU (CPU ms, {args.threads} cores per process, median of "
                f"{args.repeats}; load average {os.getloadavg()[0]:.1f})", rows)
    hlo = results.get("jax", {}).get("hlo") if isinstance(results.get("jax"), dict) else None
    if hlo:
        print("\n## How XLA:CPU compiled the convolutions of d input + d kernel (JAX)")
        for name, lines in hlo.items():
            print(f"### {name}")
            for line in lines:
                print("    " + line)


if __name__ == "__main__":
    main()
