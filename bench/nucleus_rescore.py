"""Score the same nucleus checkpoints again under other inference settings: a paired
comparison, free of training noise.

    python bench/nucleus_seeds.py --seeds 2 --keep runs/seeds        # keeps every checkpoint
    python bench/nucleus_rescore.py runs/seeds --sweep MASK_PASTE=integer MASK_PASTE=subpixel

For every checkpoint under ``KEEP/logs`` (``mask_rcnn_*_NNNN.h5``; ``--epochs`` picks some),
builds the nucleus sample's inference model (``NucleusInferenceConfig`` with the run's
backbone, as ``bench/nucleus_worker.py`` does), runs ``detect()`` on the held-out images of
``KEEP/data`` and scores each ``--sweep`` entry (space-separated KEY=VALUE Config values)
with ``nucleus_seeds.score`` (COCO mask AP, pycocotools). The network runs once per
checkpoint: settings that only change post-processing on the host (``MASK_PASTE``) reuse
its raw outputs; others run it again. Prints one row per (checkpoint, setting) and the
mean +- std of the paired difference to the first setting. Asserts nothing.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.common import device_description  # noqa: E402
from bench.nucleus_seeds import parse_value  # noqa: E402

HOST_ONLY = {"MASK_PASTE"}  # settings applied after the network, on its raw outputs


def parse_setting(text: str) -> dict:
    """"MASK_PASTE=integer DETECTION_NMS_THRESHOLD=0.3" -> Config values."""
    values = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if not eq or not key.isupper():
            raise SystemExit(f"nucleus_rescore.py: {item!r} is not KEY=VALUE")
        values[key] = parse_value(value)
    return values


def checkpoints(keep: str, epochs: list[int] | None) -> list[tuple[str, int, str]]:
    """(run folder name, epoch, path) of every kept checkpoint, in order."""
    found = []
    for path in sorted(glob.glob(os.path.join(keep, "logs", "**", "mask_rcnn_*.h5"),
                                 recursive=True)):
        epoch = int(re.search(r"_(\d{4})\.h5$", path).group(1))
        run = os.path.relpath(os.path.dirname(os.path.dirname(path)),
                              os.path.join(keep, "logs"))
        if epochs is None or epoch in epochs:
            found.append((run, epoch, path))
    return found


def detect_raw(model, images: dict) -> dict:
    """Each image's ``unmold_detections`` arguments, then ``detect()``'s own result."""
    raw = {}
    original = model.unmold_detections
    try:
        for name, image in images.items():
            def grab(*args, name=name):
                raw[name] = args
                return original(*args)
            model.unmold_detections = grab
            model.detect([image])
    finally:
        model.unmold_detections = original
    return raw


def detections_for(raw: dict, paste: str) -> dict:
    """RLE detections of every image from the raw outputs under a MASK_PASTE mode."""
    from bench.nucleus_worker import encode_masks
    from mrcnn import transform

    out = {}
    for name, args in raw.items():
        _, _, scores, masks = transform.unmold_detections(*args, subpixel=paste == "subpixel")
        out[name] = {"scores": [float(s) for s in scores], "rles": encode_masks(masks)}
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("keep", help="a folder written by nucleus_seeds.py --keep")
    parser.add_argument("--sweep", nargs="+", default=["MASK_PASTE=integer",
                                                       "MASK_PASTE=subpixel"])
    parser.add_argument("--epochs", type=int, nargs="*", default=None,
                        help="only these epochs (default: every checkpoint)")
    parser.add_argument("--backbone", default="resnet18")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import numpy as np

    import mrcnn.model as modellib
    from bench.nucleus_seeds import ground_truth, score
    from samples.nucleus import nucleus

    settings = [parse_setting(s) for s in args.sweep]
    data = os.path.join(args.keep, "data")
    gt = ground_truth(data)
    test = nucleus.NucleusDataset()
    test.load_nucleus(data, "stage1_test", require_masks=True)
    test.prepare()
    images = {test.image_info[i]["id"]: test.load_image(i) for i in test.image_ids}
    models: dict[str, object] = {}
    rows = []
    found = checkpoints(args.keep, args.epochs)
    if not found:
        raise SystemExit(f"nucleus_rescore.py: no mask_rcnn_*.h5 under {args.keep}/logs")
    for run, epoch, path in found:
        raws: dict[str, dict] = {}
        for text, values in zip(args.sweep, settings):
            network = {k: v for k, v in values.items() if k not in HOST_ONLY}
            key = json.dumps(network, sort_keys=True, default=str)
            if key not in models:
                config = type("Rescore", (nucleus.NucleusInferenceConfig,),
                              {"BACKBONE": args.backbone, **network})()
                models[key] = modellib.MaskRCNN("inference", config,
                                                os.path.join(args.keep, "rescore_logs"))
            model = models[key]
            if key not in raws:
                model.load_weights(path, by_name=True)
                raws[key] = detect_raw(model, images)
            paste = values.get("MASK_PASTE", model.config.MASK_PASTE)
            result = score(gt, detections_for(raws[key], paste))
            rows.append({"run": run, "epoch": epoch, "setting": text, **result})
            print(f"{run} epoch {epoch} {text}: AP50 {result['AP50']:.3f} "
                  f"AP {result['AP']:.3f}; nuclei covered at IoU >= 0.5 / 0.75: touching "
                  f"{result['found50_touching']:.3f} / {result['found75_touching']:.3f}, "
                  f"isolated {result['found50_isolated']:.3f} / "
                  f"{result['found75_isolated']:.3f}", flush=True)

    print()
    print("command: python bench/nucleus_rescore.py " + " ".join(argv or sys.argv[1:]))
    print(device_description())
    print(f"date: {time.strftime('%Y-%m-%d')}; {len(found)} checkpoints")
    print()
    print("| run | epoch | " + " | ".join(f"{s}: AP50 / AP" for s in args.sweep) + " |")
    print("|---|---|" + "---|" * len(args.sweep))
    for run, epoch, _ in found:
        cells = [next(r for r in rows if (r["run"], r["epoch"], r["setting"]) == (run, epoch, s))
                 for s in args.sweep]
        print(f"| {run} | {epoch} | " + " | ".join(
            f"{c['AP50']:.3f} / {c['AP']:.3f}" for c in cells) + " |")
    print()
    for text in args.sweep[1:]:
        for metric in ("AP50", "AP"):
            first = np.array([r[metric] for r in rows if r["setting"] == args.sweep[0]])
            other = np.array([r[metric] for r in rows if r["setting"] == text])
            diff = other - first
            spread = f" ± {diff.std(ddof=1):.3f}" if len(diff) > 1 else ""
            print(f"{text} minus {args.sweep[0]}: {metric} {diff.mean():+.3f}{spread} "
                  f"(min {diff.min():+.3f}, max {diff.max():+.3f}, {len(diff)} checkpoints)")
    return rows


if __name__ == "__main__":
    main()
