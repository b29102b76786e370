"""LR_WARMUP_STEPS: the linear warm-up on top of the per-epoch schedules (analytic rates)."""

import math

import keras
import numpy as np
import pytest

from mrcnn.config import Config
from mrcnn.training import LinearWarmup, schedule_callbacks

BASE_LR = 0.1


class Recorder(keras.callbacks.Callback):
    """Rate used by every batch, and the rate left at each epoch end."""

    def __init__(self):
        super().__init__()
        self.batch_lrs, self.epoch_end_lrs = [], []

    def _lr(self) -> float:
        return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_train_batch_begin(self, batch, logs=None):
        self.batch_lrs.append(self._lr())

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_end_lrs.append(self._lr())


def fit(callbacks, epochs: int, initial_epoch: int = 0, model=None):
    if model is None:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(BASE_LR), "mse")
    x, y = np.ones((12, 3), "float32"), np.zeros((12, 1), "float32")
    recorder = Recorder()
    model.fit(x, y, batch_size=4, epochs=epochs, initial_epoch=initial_epoch, verbose=0,
              callbacks=[*callbacks, recorder])
    return model, recorder


def config(**attrs) -> Config:
    return type("C", (Config,), {"NAME": "w", "NUM_CLASSES": 2, **attrs})()


def ramp(step: int, steps: int, start: float) -> float:
    return start + (1 - start) * step / steps if step < steps else 1.0


def test_warmup_ramps_the_cosine_rate_and_leaves_the_schedule_rate_at_epoch_end():
    cfg = config(LR_SCHEDULE="cosine", LR_WARMUP_STEPS=5, LR_WARMUP_FACTOR=0.1)
    callbacks = schedule_callbacks(cfg, BASE_LR, first_epoch=0, last_epoch=3)
    _, rec = fit(callbacks, epochs=3)  # 3 batches per epoch, 9 steps
    cosine = [BASE_LR * 0.5 * (1 + math.cos(math.pi * e / 3)) for e in range(3)]
    expected = [cosine[t // 3] * ramp(t, 5, 0.1) for t in range(9)]
    np.testing.assert_allclose(rec.batch_lrs, expected, rtol=1e-6)
    # Epoch ends see the schedule's rate, not a warm-up value (the plateau reads it there).
    np.testing.assert_allclose(rec.epoch_end_lrs, cosine, rtol=1e-6)


def test_warmup_follows_the_optimizer_step_so_a_resumed_run_continues_the_ramp():
    cfg = config(LR_WARMUP_STEPS=5, LR_WARMUP_FACTOR=0.2)
    model, first = fit(schedule_callbacks(cfg, BASE_LR, 0, 1), epochs=1)  # steps 0..2
    _, rest = fit(schedule_callbacks(cfg, BASE_LR, 0, 3), epochs=3, initial_epoch=1,
                  model=model)  # steps 3..8: the ramp goes on, then the full rate
    expected = [BASE_LR * ramp(t, 5, 0.2) for t in range(9)]
    np.testing.assert_allclose(first.batch_lrs + rest.batch_lrs, expected, rtol=1e-6)


def test_warmup_runs_before_the_plateau_so_the_plateau_sees_the_schedule_rate():
    cfg = config(LR_SCHEDULE="plateau", LR_WARMUP_STEPS=100, VALIDATION_STEPS=0)
    callbacks = schedule_callbacks(cfg, BASE_LR, 0, 2)
    kinds = [type(c).__name__ for c in callbacks]
    assert kinds == ["LinearWarmup", "ResumablePlateau"]
    _, rec = fit(callbacks, epochs=2)
    np.testing.assert_allclose(rec.epoch_end_lrs, [BASE_LR, BASE_LR], rtol=1e-6)
    assert max(rec.batch_lrs) < BASE_LR * 0.1  # still warming up after 6 of 100 steps


def test_no_warmup_by_default_and_bad_values_are_named():
    assert not any(isinstance(c, LinearWarmup)
                   for c in schedule_callbacks(config(), BASE_LR, 0, 1))
    with pytest.raises(ValueError, match="LR_WARMUP_STEPS"):
        config(LR_WARMUP_STEPS=-1)
    with pytest.raises(ValueError, match="LR_WARMUP_FACTOR"):
        config(LR_WARMUP_FACTOR=0.0)
