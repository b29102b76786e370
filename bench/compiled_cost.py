"""The compiled program's own cost, independent of hardware: FLOPs, bytes and memory (JAX/XLA).

    KERAS_BACKEND=jax python bench/compiled_cost.py                   # R50, 1024 px, batch 2, fp32
    KERAS_BACKEND=jax python bench/compiled_cost.py --backbone resnet50 resnet101 \\
        --batch 2 8 --precision float32 mixed_bfloat16               # the whole matrix
    KERAS_BACKEND=jax python bench/compiled_cost.py --steps none --components   # per part
    KERAS_BACKEND=jax python bench/compiled_cost.py --set RPN_CONV_CHANNELS=256   # a Config knob
    ... --torch-python /path/to/venv-with-torch/bin/python           # torchvision FLOPs beside

Each program is traced with ``jax.jit(...).lower(...)`` on abstract inputs
(``jax.ShapeDtypeStruct``: nothing runs, no data is made at full size) and compiled by
XLA for the local device (CPU here; the same script on a GPU reads the GPU compiler's
figures). ``compiled.cost_analysis()`` gives the FLOPs and the bytes every HLO op reads and
writes (before caches: an upper bound on memory traffic); ``compiled.memory_analysis()``
gives the sizes of the program's arguments, outputs (minus those aliased onto donated
arguments) and temporaries. "peak" is argument + output - alias + temp bytes: what the
program needs resident at once (weights, optimizer slots, batch, activations kept for the
backward pass, scratch), without the framework's own allocations.

Programs:

- train step: Keras' JAX ``train_step`` (forward, losses, gradients, SGD update, metrics),
  the function ``fit``/``train_on_batch`` compiles; R50/R101-FPN from scratch, every layer
  trained (``--layers`` for another preset), TRAIN_ROIS_PER_IMAGE 512 (torchvision's).
- inference step: ``MaskRCNN.detect``'s compiled graph (image to detections and masks of
  DETECTION_MAX_INSTANCES boxes); molding and mask pasting run on the host and are not in it.
- ``--components``: backbone+FPN, RPN head, proposals (decode + NMS), detection targets,
  each ROI align, box head, mask head and the losses, each lowered on its own (training:
  forward + gradient of the summed outputs with respect to the weights and float inputs,
  which is what the train step's backward pass does; proposals and targets are not
  differentiated, as in the step). Parts compiled separately add up to a bit more than the
  whole step (XLA fuses across parts in the step).

The roofline line: the FLOPs at an H100 SXM's dense peak and the bytes at its HBM
bandwidth (NVIDIA H100 Tensor Core GPU datasheet: 989 TFLOP/s dense bf16, 67 TFLOP/s fp32
non-tensor, 495 TFLOP/s dense TF32, 3.35 TB/s HBM3); the step can be no faster than the
larger of the two. Prints tables; asserts nothing.
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
os.environ.setdefault("KERAS_BACKEND", "jax")

from bench.common import print_table  # noqa: E402

# NVIDIA H100 SXM5 datasheet figures (dense, no sparsity).
H100_BF16_FLOPS = 989e12
H100_TF32_FLOPS = 495e12
H100_FP32_FLOPS = 67e12
H100_HBM_BYTES = 3.35e12


def roofline_ms(flops: float, bytes_accessed: float, precision: str) -> dict:
    """Lower bounds (ms) for one program on an H100 SXM: compute-bound and memory-bound.

    Args:
        flops: FLOPs of the program.
        bytes_accessed: bytes read and written by its ops.
        precision: "float32" (counted at the TF32 tensor-core peak, as XLA and cuDNN use
            TF32 for float32 convolutions and matmuls by default) or "mixed_bfloat16".

    Returns:
        dict with "compute ms", "memory ms" and "bound ms" (the larger).
    """
    peak = H100_BF16_FLOPS if precision == "mixed_bfloat16" else H100_TF32_FLOPS
    compute, memory = 1000 * flops / peak, 1000 * bytes_accessed / H100_HBM_BYTES
    return {"compute ms": compute, "memory ms": memory, "bound ms": max(compute, memory)}


def compiled_stats(compiled) -> dict:
    """FLOPs, bytes accessed and memory sizes of a compiled JAX program.

    Args:
        compiled: a ``jax.stages.Compiled``.

    Returns:
        dict: flops, bytes (accessed), argument, output, alias, temp and peak bytes.
    """
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
        cost = cost[0]
    mem = compiled.memory_analysis()
    out = {"flops": float(cost.get("flops", 0.0)),
           "bytes": float(cost.get("bytes accessed", 0.0)),
           "argument": mem.argument_size_in_bytes, "output": mem.output_size_in_bytes,
           "alias": mem.alias_size_in_bytes, "temp": mem.temp_size_in_bytes}
    out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def _compile(fn, *args, donate=()) -> tuple[dict, float]:
    import jax

    start = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
    return compiled_stats(compiled), time.perf_counter() - start


def config_for(size: int, batch: int, backbone: str = "resnet50",
               precision: str | None = None, rois: int = 512, **overrides):
    """The benchmarks' Config (``bench.common.bench_config``) with XLA on."""
    from bench.common import bench_config

    return bench_config(size, batch, jit=True, precision=precision, rois=rois,
                        BACKBONE=backbone, **overrides)


def training_specs(config) -> list:
    """Abstract training inputs for ``config``: shapes of the data generator's batch."""
    import jax
    import numpy as np

    from bench.common import shapes_dataset
    from mrcnn.data import DataGenerator

    # One real image gives every input's shape and dtype (the anchor count included);
    # the batch axis is then set to BATCH_SIZE without making a full batch.
    one = type(config)()
    one.IMAGES_PER_GPU, one.BATCH_SIZE = 1, 1
    (x,) = DataGenerator(shapes_dataset(config.IMAGE_SHAPE[0], 1), one, shuffle=False)[0]
    return [jax.ShapeDtypeStruct((config.BATCH_SIZE,) + np.shape(a)[1:], np.asarray(a).dtype)
            for a in x]


def train_model(config, layers: str = "all"):
    """A compiled (Keras) MaskRCNN training model with ``layers`` trainable."""
    import mrcnn.model as modellib
    from mrcnn.training import LAYER_REGEX

    model = modellib.MaskRCNN("training", config, "/tmp/mrcnn_bench_logs")
    model.set_trainable(LAYER_REGEX.get(layers, layers), verbose=0)
    model.compile(0.01, 0.9)
    return model


def train_step_cost(config, layers: str = "all") -> dict:
    """Compiled cost of Keras' JAX train step for ``config`` (see the module docstring).

    Args:
        config: a Config (JIT on).
        layers: a ``train(layers=...)`` preset or regex.

    Returns:
        ``compiled_stats`` plus "compile s".
    """
    km = train_model(config, layers).keras_model
    specs = training_specs(config)
    km._symbolic_build(data_batch=(specs, None, None))  # metrics' variables, as fit does
    state = km._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                              optimizer_variables=True, metrics_variables=True)
    stats, seconds = _compile(km.train_step, state, (specs, None, None), donate=(0,))
    return {**stats, "compile s": seconds}


def inference_step_cost(config) -> dict:
    """Compiled cost of the inference graph ``MaskRCNN.detect`` runs, at IMAGE_SHAPE."""
    import jax

    import mrcnn.model as modellib

    km = modellib.MaskRCNN("inference", config, "/tmp/mrcnn_bench_logs").keras_model
    h, w, c = (int(v) for v in config.IMAGE_SHAPE)
    inputs = [jax.ShapeDtypeStruct((config.BATCH_SIZE, h, w, c), "float32"),
              jax.ShapeDtypeStruct((config.BATCH_SIZE, config.IMAGE_META_SIZE), "float32")]

    def run(trainable, non_trainable, x):
        return km.stateless_call(trainable, non_trainable, x, training=False)[0]

    stats, seconds = _compile(run, [v.value for v in km.trainable_variables],
                              [v.value for v in km.non_trainable_variables], inputs)
    return {**stats, "compile s": seconds}


# ------------------------------------------------------------------------------ components

def _spec(tensor, batch: int):
    import jax

    shape = tuple(batch if d is None else int(d) for d in tensor.shape)
    return jax.ShapeDtypeStruct(shape, tensor.dtype)


def _part_cost(model, inputs: list, grad: bool) -> dict:
    """Compiled cost of ``model`` (a Keras model) forward, or forward + gradient.

    The gradient is of the summed float outputs with respect to the trainable weights and
    the float inputs (the backward pass the train step runs through this part).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    arg = inputs if len(inputs) > 1 else inputs[0]
    if not grad:
        return _compile(lambda t, n, a: model.stateless_call(t, n, a, training=True)[0],
                        tv, ntv, arg)[0]
    floats = [i for i, s in enumerate(inputs) if np.issubdtype(s.dtype, np.floating)]

    def loss(t, float_inputs, n):
        a = list(inputs)
        for i, v in zip(floats, float_inputs):
            a[i] = v
        out = model.stateless_call(t, n, a if len(a) > 1 else a[0], training=True)[0]
        return sum(jnp.sum(o.astype("float32")) for o in jax.tree_util.tree_leaves(out)
                   if jnp.issubdtype(o.dtype, jnp.floating))

    def step(t, float_inputs, n):
        return jax.grad(loss, argnums=(0, 1))(t, float_inputs, n)

    return _compile(step, tv, [inputs[i] for i in floats], ntv)[0]


def _sub_model(inputs: list, outputs):
    """A Keras model from intermediate tensors of the training graph to others."""
    import keras

    return keras.Model(inputs, outputs)


def component_costs(config, training: bool = True) -> list[dict]:
    """Compiled cost of each part of the training (or inference) graph, lowered alone.

    Args:
        config: a Config (JIT on).
        training: the training graph (forward + backward per part) or the inference graph
            (forward only).

    Returns:
        rows: {"part", "flops", "bytes", "temp", "peak"}.
    """
    import keras

    import mrcnn.model as modellib
    from mrcnn.roi_align import PyramidROIAlign

    import jax

    b = config.BATCH_SIZE
    if training:
        km = train_model(config).keras_model
        x = training_specs(config)
    else:
        km = modellib.MaskRCNN("inference", config, "/tmp/mrcnn_bench_logs").keras_model
        h, w, c = (int(v) for v in config.IMAGE_SHAPE)
        x = [jax.ShapeDtypeStruct((b, h, w, c), "float32"),
             jax.ShapeDtypeStruct((b, config.IMAGE_META_SIZE), "float32")]
    fpn = [km.get_layer(f"fpn_p{i}").output for i in range(2, 7)]
    layers = [("proposals (decode + NMS)", km.get_layer("ROI"), False)]
    if training:
        layers.append(("detection targets", km.get_layer("proposal_targets"), False))
    else:
        layers.append(("detection (refine + per-class NMS)",
                       km.get_layer("mrcnn_detection"), False))
    layers += [(f"ROI align ({layer.name})", layer, training) for layer in km.layers
               if isinstance(layer, PyramidROIAlign)]
    heads = [("box head", "roi_align_classifier", ["mrcnn_class_logits", "mrcnn_bbox"]),
             ("mask head", "roi_align_mask", ["mrcnn_mask"])]
    # Concrete shapes of every tensor a part takes (inference shapes are only known once
    # an image size is given): one abstract evaluation of a probe model.
    wanted = [fpn] + [keras.tree.flatten(layer.input) for _, layer, _ in layers]
    wanted += [[km.get_layer(source).output] for _, source, _ in heads]
    probe = keras.Model(km.inputs, [t for ts in wanted for t in ts])
    tv = [v.value for v in probe.trainable_variables]
    ntv = [v.value for v in probe.non_trainable_variables]
    flat = jax.eval_shape(lambda t, n, a: probe.stateless_call(t, n, a, training=training)[0],
                          tv, ntv, x)
    specs, start = [], 0
    for ts in wanted:
        specs.append(flat[start:start + len(ts)])
        start += len(ts)
    rows = []

    def add(part: str, model, inputs, grad: bool):
        rows.append({"part": part, **_part_cost(model, list(inputs), grad)})

    add("backbone + FPN", keras.Model(km.inputs[0], fpn), [x[0]], training)
    from mrcnn.rpn import rpn_on_pyramid

    levels = [keras.Input(batch_shape=s.shape) for s in specs[0]]
    add("RPN head (5 levels)", keras.Model(levels, rpn_on_pyramid(km.get_layer("rpn_model"),
                                                                  levels)), specs[0], training)
    for (part, layer, grad), shapes in zip(layers, specs[1:]):
        fresh = [keras.Input(batch_shape=s.shape, dtype=s.dtype) for s in shapes]
        add(part, keras.Model(fresh, layer(fresh if len(fresh) > 1 else fresh[0])), shapes,
            grad)
    # Heads: from the ROI align outputs to the head outputs (no ROI align inside).
    for (part, source, outs), shapes in zip(heads, specs[1 + len(layers):]):
        head = _sub_model(km.get_layer(source).output, [km.get_layer(o).output for o in outs])
        add(part, head, shapes, training)
    if training:
        rows.append({"part": "losses", **_loss_cost(km, config)})
    return rows


def _loss_cost(km, config) -> dict:
    """Compiled cost of the five losses and their gradient with respect to the outputs."""
    import jax
    import keras

    x = training_specs(config)
    y = [_spec(t, config.BATCH_SIZE) for t in km.outputs]
    floats = [i for i, s in enumerate(y) if jax.numpy.issubdtype(s.dtype, jax.numpy.floating)]

    others = [i for i in range(len(y)) if i not in floats]

    def loss(float_y, other_y, x):
        values = [None] * len(y)
        for i, v in zip(floats + others, list(float_y) + list(other_y)):
            values[i] = v
        y_pred = keras.tree.pack_sequence_as(km._outputs_struct, values)
        return sum(km.loss_terms(x, y_pred).values())

    return _compile(jax.grad(loss), [y[i] for i in floats], [y[i] for i in others], x)[0]


# ------------------------------------------------------------------------------ torchvision

def torchvision_flops(python: str, size: int, batch: int) -> dict:
    """torchvision's FLOPs per part at ``size`` px, batch ``batch``, via another interpreter.

    Runs ``bench/torchvision_cpu.py --flops`` (torch's ``FlopCounterMode``) with
    ``python`` (an interpreter that has torch and torchvision).

    Returns:
        {"train": {part: flops}, "eval": {part: flops}}.
    """
    cmd = [python, os.path.join(ROOT, "bench", "torchvision_cpu.py"), "--flops",
           "--size", str(size), "--batch", str(batch)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1][7:])


def parse_overrides(items: list[str]) -> dict:
    """``["RPN_CONV_CHANNELS=256", ...]`` -> {"RPN_CONV_CHANNELS": 256, ...}.

    Values are Python literals (``ast.literal_eval``: numbers, strings, tuples), never code.
    """
    import ast

    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise SystemExit(f"--set {item!r}: expected ATTR=VALUE, e.g. RPN_CONV_CHANNELS=256")
        try:
            out[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[name] = value  # a bare string such as resnet50
    return out


def _g(value: float, unit: float = 1e9) -> str:
    return f"{value / unit:,.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch", type=int, nargs="+", default=[2])
    parser.add_argument("--backbone", nargs="+", default=["resnet50"])
    parser.add_argument("--precision", nargs="+", default=["float32"],
                        choices=("float32", "mixed_bfloat16"))
    parser.add_argument("--rois", type=int, default=512, help="TRAIN_ROIS_PER_IMAGE")
    parser.add_argument("--steps", nargs="+", default=["train", "inference"],
                        choices=("train", "inference", "none"))
    parser.add_argument("--components", action="store_true",
                        help="per-part table (first backbone, batch and precision)")
    parser.add_argument("--set", nargs="+", default=[], metavar="ATTR=VALUE",
                        help="other Config attributes, e.g. RPN_CONV_CHANNELS=256 "
                             "(values read as Python literals)")
    parser.add_argument("--torch-python", help="interpreter with torch + torchvision: adds "
                        "torchvision's FLOPs (torch.utils.flop_counter) beside")
    args = parser.parse_args()
    overrides = parse_overrides(args.set)
    if {"BACKBONE", "IMAGES_PER_GPU", "MIXED_PRECISION", "TRAIN_ROIS_PER_IMAGE"} & set(overrides):
        raise SystemExit("--set: use --backbone, --batch, --precision and --rois for those")
    import keras

    if keras.backend.backend() != "jax":
        raise SystemExit("compiled_cost.py lowers JAX programs: run with KERAS_BACKEND=jax")

    # torchvision runs its model to count (eager PyTorch): once, at the first batch size;
    # FLOPs per image do not depend on the batch.
    tv = (torchvision_flops(args.torch_python, args.size, args.batch[0])
          if args.torch_python else {})
    rows = []
    for step in [s for s in args.steps if s != "none"]:
        for backbone in args.backbone:
            for batch in args.batch:
                for precision in args.precision:
                    config = config_for(args.size, batch, backbone,
                                        None if precision == "float32" else precision,
                                        args.rois, **overrides)
                    try:
                        r = (train_step_cost(config) if step == "train"
                             else inference_step_cost(config))
                    except Exception as err:  # one failed compile costs one row
                        rows.append({"step": step, "backbone": backbone, "batch": batch,
                                     "precision": precision, "GFLOP": "failed",
                                     "GB accessed": str(err).splitlines()[0][:80]})
                        continue
                    finally:
                        keras.backend.clear_session()
                    roof = roofline_ms(r["flops"], r["bytes"], precision)
                    key = "train" if step == "train" else "eval"
                    tv_total = tv.get(key, {}).get("total")
                    rows.append({
                        "step": step, "backbone": backbone, "batch": batch,
                        "precision": precision, "GFLOP": _g(r["flops"]),
                        "GFLOP/img": _g(r["flops"] / batch),
                        "torchvision GFLOP/img": (_g(tv_total / args.batch[0])
                                                  if tv_total and backbone == "resnet50"
                                                  else "-"),
                        "GB accessed": _g(r["bytes"]),
                        "args GiB": f"{r['argument'] / 2**30:.2f}",
                        "temp GiB": f"{r['temp'] / 2**30:.2f}",
                        "peak GiB": f"{r['peak'] / 2**30:.2f}",
                        "H100 bound ms": f"{roof['bound ms']:.1f} "
                                         f"({'compute' if roof['compute ms'] >= roof['memory ms'] else 'memory'})",
                        "compile s": f"{r['compile s']:.0f}"})
                    # Each row as soon as it is known (a long matrix may be cut short).
                    print("| " + " | ".join(str(v) for v in rows[-1].values()) + " |",
                          flush=True)
    if rows:
        print_table(f"Compiled cost per step ({args.size} px, XLA cost and memory analysis)",
                    rows)
    if args.components:
        precision = args.precision[0]
        config = config_for(args.size, args.batch[0], args.backbone[0],
                            None if precision == "float32" else precision, args.rois,
                            **overrides)
        for training, key in ((True, "train"), (False, "eval")):
            parts = component_costs(config, training)
            keras.backend.clear_session()
            tv_parts = tv.get(key, {})
            table = []
            for p in parts:
                roof = roofline_ms(p["flops"], p["bytes"], precision)
                table.append({"part": p["part"], "GFLOP": _g(p["flops"]),
                              "torchvision GFLOP": _g(tv_parts[p["part"]])
                              if p["part"] in tv_parts else "-",
                              "GB accessed": _g(p["bytes"]),
                              "temp GiB": f"{p['temp'] / 2**30:.2f}",
                              "H100 bound ms": f"{roof['bound ms']:.2f}"})
            what = "forward + backward" if training else "forward"
            print_table(f"Compiled cost per part, {'training' if training else 'inference'} "
                        f"graph ({what}; {args.backbone[0]}, {args.size} px, batch "
                        f"{args.batch[0]}, {precision})", table)


if __name__ == "__main__":
    main()
