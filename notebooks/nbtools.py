"""Helpers shared by the notebooks: paths, the test-sized ("tiny") config, checkpoints.

The notebooks run on their real tutorial sizes by default. Two environment variables make
them cheap enough for the test suite (``tests/test_notebooks.py``):

- ``MRCNN_TINY=1`` (the samples' tiny switch, ``mrcnn.tiny.tiny_requested``):
  ``notebook_config`` returns ``mrcnn.tiny``'s 64 px variant of the config (five-conv
  backbone, few ROIs) with 2-step epochs, and ``sizes`` picks the small counts (images,
  epochs).
- ``MRCNN_LOGS=<folder>``: logs and checkpoints go there instead of ``<repo>/logs``.

Importing this module puts the repository root on ``sys.path`` so that
``samples.shapes.shapes`` imports without installing anything.
"""

from __future__ import annotations

import os
import sys
from typing import Any


NOTEBOOKS_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT_DIR = os.path.dirname(NOTEBOOKS_DIR)
if ROOT_DIR not in sys.path:
    sys.path.insert(0, ROOT_DIR)

from mrcnn.tiny import tiny_config, tiny_requested  # noqa: E402

# Test switch: tiny configs and counts (MRCNN_TINY=1, as for the samples).
TINY = tiny_requested()
# Logs and checkpoints: <repo>/logs unless MRCNN_LOGS says otherwise.
LOGS_DIR = os.environ.get("MRCNN_LOGS") or os.path.join(ROOT_DIR, "logs")

# Shapes' seeds: training, validation and held-out images never overlap.
TRAIN_SEED, VAL_SEED, TEST_SEED = 0, 1, 2


def sizes(real: Any, tiny: Any) -> Any:
    """``real`` normally, ``tiny`` when MRCNN_TINY is set (counts, epochs...)."""
    return tiny if TINY else real


# ---------------------------------------------------------------------------- tiny config
# What a notebook run of a few steps needs on top of mrcnn.tiny's settings.
NOTEBOOK_TINY_OVERRIDES = {
    "IMAGES_PER_GPU": 2,
    # A model trained for 2 steps is unsure of everything: keep all its detections so
    # that every drawing cell has something to draw.
    "DETECTION_MIN_CONFIDENCE": 0.0,
    "STEPS_PER_EPOCH": 2,
    # No validation pass: it would trace a second (test) step function, which costs
    # more than the two training steps.
    "VALIDATION_STEPS": 0,
}


def notebook_config(config_class: type, **overrides: Any):
    """An instance of ``config_class``, or of its tiny variant when MRCNN_TINY is set.

    The tiny variant is ``mrcnn.tiny.tiny_config``'s ``Tiny<Name>`` subclass, whose NAME is
    ``"tiny" + NAME``, so its checkpoints never mix with the real ones (``find_last``
    matches run folders by name).

    Args:
        config_class: a ``Config`` subclass, e.g. ``ShapesConfig`` or your own.
        **overrides: attributes to set on the class (both variants), e.g.
            ``STEPS_PER_EPOCH=50``.

    Returns:
        A config instance.
    """
    if TINY:
        return tiny_config(config_class, **{**NOTEBOOK_TINY_OVERRIDES, **overrides})
    if not overrides:
        return config_class()
    return type(config_class.__name__, (config_class,), dict(overrides))()


def inference_config(config, **overrides: Any):
    """The inference twin of a training config: one image per batch (Matterport's
    ``InferenceConfig``), same NAME so ``find_last`` finds the training checkpoints."""
    attrs = {"GPU_COUNT": 1, "IMAGES_PER_GPU": 1, **overrides}
    return type("Inference" + type(config).__name__, (type(config),), attrs)()


# ------------------------------------------------------------------------------- datasets
def shapes_dataset(count: int, config, seed: int, height: int | None = None,
                   width: int | None = None):
    """A prepared ``ShapesDataset`` of ``count`` images at the config's image size."""
    from samples.shapes.shapes import ShapesDataset

    dataset = ShapesDataset()
    dataset.load_shapes(count, int(height or config.IMAGE_SHAPE[0]),
                        int(width or config.IMAGE_SHAPE[1]), seed=seed)
    dataset.prepare()
    return dataset


# ---------------------------------------------------------------------------- checkpoints
def quick_train(config, model_dir: str, train_dataset=None, val_dataset=None,
                epochs: int | None = None, steps: int | None = None) -> str:
    """Train a model from scratch for a short while and return its last checkpoint.

    The stand-in for a trained model when a notebook finds none: a few minutes on a CPU
    with the real shapes settings (2 epochs of 50 steps), seconds with the tiny ones.

    Args:
        config: the training config (its NAME decides the run folder).
        model_dir: logs folder.
        train_dataset, val_dataset: prepared datasets (default: shapes at the config's size).
        epochs: epochs to train (default 2, or 1 when tiny).
        steps: steps per epoch (default 50, or the config's when tiny).

    Returns:
        Path of the checkpoint written.
    """
    import mrcnn.model as modellib

    if train_dataset is None:
        if config.NUM_CLASSES != 4:
            raise ValueError(
                f"No checkpoint for '{config.NAME}' in {model_dir}, and the quick fallback "
                f"trains on shapes (4 classes) but the config has NUM_CLASSES="
                f"{config.NUM_CLASSES}: set WEIGHTS_PATH or pass your datasets.")
        train_dataset = shapes_dataset(sizes(500, 8), config, TRAIN_SEED)
        val_dataset = shapes_dataset(sizes(20, 4), config, VAL_SEED)
    epochs = epochs or sizes(2, 1)
    steps = steps or sizes(50, config.STEPS_PER_EPOCH)
    quick = type(type(config).__name__, (type(config),),
                 {"STEPS_PER_EPOCH": steps,
                  "VALIDATION_STEPS": min(config.VALIDATION_STEPS, 2)})()
    print(f"Training a quick model: {epochs} epoch(s) x {steps} steps, all layers, from "
          f"scratch. (Run train_shapes.ipynb for a better one.)")
    model = modellib.MaskRCNN("training", quick, model_dir)
    model.train(train_dataset, val_dataset, learning_rate=quick.LEARNING_RATE,
                epochs=epochs, layers="all")
    return model.find_last()


def find_or_train(model, train_config, weights_path: str | None = None,
                  train_dataset=None, val_dataset=None) -> str:
    """The checkpoint a notebook should load.

    Args:
        model: the ``MaskRCNN`` (its config NAME and model_dir are searched).
        train_config: training config for the fallback (``quick_train``).
        weights_path: an explicit checkpoint: returned as is.
        train_dataset, val_dataset: datasets for the fallback (default: shapes).

    Returns:
        ``weights_path`` if given, else ``model.find_last()``, else the checkpoint of a
        quick model trained now.
    """
    if weights_path:
        return weights_path
    try:
        return model.find_last()
    except FileNotFoundError as err:
        print(f"{err}")
        return quick_train(train_config, model.model_dir, train_dataset, val_dataset)


# ----------------------------------------------------------------------------- evaluation
def compute_batch_ap(model, dataset, config, image_ids, iou_threshold: float = 0.5,
                     verbose: int = 1) -> list[float]:
    """VOC-style AP (mask IoU) of each image: ``load_image_gt``, ``detect``, ``compute_ap``.

    Matterport's notebooks defined this loop in place; it is ``metrics.per_image_ap`` with
    the ground truth molded by ``config``. The mAP is ``np.mean`` of the result.

    Args:
        model: a ``MaskRCNN`` in inference mode.
        dataset: a prepared ``utils.Dataset`` with ground truth.
        config: the inference config (image sizing).
        image_ids: the images to evaluate.
        iou_threshold: mask IoU a detection needs to count as a true positive.
        verbose: print one line per image.

    Returns:
        The AP of each image, in ``image_ids`` order.
    """
    from mrcnn import metrics

    aps = metrics.per_image_ap(model, dataset, image_ids, config=config,
                               iou_thresholds=[iou_threshold], verbose=2 if verbose else 0)
    return aps[:, 0].tolist()


def get_ax(rows: int = 1, cols: int = 1, size: float = 8):
    """A Matplotlib Axes array for the notebooks' figures (Matterport's ``get_ax``)."""
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(rows, cols, figsize=(size * cols, size * rows))
    return ax
