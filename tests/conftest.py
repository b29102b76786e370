"""Test-wide settings (quiet TensorFlow, headless matplotlib, no albumentations update check)
and the test tiers.

Tiers are pytest markers (registered in pyproject.toml), applied here by test file and test
name so that test files need no decorators; see docs/testing.md:

- ``distributed``: data-parallel runs on several logical devices (minutes).
- ``jax``: runs the JAX backend (in a subprocess: the tests' own backend is TensorFlow).
- ``notebooks``: executes the notebooks.
- ``slow``: anything else that takes more than a few seconds of CPU (training runs, sample
  end-to-end runs, full-size ResNet graphs).

``python -m pytest tests -m "not slow and not distributed and not jax and not notebooks"``
runs the unit tier; ``python -m pytest tests`` runs everything.
"""

import os
import re

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# Whole files in a tier.
TIER_FILES = {
    "distributed": {"test_distribute.py"},
    "notebooks": {"test_notebooks.py"},
    # Training runs, sample runs end to end, SavedModel export, full-size graphs (the
    # measured CPU time of each is tens of seconds), and the docs pages (one process each).
    "slow": {"test_training.py", "test_train_steps.py", "test_export.py",
             "test_mixed_precision.py", "test_matterport_inspection.py",
             "test_frozen_bn_init.py", "test_sample_shapes.py", "test_sample_coco.py",
             "test_sample_nucleus.py", "test_sample_balloon.py", "test_docs.py",
             "test_app.py"},
}
# Tests (by name, parameters stripped) in a tier; ``jax`` also takes the tests named
# test_jax_*, *_jax_* or *_on_jax.
TIER_TESTS = {
    "slow": {
        # ResNet-50/101 graphs, XLA compilations, exhaustive NMS comparisons, short runs.
        "test_group_norm_names_and_4conv1fc_box_head",
        "test_coco_model_matches_matterport_size_and_names",
        "test_nms_matches_references",
        "test_nms_tiled_matches_tf_kernel_on_hard_cases",
        "test_nms_dispatch_and_xla",
        "test_crop_and_resize_xla_matches_eager",
        "test_batched_detect_gives_each_image_what_it_gets_alone",
        "test_xla_detect_matches_graph_detect",
        "test_bn_layers_save_and_load_as_keras_batchnorm",
        "test_resume_after_epoch_1_equals_the_uninterrupted_run_adamw",
        "test_resume_after_epoch_1_equals_the_uninterrupted_run_sgd",
        "test_nan_stops_training_with_one_message_and_no_checkpoint",
        "test_fine_tuning_starts_a_new_run_and_zero_epochs_is_an_error",
        "test_application_pyramid_shapes_and_names",
        "test_keras_resnet50_weights_load_by_name_into_matterport_resnet50",
    },
}
JAX_NAME = re.compile(r"^test_jax_|_jax_|_on_jax$")


def tiers(path: str, name: str) -> set[str]:
    """The tier markers of test ``name`` in file ``path``.

    Args:
        path: the test file's name (``test_x.py``).
        name: the test function's name without parameters.

    Returns:
        The marker names.
    """
    out = {tier for tier, files in TIER_FILES.items() if path in files}
    out |= {tier for tier, names in TIER_TESTS.items() if name in names}
    if JAX_NAME.search(name):
        out.add("jax")
    return out


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = getattr(item, "originalname", None) or item.name.split("[")[0]
        for tier in tiers(item.path.name, name):
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="module")
def module_markers(request) -> set[str]:
    """The markers of the tests of this module that run in this session (after ``-m`` and
    ``-k``): a module-wide fixture that starts work for some tests only (a JAX subprocess)
    asks it whether they run at all."""
    return {mark.name for item in request.session.items if item.module is request.module
            for mark in item.iter_markers()}
