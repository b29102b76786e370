"""glibc malloc tuning for training on the TensorFlow backend.

Why this exists: ``keras.Model.fit`` on TensorFlow feeds a ``PyDataset`` through
``tf.data.Dataset.from_generator``. When that generator op starts, TensorFlow calls
``mallopt`` ("Memory patch applied: M_TRIM_THRESHOLD=128 kb"), which also freezes glibc's
otherwise adaptive mmap threshold at its 128 KB default. From then on every tensor buffer
above 128 KB (nearly all activations of a Mask R-CNN step) is a fresh ``mmap`` that is
page-faulted in and ``munmap``-ed again, every step. On the project's 2-core machine that
made a shapes training step 2.2 s instead of 1.3 s, with 10x the system time (56 s vs 5.6 s
and 15.7 M vs 0.9 M page faults over 30 steps).

Setting the threshold before ``fit`` does not help (the op resets it when it starts), so
:class:`MmapThresholdCallback` re-pins it, with the trim threshold at twice its value as
glibc's adaptive rule would have it, at the start of every train and test batch; a
``mallopt`` call costs well under a microsecond. Nothing happens on other C libraries.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import keras

from mrcnn.config import MAX_MMAP_THRESHOLD

# mallopt parameter numbers in glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.lru_cache(maxsize=1)
def _glibc():
    """The process's glibc, or None (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018  (only glibc has it)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def set_mmap_threshold(nbytes: int) -> bool:
    """Set glibc's mmap threshold (allocations above it get their own mmap) to ``nbytes``
    and its trim threshold to twice that, the pair glibc's own adaptive rule would reach.

    Args:
        nbytes: the threshold in bytes, 0 < nbytes <= ``MAX_MMAP_THRESHOLD``.

    Returns:
        True if glibc accepted it; False when the C library is not glibc.
    """
    if not 0 < nbytes <= MAX_MMAP_THRESHOLD:
        raise ValueError(f"mmap threshold must be in (0, {MAX_MMAP_THRESHOLD}], got {nbytes}")
    libc = _glibc()
    if libc is None:
        return False
    mmap_ok = libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes)) == 1
    trim_ok = libc.mallopt(_M_TRIM_THRESHOLD, 2 * int(nbytes)) == 1
    return mmap_ok and trim_ok


class MmapThresholdCallback(keras.callbacks.Callback):
    """Keeps glibc's mmap threshold at ``nbytes`` while a model trains and validates.

    Args:
        nbytes: see ``Config.MALLOC_MMAP_THRESHOLD``.
    """

    def __init__(self, nbytes: int) -> None:
        super().__init__()
        self.nbytes = int(nbytes)

    def _pin(self) -> None:
        set_mmap_threshold(self.nbytes)  # a no-op off glibc

    def on_train_batch_begin(self, batch, logs=None):
        self._pin()

    def on_test_batch_begin(self, batch, logs=None):
        self._pin()


def allocator_callbacks(config) -> list[keras.callbacks.Callback]:
    """The callback for ``config.MALLOC_MMAP_THRESHOLD``: none when it is 0, off glibc, or
    on a backend other than TensorFlow (only TensorFlow's tf.data moves the threshold).

    Args:
        config: a ``Config``.

    Returns:
        A list with zero or one callback.
    """
    nbytes = int(config.MALLOC_MMAP_THRESHOLD)
    if nbytes == 0 or _glibc() is None or keras.backend.backend() != "tensorflow":
        return []
    return [MmapThresholdCallback(nbytes)]
