"""Plain-value settings for the custom layers (TF Model Garden's factory pattern).

``network.py`` reads the Config once and passes each layer the few values it uses, as
keyword arguments named after the Config attributes in lowercase (``pre_nms_limit=...``).
The layer keeps them in ``_config_dict`` and returns them from ``get_config``, so models
save as ``.keras`` and reload without the Config. Inside the layer they are also readable
under their Config names (``self.config.PRE_NMS_LIMIT``), so the graph functions that take a
``config`` work unchanged. Passing ``config=`` (Matterport's signature) still works: the
values are read from it once.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np


def plain(value: Any) -> Any:
    """A JSON-friendly copy: arrays and tuples become lists, NumPy scalars Python ones."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def config_values(config, keys: tuple[str, ...]) -> dict[str, Any]:
    """``{key.lower(): config.KEY}`` for a layer's CONFIG_KEYS (what network.py passes).

    Args:
        config: a ``Config``.
        keys: Config attribute names.

    Returns:
        Keyword arguments for the layer.
    """
    return {key.lower(): getattr(config, key) for key in keys}


class PlainConfigMixin:
    """Mixin for a Keras layer whose settings are Config values (see the module doc).

    Subclasses list the Config attributes they use in ``CONFIG_KEYS`` and call
    ``kwargs = self._take_config(config, kwargs)`` before ``super().__init__(**kwargs)``.
    """

    CONFIG_KEYS: tuple[str, ...] = ()

    def _take_config(self, config, kwargs: dict) -> dict:
        values = {}
        for key in self.CONFIG_KEYS:
            name = key.lower()
            if name in kwargs:
                values[name] = plain(kwargs.pop(name))
            elif config is not None:
                values[name] = plain(getattr(config, key))
            else:
                raise TypeError(f"{type(self).__name__} needs {name}= (Config.{key}), or "
                                "config=.")
        # Plain attributes, outside Keras' tracking (which would wrap the dict), so this can
        # run before Layer.__init__.
        object.__setattr__(self, "_config_dict", values)
        object.__setattr__(self, "_config_view",
                           SimpleNamespace(**{k.upper(): v for k, v in values.items()}))
        return kwargs

    @property
    def config(self) -> SimpleNamespace:
        """The layer's settings under their Config names (read-only view)."""
        return self._config_view

    def get_config(self) -> dict:
        base = super().get_config()
        base.update(self._config_dict)
        return base
