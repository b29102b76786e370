"""Weight presets and the from-scratch recipe: what a run starts from, and how it trains.

- Weight presets: ``MaskRCNN.load_weights`` takes Matterport's keywords besides a path.
  ``"coco"`` is Matterport's ``mask_rcnn_coco.h5`` (``./mask_rcnn_coco.h5``, downloaded
  there when missing), ``"imagenet"`` the Keras ResNet-50 ImageNet file (Keras' cache
  folder, downloaded when missing), ``"last"`` the last sound checkpoint of the config's
  NAME under the model folder (``MaskRCNN.find_last``), ``"none"`` nothing (the random
  initialization). ``resolve_weights`` turns a keyword into a file.
- NORM follows the weights (``norm_for_weights``): Matterport's ImageNet and COCO files, and
  checkpoints trained from them, hold BatchNorm layers; checkpoints trained with GroupNorm
  hold GroupNorm ones. A model of the other kind would load them by name silently without
  their normalization layers, so a Config built for given weights takes their NORM.
- The from-scratch recipe (``FROM_SCRATCH``): a run that starts from random weights trains
  with AdamW at 0.002 after a 50-step warm-up and a plateau schedule instead of
  Matterport's fine-tuning settings. ``MaskRCNN.train`` applies it (``apply_from_scratch``)
  to the settings the user's Config leaves at their defaults, unless
  ``Config.FROM_SCRATCH_RECIPE = "off"``; ``starts_from_random_weights`` says when.

Nothing here imports TensorFlow or Keras at module level: the command lines use it before
any model is built.
"""

from __future__ import annotations

import copy
import json
import os
import re
from typing import Any, Iterable

from mrcnn.config import Config

# Matterport's --weights keywords.
WEIGHT_KEYWORDS = ("none", "last", "imagenet", "coco")

# Where "coco" looks for (and, with network, downloads) Matterport's COCO weights:
# mask_rcnn_coco.h5 in the working directory, where Matterport's samples keep it.
COCO_WEIGHTS_PATH = os.path.abspath("mask_rcnn_coco.h5")

# Class-specific layers: skipped when starting from weights trained on other classes
# (load_weights("coco", by_name=True, exclude=HEAD_LAYERS)).
HEAD_LAYERS = ("mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask")

# The ResNet-50 ImageNet weights Matterport's get_imagenet_weights downloaded (Keras 2
# layout, layer names of Matterport's backbone).
IMAGENET_WEIGHTS_URL = ("https://github.com/fchollet/deep-learning-models/releases/download/"
                        "v0.2/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
IMAGENET_WEIGHTS_MD5 = "a268eb855778b3df3c7506639542a6af"

# NORM values whose layers hold BatchNorm weights (None: derived from TRAIN_BN).
BATCH_NORMS = (None, "frozen_bn", "bn")

# The from-scratch recipe: Config values for a run that starts from random weights. Chosen
# by measurement (bench/nucleus_convergence.py): all layers from the first step; AdamW at
# 0.002 after a 50-step linear warm-up, divided by 10 when the validation loss stalls for
# 2 epochs. Values the user set win over each of them.
FROM_SCRATCH: dict[str, Any] = {
    "OPTIMIZER": "adamw",
    "LEARNING_RATE": 0.002,
    "LR_SCHEDULE": "plateau",
    "LR_PLATEAU_PATIENCE": 2,
    "LR_WARMUP_STEPS": 50,
}



############################################################
#  Weight presets
############################################################

def imagenet_weights_path() -> str:
    """The ResNet-50 ImageNet weights file, downloaded into Keras' cache when missing.

    Returns:
        The local path (``$KERAS_HOME/models/...`` or ``~/.keras/models/...``, where
        Matterport's ``keras.utils.get_file`` call put it).

    Raises:
        RuntimeError (``mrcnn.download.DownloadError``): the file cannot be downloaded
            (no network); the message names the URL and where to place the file.
    """
    from mrcnn.download import download

    cache = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return download(IMAGENET_WEIGHTS_URL,
                    os.path.join(cache, "models", os.path.basename(IMAGENET_WEIGHTS_URL)),
                    file_hash=IMAGENET_WEIGHTS_MD5)


def coco_weights_path(path: str | None = None) -> str:
    """Matterport's COCO weights at ``path``, downloaded there when missing.

    Args:
        path: where the file is, or is downloaded to (default ``COCO_WEIGHTS_PATH``).

    Returns:
        The path.

    Raises:
        RuntimeError (``mrcnn.download.DownloadError``): the download failed (no network).
    """
    path = path or COCO_WEIGHTS_PATH
    if not os.path.isfile(path):
        from mrcnn import utils

        utils.download_trained_weights(path)
    return path


def is_keyword(spec: str) -> bool:
    """Whether a weights value is one of ``WEIGHT_KEYWORDS`` (any case) rather than a path."""
    return isinstance(spec, str) and spec.lower() in WEIGHT_KEYWORDS


def resolve_weights(model: Any, spec: str, coco_path: str | None = None) -> str | None:
    """The file a weights value names: a keyword resolved, a path as it is.

    Args:
        model: the ``MaskRCNN`` (its ``find_last`` for "last", ``get_imagenet_weights``
            for "imagenet").
        spec: "none", "last", "imagenet", "coco" (any case) or a path.
        coco_path: where the COCO weights are, or are downloaded to (default
            ``COCO_WEIGHTS_PATH``).

    Returns:
        The path, or None for "none".

    Raises:
        FileNotFoundError: "last" finds no checkpoint.
        RuntimeError (``mrcnn.download.DownloadError``): "imagenet" or "coco" could not be
            downloaded.
    """
    keyword = spec.lower() if is_keyword(spec) else None
    if keyword == "none":
        return None
    if keyword == "last":
        return model.find_last()
    if keyword == "imagenet":
        return model.get_imagenet_weights()
    if keyword == "coco":
        return coco_weights_path(coco_path)
    return spec


def checkpoint_path(spec: str, base: type[Config], model_dir: str) -> str | None:
    """The file a "last" or PATH weights value names; None when "last" finds no run.

    Args:
        spec: "last" or a path.
        base: the Config class (its NAME finds "last").
        model_dir: the folder of the runs.
    """
    if spec.lower() != "last":
        return spec
    from mrcnn import runs  # reads weight files with Keras: on use only

    try:
        return runs.find_last(model_dir, str(base.NAME))
    except FileNotFoundError:
        return None


def checkpoint_stage(path: str) -> dict | None:
    """The ``train()`` call that wrote a training checkpoint (its stored ``stage``).

    Only the stage attribute is read, not the optimizer state.

    Args:
        path: an HDF5 weights file.

    Returns:
        The stage dict (layers, first_epoch, optimizer, ...), or None for a file without
        training state (Matterport's files, ``save_weights``) or one that cannot be read.
    """
    import h5py

    from mrcnn.weights import STATE_GROUP

    try:
        with h5py.File(path, "r") as f:
            if STATE_GROUP not in f:
                return None
            return json.loads(f[STATE_GROUP].attrs["stage"])
    except (OSError, KeyError, ValueError):
        return None


def trains_from_scratch(spec: str, base: type[Config], model_dir: str) -> bool:
    """Whether a training command starts (or resumes) a run from random weights.

    "none" does. A checkpoint ("last" or a path) does when its run trained all layers from
    epoch 0, as only a from-scratch run of the command lines does (Matterport's schedule
    starts with the heads), so resuming it keeps the one-stage schedule and the recipe its
    optimizer state needs.

    Args:
        spec: the weights value (``--weights``).
        base: the Config class (its NAME finds "last").
        model_dir: the folder of the runs.

    Returns:
        True for a from-scratch run.
    """
    keyword = spec.lower()
    if keyword in ("none", "imagenet", "coco"):
        return keyword == "none"
    path = checkpoint_path(spec, base, model_dir)
    if path is None:
        return False  # loading it reports the missing checkpoint
    from mrcnn.training import resolve_layer_regex  # Keras: on use only

    stage = checkpoint_stage(path) or {}
    return stage.get("first_epoch") == 0 and stage.get("layers") == resolve_layer_regex("all")


def weights_norm(path: str) -> str | None:
    """Normalization of the backbone in an HDF5 weights file of Matterport's layout.

    Returns:
        None (BatchNorm layers: ``bn_conv1``), "gn" (``gn_conv1``), or "unknown".
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            names = {n.decode("utf8") if isinstance(n, bytes) else str(n)
                     for n in root.attrs.get("layer_names", [])}
    except OSError:
        return "unknown"  # load_weights reports an unreadable file
    if "bn_conv1" in names:
        return None
    if "gn_conv1" in names:
        return "gn"
    return "unknown"


def norm_for_weights(spec: str, base: type[Config], model_dir: str,
                     tiny: bool = False) -> dict[str, Any]:
    """Config override that makes NORM match the weights about to be loaded.

    "imagenet" and "coco" give frozen BatchNorm (``NORM=None``, as Matterport trained); a
    path or "last" is looked at: BatchNorm layers give ``NORM=None``, GroupNorm layers
    ``NORM="gn"``; anything else (no file yet, another layout) keeps the config's.

    Args:
        spec: the weights value.
        base: the Config class (its NAME finds "last").
        model_dir: the folder of the runs.
        tiny: a tiny test configuration (its own settings decide; nothing is overridden).

    Returns:
        {} or {"NORM": ...}, to build the Config with (e.g. as a class attribute).
    """
    keyword = spec.lower()
    if tiny or keyword == "none":
        return {}
    if keyword in ("imagenet", "coco"):
        norm = None
    else:
        path = checkpoint_path(spec, base, model_dir)
        if path is None:
            return {}  # loading it reports the missing checkpoint
        norm = weights_norm(path)
        if norm == "unknown":
            return {}
    if (norm in BATCH_NORMS) == (base.NORM in BATCH_NORMS):
        return {}
    print(f"NORM={norm!r} to match the weights ({spec}) instead of the config's "
          f"{base.NORM!r}")
    return {"NORM": norm}


############################################################
#  The from-scratch recipe
############################################################

def user_set(config: Config, key: str) -> bool:
    """Whether a Config attribute was set by the user rather than left at Config's default.

    Set means: given on the instance, defined by a subclass of ``Config`` (even to the
    default value), or different from ``Config``'s class default.

    Args:
        config: a Config instance.
        key: an attribute name, e.g. "LEARNING_RATE".

    Returns:
        True when the user chose the value.
    """
    if key in vars(config):
        return True
    for cls in type(config).__mro__:
        if cls is Config:
            break
        if key in vars(cls):
            return True
    return getattr(config, key) != getattr(Config, key)


def starts_from_random_weights(loaded_layers: Iterable[str], weighted_layers: Iterable[str],
                               resumed_stage: dict | None = None) -> bool:
    """Whether a training run starts from a randomly initialized backbone.

    Args:
        loaded_layers: names of the layers that ``load_weights`` has filled so far.
        weighted_layers: names of every layer with weights in the model; those outside
            Matterport's heads (``rpn_*``, ``fpn_*``, ``mrcnn_*``) are the backbone.
        resumed_stage: the stage of the checkpoint the run resumes (``checkpoint_stage``),
            if it resumes one.

    Returns:
        True when no backbone layer got weights, or when the run resumes a checkpoint of a
        run that trained with the recipe (its optimizer state needs the same settings).
    """
    from mrcnn.training import LAYER_REGEX  # Keras: on use only

    if resumed_stage is not None and resumed_stage.get("from_scratch"):
        return True
    heads = re.compile(LAYER_REGEX["heads"])
    backbone = {name for name in weighted_layers if not heads.fullmatch(name)}
    return not backbone & set(loaded_layers)


def apply_from_scratch(config: Config, learning_rate: float,
                       layers: str = "all") -> tuple[Config, float, str]:
    """The Config and learning rate of a ``train()`` call from random weights.

    The recipe fills the ``FROM_SCRATCH`` settings that the user did not set
    (``user_set``); the user's own values stay. ``config`` is not changed: a shallow copy
    gets the recipe's values, so that the run's ``config.json`` records what trained.

    ``learning_rate`` is ``train()``'s argument: equal to the Config's own LEARNING_RATE
    (Matterport's ``learning_rate=config.LEARNING_RATE``) it means "the configured rate",
    and becomes the recipe's when the recipe sets LEARNING_RATE; any other value is the
    caller's choice and stays.

    Args:
        config: the user's Config.
        learning_rate: the rate passed to ``train()``.
        layers: ``train()``'s layers (a warning goes into the message unless all train).

    Returns:
        (config with the recipe, learning rate to train with, one line saying so).
    """
    filled = {key: value for key, value in FROM_SCRATCH.items() if not user_set(config, key)}
    recipe = copy.copy(config)
    for key, value in filled.items():
        setattr(recipe, key, value)
    if "LEARNING_RATE" in filled and learning_rate == config.LEARNING_RATE:
        learning_rate = recipe.LEARNING_RATE
    kept = [f"{key}={getattr(config, key)!r}" for key, value in FROM_SCRATCH.items()
            if key not in filled and getattr(config, key) != value]
    if learning_rate != recipe.LEARNING_RATE:
        kept.append(f"train(learning_rate={learning_rate!r})")
    settings = ", ".join(f"{key}={getattr(recipe, key)!r}" for key in FROM_SCRATCH)
    message = f"Training from random weights with the from-scratch recipe: {settings}"
    if kept:
        message += f" (yours kept: {', '.join(kept)})"
    if layers not in ("all", ".*"):
        message += (f"; layers={layers!r} leaves the random backbone untrained, "
                    "layers='all' trains it")
    message += (f". To train with {type(config).__name__}'s own settings, set "
                "FROM_SCRATCH_RECIPE = \"off\" in it.")
    return recipe, learning_rate, message
