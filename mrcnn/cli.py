"""Command-line building blocks of the samples: errors, arguments, configs, weights, schedules.

The samples are meant to be copied as the start of a project, so what they have in common
is library API (``from mrcnn import cli``) rather than a helper module next to them:

- ``cli_errors``: bad input (a missing folder, a malformed annotation file, an unreadable
  image) ends the program with ONE line on stderr naming the file and exit status 2, not a
  traceback. Code raises ``InputError`` (or calls ``fail``) for such cases.
- ``resolve_weights`` / ``load_weights``: Matterport's ``--weights`` keywords
  ``none | last | imagenet | coco | PATH`` (resolved by ``mrcnn.presets``, as
  ``MaskRCNN.load_weights`` does). ``none``, ``last`` and a path work offline;
  ``imagenet`` and ``coco`` download files and fail with one clear line without network.
- ``make_config``: builds a Config subclass with overrides, and for tests a *tiny* variant
  (``mrcnn.tiny.tiny_config``: 64 px images, a five-conv backbone, a handful of ROIs; one
  step per epoch) when ``--tiny`` is given or the environment variable ``MRCNN_TINY=1`` is
  set (``mrcnn.tiny.tiny_requested``), so that the real command lines can be exercised end
  to end on a CPU in seconds.
- ``norm_for_weights``: NORM follows the weights (``mrcnn.presets.norm_for_weights``:
  frozen BatchNorm for Matterport's ImageNet/COCO files and checkpoints trained from them,
  GroupNorm for GN checkpoints), so a by-name load never silently skips the normalization
  layers.
- ``setup_model``: config + ``MaskRCNN`` + weights, as every command starts;
  ``run_main``: parse, run, report bad input; ``add_schedule_arguments``,
  ``stack_instance_masks``: the pieces the samples' parsers and one-class datasets share.
- ``stage_epochs``, ``run_schedule``: Matterport's stage-wise training (heads, then deeper
  layers), skipping stages that a resumed run (``--weights=last``) has already completed.
- ``FROM_SCRATCH``, ``trains_from_scratch`` (``mrcnn.presets``): with ``--weights=none``
  (or resuming such a run) the stages collapse into one: all layers from the first step,
  with the measured from-scratch recipe (warm-up, optimizer, rate, schedule) instead of
  Matterport's fine-tuning schedule, which trains a random backbone's heads for half the
  run. Other runs get ``FROM_SCRATCH_RECIPE="off"``, so that ``MaskRCNN.train`` keeps
  their settings exactly as the command line chose them.

Default locations are relative to the working directory: checkpoints under ``./logs``,
Matterport's COCO weights at ``./mask_rcnn_coco.h5``.

Nothing here imports TensorFlow or Keras at module level: a sample validates its command
line and its dataset first, and only then builds the model, so bad input fails fast.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import sys
from typing import Any, Callable, Iterator, NoReturn, Sequence

import numpy as np

from mrcnn import presets  # NumPy only
from mrcnn.config import Config  # NumPy only
from mrcnn.dataset import Dataset, load_image_file
from mrcnn.datasets.files import (  # noqa: F401  (cli's names since the samples used them)
    require_dir,
    require_file,
    stack_instance_masks,
    verify_image,
)
from mrcnn.errors import InputError, fail, one_line  # noqa: F401  (re-exported)
from mrcnn.tiny import TINY_ENV, tiny_requested  # noqa: F401  (part of this module's API)

# Checkpoints and TensorBoard logs, unless --logs says otherwise.
DEFAULT_LOGS_DIR = os.path.abspath("logs")

# The weight presets (mrcnn.presets): where --weights=coco looks for (and, with network,
# downloads) Matterport's COCO weights, the class-specific layers skipped when starting from
# weights trained on other classes, the --weights keywords.
COCO_WEIGHTS_PATH = presets.COCO_WEIGHTS_PATH
HEAD_LAYERS = presets.HEAD_LAYERS
WEIGHT_KEYWORDS = presets.WEIGHT_KEYWORDS

############################################################
#  Errors
############################################################


@contextlib.contextmanager
def cli_errors(prog: str) -> Iterator[None]:
    """Turn ``InputError`` into one stderr line and ``SystemExit(2)`` (argparse's style).

    Args:
        prog: program name printed in front of the message, e.g. "nucleus.py".
    """
    try:
        yield
    except InputError as err:
        sys.stdout.flush()
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(2) from None


def run_main(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], Any],
             argv: Sequence[str] | None = None) -> Any:
    """Parse ``argv`` and call ``run(args)``; ``InputError`` becomes one line, exit 2.

    Args:
        parser: the sample's parser.
        run: runs the parsed command; raises ``InputError`` on bad input.
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        What ``run`` returns (tests call ``main([...])`` in-process and check it).
    """
    args = parser.parse_args(argv)
    with cli_errors(parser.prog):
        return run(args)


def _read_or_fail(read, path) -> np.ndarray:
    """``read()`` with read errors turned into ``InputError`` naming the file."""
    try:
        return read()
    except (OSError, ValueError) as err:
        cause = err.__cause__ or err
        fail(f"cannot read image {path}: {one_line(cause) or type(cause).__name__}")


def load_dataset_image(dataset: Dataset, image_id: int) -> np.ndarray:
    """``dataset.load_image`` with read errors turned into ``InputError`` naming the file."""
    return _read_or_fail(lambda: dataset.load_image(image_id),
                         dataset.image_info[image_id].get("path"))


def read_image(path: str) -> np.ndarray:
    """Read any image file as [H, W, 3] uint8 RGB (gray, RGBA and 16-bit handled).

    Raises:
        InputError: the file is missing or cannot be decoded.
    """
    require_file(path, "image file")
    return _read_or_fail(lambda: load_image_file(path), path)


def timestamp() -> str:
    """Current time as Matterport names result files: 20260101T120000."""
    return f"{datetime.datetime.now():%Y%m%dT%H%M%S}"


############################################################
#  Configuration
############################################################

def add_images_argument(parser: argparse.ArgumentParser) -> None:
    """--images DIR|GLOB for ``detect`` over image files."""
    parser.add_argument("--images", default=None, metavar="DIR or GLOB",
                        help="detect: image files to detect on (a folder or a glob such as "
                             "'photos/*.jpg'); writes detect_<name>.png pictures and "
                             "detections.json (COCO-style records)")


def image_files(pattern: str) -> list[str]:
    """The files of ``--images``, or one error line when there are none (before any model)."""
    from mrcnn import predict

    try:
        return predict.list_images(pattern)
    except FileNotFoundError as err:
        fail(str(err))


def detect_files(model, paths: Sequence[str], class_names: Sequence[str],
                 output_dir: str) -> dict[str, Any]:
    """``mrcnn.predict.detect_images`` with a summary line and one line per unreadable file."""
    from mrcnn import predict

    summary = predict.detect_images(model, paths, class_names, output_dir)
    for error in summary["errors"]:
        print(f"warning: skipped {error['file_name']}: {one_line(error['error'])}",
              file=sys.stderr)
    print(f"{summary['images']} images, {summary['detections']} detections; pictures in "
          f"{output_dir}, results in {summary['result_file']}")
    return summary


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """--set KEY=VALUE ... (Config overrides, detectron2's convention)."""
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override Config settings, e.g. --set BACKBONE=resnet18 "
                             "IMAGE_MIN_DIM=256 STEPS_PER_EPOCH=50 (values are Python "
                             "literals; bare words are strings); shown in the config "
                             "display and saved with the run")


def settings(args: Any, base: type[Config]) -> dict[str, Any]:
    """The ``--set`` overrides of ``args`` for ``base``; one error line for a bad key."""
    from mrcnn.config import parse_overrides

    try:
        return parse_overrides(getattr(args, "set", None) or [], base)
    except ValueError as err:
        fail(str(err))


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--logs, --tiny, --set and --workers."""
    parser.add_argument("--logs", default=DEFAULT_LOGS_DIR, metavar="/path/to/logs/",
                        help=f"logs and checkpoints folder (default: {DEFAULT_LOGS_DIR})")
    parser.add_argument("--tiny", action="store_true",
                        help="smoke-test mode: a seconds-per-step tiny model (64 px, five-conv "
                             f"backbone), one step per epoch; also {TINY_ENV}=1. Results are "
                             "meaningless; it checks that data, training and outputs work")
    add_set_argument(parser)
    add_workers_argument(parser)


def add_workers_argument(parser: argparse.ArgumentParser) -> None:
    """--workers N (Config.DATA_WORKERS), see ``workers_override``."""
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="train: data loading worker threads (default: "
                             "config.DATA_WORKERS, one per usable core; 0 loads images in "
                             "the training loop)")


def workers_override(args: Any) -> dict[str, Any]:
    """Config overrides of --workers: ``{"DATA_WORKERS": N}``, or {} when not given.

    Raises:
        InputError: N is negative.
    """
    workers = getattr(args, "workers", None)
    if workers is None:
        return {}
    if workers < 0:
        fail(f"--workers must be 0 or more, got {workers}")
    return {"DATA_WORKERS": workers}


def add_schedule_arguments(parser: argparse.ArgumentParser,
                           stages: Sequence[tuple[Sequence[str], str]]) -> None:
    """One "train up to this epoch" option per stage of a schedule, then --lr.

    Args:
        parser: the sample's parser.
        stages: (flags, help) per stage, e.g. ``(["--heads-epochs"], "train: heads up to
            this epoch (default 20)")``; the value is an int or None (not given).
    """
    for flags, text in stages:
        parser.add_argument(*flags, type=int, default=None, help=text)
    parser.add_argument("--lr", type=float, default=None,
                        help="train: learning rate (default: config.LEARNING_RATE)")


def tiny_overrides(base: type[Config]) -> dict[str, Any]:
    """What ``--tiny`` changes on top of ``mrcnn.tiny.tiny_config``: one training and one
    validation step per epoch, at most two images per batch."""
    return {"IMAGES_PER_GPU": min(int(base.IMAGES_PER_GPU), 2),
            "STEPS_PER_EPOCH": 1, "VALIDATION_STEPS": 1}


def make_config(base: type[Config], tiny: bool = False, *, weights: str | None = None,
                model_dir: str = DEFAULT_LOGS_DIR, settings: dict[str, Any] | None = None,
                from_scratch: bool = False, **overrides: Any) -> Config:
    """Instantiate ``base`` with class-attribute overrides (or its tiny test variant).

    Config computes derived attributes in ``__init__``, so overrides are applied on a
    subclass rather than on the instance.

    Args:
        base: a Config subclass, e.g. ``NucleusConfig``.
        tiny: build ``mrcnn.tiny.tiny_config(base, ...)`` instead: 64 px images, a
            five-conv backbone, a few ROIs (``TINY_SETTINGS``) and ``tiny_overrides``.
            Its NAME is "tiny<name>", so tiny checkpoints never mix with real ones under
            ``--logs`` (``--weights=last`` with ``--tiny`` finds the last tiny run).
        weights: the --weights value; NORM then follows the weights (``norm_for_weights``).
        model_dir: the --logs folder (to find "last").
        settings: the user's ``--set`` overrides, applied last (they win over everything).
        from_scratch: apply ``FROM_SCRATCH`` under the other overrides (a training run from
            random weights, ``trains_from_scratch``; not with ``tiny``, whose own settings
            decide, nor when the Config or ``--set`` says ``FROM_SCRATCH_RECIPE="off"``).
            Without it (or with ``tiny``) the config gets ``FROM_SCRATCH_RECIPE="off"``:
            ``MaskRCNN.train`` then trains with the settings chosen here (a
            ``--set FROM_SCRATCH_RECIPE=auto`` wins).
        **overrides: attribute values, e.g. STEPS_PER_EPOCH=100 (tiny settings win).

    Returns:
        The configuration instance.

    Raises:
        InputError: the resulting configuration is invalid (Config's message).
    """
    if weights is not None:
        overrides = {**norm_for_weights(weights, base, model_dir, tiny), **overrides}
    switch = {**overrides, **(settings or {})}.get(
        "FROM_SCRATCH_RECIPE", getattr(base, "FROM_SCRATCH_RECIPE", "auto"))
    if from_scratch and not tiny and switch != "off":
        overrides = {**FROM_SCRATCH, **overrides}
    else:
        overrides = {"FROM_SCRATCH_RECIPE": "off", **overrides}
    try:
        if tiny:
            from mrcnn.tiny import tiny_config

            return tiny_config(base, **{**overrides, **tiny_overrides(base),
                                        **(settings or {})})
        overrides = {**overrides, **(settings or {})}
        cls = type(base.__name__, (base,), overrides) if overrides else base
        return cls()
    except ValueError as err:
        fail(str(err))


# The from-scratch recipe (``mrcnn.presets.FROM_SCRATCH``): Config overrides for a run that
# starts from random weights. The user's --set wins over each value.
FROM_SCRATCH: dict[str, Any] = presets.FROM_SCRATCH


def _checkpoint_path(spec: str, base: type[Config], model_dir: str) -> str | None:
    """``mrcnn.presets.checkpoint_path``: the file of a "last" or PATH --weights value."""
    return presets.checkpoint_path(spec, base, model_dir)


def trains_from_scratch(spec: str, base: type[Config], model_dir: str) -> bool:
    """Whether a training command starts (or resumes) a run from random weights.

    See ``mrcnn.presets.trains_from_scratch``: "none" does, and a checkpoint whose run
    trained all layers from epoch 0.

    Args:
        spec: the --weights value.
        base: the sample's Config class (its NAME finds "last").
        model_dir: the --logs folder.

    Returns:
        True for a from-scratch run.
    """
    return presets.trains_from_scratch(spec, base, model_dir)


def stage_epochs(values: Sequence[int | None], defaults: Sequence[int],
                 tiny: bool = False) -> list[int]:
    """Epoch to train up to for each stage of a schedule.

    Args:
        values: the command-line values (None: not given).
        defaults: Matterport's schedule.
        tiny: when a value was not given, every stage ends at epoch 1: only the first
            stage trains (one epoch of one step), the later ones are skipped.

    Returns:
        One epoch number per stage.
    """
    out = []
    for value, default in zip(values, defaults):
        if value is None:
            value = 1 if tiny else default
        if value < 0:
            fail(f"epochs must be >= 0, got {value}")
        out.append(int(value))
    return out


############################################################
#  Model and weights
############################################################

def build_model(mode: str, config: Config, model_dir: str):
    """``modellib.MaskRCNN(mode, config, model_dir)``; imports the model code lazily."""
    from mrcnn import model as modellib

    return modellib.MaskRCNN(mode=mode, config=config, model_dir=model_dir)


def add_weights_argument(parser: argparse.ArgumentParser, flag: str = "--weights",
                         required: bool = True) -> None:
    """Matterport's --weights (or --model) argument."""
    parser.add_argument(flag, required=required, metavar="none|last|imagenet|coco|PATH",
                        help="weights to start from: 'none' (random init), 'last' (latest "
                             "checkpoint under --logs), 'imagenet' or 'coco' (downloaded: "
                             "need network), or the path of a weights file")


def find_last(model_dir: str, name: str) -> str:
    """``mrcnn.runs.find_last``: the last sound checkpoint of config NAME ``name`` under
    ``model_dir``, before any model is built (imported on call: it reads weight files
    with Keras, and this module stays free of it until a model is needed).

    Raises:
        FileNotFoundError: no checkpoint of ``name`` under ``model_dir``.
    """
    from mrcnn import runs

    return runs.find_last(model_dir, name)


def check_weights_spec(spec: str, base: type[Config] | None = None,
                       model_dir: str = DEFAULT_LOGS_DIR, tiny: bool = False) -> None:
    """Fail early, before the dataset is read and the model built, on a weights file that
    does not exist or (with ``base``) a "last" that finds no checkpoint.

    Args:
        spec: the --weights value.
        base: the sample's Config class (its NAME, "tiny<NAME>" with ``tiny``).
        model_dir: the --logs folder.
        tiny: --tiny.
    """
    keyword = spec.lower()
    if keyword not in WEIGHT_KEYWORDS and not os.path.isfile(spec):
        fail(f"weights file not found: {spec} (expected a file or one of "
             f"{', '.join(WEIGHT_KEYWORDS)})")
    if keyword == "last" and base is not None:
        name = ("tiny" if tiny else "") + str(base.NAME)
        try:
            find_last(model_dir, name)
        except FileNotFoundError as err:
            fail(f"--weights=last: no checkpoint of '{name}' found under {model_dir} "
                 f"({err.strerror or err}); train first or give a path")


# NORM values whose layers hold BatchNorm weights (None: derived from TRAIN_BN).
BATCH_NORMS = presets.BATCH_NORMS


def norm_for_weights(spec: str, base: type[Config], model_dir: str,
                     tiny: bool = False) -> dict[str, Any]:
    """Config override that makes NORM match the weights about to be loaded.

    See ``mrcnn.presets.norm_for_weights``: the samples default to GroupNorm (they train
    from scratch here); "imagenet", "coco" and BatchNorm checkpoints give ``NORM=None``,
    GroupNorm checkpoints ``NORM="gn"``.

    Args:
        spec: the --weights value.
        base: the sample's Config class (its NAME finds "last").
        model_dir: the --logs folder.
        tiny: --tiny (its own settings decide; nothing is overridden).

    Returns:
        {} or {"NORM": ...}, for ``make_config``.
    """
    return presets.norm_for_weights(spec, base, model_dir, tiny)


def weights_norm(path: str) -> str | None:
    """``mrcnn.presets.weights_norm``: None (BatchNorm), "gn" (GroupNorm) or "unknown"."""
    return presets.weights_norm(path)


def resolve_weights(model, spec: str, coco_path: str = COCO_WEIGHTS_PATH) -> str | None:
    """Path of the weights that ``spec`` names (Matterport's keywords).

    Args:
        model: the ``MaskRCNN`` (for ``find_last`` and ``get_imagenet_weights``).
        spec: "none", "last", "imagenet", "coco" or a path.
        coco_path: where the COCO weights are, or are downloaded to.

    Returns:
        The path, or None for "none".

    Raises:
        InputError: no checkpoint for "last", a failed download, a missing file.
    """
    keyword = spec.lower()
    if not presets.is_keyword(spec):
        check_weights_spec(spec)
    try:
        return presets.resolve_weights(model, spec, coco_path)
    except FileNotFoundError as err:
        if keyword != "last":
            raise
        fail(f"--weights=last: no checkpoint of '{model.config.NAME}' found under "
             f"{model.model_dir} ({err.strerror or err}); train first or give a path")
    except RuntimeError as err:
        fail(f"--weights={keyword} needs network access: {one_line(err)}")


def load_weights(model, spec: str, exclude_heads: bool = False,
                 coco_path: str = COCO_WEIGHTS_PATH) -> str | None:
    """Resolve ``spec`` and load it into ``model`` by layer name, as Matterport's samples.

    Args:
        model: the ``MaskRCNN``.
        spec: see ``resolve_weights``.
        exclude_heads: with "coco", skip the class-specific ``HEAD_LAYERS`` (the target
            dataset has other classes).
        coco_path: see ``resolve_weights``.

    Returns:
        The path loaded, or None ("none": the model keeps its random initialization).

    Raises:
        InputError: see ``resolve_weights``; or the file does not fit the model.
    """
    path = resolve_weights(model, spec, coco_path)
    if path is None:
        print("Weights: none (random initialization)")
        return None
    from mrcnn import model as modellib

    exclude = list(HEAD_LAYERS) if exclude_heads and spec.lower() == "coco" else None
    # Our checkpoints and Matterport-format files load by layer name (lenient, as
    # Matterport's samples did); a Keras 3 .weights.h5 file can only be loaded whole.
    by_name = not modellib.is_keras3_weights_file(path)
    print(f"Loading weights {path}")
    try:
        model.load_weights(path, by_name=by_name, exclude=exclude if by_name else None)
    except (ValueError, OSError) as err:
        fail(f"cannot load weights {path}: {one_line(err)}")
    return path


def setup_model(mode: str, base: type[Config], weights: str, model_dir: str,
                tiny: bool = False, exclude_heads: bool = False,
                settings: dict[str, Any] | None = None, from_scratch: bool = False,
                **overrides: Any):
    """What every sample command does before its work: config, model, weights.

    ``make_config`` (NORM following the weights, tiny variant with ``tiny``), print the
    config, build ``MaskRCNN(mode, config, model_dir)`` and ``load_weights``.

    Args:
        mode: "training" or "inference".
        base: the sample's Config class.
        weights: the --weights (--model) value.
        model_dir: the --logs folder.
        tiny: --tiny.
        exclude_heads: see ``load_weights``.
        settings: the user's ``--set`` overrides (``settings(args, base)``), applied last.
        from_scratch: a training run from random weights: the ``FROM_SCRATCH`` recipe.
        **overrides: Config attributes, e.g. NUM_CLASSES.

    Returns:
        The ``MaskRCNN``.
    """
    config = make_config(base, tiny, weights=weights, model_dir=model_dir, settings=settings,
                         from_scratch=from_scratch, **overrides)
    config.display()
    model = build_model(mode, config, model_dir)
    if load_weights(model, weights, exclude_heads=exclude_heads) is None and \
            mode == "inference":
        print("Warning: no weights loaded: the results of an untrained model mean nothing")
    return model


def run_schedule(model, dataset_train, dataset_val, stages: Sequence[tuple], *,
                 augmentation=None, from_scratch: bool = False) -> None:
    """Train stage by stage, each up to its epoch; stages already done are skipped.

    Args:
        model: a training ``MaskRCNN``.
        dataset_train, dataset_val: prepared datasets.
        stages: (description, layers, epochs, learning_rate) per stage.
        augmentation: albumentations transform or None.
        from_scratch: random initial weights (``trains_from_scratch``): one stage instead,
            all layers up to the last stage's epoch, at the first stage's learning rate.
    """
    if from_scratch and stages:
        last_epoch = max(stage[2] for stage in stages)
        stages = [("Train all layers from random weights", "all", last_epoch, stages[0][3])]
    for description, layers, epochs, learning_rate in stages:
        if epochs <= model.epoch:
            print(f"Skipping '{description}': already at epoch {model.epoch} >= {epochs}")
            continue
        print(f"{description} (layers={layers!r}, up to epoch {epochs}, lr={learning_rate})")
        model.train(dataset_train, dataset_val, learning_rate=learning_rate, epochs=epochs,
                    layers=layers, augmentation=augmentation)
