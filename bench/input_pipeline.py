"""Input pipeline speed: ms per image per core and images/s with 1, 2 and all workers.

    python bench/input_pipeline.py [--images 16] [--cases coco,nucleus,shapes]
                                   [--workers 1,2,all] [--before dece6be | --no-before]

Three cases, each a ``DataGenerator`` with batch size 1 over in-memory synthetic images
(decoding is not measured: the images and masks are drawn once and cached):

- coco: a 640x480 image with 10 elliptic instances to 1024 square (IMAGE_MIN_DIM 800,
  NUM_CLASSES 81, mini masks 56x56), like COCO.
- nucleus: 320x320 images with 100 small nuclei, scaled 2x and cropped to 512
  (NucleusConfig: "crop" mode, IMAGE_MIN_SCALE 2, MAX_GT_INSTANCES 200).
- shapes: the shapes sample at 128 (ShapesDataset, ShapesConfig).

"1 core" runs the batches one after another in the main thread (cv2 limited to one thread)
and reports ms per image, as CPU time of the process (robust to other load on the machine)
and as wall time. "k workers" maps the batches over a pool of k threads (what
``keras.utils.PyDataset`` does with ``workers=k``) or, for "procs", k forked processes
(``use_multiprocessing=True``) and reports images per second.

The "before" columns run the same measurement in a subprocess on the code of an older
commit (default dece6be, the last commit before mrcnn/transform.py), extracted with
``git archive`` into a temporary folder: old and new numbers come from the same run and
the same machine load. Asserts nothing.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from bench.common import run_at_commit  # noqa: E402


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


############################################################
#  Cases (work on the old and the new code: only Matterport's API is used)
############################################################


def _ellipse(height: int, width: int, cy: int, cx: int, ry: int, rx: int):
    import cv2
    import numpy as np

    canvas = np.zeros((height, width), np.uint8)
    cv2.ellipse(canvas, (int(cx), int(cy)), (int(rx), int(ry)), 0, 0, 360, 1, -1)
    return canvas > 0


def make_case(name: str, count: int):
    """(dataset, config) of a case, images and masks drawn once and cached."""
    import numpy as np

    from mrcnn import utils
    from mrcnn.config import Config

    class CachedDataset(utils.Dataset):
        def add(self, image, mask, class_ids):
            self.add_image("bench", len(self.image_info), None, image=image, mask=mask,
                           class_ids=class_ids)

        def load_image(self, image_id):
            return self.image_info[image_id]["image"]

        def load_mask(self, image_id):
            info = self.image_info[image_id]
            return info["mask"], info["class_ids"]

    rng = np.random.default_rng(0)
    if name == "shapes":
        from samples.shapes import shapes

        config = shapes.ShapesConfig()
        return shapes.make_dataset(count, shapes.TRAIN_SEED, config), config

    if name == "coco":
        class CocoLike(Config):
            NAME = "coco_like"
            NUM_CLASSES = 81
            IMAGES_PER_GPU = 1
            IMAGE_MIN_DIM = 800
            IMAGE_MAX_DIM = 1024

        config, classes = CocoLike(), 80
        height, width, instances, radius = 480, 640, 10, (10, 100)
    elif name == "nucleus":
        from samples.nucleus import nucleus

        class NucleusBench(nucleus.NucleusConfig):
            IMAGES_PER_GPU = 1

        config, classes = NucleusBench(), 1
        height, width, instances, radius = 320, 320, 100, (3, 9)
    else:
        raise ValueError(f"unknown case {name!r}")

    dataset = CachedDataset()
    for c in range(1, classes + 1):
        dataset.add_class("bench", c, f"class{c}")
    for _ in range(count):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        masks = []
        for _ in range(instances):
            ry, rx = rng.integers(radius[0], radius[1] + 1, 2)
            cy = rng.integers(ry, height - ry)
            cx = rng.integers(rx, width - rx)
            masks.append(_ellipse(height, width, cy, cx, ry, rx))
        dataset.add(image, np.stack(masks, -1), rng.integers(1, classes + 1, instances))
    dataset.prepare()
    return dataset, config


def _pool_getitem(idx: int):
    return _GENERATOR[idx]


_GENERATOR = None


def measure(case: str, images: int, worker_counts: list[int]) -> dict:
    """Times of one case on the importable mrcnn: {"ms_1core": .., "threads": {k: img/s}}."""
    global _GENERATOR
    import warnings

    import cv2
    import numpy as np

    from mrcnn.data import DataGenerator

    warnings.simplefilter("ignore")
    dataset, config = make_case(case, images)
    np.random.seed(0)
    generator = DataGenerator(dataset, config, shuffle=False, batch_size=1, workers=0,
                              use_multiprocessing=False)
    _GENERATOR = generator
    generator[0]  # warm up (anchor caches, imports)

    cv2.setNumThreads(1)
    start, cpu_start = time.perf_counter(), time.process_time()
    for idx in range(images):
        generator[idx]
    result = {"ms_1core": (time.perf_counter() - start) / images * 1e3,
              "cpu_ms_1core": (time.process_time() - cpu_start) / images * 1e3,
              "threads": {}, "procs": {}}
    cv2.setNumThreads(0)
    for k in worker_counts:
        with multiprocessing.dummy.Pool(k) as pool:
            start = time.perf_counter()
            pool.map(_pool_getitem, range(images), chunksize=1)
            result["threads"][k] = images / (time.perf_counter() - start)
    k = max(worker_counts)
    with multiprocessing.get_context("fork").Pool(k) as pool:
        pool.map(_pool_getitem, range(k), chunksize=1)  # start the processes
        start = time.perf_counter()
        pool.map(_pool_getitem, range(images), chunksize=1)
        result["procs"][k] = images / (time.perf_counter() - start)
    return result


def run_before(commit: str, args: argparse.Namespace, worker_counts: list[int]) -> dict:
    """``measure`` on an older commit's mrcnn and samples, in a subprocess."""
    return run_at_commit(commit, __file__, "measure_cases",
                         [args.cases, args.images, worker_counts])


def measure_cases(cases: str, images: int, worker_counts: list[int]) -> dict:
    """``measure`` for each comma-separated case."""
    return {case: measure(case, images, worker_counts) for case in cases.split(",")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16, help="images per measurement")
    parser.add_argument("--cases", default="coco,nucleus,shapes")
    parser.add_argument("--workers", default="1,2,all", help="worker counts ('all': cores)")
    parser.add_argument("--before", default="dece6be", help="commit of the 'before' columns")
    parser.add_argument("--no-before", action="store_true", help="skip the 'before' columns")
    args = parser.parse_args()

    from bench.common import print_table

    cores = usable_cores()
    worker_counts = sorted({cores if w == "all" else int(w) for w in args.workers.split(",")})
    after = measure_cases(args.cases, args.images, worker_counts)
    before = None if args.no_before else run_before(args.before, args, worker_counts)

    rows = []
    for case, new in after.items():
        for label, result in (("before", before[case] if before else None), ("after", new)):
            if result is None:
                continue
            row = {"case": case, "code": label,
                   "CPU ms/img (1 core)": f"{result['cpu_ms_1core']:.1f}",
                   "wall ms/img (1 core)": f"{result['ms_1core']:.1f}"}
            threads = {int(k): v for k, v in result["threads"].items()}
            for k in worker_counts:
                row[f"img/s {k} thread{'s' if k > 1 else ''}"] = f"{threads[k]:.1f}"
            procs = {int(k): v for k, v in result["procs"].items()}
            k = max(worker_counts)
            row[f"img/s {k} processes"] = f"{procs[k]:.1f}"
            rows.append(row)
    print_table(f"Input pipeline (DataGenerator, batch 1, {args.images} images per "
                f"measurement, {cores} usable cores; before = {args.before})", rows)


if __name__ == "__main__":
    main()
