"""Weight presets and the from-scratch recipe in the library (``mrcnn.presets``).

The recipe is checked where it acts: the optimizer and learning rate of the compiled train
model after a tiny ``MaskRCNN.train`` (one step per epoch), the rate of its first step (the
warm-up), and the run's ``config.json``. The other cases stop ``train()`` at its first
step, once the optimizer is compiled and the warm-up has set the rate, before the step is
traced (seconds instead of a minute each). The expected values are the measured recipe as documented (AdamW at
0.002, 50-step warm-up, plateau with patience 2), written out here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest

from mrcnn import cli, presets
from mrcnn.config import Config
from mrcnn.model import MaskRCNN
from tests.tiny import TinyFastConfig, shapes_dataset

RECIPE = {"OPTIMIZER": "adamw", "LEARNING_RATE": 0.002, "LR_SCHEDULE": "plateau",
          "LR_PLATEAU_PATIENCE": 2, "LR_WARMUP_STEPS": 50}


class ScratchConfig(TinyFastConfig):
    NAME = "scratch"
    STEPS_PER_EPOCH = 1
    VALIDATION_STEPS = 0
    FROM_SCRATCH_RECIPE = "auto"
    DATA_WORKERS = 0


class Stop(Exception):
    """Raised by ``FirstStepRate(stop=True)`` before the first step runs."""


class FirstStepRate(keras.callbacks.Callback):
    """The learning rate the optimizer applies at the first step (after the warm-up, whose
    callback runs before the user's)."""

    def __init__(self, stop: bool = False):
        super().__init__()
        self.rates: list[float] = []
        self.stop = stop

    def on_train_batch_begin(self, batch, logs=None):
        self.rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        if self.stop:
            raise Stop


def train_one_step(config, model_dir, epochs: int = 1, learning_rate: float | None = None,
                   model: MaskRCNN | None = None, stop: bool = False):
    """Train up to ``epochs`` (one step each) with ``learning_rate=config.LEARNING_RATE``
    unless given (Matterport's idiom), or with ``stop`` only up to the first step; returns
    the model and the first step's rate."""
    keras.utils.set_random_seed(0)
    model = model or MaskRCNN("training", config, str(model_dir))
    rates = FirstStepRate(stop)
    try:
        model.train(shapes_dataset(2), None,
                    learning_rate=config.LEARNING_RATE if learning_rate is None
                    else learning_rate, epochs=epochs, layers="all", custom_callbacks=[rates])
    except Stop:
        pass
    return model, rates.rates[0]


def run_config(model: MaskRCNN) -> dict:
    return json.loads((Path(model.log_dir) / "config.json").read_text())["config"]


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory):
    """A model trained from random weights through the Python API, two epochs of one step."""
    import contextlib
    import io

    config = ScratchConfig()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        model, rate = train_one_step(config, tmp_path_factory.mktemp("logs"), epochs=2)
    return model, rate, config, out.getvalue()


def test_the_recipe_is_the_measured_one():
    assert presets.FROM_SCRATCH == RECIPE
    assert cli.FROM_SCRATCH is presets.FROM_SCRATCH  # one recipe for both paths


def test_random_weights_through_the_python_api_get_the_recipe(scratch_run):
    model, first_rate, config, printed = scratch_run
    optimizer = model.keras_model.optimizer
    assert isinstance(optimizer, keras.optimizers.AdamW)
    # After the epoch the warm-up leaves the schedule's rate: the recipe's.
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == \
        pytest.approx(RECIPE["LEARNING_RATE"])
    # Step 0 of the warm-up: LR_WARMUP_FACTOR (Config's default, 0.001) x the rate.
    assert first_rate == pytest.approx(RECIPE["LEARNING_RATE"] * Config.LR_WARMUP_FACTOR)
    # The train model's loss reads OPTIMIZER (no SGD L2 term under AdamW).
    assert model.keras_model.config.OPTIMIZER == "adamw"
    # config.json records what trained; the user's Config object is left as it was.
    recorded = run_config(model)
    assert {key: recorded[key] for key in RECIPE} == RECIPE
    assert recorded["FROM_SCRATCH_RECIPE"] == "auto"
    assert {key: getattr(model.config, key) for key in RECIPE} == RECIPE
    assert (config.OPTIMIZER, config.LEARNING_RATE) == (Config.OPTIMIZER, Config.LEARNING_RATE)
    # One line says so and how to turn it off.
    lines = [line for line in printed.splitlines() if "from-scratch recipe" in line]
    assert len(lines) == 1 and 'FROM_SCRATCH_RECIPE = "off"' in lines[0], printed


def test_resuming_a_recipe_run_keeps_the_recipe(scratch_run, capsys):
    model, _, config, _ = scratch_run
    # Interrupted after epoch 1: resume that checkpoint, as the stage's train() call again.
    # A run interrupted after epoch 1 has no epoch-2 checkpoint (and train() never writes
    # over one): set it aside for this test.
    last = model.find_last()
    aside = last + ".aside"
    os.rename(last, aside)
    try:
        resumed = MaskRCNN("training", config, model.model_dir)
        resumed.load_weights(last.replace("_0002.h5", "_0001.h5"))
        assert resumed.epoch == 1
        _, rate = train_one_step(config, None, epochs=2, model=resumed, stop=True)
    finally:
        os.rename(aside, last)
    printed = capsys.readouterr().out
    assert "resuming" in printed  # the optimizer state of the checkpoint was restored
    assert isinstance(resumed.keras_model.optimizer, keras.optimizers.AdamW)
    # The warm-up goes on from the restored step 1 (the optimizer's own counter).
    warm = Config.LR_WARMUP_FACTOR + (1 - Config.LR_WARMUP_FACTOR) * 1 / RECIPE["LR_WARMUP_STEPS"]
    assert rate == pytest.approx(RECIPE["LEARNING_RATE"] * warm)


def test_config_opt_out_trains_with_the_configs_settings(tmp_path, capsys):
    config = type("Off", (ScratchConfig,), {"FROM_SCRATCH_RECIPE": "off"})()
    model, rate = train_one_step(config, tmp_path, stop=True)
    assert isinstance(model.keras_model.optimizer, keras.optimizers.SGD)
    assert rate == pytest.approx(Config.LEARNING_RATE)  # no warm-up
    assert run_config(model)["OPTIMIZER"] == "sgd"
    assert "from-scratch recipe" not in capsys.readouterr().out


def test_user_set_values_win(tmp_path, capsys):
    # Set in the subclass, even to Config's default value: the user's choice.
    config = type("Mine", (ScratchConfig,), {"OPTIMIZER": "sgd", "LEARNING_RATE": 0.01})()
    model, rate = train_one_step(config, tmp_path, stop=True)
    assert isinstance(model.keras_model.optimizer, keras.optimizers.SGD)
    assert model.keras_model.config.OPTIMIZER == "sgd"
    # The recipe fills what was left: the warm-up (and the plateau schedule).
    assert rate == pytest.approx(0.01 * Config.LR_WARMUP_FACTOR)
    recorded = run_config(model)
    assert (recorded["LEARNING_RATE"], recorded["LR_WARMUP_STEPS"],
            recorded["LR_SCHEDULE"]) == (0.01, 50, "plateau")
    line = next(x for x in capsys.readouterr().out.splitlines() if "from-scratch" in x)
    assert "OPTIMIZER='sgd'" in line and "LEARNING_RATE=0.01" in line


def test_a_learning_rate_passed_to_train_wins(tmp_path):
    model, rate = train_one_step(ScratchConfig(), tmp_path, learning_rate=0.0005, stop=True)
    assert isinstance(model.keras_model.optimizer, keras.optimizers.AdamW)
    assert rate == pytest.approx(0.0005 * Config.LR_WARMUP_FACTOR)


def test_loading_weights_by_path_turns_it_off(tmp_path, capsys):
    config = ScratchConfig()
    source = MaskRCNN("training", config, str(tmp_path))
    path = str(tmp_path / "weights.h5")
    source.save_weights(path)
    model = MaskRCNN("training", config, str(tmp_path))
    assert model.load_weights(path) == path
    model, rate = train_one_step(config, tmp_path, model=model, stop=True)
    assert isinstance(model.keras_model.optimizer, keras.optimizers.SGD)
    assert rate == pytest.approx(Config.LEARNING_RATE)
    assert "from-scratch recipe" not in capsys.readouterr().out


def test_random_backbone_means_no_backbone_layer_loaded():
    names = ["tiny_conv1", "tiny_conv2", "fpn_c5p5", "rpn_conv_shared", "mrcnn_mask"]
    assert presets.starts_from_random_weights([], names)
    assert presets.starts_from_random_weights(["mrcnn_mask", "fpn_c5p5"], names)  # heads only
    assert not presets.starts_from_random_weights(["tiny_conv1"], names)
    assert presets.starts_from_random_weights(["tiny_conv1"], names,
                                              {"layers": ".*", "from_scratch": True})
    assert not presets.starts_from_random_weights(["tiny_conv1"], names, {"layers": ".*"})


def test_user_set_detection():
    class Mine(Config):
        NUM_CLASSES = 2
        OPTIMIZER = "sgd"  # Config's default, but written by the user

    config = Mine()
    assert presets.user_set(config, "OPTIMIZER")
    assert not presets.user_set(config, "LEARNING_RATE")
    config.LEARNING_RATE = 0.01
    assert presets.user_set(config, "LEARNING_RATE")
    # apply_from_scratch leaves its argument alone and keeps the user's values.
    recipe, rate, message = presets.apply_from_scratch(config, 0.01)
    assert recipe is not config and config.LR_WARMUP_STEPS == Config.LR_WARMUP_STEPS
    assert (recipe.OPTIMIZER, recipe.LEARNING_RATE, recipe.LR_WARMUP_STEPS) == \
        ("sgd", 0.01, 50)
    assert rate == 0.01 and "Mine" in message
    # Matterport's learning_rate=config.LEARNING_RATE means the configured rate.
    plain = type("Plain", (Config,), {"NUM_CLASSES": 2})  # no training setting of its own
    assert presets.apply_from_scratch(plain(), Config.LEARNING_RATE)[1] == 0.002
    assert "layers='heads'" in presets.apply_from_scratch(plain(), 0.1, "heads")[2]


@pytest.mark.parametrize("value", ["on", None, True])
def test_the_switch_is_validated(value):
    bad = type("Bad", (Config,), {"NUM_CLASSES": 2, "FROM_SCRATCH_RECIPE": value})
    with pytest.raises(ValueError, match=r"Bad\.FROM_SCRATCH_RECIPE.*'auto', 'off'"):
        bad()


def test_keywords_load_through_the_library(tmp_path, monkeypatch):
    config = ScratchConfig()
    model = MaskRCNN("inference", config, str(tmp_path))
    assert model.load_weights("none") is None and not model.loaded_layers
    with pytest.raises(FileNotFoundError):
        model.load_weights("last")
    # "coco" uses the file where it is (no download when it exists).
    source = MaskRCNN("training", config, str(tmp_path))
    coco = str(tmp_path / "mask_rcnn_coco.h5")
    source.save_weights(coco)
    monkeypatch.setattr(presets, "COCO_WEIGHTS_PATH", coco)
    assert model.load_weights("COCO", by_name=True, exclude=presets.HEAD_LAYERS) == coco
    assert model.loaded_layers and not model.loaded_layers & set(presets.HEAD_LAYERS)
    expected = source.keras_model.get_layer("tiny_conv1").get_weights()
    for a, b in zip(model.keras_model.get_layer("tiny_conv1").get_weights(), expected):
        np.testing.assert_array_equal(a, b)
    # "last": the checkpoint find_last picks, resuming its run.
    run = tmp_path / "scratch20260101T0000"
    run.mkdir()
    checkpoint = str(run / "mask_rcnn_scratch_0002.h5")
    source.save_weights(checkpoint)
    assert model.load_weights("last") == checkpoint and model.epoch == 2


def test_command_line_leaves_the_recipe_to_its_own_decision(tmp_path):
    class Sample(Config):
        NAME = "sample"
        NUM_CLASSES = 2

    # Not from scratch (or tiny): the library keeps the command line's settings.
    assert cli.make_config(Sample, weights="none").FROM_SCRATCH_RECIPE == "off"
    scratch = cli.make_config(Sample, weights="none", from_scratch=True)
    assert scratch.FROM_SCRATCH_RECIPE == "auto"
    assert {key: getattr(scratch, key) for key in RECIPE} == RECIPE
    # --set wins over both: on, or off (then the Config's own settings train).
    on = cli.make_config(Sample, weights="none", settings={"FROM_SCRATCH_RECIPE": "auto"})
    assert on.FROM_SCRATCH_RECIPE == "auto"
    off = cli.make_config(Sample, weights="none", from_scratch=True,
                          settings={"FROM_SCRATCH_RECIPE": "off"})
    assert (off.OPTIMIZER, off.LEARNING_RATE) == (Config.OPTIMIZER, Config.LEARNING_RATE)
    # The wrappers are the library's.
    missing = str(tmp_path / "missing.h5")
    with pytest.raises(cli.InputError, match="weights file not found"):
        cli.resolve_weights(None, missing)
    assert cli.resolve_weights(None, "none") is None
    assert cli.norm_for_weights("coco", Sample, str(tmp_path)) == {}
    assert cli.trains_from_scratch("none", Sample, str(tmp_path))
    assert not cli.trains_from_scratch("last", Sample, str(tmp_path))
    assert os.path.basename(cli.COCO_WEIGHTS_PATH) == "mask_rcnn_coco.h5"
