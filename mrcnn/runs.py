"""Run folders and checkpoint names: where a run writes, and which checkpoint resumes it.

A run lives in ``<model_dir>/<name><YYYYmmddTHHMMSS>[_<n>]/`` and writes one checkpoint per
epoch, ``mask_rcnn_<name>_<epoch:04d>.h5`` (Matterport's names; its minute-resolution folders
``<name><YYYYmmddTHHMM>`` are still recognised). ``<name>`` is ``Config.NAME`` lowercased
with every character other than letters, digits, "_" and "-" replaced by "_", so that any
NAME ("balloon.v2", "my run") gives names that parse back. A fresh run claims its folder
with ``os.makedirs(exist_ok=False)``: two runs started in the same second get two folders.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import platform
import re
import sys
import warnings
from typing import Any, NamedTuple

from mrcnn.paths import claim, replacing
from mrcnn.weights import checkpoint_problem

_TIMESTAMP = r"(\d{8}T\d{4}(?:\d{2})?)"  # seconds since this project; minutes (Matterport)


def run_name(name: str | None) -> str:
    """The file-system name of a Config.NAME (see the module doc).

    Args:
        name: Config.NAME (None means "mrcnn").

    Returns:
        Lowercase name made of letters, digits, "_" and "-".
    """
    return re.sub(r"[^\w-]", "_", (name or "mrcnn").lower())


class RunFolder(NamedTuple):
    """A parsed run folder name."""
    time: datetime.datetime
    suffix: int


def parse_run_folder(folder: str, name: str) -> RunFolder | None:
    """Parse ``<name><timestamp>[_<n>]`` for exactly ``name``; None for any other folder.

    Args:
        folder: base name of a folder.
        name: the run name (``run_name(Config.NAME)``).

    Returns:
        Its timestamp and suffix (0 without one), or None.
    """
    if not folder.startswith(name):
        return None
    m = re.fullmatch(_TIMESTAMP + r"(?:_(\d+))?", folder[len(name):])
    if not m:
        return None
    stamp = m.group(1)
    fmt = "%Y%m%dT%H%M%S" if len(stamp) == 15 else "%Y%m%dT%H%M"
    try:
        time = datetime.datetime.strptime(stamp, fmt)
    except ValueError:
        return None
    return RunFolder(time, int(m.group(2) or 0))


def checkpoint_epoch(filename: str, name: str) -> int | None:
    """Epoch of ``mask_rcnn_<name>_<epoch>.h5`` (``.weights.h5`` too), None otherwise."""
    m = re.fullmatch(r"mask_rcnn_" + re.escape(name) + r"_(\d{4,})\.(?:weights\.)?h5",
                     filename)
    return int(m.group(1)) if m else None


def new_run_folder(model_dir: str, name: str, now: datetime.datetime | None = None) -> str:
    """Path of a fresh run folder (not created; see ``claim_run_folder``)."""
    now = now or datetime.datetime.now()
    return os.path.join(model_dir, f"{name}{now:%Y%m%dT%H%M%S}")


def claim_run_folder(log_dir: str) -> str:
    """Create ``log_dir``, or, when it exists already, the first free ``log_dir_<n>``.

    Creation is the claim (``mrcnn.paths.claim``), so two processes never get the same folder.

    Args:
        log_dir: the wanted folder.

    Returns:
        The folder created.
    """
    return claim(log_dir, folder=True)


RUN_INFO_FILE = "config.json"


def versions() -> dict[str, str]:
    """Versions of Python, mrcnn, Keras, the backend and NumPy (what a run ran on)."""
    import keras
    import numpy as np

    import mrcnn

    backend = keras.backend.backend()
    out = {"python": platform.python_version(), "mrcnn": mrcnn.__version__,
           "keras": keras.__version__, "backend": backend, "numpy": np.__version__,
           "platform": platform.platform()}
    module = sys.modules.get({"tensorflow": "tensorflow", "jax": "jax",
                              "torch": "torch"}.get(backend, backend))
    if module is not None:
        out[backend] = str(getattr(module, "__version__", "unknown"))
    return out


def write_run_info(log_dir: str, config: Any, epoch: int) -> str | None:
    """Write ``config.json`` into a run folder when training starts there (never rewritten).

    It holds every Config value (``Config.to_json_dict``: what ``Config.display`` shows), the
    versions of the libraries (``versions``), the devices (``ops.device.devices``), the
    command line and the start time, so a run
    folder says what produced its checkpoints. A later ``train()`` call in the same folder
    with different settings (the next stage of a schedule, a resume with other values)
    writes ``config_epoch<NNNN>.json`` instead, for the epoch it starts from.

    Args:
        log_dir: the run folder.
        config: the run's Config.
        epoch: the epoch this ``train()`` call starts from.

    Returns:
        The file written, or None when an identical record is already there.
    """
    from mrcnn.ops.device import devices

    record = {"config": config.to_json_dict(), "versions": versions(), "devices": devices(),
              "command": [sys.executable, *sys.argv],
              "started": datetime.datetime.now().isoformat(timespec="seconds"),
              "first_epoch": int(epoch)}
    path = os.path.join(log_dir, RUN_INFO_FILE)
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                if json.load(f).get("config") == record["config"]:
                    return None
        except (OSError, ValueError):
            pass  # unreadable: keep it, write the new record beside it
        path = os.path.join(log_dir, f"config_epoch{int(epoch):04d}.json")
        if os.path.exists(path):
            return None
    with replacing(path) as f:
        json.dump(record, f, indent=1)
    return path


def resumable_checkpoint(filepath: str, model_dir: str, name: str) -> tuple[str, int] | None:
    """The run folder and epoch of ``filepath`` when it is a checkpoint of this run family.

    Resuming is for the same run only: the file must be ``mask_rcnn_<name>_<epoch>.h5``
    inside a folder ``<name><timestamp>`` directly under ``model_dir``. Any other file (a
    Matterport file, another NAME's checkpoint, a copy elsewhere) starts a new run at
    epoch 0: fine-tuning.

    Args:
        filepath: weights file being loaded.
        model_dir: the model's logs folder.
        name: the run name.

    Returns:
        (run folder, epoch) or None.
    """
    epoch = checkpoint_epoch(os.path.basename(filepath), name)
    run_dir = os.path.dirname(os.path.abspath(filepath))
    if epoch is None or parse_run_folder(os.path.basename(run_dir), name) is None:
        return None
    if os.path.realpath(os.path.dirname(run_dir)) != os.path.realpath(model_dir):
        return None
    return os.path.join(model_dir, os.path.basename(run_dir)), epoch


def find_last(model_dir: str, name: str | None) -> str:
    """Path of the last sound checkpoint of the most recent run of ``name``.

    Runs are the folders of exactly this name (``probe`` never picks ``probe_big...``),
    newest timestamp first; in each, checkpoints by epoch, last first. A checkpoint that
    fails the integrity check (unreadable, or written with non-finite weights) is skipped
    with a warning.

    Args:
        model_dir: the logs folder.
        name: Config.NAME (encoded with ``run_name``).

    Returns:
        Path to a ``mask_rcnn_<name>_<epoch>.h5`` file.

    Raises:
        FileNotFoundError: no run folder, or no usable checkpoint in any of them.
    """
    name = run_name(name)
    runs = []
    if os.path.isdir(model_dir):
        for folder in os.listdir(model_dir):
            parsed = parse_run_folder(folder, name)
            if parsed is not None and os.path.isdir(os.path.join(model_dir, folder)):
                runs.append((parsed, folder))
    if not runs:
        raise FileNotFoundError(errno.ENOENT, f"Could not find a model directory for '{name}' "
                                f"under {model_dir}")
    runs.sort(reverse=True)
    for _, folder in runs:
        run_dir = os.path.join(model_dir, folder)
        checkpoints = sorted(((checkpoint_epoch(f, name), f) for f in os.listdir(run_dir)
                              if checkpoint_epoch(f, name) is not None), reverse=True)
        for _, filename in checkpoints:
            path = os.path.join(run_dir, filename)
            problem = checkpoint_problem(path)
            if problem is None:
                return path
            warnings.warn(f"find_last: skipping {path}: {problem}", stacklevel=2)
    raise FileNotFoundError(errno.ENOENT, f"Could not find a usable weight file in {model_dir}"
                            f" (runs searched: {', '.join(f for _, f in runs)})")
