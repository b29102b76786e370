"""Helpers shared by the benchmarks: environment description and table printing."""

from __future__ import annotations

import os
import platform
import sys


def device_description() -> str:
    """Backend and device the benchmark runs on, in words."""
    import keras

    backend = keras.backend.backend()
    device = f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    try:
        if backend == "jax":
            import jax
            devices = jax.devices()
            device = ", ".join(sorted({d.device_kind for d in devices}))
        elif backend == "tensorflow":
            import tensorflow as tf
            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                device = ", ".join(g.name for g in gpus)
    except Exception:  # description only: never fail a benchmark on it
        pass
    return f"keras {keras.__version__}, backend {backend}, device {device}"


def print_table(title: str, rows: list[dict]) -> None:
    """Print rows (dicts with the same keys) as a Markdown table, with the command line."""
    print(f"\n## {title}")
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(device_description())
    if not rows:
        return
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")
