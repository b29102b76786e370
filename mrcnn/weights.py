"""Save and load weights by layer name in the HDF5 layout of Matterport's files.

Checkpoints are written in the Keras 2 HDF5 weights layout that Matterport's
``mask_rcnn_coco.h5`` uses: a root group with a ``layer_names`` attribute and one group per
layer whose ``weight_names`` attribute lists its variables (``conv1/kernel:0``, ...). Layers
are matched by name, so checkpoints load across training and inference models, with
``exclude``, and Matterport / ImageNet files load the same way. (Keras 3's own
``.weights.h5`` keys layers by class and creation order, ``conv2d_12``, not by name; such
files are loaded by Keras itself, whole-model only.)

Our files add, invisibly to Matterport/Keras 2 readers: a CRC-32 of each array (attribute
``crc32`` of its dataset), verified on load, so a corrupted file names the layer that
fails instead of loading changed weights; a root attribute ``all_finite``; and, in
training checkpoints, a ``training_state`` group (optimizer, epoch, schedule) for an exact
resume. Files without them (Matterport's) load as before.
"""

from __future__ import annotations

import contextlib
import os
import warnings
import zlib
from collections import OrderedDict
from typing import Callable

import h5py
import keras
import numpy as np

from mrcnn.errors import InputError
from mrcnn.paths import publish


def _decode(names) -> list[str]:
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in names]


# Name of the group of a training checkpoint that holds what an exact resume needs.
STATE_GROUP = "training_state"


def checksum(array: np.ndarray) -> int:
    """CRC-32 of an array's bytes (C order), as stored in our files' ``crc32`` attributes."""
    return zlib.crc32(np.ascontiguousarray(array).view(np.uint8).reshape(-1)) & 0xFFFFFFFF


def _read_keras2(root: h5py.Group, verify: bool = True) -> "OrderedDict[str, list[np.ndarray]]":
    out: OrderedDict[str, list[np.ndarray]] = OrderedDict()
    for layer_name in _decode(root.attrs["layer_names"]):
        group = root[layer_name]
        for weight_name in _decode(group.attrs.get("weight_names", [])):
            # The owner of a variable is the path component before its own name:
            # "conv1/kernel:0" -> conv1, "rpn_conv_shared/bias:0" (inside rpn_model) ->
            # rpn_conv_shared.
            parts = weight_name.split("/")
            owner = parts[-2] if len(parts) >= 2 else layer_name
            dataset = group[weight_name]
            array = np.asarray(dataset)
            stored = dataset.attrs.get("crc32")
            if verify and stored is not None and checksum(array) != int(stored):
                raise ValueError(f"layer {owner!r}: weight {weight_name!r} fails its CRC-32 "
                                 "check (the file is corrupted)")
            out.setdefault(owner, []).append(array)
    return out


def open_weights_file(filepath: str) -> h5py.File:
    """Open an HDF5 file for reading; errors name the file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable HDF5 file (truncated, corrupted, another format).
    """
    if not os.path.exists(filepath):
        raise FileNotFoundError(f"Weights file not found: {filepath}")
    try:
        return h5py.File(filepath, "r")
    except (OSError, RuntimeError) as err:
        raise ValueError(f"{filepath} is not a readable HDF5 weights file (truncated or "
                         f"corrupted?): {err}") from err


def is_keras3_weights_file(filepath: str) -> bool:
    """True for a Keras 3 ``model.save_weights`` file (layers keyed by class, not name)."""
    with open_weights_file(filepath) as f, named_read_errors(filepath):
        root = f["model_weights"] if "model_weights" in f else f
        return "layer_names" not in root.attrs and "layers" in f


# What h5py raises on a damaged file or one being rewritten while it is read (a truncated or
# overwritten block): messages that do not name the file.
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)


@contextlib.contextmanager
def named_read_errors(filepath: str):
    """Context manager: h5py's errors inside the block become one InputError naming
    ``filepath`` (what h5py says about a damaged file does not name it).

    Args:
        filepath: the file being read.
    """
    try:
        yield
    except InputError:
        raise
    except _H5_ERRORS as err:
        raise InputError(f"Cannot read {filepath} (damaged, or being written by another "
                         f"process?): {type(err).__name__}: {err}") from err


def checkpoint_problem(filepath: str) -> str | None:
    """Cheap soundness check of a checkpoint (no data read): why not to use it, or None.

    Checks that the file opens as HDF5 in our layout and was not written with non-finite
    weights (the ``all_finite`` attribute; files without it pass).

    Args:
        filepath: an HDF5 weights file.

    Returns:
        A reason, or None when the file looks sound.
    """
    try:
        with open_weights_file(filepath) as f:
            root = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in root.attrs:
                return "no 'layer_names' attribute (not a weights file of this layout)"
            if not bool(root.attrs.get("all_finite", True)):
                return "it holds non-finite (NaN/inf) weights"
    except (ValueError, OSError, RuntimeError) as err:
        return str(err)
    return None


def read_weights(filepath: str) -> "OrderedDict[str, list[np.ndarray]]":
    """Read an HDF5 weights file into ``{layer name: [arrays]}``.

    Args:
        filepath: an HDF5 file in the Keras 2 / Matterport layout (our checkpoints too).

    Returns:
        Ordered mapping of layer names to their weight arrays.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not an HDF5 weights file of that layout, or it is
            corrupted (a CRC-32 mismatch names the layer); the message names the file.
    """
    with open_weights_file(filepath) as f, named_read_errors(filepath):
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs:
            try:
                return _read_keras2(root)
            except ValueError as err:  # a CRC-32 mismatch, naming the layer
                raise InputError(f"Cannot read {filepath}: {err}") from err
    raise InputError(f"{filepath}: no 'layer_names' attribute; expected an HDF5 weights "
                     "file in the Keras 2 / Matterport layout (as written by "
                     "MaskRCNN.save_weights and the training checkpoints).")


def layer_arrays(model: keras.Model) -> "OrderedDict[str, list[np.ndarray]]":
    """The model's weights as NumPy arrays, by layer name (nested models flattened)."""
    return OrderedDict((name, [keras.ops.convert_to_numpy(w.value) for w in layer.weights])
                       for name, layer in weighted_layers(model).items())


def nonfinite_layers(arrays: "OrderedDict[str, list[np.ndarray]]") -> list[str]:
    """Names of the layers with a NaN or infinite weight."""
    return [name for name, values in arrays.items()
            if not all(_finite(a) for a in values)]


def _finite(array: np.ndarray) -> bool:
    array = np.asarray(array)
    return array.dtype.kind not in "fc" or bool(np.isfinite(array).all())


def nonfinite_file_message(filepath: str, names: list[str]) -> str:
    """The error for a weights file holding NaN/inf values, naming the file and layers."""
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return (f"Cannot load {filepath}: non-finite (NaN/inf) weights in {len(names)} "
            f"layer(s): {shown}. The run that wrote it diverged; load an earlier checkpoint "
            "(find_last() skips such files).")


def nonfinite_datasets(filepath: str) -> list[str]:
    """Names of the arrays of any HDF5 weights file that hold NaN or inf (Keras 3 files too).

    Args:
        filepath: an HDF5 file.

    Returns:
        HDF5 paths of the float datasets with a non-finite value.

    Raises:
        InputError: the file cannot be read; the message names it.
    """
    bad: list[str] = []

    def visit(name, item):
        if isinstance(item, h5py.Dataset) and item.dtype.kind in "fc" and \
                not _finite(item[()]):
            bad.append(name)

    with open_weights_file(filepath) as f, named_read_errors(filepath):
        f.visititems(visit)
    return bad


def save_weights_by_name(model: keras.Model, filepath: str,
                         arrays: "OrderedDict[str, list[np.ndarray]] | None" = None,
                         write_extra: Callable[[h5py.File], None] | None = None,
                         overwrite: bool = True) -> None:
    """Write the model's weights in the Keras 2 / Matterport HDF5 layout, by layer name.

    Nested models are flattened (each inner layer gets its own group), which the reader
    handles the same way. Each array gets a ``crc32`` attribute and the file an
    ``all_finite`` one. The file is written to a temporary name, synced and renamed, so an
    interrupted save never leaves a truncated checkpoint behind.

    Args:
        model: the Keras model.
        filepath: destination (``.h5``).
        arrays: the weights, when the caller has them already (``layer_arrays(model)``).
        write_extra: called with the open file before it is closed (training state).
        overwrite: replace an existing ``filepath``; False refuses (checkpoints: a run never
            writes over a file that exists).

    Raises:
        FileExistsError: ``overwrite`` is False and ``filepath`` exists (nothing changed).
    """
    if not overwrite and os.path.exists(filepath):
        raise FileExistsError(f"{filepath} exists already; it was left as it is")
    layers = weighted_layers(model)
    arrays = arrays if arrays is not None else layer_arrays(model)
    tmp = filepath + ".tmp"
    with h5py.File(tmp, "w") as f:
        f.attrs["layer_names"] = [name.encode("utf8") for name in layers]
        f.attrs["backend"] = keras.backend.backend().encode("utf8")
        f.attrs["keras_version"] = keras.__version__.encode("utf8")
        f.attrs["all_finite"] = not nonfinite_layers(arrays)
        for name, layer in layers.items():
            group = f.create_group(name)
            weight_names = []
            for i, (weight, value) in enumerate(zip(layer.weights, arrays[name])):
                # Keras 2 style "layer/variable:0"; the index keeps names unique.
                wname = f"{name}/{weight.name}:{i}" if weight.name else f"{name}/w{i}:0"
                weight_names.append(wname.encode("utf8"))
                dataset = group.create_dataset(wname, data=value)
                dataset.attrs["crc32"] = checksum(value)
            group.attrs["weight_names"] = weight_names
        if write_extra is not None:
            write_extra(f)
    with open(tmp, "rb+") as fh:  # on disk before the rename makes it the checkpoint
        os.fsync(fh.fileno())
    if overwrite:
        os.replace(tmp, filepath)
    else:
        publish(tmp, filepath)


def weighted_layers(model: keras.Model) -> "OrderedDict[str, keras.layers.Layer]":
    """Every layer that owns weights, nested models flattened, by name.

    Args:
        model: a Keras model.

    Returns:
        Ordered mapping of layer names to layers.
    """
    out: OrderedDict[str, keras.layers.Layer] = OrderedDict()
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.update(weighted_layers(layer))
        elif layer.weights:
            out[layer.name] = layer
    return out


def load_weights_by_name(model: keras.Model, filepath: str, exclude=None,
                         strict: bool = False) -> list[str]:
    """Assign the weights of ``filepath`` to the layers of ``model`` with the same names.

    Args:
        model: the Keras model to fill.
        filepath: HDF5 weights file (see ``read_weights``).
        exclude: layer names to skip (e.g. the class-specific heads when fine-tuning on a
            dataset with other classes).
        strict: every weighted layer of the model (not excluded) must be in the file
            (``by_name=False`` semantics).

    Returns:
        Names of the layers that were loaded.

    Raises:
        ValueError: listing every layer whose weight count or shapes differ (nothing is
            assigned then), or, when strict, the layers missing from the file.
        InputError: naming the file and the layers: NaN/inf weights (nothing assigned).
    """
    exclude = set(exclude or [])
    stored = read_weights(filepath)
    targets = weighted_layers(model)
    problems, assignments, unmatched = [], [], []
    for name, layer in targets.items():
        if name in exclude:
            continue
        if name not in stored:
            if strict:
                problems.append(f"  {name}: missing from the file")
            unmatched.append(name)
            continue
        arrays = stored[name]
        expected = [tuple(w.shape) for w in layer.weights]
        found = [tuple(a.shape) for a in arrays]
        if expected != found:
            problems.append(f"  {name}: file has {found}, model expects {expected}")
            continue
        assignments.append((layer, arrays))
    bad = [layer.name for layer, arrays in assignments if not all(_finite(a) for a in arrays)]
    if bad:
        raise InputError(nonfinite_file_message(filepath, bad))
    if problems:
        raise ValueError(
            f"Cannot load {filepath}: {len(problems)} layer(s) do not match the model "
            "(pass their names in exclude=[...] to skip them):\n" + "\n".join(problems))
    if not assignments:
        raise ValueError(f"Cannot load {filepath}: no layer name of the file matches the "
                         "model.")
    if unmatched:
        # Silent partial loads are the classic by-name trap (e.g. a GroupNorm model and a
        # BatchNorm file share conv names but no norm layer): say what was left alone.
        hint = ""
        if any(n.startswith("gn") or "_gn" in n for n in unmatched) and any(
                n.startswith("bn") for n in stored):
            hint = (" The file has BatchNorm layers and the model GroupNorm ones: build the "
                    "model with NORM='frozen_bn' (or 'bn') to use them.")
        shown = ", ".join(unmatched[:8]) + (", ..." if len(unmatched) > 8 else "")
        warnings.warn(f"{filepath}: {len(unmatched)} weighted layer(s) of the model are not in "
                      f"the file and keep their current weights: {shown}.{hint}",
                      stacklevel=2)
    for layer, arrays in assignments:
        layer.set_weights(arrays)
    return [layer.name for layer, _ in assignments]
