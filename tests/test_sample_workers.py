"""--workers N on every sample's command line sets Config.DATA_WORKERS."""

from __future__ import annotations

import pytest

from mrcnn import cli
from samples.balloon import balloon
from samples.coco import coco
from samples.nucleus import nucleus
from samples.shapes import shapes


@pytest.mark.parametrize("module", [balloon, coco, nucleus])
def test_samples_with_common_arguments_take_workers(module):
    action = module.build_parser()._option_string_actions["--workers"]
    assert action.type is int and action.default is None


def test_workers_override_maps_to_config_and_rejects_negatives():
    class Args:
        workers = 3

    assert cli.workers_override(Args()) == {"DATA_WORKERS": 3}
    Args.workers = None
    assert cli.workers_override(Args()) == {}
    Args.workers = -1
    with pytest.raises(cli.InputError, match="--workers must be 0 or more, got -1"):
        cli.workers_override(Args())


def test_shapes_train_passes_workers_to_its_config(monkeypatch):
    seen = {}

    def fake_train(args):
        seen["config"] = shapes._train_config(args)
        return 0.0

    monkeypatch.setattr(shapes, "cmd_train", fake_train)
    shapes.main(["train", "--workers", "5"])
    assert seen["config"].DATA_WORKERS == 5
    shapes.main(["train"])
    assert seen["config"].DATA_WORKERS == shapes.ShapesConfig.DATA_WORKERS
    with pytest.raises(SystemExit):
        shapes.main(["train", "--workers", "-2"])
