"""Peak memory and step time per Config knob, one knob changed at a time.

    python bench/memory_knobs.py                      # quick: 128 px, batch 1 (CPU)
    python bench/memory_knobs.py --size 1024 --batch 2 --steps 5 --rois 200   # a GPU
    KERAS_BACKEND=jax python bench/memory_knobs.py --compiled --size 1024 --batch 2 --rois 200

The memory knobs of Matterport's wiki (its page on training with little GPU memory): BACKBONE, image size,
IMAGES_PER_GPU, TRAIN_ROIS_PER_IMAGE, MAX_GT_INSTANCES, USE_MINI_MASK,
POST_NMS_ROIS_TRAINING, which layers train, MIXED_PRECISION. Every setting trains R50-FPN
(unless the knob is BACKBONE) from scratch on a synthetic shapes batch in its own process
(``train_on_batch``, ``--warmup`` compile steps then ``--steps`` timed ones), so peaks never
mix. Memory: JAX on a GPU, the device allocator's ``peak_bytes_in_use``; otherwise the
process max RSS (weights, optimizer, activations, the framework and the compiled program).

``--compiled`` measures no run: each setting's train step is compiled by XLA (JAX,
``bench/compiled_cost.py``) and the table gives the compiler's own memory analysis, the
program's peak (arguments + temporaries + outputs not aliased onto donated arguments):
weights, optimizer slots, the batch and the activations kept for the backward pass, without
the framework's allocations. The image-size row halves the size (Matterport's advice: use
smaller images). A second table estimates the images per GPU that fit in 16, 24, 40 and
80 GB for each setting: the arguments (weights and optimizer state) are fixed and the rest
grows linearly with the batch (the IMAGES_PER_GPU row checks that), with 1 GiB kept for the
CUDA context, cuDNN workspace and allocator slack. The analysis is of the program compiled
for the machine the script runs on: a GPU compiler fuses differently, so on a CPU these
are estimates of the GPU figures, within the accuracy of that difference.
Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from bench.common import print_table  # noqa: E402

HEADS = "heads"


def settings(size: int, batch: int, rois: int,
             smaller_images: bool = False) -> list[tuple[str, str, dict]]:
    """(knob, value, Config overrides) rows; the first is the baseline.

    Args:
        size: baseline image side.
        batch: baseline IMAGES_PER_GPU.
        rois: baseline TRAIN_ROIS_PER_IMAGE.
        smaller_images: the image-size row halves the size instead of doubling it.
    """
    image = size // 2 if smaller_images else size * 2
    return [
        ("baseline", f"R50, {size} px, batch {batch}, {rois} ROIs", {}),
        ("BACKBONE", "resnet101", {"BACKBONE": "resnet101"}),
        ("BACKBONE", "resnet18", {"BACKBONE": "resnet18"}),
        ("IMAGE_MIN/MAX_DIM", str(image), {"IMAGE_MIN_DIM": image, "IMAGE_MAX_DIM": image}),
        ("IMAGES_PER_GPU", str(batch * 2), {"IMAGES_PER_GPU": batch * 2}),
        ("TRAIN_ROIS_PER_IMAGE", str(rois // 2), {"TRAIN_ROIS_PER_IMAGE": rois // 2}),
        ("MAX_GT_INSTANCES", "20 (from 100)", {"MAX_GT_INSTANCES": 20}),
        ("USE_MINI_MASK", "False", {"USE_MINI_MASK": False}),
        ("POST_NMS_ROIS_TRAINING", "1000 (from 2000)", {"POST_NMS_ROIS_TRAINING": 1000}),
        ("layers trained", "heads (from all)", {HEADS: True}),
        ("MIXED_PRECISION", "mixed_bfloat16", {"MIXED_PRECISION": "mixed_bfloat16"}),
    ]


def child(size: int, batch: int, rois: int, overrides: dict, steps: int, warmup: int) -> dict:
    """Train one setting in this process and return its step time and peak memory."""
    import mrcnn.model as modellib
    from bench.common import bench_config, peak_memory_gib, time_train_steps, training_batch
    from mrcnn.training import LAYER_REGEX

    overrides = dict(overrides)
    layers = HEADS if overrides.pop(HEADS, False) else "all"
    config = bench_config(size, batch, rois=rois, **overrides)
    model = modellib.MaskRCNN("training", config, "/tmp/mrcnn_bench_logs")
    model.set_trainable(LAYER_REGEX.get(layers, layers), verbose=0)
    model.compile(0.01, 0.9)
    seconds = time_train_steps(model, training_batch(config), steps, warmup)
    peak, kind = peak_memory_gib()
    return {"ms": 1000 * seconds, "peak": peak, "kind": kind}


def child_compiled(size: int, batch: int, rois: int, overrides: dict) -> dict:
    """Compile one setting's train step (JAX) and return the compiler's memory figures."""
    from bench.compiled_cost import config_for, train_step_cost

    overrides = dict(overrides)
    layers = HEADS if overrides.pop(HEADS, False) else "all"
    precision = overrides.pop("MIXED_PRECISION", None)
    backbone = overrides.pop("BACKBONE", "resnet50")
    config = config_for(size, batch, backbone, precision, rois, **overrides)
    r = train_step_cost(config, layers)
    return {"peak": r["peak"], "argument": r["argument"], "temp": r["temp"],
            "flops": r["flops"], "batch": config.BATCH_SIZE}


FIT_GB = (16, 24, 40, 80)
RESERVED_GIB = 1.0  # CUDA context, cuDNN workspace, allocator slack


def images_that_fit(r: dict, gb: float) -> int:
    """Images per GPU that fit in ``gb`` GB: fixed arguments + per-image rest, linear."""
    per_image = (r["peak"] - r["argument"]) / r["batch"]
    room = gb * 1e9 - RESERVED_GIB * 2**30 - r["argument"]
    return max(0, int(room // per_image))


def main_compiled(args) -> None:
    """The --compiled tables: compiled peak memory per knob and what fits per GPU size."""
    os.environ["KERAS_BACKEND"] = "jax"  # the tables' device line names the compiler's
    rows, fits, base = [], [], None
    for knob, value, overrides in settings(args.size, args.batch, args.rois, True):
        if args.only and knob != "baseline" and knob not in args.only:
            continue
        cmd = [sys.executable, os.path.abspath(__file__), "--compiled", "--size",
               str(args.size), "--batch", str(args.batch), "--rois", str(args.rois),
               "--child", json.dumps(overrides)]
        env = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND="jax")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
            rows.append({"knob": knob, "value": value, "peak GiB": "failed",
                         "vs baseline": " ".join(tail)[:100], "temp GiB": "-",
                         "weights+optimizer+batch GiB": "-", "GFLOP/img": "-"})
            continue
        r = json.loads(lines[-1][7:])
        base = base or r
        rows.append({"knob": knob, "value": value, "peak GiB": f"{r['peak'] / 2**30:.2f}",
                     "vs baseline": f"{(r['peak'] - base['peak']) / 2**30:+.2f}",
                     "temp GiB": f"{r['temp'] / 2**30:.2f}",
                     "weights+optimizer+batch GiB": f"{r['argument'] / 2**30:.2f}",
                     "GFLOP/img": f"{r['flops'] / r['batch'] / 1e9:,.0f}"})
        fits.append({"knob": knob, "value": value,
                     **{f"{gb} GB": images_that_fit(r, gb) for gb in FIT_GB}})
        print("| " + " | ".join(map(str, rows[-1].values())) + " |", flush=True)  # progress
    print_table(f"Compiled train-step memory per knob (JAX/XLA memory analysis, "
                f"{args.size} px, batch {args.batch}, {args.rois} ROIs)", rows)
    print_table(f"Images per GPU that fit (estimate: arguments fixed, the rest linear in "
                f"the batch, {RESERVED_GIB:g} GiB reserved)", fits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rois", type=int, default=128, help="baseline TRAIN_ROIS_PER_IMAGE")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--only", nargs="+", help="knob names to run (baseline always runs)")
    parser.add_argument("--compiled", action="store_true",
                        help="compiler memory analysis of the train step (JAX), no run")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # JSON overrides: worker mode
    args = parser.parse_args()

    if args.compiled:
        if args.child is not None:
            result = child_compiled(args.size, args.batch, args.rois, json.loads(args.child))
            print("RESULT " + json.dumps(result))
        else:
            main_compiled(args)
        return
    if args.child is not None:
        result = child(args.size, args.batch, args.rois, json.loads(args.child), args.steps,
                       args.warmup)
        print("RESULT " + json.dumps(result))
        return
    rows, base = [], None
    for knob, value, overrides in settings(args.size, args.batch, args.rois):
        if args.only and knob != "baseline" and knob not in args.only:
            continue
        cmd = [sys.executable, os.path.abspath(__file__), "--size", str(args.size),
               "--batch", str(args.batch), "--rois", str(args.rois), "--steps",
               str(args.steps), "--warmup", str(args.warmup), "--child", json.dumps(overrides)]
        proc = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                              text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
            rows.append({"knob": knob, "value": value, "peak GiB": "failed",
                         "vs baseline": "-", "ms/step": "-", "memory": " ".join(tail)[:120]})
            continue
        r = json.loads(lines[-1][7:])
        base = base or r
        rows.append({"knob": knob, "value": value, "peak GiB": f"{r['peak']:.2f}",
                     "vs baseline": f"{r['peak'] - base['peak']:+.2f}",
                     "ms/step": f"{r['ms']:.0f}", "memory": r["kind"]})
    print_table(f"Memory knobs (train step, {args.steps} timed steps after {args.warmup})",
                rows)


if __name__ == "__main__":
    main()
