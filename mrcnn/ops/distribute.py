"""Data parallelism on each backend's own engine: ``tf.distribute`` and ``keras.distribution``.

TensorFlow: ``MirroredStrategy`` over the GPUs of one machine (its logical CPUs when it has
no GPU), ``MultiWorkerMirroredStrategy`` across machines when ``TF_CONFIG`` describes a
cluster of several workers, or whatever strategy the caller has entered (``with
strategy.scope(): MaskRCNN(...)``). Each replica runs the train step on its share of the
global batch and Keras sums the replicas' gradients, so a replica's loss must be its *share*
of the global loss: ``replica_sum`` all-reduces the counts the losses divide by, and
``loss_replicas`` says how many shares there are.

JAX: ``keras.distribution.DataParallel`` over the local devices, or over every process's
devices after ``jax.distributed.initialize()``. One SPMD program sees the global batch, so
its means are global already: ``replica_sum`` is the identity and ``loss_replicas`` is 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import keras


@dataclass
class Distribution:
    """A data-parallel setup: the engine's object and what the training loop needs of it.

    Attributes:
        engine: the ``tf.distribute.Strategy`` or ``keras.distribution.DataParallel``.
        num_replicas: replicas over all processes (each takes IMAGES_PER_GPU images).
        process_count: processes (machines) taking part.
        process_index: this process's index (0 is the chief).
        per_process_input: True when each process feeds only its own part of the global
            batch (JAX); False when each feeds the global batch and the engine keeps its
            part (tf.distribute's auto-sharding).
        xla_step: whether the train step can be XLA-compiled: True on JAX; False under
            tf.distribute. Keras compiles the whole multi-replica step as one XLA cluster,
            which cannot reach the replicas' variables on other devices ("Trying to access
            resource ... located in device CPU:1 from device CPU:0"). Compiling each
            replica's forward and gradient alone (variables passed in as values) does
            compile, but this step all-reduces inside the forward pass (the losses' counts,
            BatchNorm's sums), and TensorFlow 2.21 has no XLA collectives on CPUs
            ("Collectives are not yet implemented for CPU devices when compiling with
            XLA"; through ``ReplicaContext.all_reduce``, a ``merge_call`` inside the
            compiled function is refused). TensorFlow compiles them only for GPUs.
    """

    engine: Any
    num_replicas: int
    process_count: int = 1
    process_index: int = 0
    per_process_input: bool = False
    xla_step: bool = False

    @property
    def is_chief(self) -> bool:
        """Whether this process writes checkpoints and logs."""
        return self.process_index == 0

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Build, compile and fit under this: variables are mirrored, batches are split."""
        with self.engine.scope():
            yield


def _cluster_workers(cluster: dict) -> int:
    """Workers of a TF cluster spec, the chief included."""
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def _tf_cluster_workers() -> int:
    """Workers (chief included) that ``TF_CONFIG`` lists; 1 without a cluster."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 1
    try:
        cluster = json.loads(raw).get("cluster", {})
    except (ValueError, AttributeError) as err:
        raise ValueError(f"TF_CONFIG is not valid JSON ({err}): {raw[:200]!r}") from err
    return _cluster_workers(cluster)


def _tf_distribution(gpu_count: int) -> Distribution | None:
    import tensorflow as tf

    if tf.distribute.has_strategy():
        strategy = tf.distribute.get_strategy()  # the caller's own
    elif _tf_cluster_workers() > 1:
        strategy = _multi_worker_strategy()
    elif gpu_count > 1:
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        if len(devices) < gpu_count:
            kind = devices[0].device_type if devices else "device"
            raise ValueError(
                f"Config.GPU_COUNT = {gpu_count} but TensorFlow sees {len(devices)} "
                f"{kind} device(s) ({[d.name for d in devices]}): set GPU_COUNT to the number "
                "of GPUs to train on (CUDA_VISIBLE_DEVICES limits what TensorFlow sees).")
        strategy = _mirrored_strategy(tuple(d.name for d in devices[:gpu_count]))
    else:
        return None
    resolver = getattr(strategy, "cluster_resolver", None)
    index, count = 0, 1
    if resolver is not None and resolver.task_type is not None:
        # Keras' convention: the "chief" task, or worker 0 of a cluster without one, writes.
        cluster = resolver.cluster_spec().as_dict()
        count = _cluster_workers(cluster)
        task = int(resolver.task_id or 0)
        if "chief" in cluster:
            index = 0 if resolver.task_type == "chief" else 1 + task
        else:
            index = task
    return Distribution(strategy, int(strategy.num_replicas_in_sync), count, index)


_MIRRORED: dict = {}


def _mirrored_strategy(devices: tuple):
    """One ``MirroredStrategy`` per device list and process.

    Every new ``MirroredStrategy`` numbers its collectives from the same keys (group 1,
    instances from 100), and TensorFlow keeps the shapes of a collective instance for the
    process: a second strategy's first all-reduce met the first one's ("Shape mismatch in
    the collective instance 100 ... expected shape [513] but another member in the group
    expected shape [1]") once two models with different collectives were trained in one
    process. Reusing the strategy continues its numbering.
    """
    if devices not in _MIRRORED:
        import tensorflow as tf

        _MIRRORED[devices] = tf.distribute.MirroredStrategy(list(devices))
    return _MIRRORED[devices]


_MULTI_WORKER = None


def _multi_worker_strategy():
    """One ``MultiWorkerMirroredStrategy`` per process: TensorFlow allows a single one."""
    global _MULTI_WORKER
    if _MULTI_WORKER is None:
        import tensorflow as tf

        _MULTI_WORKER = tf.distribute.MultiWorkerMirroredStrategy()
    return _MULTI_WORKER


def _jax_distribution(gpu_count: int) -> Distribution | None:
    import jax

    if jax.process_count() > 1:
        devices = jax.devices()  # every process's, after jax.distributed.initialize()
    elif gpu_count > 1:
        devices = jax.devices()
        if len(devices) < gpu_count:
            raise ValueError(
                f"Config.GPU_COUNT = {gpu_count} but JAX sees {len(devices)} device(s) "
                f"({devices}): set GPU_COUNT to the number of devices to train on.")
        devices = devices[:gpu_count]
    else:
        return None
    host = [d for d in devices if d.platform == "cpu" and d.process_index == jax.process_index()]
    # Measured with 2 devices: 2 pool threads deadlock fit's first all-reduce, 3 do not.
    threads = _cpu_pool_threads()
    if len(host) > 1 and threads <= len(host):
        warnings.warn(
            f"Data parallelism over {len(host)} CPU devices with {threads} "
            "threads for XLA:CPU: its all-reduce can deadlock (each device's program holds "
            "a thread of the pool while it waits for the others'). Set "
            f"PJRT_NPROC={2 * len(host)} (or more) in the environment before JAX starts.",
            UserWarning, stacklevel=3)
    engine = keras.distribution.DataParallel(devices=devices)
    return Distribution(engine, len(devices), jax.process_count(), jax.process_index(),
                        per_process_input=True, xla_step=True)


def _cpu_pool_threads() -> int:
    """Threads of XLA:CPU's PjRt client pool: XLA's DefaultThreadPoolSize (PJRT_NPROC or
    NPROC from the environment, else the cores this process may use)."""
    for name in ("PJRT_NPROC", "NPROC"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def make_distribution(gpu_count: int) -> Distribution | None:
    """The data-parallel setup of this process, or None for one device.

    Args:
        gpu_count: Config.GPU_COUNT, the number of replicas (of all machines together).

    Returns:
        A ``Distribution``, or None when training runs on a single device.

    Raises:
        ValueError: GPU_COUNT asks for more devices than the backend sees, or the cluster's
            replicas differ from GPU_COUNT (the global batch would not be BATCH_SIZE).
        NotImplementedError: GPU_COUNT > 1 on a backend without data parallelism here.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        dist = _tf_distribution(gpu_count)
    elif backend == "jax":
        dist = _jax_distribution(gpu_count)
    elif gpu_count > 1:
        raise NotImplementedError(
            f"Config.GPU_COUNT = {gpu_count}: data-parallel training is implemented on the "
            f"TensorFlow and JAX backends, not on {backend!r}.")
    else:
        dist = None
    if dist is not None and dist.num_replicas != gpu_count:
        raise ValueError(
            f"Config.GPU_COUNT = {gpu_count} but the {type(dist.engine).__name__} has "
            f"{dist.num_replicas} replicas ({dist.process_count} process(es)): set GPU_COUNT "
            "to the number of replicas of all machines together, so that BATCH_SIZE "
            "(IMAGES_PER_GPU * GPU_COUNT) is the global batch.")
    return dist


def _tf_replica_context():
    """The replica context of a multi-replica ``tf.distribute`` step, else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def replica_sum(value, gradient: bool = False):
    """Sum ``value`` over the replicas of a ``tf.distribute`` step; identity elsewhere.

    Used on the counts the losses divide by, so that each replica's loss is its share of the
    global mean, and on BatchNorm's sums (``norm.SyncBatchNormalization``). Under JAX's SPMD data
    parallelism the value is global already.

    Args:
        value: a tensor.
        gradient: let the gradient flow back through the sum (it is all-reduced itself, so
            each replica gets the gradient of every replica's loss with respect to its part).
            False: no gradient flows.

    Returns:
        The summed tensor.
    """
    context = _tf_replica_context()
    if context is None:
        return value
    return context.all_reduce("sum", value if gradient else keras.ops.stop_gradient(value))


def loss_replicas() -> int:
    """How many replicas each compute a share of the loss in the current step.

    Returns:
        ``num_replicas_in_sync`` inside a multi-replica ``tf.distribute`` step, else 1.
    """
    context = _tf_replica_context()
    return 1 if context is None else int(context.num_replicas_in_sync)


class ClipAfterAllReduce:
    """Optimizer mixin: clip the summed gradients, not each replica's part of them.

    Keras' TensorFlow optimizer clips (``clipnorm``) each replica's gradients before it sums
    them, which is neither the single-device result nor a clip of the gradient applied.
    Here the sum comes first and the clip second; the optimizer's own sum is then skipped.
    Outside a ``tf.distribute`` step both are no-ops.
    """

    def _clip_gradients(self, grads):
        context = _tf_replica_context()
        if context is not None:
            present = [g for g in grads if g is not None]
            summed = iter(context.all_reduce("sum", present))
            grads = [None if g is None else next(summed) for g in grads]
        return super()._clip_gradients(grads)

    def _all_reduce_sum_gradients(self, grads_and_vars):
        # Summed in _clip_gradients (this method exists on TensorFlow only).
        return grads_and_vars


def step_output(value):
    """Shape a scalar metric of a train/test step for Keras' reduction across workers.

    Keras (3.15) averages a step's outputs over the workers of a ``MultiWorkerMirroredStrategy``
    with ``strategy.reduce("MEAN", value, axis=0)``, which fails on scalars: inside a
    multi-worker step they get an axis of length 1, which that reduction removes.
    Everywhere else the value is returned unchanged.

    Args:
        value: a scalar tensor.

    Returns:
        ``value``, or ``value`` reshaped to ``[1]`` inside a multi-worker step.
    """
    if _tf_replica_context() is None or _tf_cluster_workers() < 2:
        return value
    return keras.ops.reshape(value, (1,))
