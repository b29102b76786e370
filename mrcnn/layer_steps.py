"""Matterport's ``MaskRCNN.ancestor``: the named tensors inside the custom layers.

Matterport's inspection notebooks fetch tensors inside its layers by their TF graph name,
``model.ancestor(model.keras_model.get_layer("ROI").output, "ROI/refined_anchors:0")``,
and evaluate them with ``run_graph``. Keras 3 has no TF graph to search, so a layer that
can be inspected this way declares the names instead: ``MATTERPORT_TENSORS`` maps a name
inside the layer (``"refined_anchors:0"``) to a key of the dict its ``steps(inputs)``
method returns (the same code as its ``call``). ``find_step`` resolves a name to a
``LayerStep`` handle; ``step_outputs`` turns handles into Keras tensors of a sub-model
that recomputes the steps from the layer's own inputs, in the same compiled function as
the rest of ``run_graph``'s outputs, so the numbers are the layer's.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np


@dataclass(frozen=True, eq=False)
class LayerStep:
    """A named intermediate tensor of a layer, as ``MaskRCNN.ancestor`` returns it.

    Attributes:
        name: the resolved name, e.g. ``"ROI/refined_anchors:0"``.
        layer: the layer (it has ``steps()`` and ``MATTERPORT_TENSORS``).
        node: the call of the layer (its ``arguments`` are the inputs to recompute from).
        key: the key of ``layer.steps()``.
        valid_key: None, or the key of a [B, N] bool mask: the value is then image 0's
            valid entries only, 1-D (what Matterport's per-image NMS op gave).
    """

    name: str
    layer: Any
    node: Any
    key: str
    valid_key: str | None


def _upstream_nodes(tensor) -> list:
    """The calls (Keras ``Node``s) ``tensor`` depends on, its own first (breadth first)."""
    history = getattr(tensor, "_keras_history", None)
    if history is None or history.operation is None:
        return []
    start = history.operation._inbound_nodes[history.node_index]
    seen, order, queue = {id(start)}, [], deque([start])
    while queue:
        node = queue.popleft()
        order.append(node)
        for parent in node.arguments.keras_tensors:
            parent_history = parent._keras_history
            if parent_history.operation is None:
                continue
            parent_node = parent_history.operation._inbound_nodes[parent_history.node_index]
            if id(parent_node) not in seen:
                seen.add(id(parent_node))
                queue.append(parent_node)
    return order


def matterport_pattern(name: str | re.Pattern) -> re.Pattern:
    """Matterport's name matching: ``/`` may follow a Keras counter (``ROI_1/...``).

    Args:
        name: a tensor name such as ``"ROI/pre_nms_anchors:0"``, or a compiled pattern
            (used as it is, as Matterport did).

    Returns:
        The compiled pattern, to ``fullmatch`` against names.
    """
    if isinstance(name, re.Pattern):
        return name
    return re.compile(name.replace("/", r"(\_\d+)*/"))


def find_step(tensor, name: str | re.Pattern) -> LayerStep | None:
    """The named tensor inside a layer that ``tensor`` is computed from, or None.

    Args:
        tensor: a Keras tensor of a functional model (e.g. ``get_layer("ROI").output``);
            the layer producing it counts, as its inner tensors are ``tensor``'s ancestors.
        name: Matterport's name, ``"<layer name>/<tensor name>:<index>"``.

    Returns:
        A ``LayerStep``, or None when no layer upstream of ``tensor`` declares the name.

    Raises:
        TypeError: ``tensor`` is not a Keras tensor of a model graph.
    """
    if not hasattr(tensor, "_keras_history"):
        raise TypeError("ancestor() takes a Keras tensor of model.keras_model (e.g. "
                        "model.keras_model.get_layer('ROI').output), got "
                        f"{type(tensor).__name__}.")
    pattern = matterport_pattern(name)
    for node in _upstream_nodes(tensor):
        layer = node.operation
        for inner, (key, valid_key) in getattr(layer, "MATTERPORT_TENSORS", {}).items():
            full_name = f"{layer.name}/{inner}"
            if pattern.fullmatch(full_name):
                return LayerStep(full_name, layer, node, key, valid_key)
    return None


class _Steps(keras.layers.Layer):
    """Outputs chosen ``steps()`` of a layer, from the same inputs (for ``run_graph``)."""

    def __init__(self, layer, keys: list[str], **kwargs):
        # The same dtype policy, so that inputs are cast as the inspected layer casts them.
        super().__init__(dtype=layer.dtype_policy, **kwargs)
        self.keys = list(keys)
        # A plain reference: the inspected layer must not become a sublayer of this one.
        object.__setattr__(self, "_inspected", layer)

    def call(self, *args, **kwargs):
        steps = self._inspected.steps(*args, **kwargs)
        return [steps[key] for key in self.keys]

    def compute_output_spec(self, *args, **kwargs):
        # The model's sizes are dynamic (None), which the layers' static-shape code cannot
        # trace: trace with size 1 for each unknown size and leave every output size unknown.
        def concrete(x):
            if isinstance(x, keras.KerasTensor):
                return keras.KerasTensor(tuple(1 if d is None else d for d in x.shape),
                                         x.dtype)
            return x

        args, kwargs = keras.tree.map_structure(concrete, (args, kwargs))
        specs = super().compute_output_spec(*args, **kwargs)
        return [keras.KerasTensor((None,) * len(s.shape), s.dtype) for s in specs]


def step_outputs(steps: list[LayerStep]) -> list[list]:
    """Keras tensors computing each step from its layer call's inputs.

    Args:
        steps: handles from ``find_step``.

    Returns:
        For each handle, ``[value]`` or ``[value, valid mask]`` Keras tensors.
    """
    outputs = []
    for step in steps:
        keys = [step.key] + ([step.valid_key] if step.valid_key else [])
        arguments = step.node.arguments
        outputs.append(list(_Steps(step.layer, keys)(*arguments.args, **arguments.kwargs)))
    return outputs


def step_value(step: LayerStep, chunks: list[list[np.ndarray]]) -> np.ndarray:
    """A step's NumPy value from its outputs in each batch chunk of ``run_graph``.

    Args:
        step: the handle.
        chunks: per chunk, the arrays ``step_outputs`` gave for it.

    Returns:
        The batch of values [N, ...], or for a masked step image 0's valid entries (1-D).
    """
    if step.valid_key is None:
        return np.concatenate([np.asarray(chunk[0]) for chunk in chunks], axis=0)
    values, valid = (np.asarray(a) for a in chunks[0])
    return values[0][valid[0].astype(bool)]
