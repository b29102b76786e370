"""One seeded from-scratch run of the nucleus sample through the Python API: the worker of
``bench/nucleus_seeds.py``.

    python bench/nucleus_worker.py '<json settings>'      # prints one line RESULT{...}

Exactly what a user of the library writes: a ``NucleusConfig`` subclass with only the size
shrunk (backbone, crop, batch, steps), ``MaskRCNN("training", ...)``,
``train(..., layers="all", augmentation=nucleus.build_augmentation())``, then after every
epoch the last checkpoint in a ``NucleusInferenceConfig`` model and ``detect()`` on every
held-out image. ``overrides`` adds Config values on top (e.g. the command line's from-scratch
recipe, to compare both paths).

It uses only API that every version of mrcnn has had (Config subclassing, ``load_nucleus``,
``build_augmentation``, ``train``'s Matterport arguments, ``find_last``, ``detect``), so
``nucleus_seeds.py`` can run it on an older commit's code, and it imports nothing from
``bench`` or ``mrcnn`` at module level. Scoring is not done here: the detections go back as
COCO RLE, and the driver scores every contender with the same code.
"""

from __future__ import annotations

import json
import os
import sys
import time


def encode_masks(masks) -> list[dict]:
    """bool [H, W, N] -> N COCO RLEs with str counts (JSON-ready)."""
    import numpy as np
    from pycocotools import mask as mask_utils

    rles = mask_utils.encode(np.asfortranarray(masks.astype(np.uint8)))
    return [{"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}
            for r in rles]


def run(settings: dict) -> dict:
    """Train from random weights, detect on the held-out images after every epoch.

    Args:
        settings: ``data`` (DSB-layout root with stage1_train/stage1_test), ``logs``,
            ``seed``, ``epochs``, ``steps``, ``batch``, ``crop``, ``backbone`` and
            ``overrides`` (Config values on top of the size).

    Returns:
        {"epochs": [{"epoch", "images", "train_wall", "train_cpu",
        "detections": {source image id: {"scores": [...], "rles": [...]}}}], "versions"}.
    """
    import keras
    import numpy as np

    import mrcnn.model as modellib
    from samples.nucleus import nucleus

    seed = int(settings["seed"])
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    size = dict(BACKBONE=settings["backbone"], IMAGE_MIN_DIM=settings["crop"],
                IMAGE_MAX_DIM=settings["crop"], IMAGES_PER_GPU=settings["batch"],
                STEPS_PER_EPOCH=settings["steps"], VALIDATION_STEPS=2,
                NAME=f"seed{seed}")
    overrides = settings.get("overrides", {})
    train_config = type("TrainConfig", (nucleus.NucleusConfig,), {**size, **overrides})()
    infer_size = {k: v for k, v in {**size, **overrides}.items()
                  if k not in ("IMAGES_PER_GPU", "IMAGE_MIN_DIM", "IMAGE_MAX_DIM",
                               "STEPS_PER_EPOCH", "VALIDATION_STEPS")}
    infer_config = type("InferConfig", (nucleus.NucleusInferenceConfig,), infer_size)()

    train = nucleus.NucleusDataset()
    train.load_nucleus(settings["data"], "stage1_train")
    train.prepare()
    test = nucleus.NucleusDataset()
    test.load_nucleus(settings["data"], "stage1_test", require_masks=True)
    test.prepare()
    images = {test.image_info[i]["id"]: test.load_image(i) for i in test.image_ids}

    model = modellib.MaskRCNN("training", train_config, settings["logs"])
    infer = modellib.MaskRCNN("inference", infer_config, settings["logs"])
    out: list[dict] = []
    clock = {"wall": time.perf_counter(), "cpu": time.process_time(), "eval": 0.0,
             "eval_cpu": 0.0}

    class Detect(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            t, c = time.perf_counter(), time.process_time()
            infer.load_weights(model.find_last(), by_name=True)
            detections = {}
            for name, image in images.items():
                r = infer.detect([image])[0]
                detections[name] = {"scores": [float(s) for s in r["scores"]],
                                    "rles": encode_masks(r["masks"])}
            clock["eval"] += time.perf_counter() - t
            clock["eval_cpu"] += time.process_time() - c
            out.append({"epoch": epoch + 1,
                        "images": (epoch + 1) * settings["steps"] * settings["batch"],
                        "train_wall": time.perf_counter() - clock["wall"] - clock["eval"],
                        "train_cpu": time.process_time() - clock["cpu"] - clock["eval_cpu"],
                        "detections": detections})
            print(f"  seed {seed} epoch {epoch + 1} done", file=sys.stderr, flush=True)

    model.train(train, test, learning_rate=train_config.LEARNING_RATE,
                epochs=settings["epochs"], layers="all",
                augmentation=nucleus.build_augmentation(), custom_callbacks=[Detect()])
    return {"epochs": out, "versions": {"keras": keras.__version__,
                                        "backend": keras.backend.backend()}}


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    result = run(json.loads(sys.argv[1]))
    print("RESULT" + json.dumps(result))
