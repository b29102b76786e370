"""Load weights by layer name from HDF5 files: our Keras 3 checkpoints and Matterport's files.

Two layouts are read into one form, ``{layer name: [arrays in the layer's weight order]}``:

- Keras 2 HDF5 (Matterport's ``mask_rcnn_coco.h5``, ImageNet ResNet files): a root (or
  ``model_weights``) group with a ``layer_names`` attribute; each layer group lists its
  variables in ``weight_names`` (``conv1/kernel:0``, ...). A nested model (``rpn_model``) is
  one group whose weight names carry the inner layer names.
- Keras 3 ``.weights.h5`` (``model.save_weights``): ``layers/<name>/vars/<i>``, nested models
  under ``layers/<model>/layers/<name>``.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import h5py
import keras
import numpy as np


def _decode(names) -> list[str]:
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in names]


def _read_keras2(root: h5py.Group) -> "OrderedDict[str, list[np.ndarray]]":
    out: OrderedDict[str, list[np.ndarray]] = OrderedDict()
    for layer_name in _decode(root.attrs["layer_names"]):
        group = root[layer_name]
        for weight_name in _decode(group.attrs.get("weight_names", [])):
            # The owner of a variable is the path component before its own name:
            # "conv1/kernel:0" -> conv1, "rpn_conv_shared/bias:0" (inside rpn_model) ->
            # rpn_conv_shared.
            parts = weight_name.split("/")
            owner = parts[-2] if len(parts) >= 2 else layer_name
            out.setdefault(owner, []).append(np.asarray(group[weight_name]))
    return out


def _read_keras3(group: h5py.Group, out: "OrderedDict[str, list[np.ndarray]]") -> None:
    layers_group = group.get("layers")
    if layers_group is None:
        return
    for name, layer_group in layers_group.items():
        variables = layer_group.get("vars")
        if variables is not None and len(variables):
            out[name] = [np.asarray(variables[str(i)]) for i in range(len(variables))]
        _read_keras3(layer_group, out)  # nested models and wrapped layers


def read_weights(filepath: str) -> "OrderedDict[str, list[np.ndarray]]":
    """Read an HDF5 weights file into ``{layer name: [arrays]}``.

    Args:
        filepath: a Keras 2 HDF5 file (Matterport layout) or a Keras 3 ``.weights.h5`` file.

    Returns:
        Ordered mapping of layer names to their weight arrays.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not an HDF5 weights file of a known layout.
    """
    if not os.path.exists(filepath):
        raise FileNotFoundError(f"Weights file not found: {filepath}")
    try:
        f = h5py.File(filepath, "r")
    except OSError as err:
        raise ValueError(f"{filepath} is not an HDF5 weights file ({err}).") from err
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs:
            return _read_keras2(root)
        out: OrderedDict[str, list[np.ndarray]] = OrderedDict()
        _read_keras3(f, out)
        if not out:
            raise ValueError(f"{filepath}: no layer weights found; expected a Keras 2 HDF5 "
                             "file (layer_names attribute) or a Keras 3 .weights.h5 file.")
        return out


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
    """
    exclude = set(exclude or [])
    stored = read_weights(filepath)
    targets = weighted_layers(model)
    problems, assignments = [], []
    for name, layer in targets.items():
        if name in exclude:
            continue
        if name not in stored:
            if strict:
                problems.append(f"  {name}: missing from the file")
            continue
        arrays = stored[name]
        expected = [tuple(w.shape) for w in layer.weights]
        found = [tuple(a.shape) for a in arrays]
        if expected != found:
            problems.append(f"  {name}: file has {found}, model expects {expected}")
            continue
        assignments.append((layer, arrays))
    if problems:
        raise ValueError(
            f"Cannot load {filepath}: {len(problems)} layer(s) do not match the model "
            "(pass their names in exclude=[...] to skip them):\n" + "\n".join(problems))
    if not assignments:
        raise ValueError(f"Cannot load {filepath}: no layer name of the file matches the "
                         "model.")
    for layer, arrays in assignments:
        layer.set_weights(arrays)
    return [layer.name for layer, _ in assignments]
