"""From-scratch accuracy with its spread: mask AP50 / AP per budget, mean and standard
deviation over seeds, for several contenders in one run.

    python bench/nucleus_seeds.py --seeds 3                                   # mrcnn, today
    python bench/nucleus_seeds.py --seeds 3 --contenders mrcnn mrcnn@dece6be  # what moved it
    python bench/nucleus_seeds.py --seeds 3 --contenders mrcnn+recipe \
        torchvision --torch-python /path/to/venv-with-torch/bin/python
    python bench/nucleus_seeds.py --style hard ...                            # harder nuclei

Contenders (each seed of each one trains in its own process, so nothing is shared):
- ``mrcnn``: the nucleus sample's own Config through the Python API
  (``bench/nucleus_worker.py``: a ``NucleusConfig`` subclass with only the size shrunk,
  ``train(..., layers="all", augmentation=nucleus.build_augmentation())``); whatever the
  library itself does for a run from random weights is part of it.
- ``mrcnn+recipe``: the same with the command line's from-scratch recipe
  (``mrcnn.cli.FROM_SCRATCH`` of this tree) set in the Config explicitly.
- ``mrcnn@REV``, ``mrcnn+recipe@REV``: the same on an older commit's ``mrcnn`` and
  ``samples`` (``git archive``), the recipe still taken from this tree.
- ``torchvision``, ``torchvision+recipe``: ``bench/torchvision_nucleus.py``: torchvision's
  Mask R-CNN of the same depth from scratch, with its detection reference's recipe, or with
  mrcnn's recipe's optimizer, rate and warm-up. Runs with ``--torch-python`` (an interpreter
  with torch and torchvision; by default this one).

Every contender sees the same synthetic nuclei (``samples/nucleus/synthetic.py``, written
once) and the same number of images per budget; its detections come back as RLEs and all
are scored here by the same code (``mrcnn.coco_eval``, COCO segm, max detections above the
densest image). Prints one table row per (contender, epoch): images seen, mean +- std of mask
AP50, AP and recall at IoU 0.5 over the seeds, and the training time; then a second table
of where the misses are: the share of nuclei that touch another one, and how many of the
touching and of the isolated nuclei some detection covers at mask IoU 0.5 and 0.75
(``found_share``). Asserts nothing.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.common import add_nucleus_size_arguments, device_description  # noqa: E402

WORKERS = {"mrcnn": os.path.join(ROOT, "bench", "nucleus_worker.py"),
           "torchvision": os.path.join(ROOT, "bench", "torchvision_nucleus.py")}


def parse_value(text: str) -> Any:
    """A Config value from the command line: a Python literal, else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_contender(spec: str) -> dict:
    """"mrcnn+recipe@dece6be" -> {"engine": "mrcnn", "recipe": True, "commit": "dece6be"}.

    After the engine, ``+`` joins options: ``recipe`` (the command line's from-scratch
    recipe set explicitly) and, for mrcnn, ``KEY=VALUE`` Config values (a Python literal or
    a string), e.g. ``mrcnn+LR_SCHEDULE=cosine+LEARNING_RATE=0.003``.
    """
    name, _, commit = spec.partition("@")
    engine, *options = name.split("+")
    recipe, overrides = False, {}
    for option in options:
        key, eq, value = option.partition("=")
        if option == "recipe":
            recipe = True
        elif eq and key.isupper() and engine == "mrcnn":
            overrides[key] = parse_value(value)
        else:
            raise SystemExit(f"nucleus_seeds.py: contender {spec!r}: unknown option "
                             f"{option!r} (expected recipe, or KEY=VALUE Config values for "
                             "mrcnn)")
    if engine not in WORKERS:
        raise SystemExit(f"nucleus_seeds.py: unknown contender {spec!r} (expected "
                         "mrcnn[+recipe][+KEY=VALUE...][@REV] or torchvision[+recipe])")
    if commit and engine != "mrcnn":
        raise SystemExit(f"nucleus_seeds.py: {spec!r}: only mrcnn runs at a commit")
    return {"spec": spec, "engine": engine, "recipe": recipe, "overrides": overrides,
            "commit": commit or None}


def tree_at(commit: str) -> str:
    """A folder with ``mrcnn`` and ``samples`` of ``commit``."""
    folder = tempfile.mkdtemp(prefix=f"mrcnn_{commit}_")
    archive = subprocess.run(["git", "-C", ROOT, "archive", commit, "mrcnn", "samples"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return folder


def run_worker(contender: dict, settings: dict, args) -> dict:
    """One seed of one contender in its own process; its RESULT line parsed."""
    env = dict(os.environ)
    python = sys.executable
    if contender["engine"] == "torchvision":
        python = args.torch_python or sys.executable
        env.pop("PYTHONPATH", None)
    else:
        env["PYTHONPATH"] = contender.get("tree") or ROOT
    done = subprocess.run([python, WORKERS[contender["engine"]], json.dumps(settings)],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{contender['spec']} seed {settings['seed']} failed:\n"
                           f"{done.stderr[-4000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def ground_truth(data: str) -> list[dict]:
    """The held-out images' masks, read with the sample's own loader (this tree)."""
    from mrcnn import utils
    from samples.nucleus import nucleus

    test = nucleus.NucleusDataset()
    test.load_nucleus(data, "stage1_test", require_masks=True)
    test.prepare()
    gt = []
    for image_id in test.image_ids:
        masks, class_ids = test.load_mask(image_id)
        gt.append(dict(image_id=int(image_id), name=test.image_info[image_id]["id"],
                       height=masks.shape[0], width=masks.shape[1],
                       boxes=utils.extract_bboxes(masks), class_ids=class_ids, masks=masks))
    return gt


def touching(masks):
    """Which instances touch another: [N] bool for disjoint masks [H, W, N].

    Two instances touch when a pixel of one is among the 8 neighbours of a pixel of the
    other (dense synthetic nuclei: touching, or partly hidden by the one drawn over it).
    """
    import numpy as np

    n = masks.shape[-1]
    if n == 0:
        return np.zeros(0, bool)
    labels = np.where(masks.any(-1), masks.argmax(-1) + 1, 0)
    padded = np.pad(labels, 1)
    h, w = labels.shape
    hit = np.zeros(n + 1, bool)
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):  # each neighbour pair once
        other = padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        pair = (labels > 0) & (other > 0) & (labels != other)
        hit[labels[pair]] = True
        hit[other[pair]] = True
    return hit[1:]


def found_share(gt_masks, det_masks, thresholds=(0.5, 0.75)) -> dict:
    """How many nuclei some detection covers, touching and isolated ones apart.

    For each ground-truth instance, the best mask IoU of any detection (whatever its score,
    so this is a ceiling on recall, not COCO's matched recall); the share of instances at
    or above each threshold, among those that touch another instance and those that do not.

    Args:
        gt_masks: list of [H, W, N] ground-truth masks, one per image.
        det_masks: list of [H, W, M] detected masks, same images.
        thresholds: IoU thresholds.

    Returns:
        {"touching_share": fraction of instances that touch another,
         "found50_touching", "found50_isolated", "found75_touching", ...} (NaN where a
        group is empty).
    """
    import numpy as np

    from mrcnn import utils

    best, touch = [], []
    for g, d in zip(gt_masks, det_masks):
        overlaps = utils.compute_overlaps_masks(d, g)  # [M, N]
        best.append(overlaps.max(0) if overlaps.shape[0] else np.zeros(g.shape[-1]))
        touch.append(touching(g))
    best, touch = np.concatenate(best), np.concatenate(touch)
    out = {"touching_share": float(touch.mean()) if len(touch) else float("nan")}
    for t in thresholds:
        for name, group in (("touching", touch), ("isolated", ~touch)):
            found = best[group] >= t
            out[f"found{round(t * 100)}_{name}"] = (float(found.mean()) if len(found)
                                                    else float("nan"))
    return out


def score(gt: list[dict], detections: dict) -> dict:
    """COCO segm AP50 / AP / recall@0.5 of one epoch's detections (RLEs by image name),
    and ``found_share`` of its masks."""
    import numpy as np
    from pycocotools import mask as mask_utils

    from mrcnn import coco_eval, utils

    det_list = []
    for g in gt:
        d = detections.get(g["name"], {"scores": [], "rles": []})
        # Compressed (str counts) or uncompressed (list counts, the torchvision worker's).
        rles = [mask_utils.frPyObjects(r, *r["size"]) if isinstance(r["counts"], list)
                else {"size": r["size"], "counts": r["counts"].encode("ascii")}
                for r in d["rles"]]
        masks = (mask_utils.decode(rles).astype(bool) if rles
                 else np.zeros((g["height"], g["width"], 0), bool))
        det_list.append(dict(image_id=g["image_id"], rois=utils.extract_bboxes(masks),
                             class_ids=np.ones(len(rles), np.int32),
                             scores=np.asarray(d["scores"], np.float32), masks=masks))
    most = max(len(g["class_ids"]) for g in gt)
    gt_list = [{k: v for k, v in g.items() if k != "name"} for g in gt]
    stats = coco_eval.evaluate(gt_list, det_list, iou_type="segm",
                               class_names=["BG", "nucleus"], verbose=False,
                               max_dets=max(100, most, 400))
    return {"AP50": stats["AP50"], "AP": stats["AP"], "recall50": stats["recall50"],
            **found_share([g["masks"] for g in gt], [d["masks"] for d in det_list])}


def recipe_settings() -> dict:
    """The command line's from-scratch recipe of this tree, as Config values."""
    from mrcnn.cli import FROM_SCRATCH

    return dict(FROM_SCRATCH)


def worker_settings(contender: dict, seed: int, data: str, logs: str, args) -> dict:
    settings = {"data": data, "logs": logs, "seed": seed, "epochs": args.epochs,
                "steps": args.steps, "batch": args.batch, "crop": args.crop,
                "backbone": args.backbone}
    recipe = recipe_settings()
    if contender["engine"] == "mrcnn":
        settings["overrides"] = {**(recipe if contender["recipe"] else {}),
                                 **contender["overrides"]}
    else:
        from mrcnn.config import Config

        settings.update(recipe="mrcnn" if contender["recipe"] else "reference",
                        lr=recipe.get("LEARNING_RATE", Config.LEARNING_RATE),
                        warmup_steps=recipe.get("LR_WARMUP_STEPS", 0),
                        warmup_factor=recipe.get("LR_WARMUP_FACTOR", Config.LR_WARMUP_FACTOR),
                        wd=Config.WEIGHT_DECAY)
    return settings


# found_share's columns, in the order of the second table.
FOUND = ("touching_share", "found50_touching", "found50_isolated", "found75_touching",
         "found75_isolated")


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds per (contender, epoch)."""
    import numpy as np

    table = []
    keys = sorted({(r["contender"], r["epoch"]) for r in rows},
                  key=lambda k: ([r["contender"] for r in rows].index(k[0]), k[1]))
    for contender, epoch in keys:
        group = [r for r in rows if r["contender"] == contender and r["epoch"] == epoch]
        entry = {"contender": contender, "epoch": epoch, "images": group[0]["images"],
                 "seeds": len(group)}
        for metric in ("AP50", "AP", "recall50", "train_wall", "train_cpu", *FOUND):
            if not all(metric in g for g in group):  # rows of an older bench lack FOUND
                continue
            values = np.array([g[metric] for g in group], float)
            entry[metric] = (float(values.mean()),
                             float(values.std(ddof=1)) if len(values) > 1 else float("nan"))
        table.append(entry)
    return table


def print_table(table: list[dict]) -> None:
    """The markdown table of ``summarize``: mean +- std over the seeds of each row."""
    print("| contender | epoch | images seen | seeds | mask AP50 | mask AP | recall@0.5 | "
          "train wall (s) | train CPU (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in table:
        def pm(key, digits=3):
            mean, std = r[key]
            return f"{mean:.{digits}f}" + ("" if std != std else f" ± {std:.{digits}f}")
        print(f"| {r['contender']} | {r['epoch']} | {r['images']} | {r['seeds']} | "
              f"{pm('AP50')} | {pm('AP')} | {pm('recall50')} | {pm('train_wall', 0)} | "
              f"{pm('train_cpu', 0)} |")
    found = [r for r in table if all(k in r for k in FOUND)]
    if not found:
        return
    print()
    print("Share of nuclei that some detection covers at mask IoU >= 0.5 and >= 0.75 (any "
          "score), those that touch another nucleus and isolated ones apart; mean over seeds:")
    print()
    print("| contender | epoch | touching share | touching >= 0.5 | isolated >= 0.5 | "
          "touching >= 0.75 | isolated >= 0.75 |")
    print("|---|---|---|---|---|---|---|")
    for r in found:
        print(f"| {r['contender']} | {r['epoch']} | " + " | ".join(
            f"{r[k][0]:.3f}" for k in FOUND) + " |")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contenders", nargs="+", default=["mrcnn"])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per contender")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="start at this seed (to add seeds to an earlier run's --rows)")
    parser.add_argument("--keep", default=None, metavar="DIR",
                        help="keep the data and every checkpoint under this new folder "
                             "(bench/nucleus_rescore.py scores them again)")
    add_nucleus_size_arguments(parser, epochs=8)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--style", default="default", help="synthetic.STYLES: default, hard")
    parser.add_argument("--torch-python", default=None,
                        help="interpreter with torch and torchvision for torchvision contenders")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--rows", default=None,
                        help="append each seed's rows to this JSON-lines file as it ends")
    parser.add_argument("--summarize", default=None, metavar="ROWS",
                        help="print the table of a --rows file (e.g. of a run cut short) "
                             "and exit")
    args = parser.parse_args(argv)
    if args.summarize:
        with open(args.summarize, encoding="utf-8") as f:
            table = summarize([json.loads(line) for line in f if line.strip()])
        print_table(table)
        return table
    contenders = [parse_contender(spec) for spec in args.contenders]

    from samples.nucleus import synthetic

    if args.style not in synthetic.STYLES:
        raise SystemExit(f"nucleus_seeds.py: --style must be one of {sorted(synthetic.STYLES)}")
    rows: list[dict] = []
    versions = {}
    keep = os.path.abspath(args.keep) if args.keep else None
    if keep:
        os.makedirs(keep)  # a new folder: nothing earlier is mixed in or replaced
    with tempfile.TemporaryDirectory(prefix="nucseeds_") as tmp:
        data = os.path.join(keep or tmp, "data")
        info = synthetic.write_dataset(data, args.train_images, args.test_images,
                                       (args.field, args.field), args.data_seed,
                                       synthetic.STYLES[args.style])
        gt = ground_truth(data)
        for contender in contenders:
            if contender["commit"]:
                contender["tree"] = tree_at(contender["commit"])
        # Seeds outside, contenders inside: a run cut short still holds paired seeds.
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for contender in contenders:
                t = time.perf_counter()
                logs = os.path.join(keep or tmp, "logs", contender["spec"].replace("@", "_"),
                                    str(seed))
                result = run_worker(contender, worker_settings(contender, seed, data, logs, args),
                                    args)
                versions[contender["spec"]] = result.get("versions", {})
                seed_rows = [{"contender": contender["spec"], "seed": seed,
                              "epoch": epoch["epoch"], "images": epoch["images"],
                              "train_wall": epoch["train_wall"],
                              "train_cpu": epoch["train_cpu"],
                              **score(gt, epoch["detections"])}
                             for epoch in result["epochs"]]
                rows.extend(seed_rows)
                if args.rows:  # every seed as it ends, so a cut-short run keeps its data
                    with open(args.rows, "a", encoding="utf-8") as f:
                        f.writelines(json.dumps(row) + "\n" for row in seed_rows)
                last = rows[-1]
                print(f"{contender['spec']} seed {seed}: AP50 {last['AP50']:.3f} AP "
                      f"{last['AP']:.3f} after {last['images']} images "
                      f"({time.perf_counter() - t:.0f} s)", flush=True)

    table = summarize(rows)
    per_image = sum(info["instances"].values()) / max(len(info["instances"]), 1)
    print()
    print("command: python bench/nucleus_seeds.py " + " ".join(argv or sys.argv[1:]))
    print(device_description())
    print(f"date: {time.strftime('%Y-%m-%d')}; data: {args.train_images} train / "
          f"{args.test_images} held-out synthetic fields ({args.style}) of {args.field} px, "
          f"{per_image:.0f} nuclei per image; {args.backbone}, {args.crop} px crops, batch "
          f"{args.batch}, {args.steps} steps per epoch; {args.seeds} seeds; versions: "
          f"{json.dumps(versions)}")
    print()
    print_table(table)
    if args.json:
        with open(args.json, "x") as f:  # never replaces an earlier result
            json.dump({"rows": rows, "table": table}, f)
    return table


if __name__ == "__main__":
    main()
