"""Helpers shared by the benchmarks: environment description and table printing."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


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


def run_at_commit(commit: str, script: str, function: str, arguments: list) -> object:
    """Call ``function(*arguments)`` of a bench script on an older commit's code.

    The commit's ``mrcnn`` and ``samples`` are extracted with ``git archive`` into a
    temporary folder and put first on the path of a subprocess, which loads ``script``
    under a module name that cannot clash with the old tree, calls the function and
    returns its JSON-serialisable result. Old and new numbers then come from the same
    run of the benchmark (same machine, same load).

    Args:
        commit: a commit of this repository, e.g. "dece6be".
        script: path of the bench script that defines ``function``.
        function: name of the function to call.
        arguments: its positional arguments (JSON-serialisable).

    Returns:
        The function's result, through JSON (dict keys become strings).
    """
    folder = tempfile.mkdtemp(prefix="mrcnn_before_")
    archive = subprocess.run(["git", "-C", ROOT, "archive", commit, "mrcnn", "samples"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    code = ("import importlib.util, json, sys\n"
            "sys.path.insert(0, sys.argv[1])\n"
            "spec = importlib.util.spec_from_file_location('bench_script_at_commit', sys.argv[2])\n"
            "module = importlib.util.module_from_spec(spec)\n"
            "sys.modules[spec.name] = module  # picklable functions (process pools)\n"
            "spec.loader.exec_module(module)\n"
            "sys.path.insert(0, sys.argv[1])  # the script may have put the new tree first\n"
            "assert 'mrcnn' not in sys.modules, 'bench scripts import mrcnn lazily'\n"
            "result = getattr(module, sys.argv[3])(*json.loads(sys.argv[4]))\n"
            "print('RESULT' + json.dumps(result))\n")
    env = dict(os.environ, PYTHONPATH=folder)
    done = subprocess.run([sys.executable, "-c", code, folder, os.path.abspath(script),
                           function, json.dumps(arguments)], capture_output=True, text=True,
                          env=env)
    if done.returncode:
        raise RuntimeError(f"{function} at commit {commit} failed:\n{done.stderr[-3000:]}")
    out = done.stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])
