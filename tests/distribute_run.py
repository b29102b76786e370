"""Data-parallel training runs for ``tests/test_distribute.py``, one backend per process.

``python -m tests.distribute_run equal OUT_DIR [sgd_gn,adamw_gn,sgd_bn [nodetect]]``
(TensorFlow: 2 logical CPU devices; JAX: run with
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` and, on a CPU with few cores,
``PJRT_NPROC=8``: see README "JAX: keras.distribution.DataParallel") trains the
same tiny model from the same weights on the same 4 images for 3 steps, on 1 device x 4
images and on 2 replicas x 2 images, with each optimizer, and prints one ``RESULT`` JSON
line: weight and optimizer-state differences, the losses, and the detections of
single-device inference models loaded from each run's checkpoint.

``python -m tests.distribute_run worker OUT_DIR`` is one worker of a ``TF_CONFIG`` cluster
(``MultiWorkerMirroredStrategy``): it trains 3 steps (NORM="bn") and prints a digest of its
weights and the checkpoints it finds under OUT_DIR.

Random ROI sampling draws other numbers on 2 replicas than on 1 device, so ``EqualConfig``
makes it pick every candidate: 8 proposals + 5 GT boxes fit in the 14 positive slots, and
with ROI_POSITIVE_RATIO = 1/16 a single positive allows 15 negatives (>= 13 candidates) in
the 210 negative slots. The sampled set is then the same whatever the draws.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

STEPS = 3


def configure_devices() -> None:
    """Two logical CPU devices on TensorFlow; JAX gets them from XLA_FLAGS."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


def make_config(gpu_count: int, optimizer: str = "sgd", norm: str = "gn"):
    """The tiny model (``norm`` in its heads) with a global batch of 4 on ``gpu_count``
    replicas."""
    from tests.tiny import TinyFastConfig

    class EqualConfig(TinyFastConfig):
        NAME = "dist"
        GPU_COUNT = gpu_count
        IMAGES_PER_GPU = 4 // gpu_count
        POST_NMS_ROIS_TRAINING = 8
        TRAIN_ROIS_PER_IMAGE = 224
        ROI_POSITIVE_RATIO = 0.0625
        STEPS_PER_EPOCH = STEPS
        VALIDATION_STEPS = 0
        DATA_WORKERS = 0
        OPTIMIZER = optimizer
        NORM = norm

    return EqualConfig()


def weights_of(model) -> list:
    """All weights in model order (paths differ between models built in one process)."""
    return [np.array(w) for w in model.keras_model.get_weights()]


def train_run(config, model_dir: Path, initial: str | None, lr: float):
    """Train 3 steps (one epoch) from ``initial`` weights; return the model."""
    from mrcnn.model import MaskRCNN
    from tests.tiny import shapes_dataset

    model = MaskRCNN("training", config, str(model_dir))
    if initial is not None:
        model.load_weights(initial)
    np.random.seed(1)  # the generator's seeds: the same image order in both runs
    model.train(shapes_dataset(4, seed=3), None, learning_rate=lr, epochs=1, layers="all")
    return model


def detections(config, checkpoint: str, model_dir: Path) -> list:
    """Detections of a single-device inference model loaded from ``checkpoint``."""
    from mrcnn.model import MaskRCNN
    from tests.tiny import force_detections, shapes_dataset

    class Infer(type(config)):
        GPU_COUNT = 1
        IMAGES_PER_GPU = 1
        # A trainable BatchNorm's checkpoint loads by name into frozen BatchNorm, as
        # Matterport's inference models have it.
        NORM = "frozen_bn" if config.NORM == "bn" else config.NORM

    model = MaskRCNN("inference", Infer(), str(model_dir))
    model.load_weights(checkpoint, by_name=True)
    force_detections(model.keras_model)
    ds = shapes_dataset(4, seed=3)
    out = model.detect([ds.load_image(i) for i in range(2)])
    return [{"rois": r["rois"].tolist(), "class_ids": r["class_ids"].tolist(),
             "scores": r["scores"].tolist()} for r in out]


def run_equal(out: Path, cases: str = "sgd_gn,adamw_gn,sgd_bn", detect: str = "detect") -> None:
    import keras

    from mrcnn.model import MaskRCNN

    configure_devices()
    result = {}
    for key in cases.split(","):
        optimizer, norm = key.split("_")
        lr = 0.02 if optimizer == "sgd" else 0.001
        keras.utils.set_random_seed(0)
        fresh = MaskRCNN("training", make_config(1, optimizer, norm), str(out / "x"))
        start = str(out / key / "start.h5")
        os.makedirs(os.path.dirname(start), exist_ok=True)
        fresh.save_weights(start)
        one = train_run(make_config(1, optimizer, norm), out / key / "one", start, lr)
        two = train_run(make_config(2, optimizer, norm), out / key / "two", start, lr)
        w0, w1, w2 = weights_of(fresh), weights_of(one), weights_of(two)
        paths = [w.path for w in one.keras_model.weights]
        trainable = {w.path for w in one.keras_model.trainable_weights}
        result[key] = {
            "trainable_max_abs_diff": _max_abs(w1, w2, paths, trainable.__contains__),
            "trainable_max_abs_change": _max_abs(w1, w0, paths, trainable.__contains__),
            "moving_rel_diff": max((float(np.max(np.abs(a - b)) / np.max(np.abs(a - c)))
                                    for p, a, b, c in zip(paths, w1, w2, w0)
                                    if "moving_" in p), default=0.0),
            "replicas": two.distribution.num_replicas,
            "max_abs_diff": _max_abs(w1, w2, paths, lambda p: True),
            "max_abs_change": _max_abs(w1, w0, paths, lambda p: True),
            "mean_abs_diff": _mean_abs(w1, w2),
            "mean_abs_change": _mean_abs(w1, w0),
            "moment_rel_diff": _moment_diff(one.find_last(), two.find_last()),
            "loss_one": one.keras_model.history.history["loss"],
            "loss_two": two.keras_model.history.history["loss"],
        }
        if detect == "detect":
            result[key].update(detect_one=detections(one.config, one.find_last(), out / "infer"),
                               detect_two=detections(two.config, two.find_last(), out / "infer"))
    print("RESULT " + json.dumps(result))


def _max_abs(a: list, b: list, paths: list, keep) -> float:
    """Largest |a - b| over the variables whose path ``keep`` accepts."""
    return max(float(np.max(np.abs(x - y))) for x, y, p in zip(a, b, paths) if keep(p))


def _mean_abs(a: list, b: list) -> float:
    return float(np.mean(np.concatenate([np.abs(x - y).ravel() for x, y in zip(a, b)])))


def _moment_diff(path_one: str, path_two: str) -> float:
    """Largest difference of the optimizer's slot variables (momentum; Adam's moments)
    between two checkpoints, relative to the largest value of each variable.

    Slots below 1e-6 of the largest one are left out: those of a conv bias in front of a
    BatchNorm, whose gradient is 0 but for rounding (the norm subtracts any bias)."""
    from mrcnn.training import read_training_state

    one, two = (read_training_state(p)["optimizer"] for p in (path_one, path_two))
    pairs = [(a, b) for (_, a), (_, b) in zip(one, two) if a.size > 1]
    largest = max(float(np.max(np.abs(a))) for a, _ in pairs)
    return max(float(np.max(np.abs(a - b)) / np.max(np.abs(a))) for a, b in pairs
               if np.max(np.abs(a)) > 1e-6 * largest)


def run_worker(out: Path) -> None:
    """One worker of a TF_CONFIG cluster: 3 steps, then a digest of its weights."""
    import keras

    from mrcnn.model import MaskRCNN
    from tests.tiny import shapes_dataset

    # Trainable BatchNorm: its statistics are all-reduced across the two processes.
    config = make_config(2, norm="bn")
    # Asked for, but not applicable under tf.distribute (MaskRCNN.compile warns, runs a graph).
    config.JIT_COMPILE = True
    keras.utils.set_random_seed(0)
    model = MaskRCNN("training", config, str(out))
    np.random.seed(1)
    model.train(shapes_dataset(4, seed=3), None, learning_rate=0.02, epochs=1, layers="all")
    weights = weights_of(model)
    print("RESULT " + json.dumps({
        "chief": model.distribution.is_chief, "replicas": model.distribution.num_replicas,
        "jit_compile": bool(model.keras_model.jit_compile),
        "digest": float(sum(np.sum(np.abs(v)) for v in weights)),
        "log_dir": model.log_dir,
        "checkpoints": sorted(str(p) for p in Path(out).rglob("*.h5"))}))


if __name__ == "__main__":
    {"equal": run_equal, "worker": run_worker}[sys.argv[1]](Path(sys.argv[2]), *sys.argv[3:])
