"""Host work around detect(): mold and unmold ms per image, and detect() images/s.

    python bench/detect_overhead.py [--repeats 10] [--detections 100] [--before dece6be |
                                    --no-before] [--no-detect]

- mold: ``MaskRCNN.mold_inputs`` for one image to 1024 square (IMAGE_MIN_DIM 800,
  IMAGE_MAX_DIM 1024), from a 640x480 (COCO-like) and from a 1024x1024 original.
- unmold: ``MaskRCNN.unmold_detections`` of 100 detections (boxes of 10-300 px, 81-class
  28x28 soft masks) back onto the original image, masks pasted.
- detect(): whole ``MaskRCNN.detect`` on shapes images (128 px, ShapesInferenceConfig with
  random untrained weights and DETECTION_MIN_CONFIDENCE 0, so the graph returns its full
  DETECTION_MAX_INSTANCES rows and unmolding has work), images/s over batches of
  BATCH_SIZE after one warm-up call. The untrained model's speed is the trained one's:
  the graph is the same.

The "before" columns run the mold/unmold measurement on an older commit's code (default
dece6be, the last commit before mrcnn/transform.py) in a subprocess
(``bench.common.run_at_commit``). detect() is measured on the current code only. cv2 is
limited to one thread. Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from bench.common import run_at_commit  # noqa: E402


def _inputs(detections: int, original: tuple[int, int]):
    """An image, its molded config, and fake graph outputs with ``detections`` rows."""
    import numpy as np

    from mrcnn.config import Config

    class Coco1024(Config):
        NAME = "coco1024"
        NUM_CLASSES = 81
        IMAGES_PER_GPU = 1
        IMAGE_MIN_DIM = 800
        IMAGE_MAX_DIM = 1024
        DETECTION_MAX_INSTANCES = max(100, detections)

    config = Coco1024()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, original + (3,), dtype=np.uint8)
    rows = config.DETECTION_MAX_INSTANCES
    y1, x1 = rng.uniform(0.1, 0.7, (2, detections))
    h, w = rng.uniform(10, 300, (2, detections)) / 1024
    out = np.zeros((rows, 6), np.float32)
    out[:detections, :4] = np.stack([y1, x1, np.minimum(y1 + h, 0.9), np.minimum(x1 + w, 1)], 1)
    out[:detections, 4] = rng.integers(1, 81, detections)
    out[:detections, 5] = rng.uniform(0.5, 1.0, detections)
    yy, xx = np.mgrid[:28, :28] / 27.0
    blob = 1 / (1 + np.exp(8 * (np.hypot(yy - 0.5, xx - 0.5) / 0.35 - 1)))
    masks = np.broadcast_to(blob[None, :, :, None], (rows, 28, 28, 81)).astype(np.float32)
    return config, image, out, masks


def measure_host(repeats: int, detections: int) -> dict:
    """mold / unmold ms per image with the importable mrcnn (old or new)."""
    import types

    import cv2

    from mrcnn.model import MaskRCNN

    cv2.setNumThreads(1)
    result = {}
    for original in [(480, 640), (1024, 1024)]:
        config, image, out, masks = _inputs(detections, original)
        # Both methods only read self.config: no graph needed.
        facade = types.SimpleNamespace(config=config)
        molded, metas, windows = MaskRCNN.mold_inputs(facade, [image])
        entry = {}
        for key, work in (
                ("mold", lambda: MaskRCNN.mold_inputs(facade, [image])),
                ("unmold", lambda: MaskRCNN.unmold_detections(
                    facade, out, masks, image.shape, molded[0].shape, windows[0]))):
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(repeats):
                work()
            entry[key] = (time.perf_counter() - start) / repeats * 1e3
            entry[f"{key}_cpu"] = (time.process_time() - cpu_start) / repeats * 1e3
        result[f"{original[0]}x{original[1]}"] = entry
    return result


def measure_detect(batches: int) -> dict:
    """detect() images/s on the shapes inference model (random weights)."""
    import keras
    import numpy as np

    from mrcnn.model import MaskRCNN
    from samples.shapes import shapes

    class Untrained(shapes.ShapesInferenceConfig):
        DETECTION_MIN_CONFIDENCE = 0.0

    config = Untrained()
    keras.utils.set_random_seed(0)
    model = MaskRCNN("inference", config, "/tmp/detect_overhead_logs")
    dataset = shapes.make_dataset(config.BATCH_SIZE, shapes.VAL_SEED, config)
    images = [dataset.load_image(i) for i in dataset.image_ids]
    model.detect(images)  # trace / compile
    start = time.perf_counter()
    for _ in range(batches):
        results = model.detect(images)
    seconds = time.perf_counter() - start
    return {"images_per_s": batches * len(images) / seconds, "batch": len(images),
            "detections": float(np.mean([len(r["scores"]) for r in results])),
            "jit": bool(config.JIT_COMPILE)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--before", default="dece6be")
    parser.add_argument("--no-before", action="store_true")
    parser.add_argument("--no-detect", action="store_true", help="skip the detect() row")
    parser.add_argument("--detect-batches", type=int, default=5)
    args = parser.parse_args()

    from bench.common import print_table

    after = measure_host(args.repeats, args.detections)
    before = None if args.no_before else run_at_commit(
        args.before, __file__, "measure_host", [args.repeats, args.detections])
    rows = []
    for size, new in after.items():
        for label, result in (("before", before[size] if before else None), ("after", new)):
            if result is None:
                continue
            rows.append({
                "original image": size, "detections": args.detections, "code": label,
                "mold ms (CPU / wall)": f"{result['mold_cpu']:.1f} / {result['mold']:.1f}",
                "unmold ms (CPU / wall)": f"{result['unmold_cpu']:.1f} / {result['unmold']:.1f}",
                "mold+unmold ms (CPU / wall)":
                    f"{result['mold_cpu'] + result['unmold_cpu']:.1f} / "
                    f"{result['mold'] + result['unmold']:.1f}"})
    print_table(f"detect() host overhead, one image to 1024 square (before = {args.before}, "
                f"cv2 on 1 thread, {args.repeats} repeats)", rows)
    if not args.no_detect:
        result = measure_detect(args.detect_batches)
        print_table("detect() throughput, shapes model (random weights, 128 px)", [
            {"batch": result["batch"], "detections per image": f"{result['detections']:.0f}",
             "JIT_COMPILE": result["jit"], "images/s": f"{result['images_per_s']:.1f}"}])


if __name__ == "__main__":
    main()
