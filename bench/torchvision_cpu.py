"""mrcnn (TensorFlow, JAX) and torchvision's Mask R-CNN side by side on this CPU; torch FLOPs.

    python bench/torchvision_cpu.py --torch-python /path/to/venv-torch/bin/python
    python bench/torchvision_cpu.py --torch-python ... --sizes 1024 --batches 1 --no-train
    /path/to/venv-torch/bin/python bench/torchvision_cpu.py --flops --size 1024 --batch 2

Speed (the default): one process per model and task, each pinned to the same ``--threads``
CPU cores (``os.sched_setaffinity`` before any framework loads, so every framework sees
the same cores), run one after the other:

- inference: an 800x1333 image (torchvision keeps it: min_size 800, max_size 1333; mrcnn
  pads it to 832x1344 with IMAGE_RESIZE_MODE "pad64", IMAGE_MIN_DIM 768, which does not
  scale it) and a 1024x1024 one, batch 1 and 4: ``MaskRCNN.detect`` and torchvision in eval
  mode, both returning boolean masks pasted into the image, both allowed 100 detections
  (DETECTION_MAX_INSTANCES / box_detections_per_img 100, no score threshold; the table
  gives how many each kept: mrcnn keeps one class per ROI before its per-class NMS,
  torchvision every class of every ROI, so with untrained weights mrcnn keeps fewer).
  Images/s, p50/p90 latency of one call (one batch).
- training: R50-FPN from scratch, 512x512, batch 2, 512 sampled ROIs per image, frozen
  BatchNorm, SGD: images/s and the process peak RSS (everything the process held: the
  framework, the compiled program, weights, activations).

Every row also gives the process CPU time per image (all threads): on a shared machine
wall time depends on the other processes' load, CPU time much less. The load average is
printed with the table. Untrained weights, synthetic shapes images (the same pixels for
every model).

``--flops`` (run with an interpreter that has torch and torchvision; nothing else is
needed): ``torch.utils.flop_counter.FlopCounterMode`` on ``maskrcnn_resnet50_fpn(weights=
None, weights_backbone=None)`` at ``--size``, in eval mode (forward, no grad) and in train
mode (forward + backward), per part; prints one ``RESULT`` JSON line
(``bench/compiled_cost.py`` reads it). The counter does not count torchvision's own
``roi_align`` and ``nms`` kernels (no FLOP formula is registered for them).
Prints tables; asserts nothing.
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

DETECTIONS = 100
TRAIN_SIZE, TRAIN_BATCH, TRAIN_ROIS = 512, 2, 512
# (label, image height, image width) of the inference cases.
SIZES = {"800x1333": (800, 1333), "1024": (1024, 1024)}


# ------------------------------------------------------------------------- torch: FLOPs

def _torch_model(num_classes: int, min_size: int, max_size: int, train: bool):
    import torchvision

    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, min_size=min_size,
        max_size=max_size, box_detections_per_img=DETECTIONS, box_score_thresh=0.0,
        box_batch_size_per_image=TRAIN_ROIS)
    return model.train(train)


def _random_targets(size: int, batch: int, count: int = 6, seed: int = 0):
    """Random box + filled-rectangle targets (the FLOP count needs no real shapes)."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.from_numpy(rng.random((3, size, size), dtype=np.float32)))
        y1, x1 = rng.integers(0, size // 2, (2, count))
        h, w = rng.integers(size // 16, size // 2, (2, count))
        boxes = np.stack([x1, y1, x1 + w, y1 + h], 1).astype(np.float32)
        masks = np.zeros((count, size, size), np.uint8)
        for k, (a, b, c, d) in enumerate(boxes.astype(int)):
            masks[k, b:d, a:c] = 1
        targets.append({"boxes": torch.from_numpy(boxes),
                        "labels": torch.from_numpy(rng.integers(1, 4, count)),
                        "masks": torch.from_numpy(masks)})
    return images, targets


# torchvision module -> the part names of bench/compiled_cost.py.
PARTS = {
    "backbone + FPN": ["backbone"],
    "RPN head (5 levels)": ["rpn.head"],
    "box head": ["roi_heads.box_head", "roi_heads.box_predictor"],
    "mask head": ["roi_heads.mask_head", "roi_heads.mask_predictor"],
}


def torch_flops(size: int, batch: int) -> dict:
    """torchvision Mask R-CNN FLOPs per part, eval (forward) and train (forward + backward).

    Args:
        size: square image side (min_size = max_size = size).
        batch: images per call.

    Returns:
        {"eval": {...}, "train": {...}}: part -> FLOPs, plus "total" and, in train, the
        number of ROIs the mask head ran on ("mask ROIs") and the box head's ("box ROIs").
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    images, targets = _random_targets(size, batch)
    out = {}
    for mode in ("eval", "train"):
        model = _torch_model(4, size, size, train=mode == "train")
        seen = {}
        hooks = [getattr(model.roi_heads, name).register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, int(i[0].shape[0])))
            for name in ("box_head", "mask_head")]
        counter = FlopCounterMode(display=False)
        with counter:
            if mode == "train":
                sum(model(images, targets).values()).backward()
            else:
                with torch.no_grad():
                    model(images)
        for hook in hooks:
            hook.remove()
        counts = counter.get_flop_counts()

        def module_total(name: str) -> float:
            key = f"MaskRCNN.{name}"
            return float(sum(counts.get(key, {}).values()))

        parts = {part: sum(module_total(m) for m in modules) for part, modules in PARTS.items()}
        parts["total"] = float(counter.get_total_flops())
        parts["box ROIs"], parts["mask ROIs"] = seen.get("box_head"), seen.get("mask_head")
        out[mode] = parts
    return out


# ------------------------------------------------------------------------- speed: children

def _percentiles(times: list[float]) -> tuple[float, float]:
    import numpy as np

    return float(np.percentile(times, 50)), float(np.percentile(times, 90))


def _timed_calls(fn, steps: int, warmup: int) -> dict:
    """Latency of each call after ``warmup`` calls; process CPU seconds over the timed ones."""
    for _ in range(warmup):
        fn()
    times, cpu = [], time.process_time()
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"times": times, "cpu": time.process_time() - cpu}


def _peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child_mrcnn(task: dict) -> dict:
    """One mrcnn task (inference or training) in this process; returns its timings."""
    import numpy as np

    sys.path.insert(0, ROOT)
    import mrcnn.model as modellib
    from bench.common import bench_config

    data = np.load(task["data"])
    if task["kind"] == "infer":
        h, w = task["shape"]
        if (h, w) == (1024, 1024):
            extra = {}
            size = 1024
        else:  # no scaling: pad to multiples of 64
            extra = {"IMAGE_RESIZE_MODE": "pad64"}
            size = 768
        config = bench_config(size, task["batch"], DETECTION_MIN_CONFIDENCE=0.0,
                              DETECTION_MAX_INSTANCES=DETECTIONS, **extra)
        model = modellib.MaskRCNN("inference", config, "/tmp/mrcnn_bench_logs")
        images = [data["image"]] * task["batch"]

        kept = []

        def run():
            results = model.detect(images)
            assert results[0]["masks"].shape[:2] == (h, w), results[0]["masks"].shape
            kept.append(np.mean([r["masks"].shape[2] for r in results]))

        return {**_timed_calls(run, task["steps"], task["warmup"]), "kept": kept[-1]}
    from bench.common import train_step_times, training_batch

    config = bench_config(TRAIN_SIZE, TRAIN_BATCH, rois=TRAIN_ROIS)
    model = modellib.MaskRCNN("training", config, "/tmp/mrcnn_bench_logs")
    model.set_trainable(".*", verbose=0)
    model.compile(0.01, 0.9)
    x = training_batch(config)
    fn = lambda: float(model.keras_model.train_on_batch(x, return_dict=True)["loss"])  # noqa
    return {**_timed_calls(fn, task["steps"], task["warmup"]), "rss": _peak_rss_gib()}


def torch_sgd_step(model, optimizer, images: list, targets: list):
    """One torchvision training step as a call: losses summed, backward, optimizer step.

    Returns:
        A function of no arguments returning the loss as a float (which waits for it).
    """
    def step() -> float:
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss)

    return step


def child_torch(task: dict) -> dict:
    """One torchvision task in this process; returns its timings."""
    import numpy as np
    import torch

    torch.set_num_threads(task["threads"])
    torch.manual_seed(0)
    data = np.load(task["data"])
    if task["kind"] == "infer":
        h, w = task["shape"]
        model = _torch_model(4, min(h, w), max(h, w), train=False)
        image = torch.from_numpy(data["image"]).permute(2, 0, 1).float().div(255)
        images = [image] * task["batch"]

        kept = []

        def run():
            with torch.no_grad():
                out = model(images)
            masks = [(o["masks"][:, 0] > 0.5).numpy() for o in out]
            assert masks[0].shape[1:] == (h, w), masks[0].shape
            kept.append(np.mean([len(m) for m in masks]))

        return {**_timed_calls(run, task["steps"], task["warmup"]), "kept": kept[-1]}
    model = _torch_model(4, TRAIN_SIZE, TRAIN_SIZE, train=True)
    for module in model.modules():  # frozen BN, as mrcnn's frozen_bn (already frozen)
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = [torch.from_numpy(im).permute(2, 0, 1).float().div(255) for im in data["train_images"]]
    targets = []
    for i in range(len(images)):
        masks = data[f"train_masks_{i}"]  # [N, H, W]
        ys, xs = masks.any(2), masks.any(1)
        boxes = [[x.argmax(), y.argmax(), len(x) - x[::-1].argmax(), len(y) - y[::-1].argmax()]
                 for y, x in zip(ys, xs)]
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.from_numpy(data[f"train_labels_{i}"].astype(np.int64)),
                        "masks": torch.from_numpy(masks.astype(np.uint8))})

    step = torch_sgd_step(model, optimizer, images, targets)
    return {**_timed_calls(step, task["steps"], task["warmup"]), "rss": _peak_rss_gib()}


def _child_main(task: dict) -> None:
    os.sched_setaffinity(0, set(range(task["threads"])))
    if task["model"] == "torchvision":
        result = child_torch(task)
    else:
        os.environ["KERAS_BACKEND"] = task["model"]
        result = child_mrcnn(task)
    print("RESULT " + json.dumps(result))


# ------------------------------------------------------------------------------- parent

def _make_data(folder: str) -> dict:
    """Synthetic shapes images, saved once and read by every child (same pixels)."""
    import numpy as np

    sys.path.insert(0, ROOT)
    from bench.common import shapes_dataset

    paths = {}
    for label, (h, w) in SIZES.items():
        from samples.shapes.shapes import ShapesDataset

        ds = ShapesDataset()
        ds.load_shapes(1, h, w, seed=1)
        ds.prepare()
        paths[label] = os.path.join(folder, f"infer_{label}.npz")
        np.savez(paths[label], image=ds.load_image(ds.image_ids[0]))
    ds = shapes_dataset(TRAIN_SIZE, TRAIN_BATCH)
    train = {"train_images": np.stack([ds.load_image(i) for i in ds.image_ids])}
    for k, i in enumerate(ds.image_ids):
        masks, class_ids = ds.load_mask(i)
        train[f"train_masks_{k}"] = masks.transpose(2, 0, 1)
        train[f"train_labels_{k}"] = class_ids
    paths["train"] = os.path.join(folder, "train.npz")
    np.savez(paths["train"], **train)
    return paths


def _run_child(python: str, task: dict, timeout: float) -> dict | str:
    env = dict(os.environ, PYTHONPATH=ROOT, NO_ALBUMENTATIONS_UPDATE="1",
               OMP_NUM_THREADS=str(task["threads"]))
    env.pop("KERAS_BACKEND", None)
    try:
        done = subprocess.run([python, os.path.abspath(__file__), "--child", json.dumps(task)],
                              capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"over {timeout:.0f} s"
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode or not lines:
        return "failed: " + " ".join((done.stderr or done.stdout).strip().splitlines()[-1:])[:100]
    return json.loads(lines[-1][7:])


def _progress(row: dict) -> None:
    """Print a finished row at once (a long run may be cut short)."""
    print("| " + " | ".join(map(str, row.values())) + " |", flush=True)


NAMES = {"tensorflow": "mrcnn TF", "jax": "mrcnn JAX", "torchvision": "torchvision eval"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch-python", default=sys.executable,
                        help="interpreter with torch + torchvision (may be another venv)")
    parser.add_argument("--models", nargs="+", default=["tensorflow", "jax", "torchvision"],
                        choices=("tensorflow", "jax", "torchvision"))
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds per process (compile included); a slower one is "
                             "reported as such")
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--no-infer", action="store_true")
    parser.add_argument("--flops", action="store_true", help="torch FLOP count (see above)")
    parser.add_argument("--size", type=int, default=1024, help="--flops image side")
    parser.add_argument("--batch", type=int, default=2, help="--flops batch")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child_main(json.loads(args.child))
        return
    if args.flops:
        print("RESULT " + json.dumps(torch_flops(args.size, args.batch)))
        return

    sys.path.insert(0, ROOT)
    from bench.common import print_table

    folder = tempfile.mkdtemp(prefix="mrcnn_tv_cpu_")
    data = _make_data(folder)
    base = {"threads": args.threads, "steps": args.steps, "warmup": args.warmup}
    python = {"tensorflow": sys.executable, "jax": sys.executable,
              "torchvision": args.torch_python}
    rows, train_rows = [], []
    for label in ([] if args.no_infer else args.sizes):
        for batch in args.batches:
            for m in args.models:
                task = {**base, "model": m, "kind": "infer", "shape": SIZES[label],
                        "batch": batch, "data": data[label]}
                r = _run_child(python[m], task, args.timeout)
                row = {"model": NAMES[m], "image": label, "batch": batch}
                if isinstance(r, str):
                    rows.append({**row, "detections": "-", "img/s": r, "p50 ms": "-",
                                 "p90 ms": "-", "CPU s/img": "-", "load avg (1 min)": "-"})
                    _progress(rows[-1])
                    continue
                p50, p90 = _percentiles(r["times"])
                images = batch * len(r["times"])
                rows.append({**row, "detections": f"{r['kept']:.0f}",
                             "img/s": f"{images / sum(r['times']):.3f}",
                             "p50 ms": f"{1000 * p50:.0f}", "p90 ms": f"{1000 * p90:.0f}",
                             "CPU s/img": f"{r['cpu'] / images:.2f}",
                             "load avg (1 min)": f"{os.getloadavg()[0]:.1f}"})
                _progress(rows[-1])
    if rows:
        print_table(f"CPU inference, {args.threads} cores each, {DETECTIONS} detections, "
                    "masks pasted (wall times under the machine's load)", rows)
    if not args.no_train:
        for m in args.models:
            task = {**base, "model": m, "kind": "train", "data": data["train"]}
            r = _run_child(python[m], task, args.timeout)
            row = {"model": NAMES[m].replace(" eval", ""),
                   "setting": f"R50-FPN, {TRAIN_SIZE} px, batch {TRAIN_BATCH}, {TRAIN_ROIS} ROIs"}
            if isinstance(r, str):
                train_rows.append({**row, "img/s": r, "CPU s/img": "-", "peak RSS GiB": "-",
                                   "load avg (1 min)": "-"})
                _progress(train_rows[-1])
                continue
            images = TRAIN_BATCH * len(r["times"])
            train_rows.append({**row, "img/s": f"{images / sum(r['times']):.3f}",
                               "CPU s/img": f"{r['cpu'] / images:.2f}",
                               "peak RSS GiB": f"{r['rss']:.2f}",
                               "load avg (1 min)": f"{os.getloadavg()[0]:.1f}"})
            _progress(train_rows[-1])
        print_table(f"CPU training from scratch, {args.threads} cores each (wall times under "
                    "the machine's load)", train_rows)


if __name__ == "__main__":
    main()
