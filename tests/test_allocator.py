"""mrcnn.allocator: glibc's mmap threshold, held through ``fit`` on a PyDataset.

The probe is glibc's own bookkeeping: ``mallinfo2().hblks`` counts the chunks that live in
their own mmap. glibc consults the threshold only when no free chunk of the heap can serve
a request, so "mmapped below the threshold" is probed with a block larger than all free
heap memory, and "not mmapped above it" with 1 MiB.
"""

from __future__ import annotations

import ctypes

import keras
import numpy as np
import pytest

from mrcnn import allocator
from mrcnn.config import MAX_MMAP_THRESHOLD, Config

PROBE_BYTES = 1 << 20

libc = allocator._glibc()
PROBE_AVAILABLE = libc is not None and hasattr(libc, "mallinfo2")
pytestmark = pytest.mark.skipif(not PROBE_AVAILABLE,
                                reason="glibc >= 2.33 only (mallopt, mallinfo2)")


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _mallinfo() -> MallInfo2:
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2()


def beyond_free_heap() -> int:
    """A size no free heap chunk can serve (all arenas' free bytes, top chunks included)."""
    return _mallinfo().fordblks + PROBE_BYTES


def probe_is_mmapped(nbytes: int = PROBE_BYTES) -> bool:
    """Whether a fresh ``nbytes`` malloc gets its own mmap."""
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    before = _mallinfo().hblks
    pointer = libc.malloc(nbytes)
    try:
        return _mallinfo().hblks == before + 1
    finally:
        libc.free(pointer)


@pytest.fixture(autouse=True)
def restore_threshold():
    yield
    allocator.set_mmap_threshold(MAX_MMAP_THRESHOLD)  # the fast setting, for later tests


def test_threshold_moves_blocks_between_mmap_and_heap():
    assert allocator.set_mmap_threshold(64 * 1024)
    assert probe_is_mmapped(beyond_free_heap())
    assert allocator.set_mmap_threshold(8 * 1024 * 1024)
    assert not probe_is_mmapped()


@pytest.mark.parametrize("nbytes", [0, -1, MAX_MMAP_THRESHOLD + 1])
def test_threshold_out_of_range(nbytes):
    with pytest.raises(ValueError, match="mmap threshold"):
        allocator.set_mmap_threshold(nbytes)


class Batches(keras.utils.PyDataset):
    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.x = rng.normal(size=(4, 8, 16)).astype("float32")
        self.y = rng.normal(size=(4, 8, 1)).astype("float32")

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return self.x[index], self.y[index]


class Probe(keras.callbacks.Callback):
    """Records, after each train and validation batch, whether a block is mmapped.

    Args:
        beyond_free: probe with a block larger than all free heap memory (it is mmapped
            exactly when the threshold is below its size) instead of 1 MiB.
    """

    def __init__(self, beyond_free: bool = False):
        super().__init__()
        self.beyond_free = beyond_free
        self.seen = []

    def _probe(self):
        self.seen.append(probe_is_mmapped(beyond_free_heap() if self.beyond_free
                                          else PROBE_BYTES))

    def on_train_batch_end(self, batch, logs=None):
        self._probe()

    def on_test_batch_end(self, batch, logs=None):
        self._probe()


def test_callback_holds_the_threshold_through_fit_and_validation():
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    allocator.set_mmap_threshold(64 * 1024)  # what tf.data's generator op leaves behind
    probe = Probe()
    model.fit(Batches(), validation_data=Batches(), epochs=2, verbose=0,
              callbacks=[allocator.MmapThresholdCallback(8 * 1024 * 1024), probe])
    assert len(probe.seen) == 2 * (4 + 4) and not any(probe.seen)

    # Without the callback the low threshold stays: blocks beyond the heap's free memory
    # are mmapped.
    allocator.set_mmap_threshold(64 * 1024)
    probe = Probe(beyond_free=True)
    model.fit(Batches(), epochs=1, verbose=0, callbacks=[probe])
    assert all(probe.seen)


def test_config_knob_gives_the_callback():
    class Tuned(Config):
        NAME = "tuned"
        NUM_CLASSES = 2
        MALLOC_MMAP_THRESHOLD = 4 * 1024 * 1024

    class Off(Config):
        NAME = "off"
        NUM_CLASSES = 2
        MALLOC_MMAP_THRESHOLD = 0

    (callback,) = allocator.allocator_callbacks(Tuned())
    assert isinstance(callback, allocator.MmapThresholdCallback)
    assert callback.nbytes == 4 * 1024 * 1024
    assert allocator.allocator_callbacks(Off()) == []
