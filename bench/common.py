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


def bench_config(size: int, batch: int, *, jit: bool | str = "auto", norm: str = "frozen_bn",
                 precision: str | None = None, rois: int = 512, **overrides):
    """The benchmarks' Config: R50-FPN on synthetic shapes, torchvision's ROI batch.

    Args:
        size: square image side (a multiple of 64).
        batch: images per step (IMAGES_PER_GPU).
        jit: Config.JIT_COMPILE.
        norm: Config.NORM.
        precision: Config.MIXED_PRECISION.
        rois: TRAIN_ROIS_PER_IMAGE (512 is torchvision's box_batch_size_per_image).
        **overrides: any other Config attribute.

    Returns:
        A validated Config instance.
    """
    from mrcnn.config import Config

    attrs = dict(NAME="bench", NUM_CLASSES=1 + 3, IMAGES_PER_GPU=batch, IMAGE_MIN_DIM=size,
                 IMAGE_MAX_DIM=size, BACKBONE="resnet50", NORM=norm,
                 TRAIN_ROIS_PER_IMAGE=rois, JIT_COMPILE=jit, MIXED_PRECISION=precision,
                 # Speed is measured with Config's own optimizer, not the from-scratch recipe.
                 FROM_SCRATCH_RECIPE="off")
    attrs.update(overrides)
    return type("BenchConfig", (Config,), attrs)()


def shapes_dataset(size: int, count: int, seed: int = 0):
    """A prepared synthetic shapes dataset of ``count`` square images."""
    from samples.shapes.shapes import ShapesDataset

    ds = ShapesDataset()
    ds.load_shapes(count, size, size, seed=seed)
    ds.prepare()
    return ds


def training_batch(config):
    """One training batch (the data generator's model inputs) of shapes images."""
    from mrcnn.data import DataGenerator

    ds = shapes_dataset(config.IMAGE_SHAPE[0], config.BATCH_SIZE)
    (x,) = DataGenerator(ds, config, shuffle=False)[0]
    return list(x)


def peak_memory_gib() -> tuple[float, str]:
    """Peak memory so far: the JAX device's allocator peak on an accelerator, else max RSS.

    Returns:
        (GiB, what was measured).
    """
    import resource

    import keras

    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        stats = (device.memory_stats() or {}) if device.platform != "cpu" else {}
        if "peak_bytes_in_use" in stats:
            return stats["peak_bytes_in_use"] / 2**30, f"{device.device_kind} peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process max RSS"


def time_steps(step, steps: int, warmup: int) -> tuple[float, float]:
    """Wall and process CPU seconds per call of ``step`` after ``warmup`` untimed calls.

    ``step`` must return something whose ``float()`` waits for the device (a loss). CPU
    time counts every thread of the process: on a shared CPU it is the steadier measure of
    the work a step does (wall time depends on what else runs).
    """
    import time

    for _ in range(warmup):
        float(step())
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = step()
    float(loss)  # wait for the device
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def median_ms(fn, repeats: int, clock=None) -> float:
    """Median milliseconds of one call of ``fn`` over ``repeats`` calls, after one untimed
    (compiling) call.

    Args:
        fn: the call to time (must wait for its result).
        repeats: timed calls.
        clock: ``time.perf_counter`` (wall, the default) or ``time.process_time`` (process
            CPU time, all threads: the work done, steadier on a shared machine).

    Returns:
        Median milliseconds.
    """
    import time

    clock = clock or time.perf_counter
    fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return 1000 * sorted(times)[len(times) // 2]


def time_train_steps(model, x, steps: int, warmup: int) -> float:
    """Seconds per ``train_on_batch`` step after ``warmup`` untimed (compiling) steps."""
    return train_step_times(model, x, steps, warmup)[0]


def train_step_times(model, x, steps: int, warmup: int) -> tuple[float, float]:
    """(wall, process CPU) seconds per ``train_on_batch`` step (see ``time_steps``)."""
    return time_steps(lambda: model.keras_model.train_on_batch(x, return_dict=True)["loss"],
                      steps, warmup)


def add_nucleus_size_arguments(parser, epochs: int) -> None:
    """The size of a from-scratch nucleus run, shared by the accuracy benches: epochs, steps,
    batch, crop, backbone and the synthetic data set (fields, train and held-out images)."""
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--steps", type=int, default=25, help="steps per epoch")
    parser.add_argument("--batch", type=int, default=4, help="crops per step")
    parser.add_argument("--crop", type=int, default=256, help="training crop size")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--field", type=int, default=256, help="synthetic image size")
    parser.add_argument("--train-images", type=int, default=40)
    parser.add_argument("--test-images", type=int, default=6)
