"""The base of the model's pluggable parts (backbone, FPN, RPN head, box head, mask head).

A part is built from plain constructor values (``mrcnn.factory`` reads them from a Config,
once) and returns them from ``get_config``, so ``type(part).from_config(part.get_config())``
rebuilds it. Calling a part on Keras tensors adds its layers to the model being built and
returns its outputs; the layers keep their own names in that model (no wrapping sub-model),
so ``keras_model.get_layer("res4a_out")``, ``train(layers=...)`` and by-name weight loading
see them as Matterport's code does. Each call builds new layers: a part describes layers, the
``MaskRCNN`` that calls it owns them.
"""

from __future__ import annotations

from typing import Any

from mrcnn.layer_config import plain


class Component:
    """A part of the Mask R-CNN graph, described by plain values.

    Subclasses call ``self._keep(name=value, ...)`` in ``__init__`` with the values that
    rebuild them and implement ``__call__``.
    """

    def _keep(self, **values: Any) -> None:
        self._config = {name: plain(value) for name, value in values.items()}

    def get_config(self) -> dict:
        """The plain constructor values of this part.

        Returns:
            Keyword arguments for ``from_config``.
        """
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict) -> "Component":
        """Rebuild a part from ``get_config``'s values.

        Args:
            config: the dict ``get_config`` returned.

        Returns:
            A new part of this class.
        """
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"
