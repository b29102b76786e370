"""A ``--data`` value to a prepared dataset: a COCO json, a VIA json, a DSB folder, ``module:Name``.

- ``annotations.json`` holding ``images``, ``annotations`` and ``categories``: COCO
  (``coco.CocoDataset``); any other json object: VIA (``via.ViaDataset``). Images are in
  ``images`` (default: the json's folder).
- a folder: the DSB2018 layout of one subset (``<folder>/<image_id>/images/<image_id>.png``,
  ``<folder>/<image_id>/masks/*.png``; ``dsb.NucleusDataset``).
- ``module:Name``: the user's own code, imported by its name (the current folder is searched
  first): ``Name`` is a ``Dataset`` subclass, created with no arguments and, when ``images``
  is given, filled by its ``load(images)`` method; or a function returning a ``Dataset``,
  called as ``Name()`` or ``Name(images)``. This is code the user names on the command line;
  nothing read from a data file is ever imported.

``split_dataset`` holds out a seeded share of a dataset's images for validation.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import sys
from typing import Any

import numpy as np

from mrcnn.dataset import Dataset
from mrcnn.errors import InputError

# module:Name, module a dotted Python name (a Windows path "C:\..." is not one).
_CODE_SPEC = re.compile(r"([A-Za-z_][\w.]*):([A-Za-z_]\w*)")


def is_code_spec(spec: str) -> bool:
    """Whether ``spec`` names user code (``module:Name``) rather than a file or folder."""
    return bool(_CODE_SPEC.fullmatch(spec)) and not os.path.exists(spec)


def json_kind(path: str) -> str:
    """"coco" or "via": what kind of annotation file ``path`` is (from its top level)."""
    from mrcnn.datasets.files import read_json

    data = read_json(path)
    if isinstance(data, dict) and "images" in data and "annotations" in data:
        return "coco"
    return "via"


def load_dataset(spec: str, images: str | None = None, class_key: str = "class",
                 class_names: list[str] | None = None, allow_outside: bool = False,
                 verify: bool = True) -> Dataset:
    """Read the dataset a ``--data`` value names, prepared.

    Args:
        spec: a COCO or VIA json file, a DSB subset folder, or ``module:Name``.
        images: the image folder of a json file (default: the json's folder); passed to
            ``module:Name`` code.
        class_key: VIA: the ``region_attributes`` key of the class name.
        class_names: VIA: the classes in id order (default: the names found, sorted); a
            validation set passes its training set's, so the ids agree.
        allow_outside: accept image and mask paths that leave the image folder.
        verify: DSB: decode-check the images and masks now.

    Returns:
        The prepared ``Dataset``.

    Raises:
        InputError: the spec names nothing usable, or the data is malformed (naming it).
    """
    if is_code_spec(spec):
        dataset = _from_code(spec, images)
    elif os.path.isdir(spec):
        from mrcnn.datasets.dsb import NucleusDataset

        dataset = NucleusDataset()
        folder = os.path.abspath(spec)
        entries = sorted(os.listdir(folder))
        if not any(os.path.isdir(os.path.join(folder, d, "images")) for d in entries):
            subsets = [d for d in entries if os.path.isdir(os.path.join(folder, d))]
            hint = f" (one of its subsets, e.g. {os.path.join(spec, subsets[0])}?)" \
                if subsets else ""
            raise InputError(f"--data {spec}: not a DSB subset folder: expected "
                             f"<folder>/<image_id>/images/<image_id>.png{hint}")
        dataset.load_nucleus(os.path.dirname(folder), os.path.basename(folder),
                             require_masks=True, verify=verify, allow_outside=allow_outside)
    elif os.path.isfile(spec) and spec.lower().endswith(".json"):
        if json_kind(spec) == "coco":
            from mrcnn.datasets.coco import CocoDataset

            dataset = CocoDataset()
            dataset.load_coco_json(spec, images, allow_outside=allow_outside)
        else:
            from mrcnn.datasets.via import ViaDataset

            dataset = ViaDataset()
            dataset.load_via(spec, images, class_key=class_key, class_names=class_names,
                             allow_outside=allow_outside)
    elif not os.path.exists(spec):
        raise InputError(f"--data {spec}: no such file or folder (expected a COCO or VIA "
                         ".json file, a DSB folder, or module:Name of your Dataset)")
    else:
        raise InputError(f"--data {spec}: not a .json file, a folder or module:Name")
    if not hasattr(dataset, "class_names"):
        dataset.prepare()
    if not len(dataset.image_ids):
        raise InputError(f"--data {spec}: no images")
    if dataset.num_classes < 2:
        raise InputError(f"--data {spec}: no object classes")
    return dataset


def _from_code(spec: str, images: str | None) -> Dataset:
    module_name, name = spec.split(":")
    # The console script does not search the current folder; the user's module is there.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise InputError(f"--data {spec}: cannot import {module_name} ({err})") from None
    target = getattr(module, name, None)
    if target is None:
        raise InputError(f"--data {spec}: {module_name} has no {name}")
    if isinstance(target, type) and issubclass(target, Dataset):
        dataset = target()
        if images is not None:
            if not hasattr(dataset, "load"):
                raise InputError(f"--data {spec} with --images: {name} has no load(images) "
                                 "method")
            dataset.load(images)
    elif callable(target):
        dataset = target(images) if images is not None else target()
    else:
        raise InputError(f"--data {spec}: {name} is neither a Dataset subclass nor a function")
    if not isinstance(dataset, Dataset):
        raise InputError(f"--data {spec}: {name} gave a {type(dataset).__name__}, not an "
                         "mrcnn Dataset")
    return dataset


def split_dataset(dataset: Dataset, fraction: float = 0.1,
                  seed: int = 0) -> tuple[Dataset, Dataset]:
    """Split a prepared dataset into training and validation images (seeded).

    Both parts are shallow copies sharing the classes (same class ids) with the images
    divided: at least one validation image, and one training image is left (a dataset of
    one image is used for both).

    Args:
        dataset: a prepared dataset.
        fraction: validation share of the images.
        seed: the draw's seed.

    Returns:
        (training, validation), both prepared.
    """
    count = len(dataset.image_info)
    if count < 2:
        return dataset, dataset
    size = max(1, min(count - 1, int(round(fraction * count))))
    picked = set(np.random.default_rng(seed).choice(count, size=size, replace=False).tolist())
    parts = []
    for keep in (lambda i: i not in picked, lambda i: i in picked):
        part = copy.copy(dataset)
        part.image_info = [info for i, info in enumerate(dataset.image_info) if keep(i)]
        part.prepare()
        parts.append(part)
    return parts[0], parts[1]


def describe(dataset: Dataset) -> dict[str, Any]:
    """The classes of a dataset as the ``mrcnn`` command records them with a run.

    Returns:
        {"class_names": [...], "sources": [[source, source class id] per internal id]}.
    """
    return {"class_names": [str(n) for n in dataset.class_names],
            "sources": [[str(c["source"]), _plain(c["id"])] for c in dataset.class_info]}


def _plain(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)
