"""Train-step speed, peak memory and a component profile: mrcnn vs torchvision's Mask R-CNN.

    python bench/train_step_speed.py --size 256 --batch 2 --steps 5       # this backend
    KERAS_BACKEND=jax python bench/train_step_speed.py --size 1024 --batch 2 8 --torchvision
    python bench/train_step_speed.py --size 512 --batch 2 --profile       # component shares
    KERAS_BACKEND=jax python bench/train_step_speed.py --size 1024 --detect 1 8 --torchvision

Both models train from scratch (no weights) on the same synthetic shapes batch, R50-FPN,
the same image size and batch, 512 sampled ROIs per image, frozen backbone BN. Reports
images/s over timed steps after warm-up (compile) and peak memory (JAX on a GPU: the
device allocator's peak; otherwise the process max RSS, which includes everything the
process ever held). ``--precision mixed_bfloat16`` runs mrcnn with
``MIXED_PRECISION="mixed_bfloat16"`` and torchvision under ``torch.autocast(bfloat16)``.
``--profile`` times sub-graphs of mrcnn's step (compiled like the step): backbone + FPN
forward and backward, the proposal layer (with NMS), NMS alone, the detection-target layer,
ROI align (box and mask heads) forward and backward; shares are of one whole step and do not
add up to 100 % (heads, losses, optimizer and XLA fusion across parts are not listed).
``--detect`` times ``MaskRCNN.detect`` (molding, the graph, unmolding, masks pasted into the
image) against torchvision in eval mode. Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from bench import model_garden  # noqa: E402
from bench.torchvision_cpu import torch_sgd_step  # noqa: E402
from bench.common import (  # noqa: E402
    bench_config,
    median_ms,
    peak_memory_gib,
    print_table,
    shapes_dataset,
    time_train_steps,
    train_step_times,
    training_batch,
)


def _jit_value(flag: str) -> bool | str:
    return {"auto": "auto", "on": True, "off": False}[flag]


def bench_mrcnn(config, steps: int, warmup: int) -> dict:
    import mrcnn.model as modellib

    model = modellib.MaskRCNN("training", config, "/tmp/mrcnn_bench_logs")
    model.set_trainable(".*", verbose=0)
    model.compile(0.01, 0.9)
    seconds, cpu = train_step_times(model, training_batch(config), steps, warmup)
    peak, kind = peak_memory_gib()
    result = {"img/s": config.BATCH_SIZE / seconds, "ms/step": 1000 * seconds,
              "cpu s/step": cpu, "peak GiB": peak, "memory": kind,
              "xla": bool(model.keras_model.jit_compile)}
    del model
    gc.collect()
    return result


# ------------------------------------------------------------------------------ profile

class _Timer:
    """Compiles a Keras (sub-)model forward, or forward + backward, on this backend."""

    def __init__(self, jit: bool):
        import keras

        self.backend = keras.backend.backend()
        self.jit = jit

    def forward(self, model, inputs):
        if self.backend == "tensorflow":
            import tensorflow as tf

            fn = tf.function(lambda a: model(a if len(a) > 1 else a[0], training=True),
                             jit_compile=self.jit)
            return lambda: [t.numpy() for t in tf.nest.flatten(fn(inputs))]
        import jax

        fn = jax.jit(lambda tv, ntv, a: model.stateless_call(
            tv, ntv, a if len(a) > 1 else a[0], training=True)[0])
        tv = [v.value for v in model.trainable_variables]
        ntv = [v.value for v in model.non_trainable_variables]
        return lambda: jax.block_until_ready(fn(tv, ntv, inputs))

    def backward(self, model, inputs):
        """Forward + gradients of the summed float outputs w.r.t. weights and float inputs."""
        import numpy as np

        floats = [i for i, a in enumerate(inputs) if np.issubdtype(np.asarray(a).dtype,
                                                                  np.floating)]
        if self.backend == "tensorflow":
            import tensorflow as tf

            @tf.function(jit_compile=self.jit)
            def step(a):
                a = [tf.convert_to_tensor(v) for v in a]
                with tf.GradientTape() as tape:
                    tape.watch([a[i] for i in floats])
                    out = tf.nest.flatten(model(a if len(a) > 1 else a[0], training=True))
                    loss = tf.add_n([tf.reduce_sum(tf.cast(o, tf.float32)) for o in out])
                return tape.gradient(loss, model.trainable_variables + [a[i] for i in floats])

            return lambda: [g.numpy() for g in step(inputs) if g is not None]
        import jax
        import jax.numpy as jnp

        def loss(tv, float_inputs, ntv):
            a = list(inputs)
            for i, v in zip(floats, float_inputs):
                a[i] = v
            out = model.stateless_call(tv, ntv, a if len(a) > 1 else a[0], training=True)[0]
            out = jax.tree_util.tree_leaves(out)
            return sum(jnp.sum(o.astype("float32")) for o in out)

        fn = jax.jit(jax.grad(loss, argnums=(0, 1)))
        tv = [v.value for v in model.trainable_variables]
        ntv = [v.value for v in model.non_trainable_variables]
        float_inputs = [inputs[i] for i in floats]
        return lambda: jax.block_until_ready(fn(tv, float_inputs, ntv))


def _median_ms(run, repeats: int) -> float:
    return median_ms(run, repeats)  # wall time, after one compiling call


def _layer_model(layer, values):
    """A one-layer Keras model taking fresh inputs shaped like ``values`` (batch included)."""
    import keras

    inputs = [keras.Input(batch_shape=v.shape, dtype=str(v.dtype)) for v in values]
    return keras.Model(inputs, layer(inputs if len(inputs) > 1 else inputs[0]))


def _nms_layer_class():
    import keras

    from mrcnn import ops as mo

    class NmsLayer(keras.layers.Layer):
        """The backend's NMS kernel as a layer (selected indices out)."""

        def __init__(self, max_output: int, iou: float):
            super().__init__()
            self.max_output, self.iou = max_output, iou

        def call(self, inputs):
            return mo.non_max_suppression_padded(inputs[0], inputs[1], self.max_output,
                                                 self.iou)[0]

    return NmsLayer


def _NmsLayer(max_output: int, iou: float):  # noqa: N802  (a class made on first use)
    return _nms_layer_class()(max_output, iou)


def profile_mrcnn(config, steps: int, warmup: int, repeats: int) -> list[dict]:
    """Step time and the time of its main sub-graphs, each compiled on its own."""
    import keras
    import numpy as np

    import mrcnn.model as modellib
    from mrcnn.ops.device import resolve_jit_compile
    from mrcnn.roi_align import PyramidROIAlign

    from bench.nms_speed import proposal_like

    jit = resolve_jit_compile(config.JIT_COMPILE)
    model = modellib.MaskRCNN("training", config, "/tmp/mrcnn_bench_logs")
    model.set_trainable(".*", verbose=0)
    model.compile(0.01, 0.9)
    x = training_batch(config)
    step_ms = 1000 * time_train_steps(model, x, steps, warmup)
    km = model.keras_model

    timed = [("proposals (ProposalLayer, incl. NMS)", km.get_layer("ROI"), False),
             ("detection targets", km.get_layer("proposal_targets"), False)]
    timed += [(f"ROI align {layer.name} fwd+bwd", layer, True) for layer in km.layers
              if isinstance(layer, PyramidROIAlign)]
    wanted = [keras.tree.flatten(layer.input) for _, layer, _ in timed]
    probe = keras.Model(km.inputs, [t for ts in wanted for t in ts])
    flat = [np.asarray(v) for v in keras.tree.flatten(probe(x, training=False))]
    timer = _Timer(jit)
    rows = [("train step (whole)", step_ms)]
    pyramid = keras.Model(km.inputs[0], [km.get_layer(f"fpn_p{i}").output for i in range(2, 7)])
    rows.append(("backbone + FPN fwd+bwd", _median_ms(timer.backward(pyramid, [x[0]]),
                                                       repeats)))
    start = 0
    for (name, layer, grad), ts in zip(timed, wanted):
        values, start = flat[start:start + len(ts)], start + len(ts)
        sub = _layer_model(layer, values)
        run = timer.backward(sub, values) if grad else timer.forward(sub, values)
        rows.append((name, _median_ms(run, repeats)))
    n = min(config.PRE_NMS_LIMIT, int(km.get_layer("anchors").output.shape[1]))
    boxes, scores = proposal_like(config.BATCH_SIZE, n)
    nms_model = _layer_model(_NmsLayer(config.POST_NMS_ROIS_TRAINING,
                                       config.RPN_NMS_THRESHOLD), [boxes, scores])
    rows.append((f"NMS alone (N={n}, M={config.POST_NMS_ROIS_TRAINING})",
                 _median_ms(timer.forward(nms_model, [boxes, scores]), repeats)))
    return [{"part": name, "ms": f"{ms:.1f}", "share of step": f"{100 * ms / step_ms:.0f} %"}
            for name, ms in rows]


# ------------------------------------------------------------------------------ torchvision

def _torchvision():
    try:
        import torch
        import torchvision
    except ImportError as err:
        sys.exit(f"--torchvision needs torch and torchvision ({err}); install them or drop "
                 "the flag.")
    return torch, torchvision


def _torch_inputs(size: int, batch: int, device):
    """The shapes batch as torchvision's detection inputs (images, targets)."""
    import numpy as np

    torch, _ = _torchvision()
    ds = shapes_dataset(size, batch)
    images, targets = [], []
    for i in ds.image_ids:
        image = ds.load_image(i)
        masks, class_ids = ds.load_mask(i)
        boxes = []
        for k in range(masks.shape[2]):
            yy, xx = np.where(masks[:, :, k])
            boxes.append([xx.min(), yy.min(), xx.max() + 1, yy.max() + 1])
        images.append(torch.from_numpy(image).permute(2, 0, 1).float().div(255).to(device))
        targets.append({
            "boxes": torch.tensor(boxes, dtype=torch.float32, device=device).reshape(-1, 4),
            "labels": torch.from_numpy(class_ids.astype(np.int64)).to(device),
            "masks": torch.from_numpy(masks.transpose(2, 0, 1).astype(np.uint8)).to(device),
        })
    return images, targets


def _torch_model(size: int, train: bool):
    torch, torchvision = _torchvision()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=4, min_size=size, max_size=size)
    return model.to(device).train(train), device


def _torch_timed(fn, steps: int, warmup: int, device, precision: str | None) -> tuple:
    import contextlib

    torch, _ = _torchvision()
    autocast = (torch.autocast(device_type=device, dtype=torch.bfloat16)
                if precision == "mixed_bfloat16" else contextlib.nullcontext())
    with autocast:
        for _ in range(warmup):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    if device == "cuda":
        return seconds, torch.cuda.max_memory_allocated() / 2**30, "cuda peak"
    return (seconds, *peak_memory_gib())


def bench_torchvision(size: int, batch: int, steps: int, warmup: int,
                      precision: str | None) -> dict:
    torch, _ = _torchvision()
    model, device = _torch_model(size, train=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, targets = _torch_inputs(size, batch, device)

    step = torch_sgd_step(model, optimizer, images, targets)
    seconds, peak, kind = _torch_timed(step, steps, warmup, device, precision)
    return {"img/s": batch / seconds, "ms/step": 1000 * seconds, "peak GiB": peak,
            "memory": kind, "xla": "-"}


# ---------------------------------------------------------------------------------- detect

def detect_mrcnn(config, batch: int, steps: int, warmup: int) -> dict:
    import mrcnn.model as modellib

    model = modellib.MaskRCNN("inference", config, "/tmp/mrcnn_bench_logs")
    ds = shapes_dataset(config.IMAGE_SHAPE[0], batch, seed=1)
    images = [ds.load_image(i) for i in ds.image_ids]
    for _ in range(warmup):
        model.detect(images)
    start = time.perf_counter()
    for _ in range(steps):
        results = model.detect(images)
    seconds = (time.perf_counter() - start) / steps
    assert len(results) == batch and results[0]["masks"].shape[:2] == images[0].shape[:2]
    peak, kind = peak_memory_gib()
    return {"img/s": batch / seconds, "ms/step": 1000 * seconds, "peak GiB": peak,
            "memory": kind, "xla": "-"}


def detect_torchvision(size: int, batch: int, steps: int, warmup: int,
                       precision: str | None) -> dict:
    torch, _ = _torchvision()
    model, device = _torch_model(size, train=False)
    images, _ = _torch_inputs(size, batch, device)

    def run():
        with torch.no_grad():
            out = model(images)
        # Masks pasted into the image, on the host (as mrcnn's detect returns them).
        return [(o["masks"][:, 0] > 0.5).cpu().numpy() for o in out]

    seconds, peak, kind = _torch_timed(run, steps, warmup, device, precision)
    return {"img/s": batch / seconds, "ms/step": 1000 * seconds, "peak GiB": peak,
            "memory": kind, "xla": "-"}


# ------------------------------------------------------------------------------------ main

def _row(model: str, args, batch: int, r: dict) -> dict:
    return {"model": model, "size": args.size, "batch": batch,
            "precision": args.precision or "float32", "xla": r["xla"],
            "img/s": f"{r['img/s']:.2f}", "ms/step": f"{r['ms/step']:.0f}",
            "CPU s/step": f"{r['cpu s/step']:.2f}" if "cpu s/step" in r else "-",
            "peak GiB": f"{r['peak GiB']:.2f}", "memory": r["memory"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--jit", choices=("auto", "on", "off"), default="auto",
                        help="Config.JIT_COMPILE (auto: XLA on GPU/TPU and JAX)")
    parser.add_argument("--no-jit", action="store_true", help="same as --jit off")
    parser.add_argument("--norm", default="frozen_bn", choices=("frozen_bn", "bn", "gn"))
    parser.add_argument("--precision", default=None, choices=("mixed_bfloat16",),
                        help="Config.MIXED_PRECISION (torchvision: autocast bfloat16)")
    parser.add_argument("--rois", type=int, default=512, help="TRAIN_ROIS_PER_IMAGE")
    parser.add_argument("--profile", action="store_true",
                        help="also time the step's sub-graphs (first --batch only)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per profiled part")
    parser.add_argument("--detect", type=int, nargs="+", metavar="BATCH",
                        help="time detect() at these batch sizes instead of training")
    parser.add_argument("--torchvision", action="store_true",
                        help="also run torchvision's maskrcnn_resnet50_fpn (needs torch)")
    parser.add_argument("--model-garden", action="store_true",
                        help="also run TF Model Garden's Mask R-CNN train step at equal "
                             "settings (needs tf-models-official; TensorFlow backend)")
    args = parser.parse_args()
    if args.torchvision:
        _torchvision()  # fail early, with the message, before minutes of mrcnn
    if args.model_garden and not model_garden.available():
        raise SystemExit("--model-garden needs tf-models-official: pip install "
                         "\"tf-models-official==2.20.*\" -e . in a separate virtualenv "
                         "(it pins its own TensorFlow); see bench/model_garden.py")
    jit = False if args.no_jit else _jit_value(args.jit)

    def config(batch, **kw):
        return bench_config(args.size, batch, jit=jit, norm=args.norm,
                            precision=args.precision, rois=args.rois, **kw)

    rows = []
    if args.detect:
        for batch in args.detect:
            r = detect_mrcnn(config(batch, DETECTION_MIN_CONFIDENCE=0.0), batch, args.steps,
                             args.warmup)
            rows.append(_row("mrcnn R50-FPN detect()", args, batch, r))
            if args.torchvision:
                r = detect_torchvision(args.size, batch, args.steps, args.warmup,
                                       args.precision)
                rows.append(_row("torchvision maskrcnn_resnet50_fpn eval", args, batch, r))
        print_table("Inference speed (untrained weights, masks pasted into the image)", rows)
        return
    for batch in args.batch:
        mine = bench_mrcnn(config(batch), args.steps, args.warmup)
        rows.append(_row(f"mrcnn R50-FPN ({args.norm})", args, batch, mine))
        if args.torchvision:
            r = bench_torchvision(args.size, batch, args.steps, args.warmup, args.precision)
            rows.append(_row("torchvision maskrcnn_resnet50_fpn", args, batch, r))
        if args.model_garden:
            # Model Garden compiled as mrcnn's step was (JIT_COMPILE resolved on this device).
            cfg, mg_jit = config(batch), bool(mine["xla"])
            m = model_garden.bench_model_garden(
                shapes_dataset(args.size, batch), args.size, batch, args.steps, args.warmup,
                num_classes=cfg.NUM_CLASSES, rois=args.rois,
                positive_fraction=cfg.ROI_POSITIVE_RATIO, post_nms=cfg.POST_NMS_ROIS_TRAINING,
                jit=mg_jit)
            # The process peak RSS already holds mrcnn's run: not Model Garden's own.
            m.update({"peak GiB": float("nan"), "memory": "n/a (shared process)"})
            rows.append(_row("TF Model Garden Mask R-CNN (2fc)", args, batch, m))
    print_table("Train step speed (from scratch, synthetic shapes)", rows)
    if args.profile:
        parts = profile_mrcnn(config(args.batch[0]), args.steps, args.warmup, args.repeats)
        print_table(f"Train step profile ({args.size} px, batch {args.batch[0]}, "
                    f"{args.precision or 'float32'}, JIT_COMPILE={jit})", parts)


if __name__ == "__main__":
    main()
