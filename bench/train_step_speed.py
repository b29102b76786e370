"""Train-step speed and peak memory: mrcnn (this backend) vs torchvision's Mask R-CNN.

    KERAS_BACKEND=jax python bench/train_step_speed.py --size 1024 --batch 2 8 [--torchvision]

Both models train from scratch (no weights) on the same synthetic shapes batch, R50-FPN,
the same image size and batch. Reports images/s over timed steps after warm-up (compile) and
peak device memory (GPU: allocator peak; CPU: process max RSS). Prints a table; asserts
nothing. Run it on the GPU machine with KERAS_BACKEND=jax (it has no TensorFlow).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from bench.common import print_table  # noqa: E402


def _shapes_batch(size: int, batch: int, max_gt: int = 8):
    """One batch of shapes images with masks, boxes and class ids (NumPy)."""
    from samples.shapes.shapes import ShapesDataset

    ds = ShapesDataset()
    ds.load_shapes(batch, size, size, seed=0)
    ds.prepare()
    return ds


def _max_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench_mrcnn(size: int, batch: int, steps: int, warmup: int, jit: bool, norm: str) -> dict:
    import keras

    import mrcnn.model as modellib
    from mrcnn.config import Config
    from mrcnn.data import DataGenerator

    class BenchConfig(Config):
        NAME = "bench"
        NUM_CLASSES = 1 + 3
        IMAGES_PER_GPU = batch
        IMAGE_MIN_DIM = size
        IMAGE_MAX_DIM = size
        BACKBONE = "resnet50"
        NORM = norm
        TRAIN_ROIS_PER_IMAGE = 512  # torchvision's box_batch_size_per_image
        JIT_COMPILE = jit

    config = BenchConfig()
    ds = _shapes_batch(size, batch)
    (x,) = DataGenerator(ds, config, shuffle=False)[0]
    model = modellib.MaskRCNN("training", config, "/tmp/mrcnn_bench_logs")
    model.set_trainable(".*", verbose=0)
    model.compile(0.01, 0.9)
    for _ in range(warmup):
        model.keras_model.train_on_batch(x)
    start = time.perf_counter()
    for _ in range(steps):
        logs = model.keras_model.train_on_batch(x, return_dict=True)
    float(logs["loss"])  # wait for the device
    seconds = time.perf_counter() - start
    peak = None
    if keras.backend.backend() == "jax":
        import jax
        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            peak = stats["peak_bytes_in_use"] / 2**30
    del model
    gc.collect()
    return {"img/s": batch * steps / seconds,
            "peak GiB": peak if peak is not None else _max_rss_gib(),
            "memory kind": "device peak" if peak is not None else "process max RSS"}


def bench_torchvision(size: int, batch: int, steps: int, warmup: int) -> dict:
    import numpy as np
    import torch
    import torchvision

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=4, min_size=size, max_size=size)
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ds = _shapes_batch(size, batch)
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
            "boxes": torch.tensor(boxes, dtype=torch.float32, device=device),
            "labels": torch.from_numpy(class_ids.astype(np.int64)).to(device),
            "masks": torch.from_numpy(masks.transpose(2, 0, 1).astype(np.uint8)).to(device),
        })

    def step():
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    float(loss)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else _max_rss_gib()
    return {"img/s": batch * steps / seconds, "peak GiB": peak,
            "memory kind": "device peak" if device == "cuda" else "process max RSS"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-jit", action="store_true")
    parser.add_argument("--norm", default="frozen_bn", choices=("frozen_bn", "bn", "gn"))
    parser.add_argument("--torchvision", action="store_true",
                        help="also run torchvision's maskrcnn_resnet50_fpn (needs torch)")
    args = parser.parse_args()

    rows = []
    for batch in args.batch:
        r = bench_mrcnn(args.size, batch, args.steps, args.warmup, not args.no_jit, args.norm)
        rows.append({"model": f"mrcnn R50-FPN ({args.norm})", "size": args.size,
                     "batch": batch, "img/s": f"{r['img/s']:.2f}",
                     "peak GiB": f"{r['peak GiB']:.2f}", "memory": r["memory kind"]})
        if args.torchvision:
            r = bench_torchvision(args.size, batch, args.steps, args.warmup)
            rows.append({"model": "torchvision maskrcnn_resnet50_fpn", "size": args.size,
                         "batch": batch, "img/s": f"{r['img/s']:.2f}",
                         "peak GiB": f"{r['peak GiB']:.2f}", "memory": r["memory kind"]})
    print_table("Train step speed (from scratch, synthetic shapes)", rows)


if __name__ == "__main__":
    main()
