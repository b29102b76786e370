"""Training through ``MaskRCNN.train`` and the Keras train step, on TensorFlow and JAX.

One tiny model (five-conv backbone, 64 px) trains on a fixed batch: an image with shapes
and an image with no instance. It first trains the heads for one epoch, then everything up
to epoch 8, one step per epoch, so the History holds the loss of every step. The JAX run
happens in a subprocess (``KERAS_BACKEND`` is fixed per process) started when this module's
first test starts, so that it overlaps the TensorFlow tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from mrcnn import allocator
from mrcnn.config import LOSS_NAMES
from mrcnn.data import DataGenerator
from mrcnn.model import MaskRCNN
from mrcnn.weights import read_weights, weighted_layers
from tests.test_allocator import PROBE_AVAILABLE, Probe
from tests.tiny import TinyFastConfig, background_result, shapes_dataset

REPO = Path(__file__).resolve().parents[1]
BACKBONE = re.compile(r"tiny_conv\d")
HEADS = re.compile(r"(mrcnn_.*)|(rpn_.*)|(fpn_.*)")
LEARNING_RATE = 0.01
# Mean of the last 3 of 8 losses on the fixed batch, relative to the first (see
# test_loss_falls_on_a_fixed_batch).
FALL = 0.75


class TrainConfig(TinyFastConfig):
    NAME = "traintest"
    IMAGES_PER_GPU = 2
    STEPS_PER_EPOCH = 1
    VALIDATION_STEPS = 0


def fixed_dataset():
    """Two images, the second without any instance; with batch size 2 every batch holds
    both (in either order), so every step sees the same data."""
    dataset = shapes_dataset(2, seed=0)
    dataset.image_info[1]["shapes"] = []
    assert dataset.load_mask(0)[1].size > 0 and dataset.load_mask(1)[1].size == 0
    return dataset


def snapshot(keras_model) -> dict:
    return {name: [keras.ops.convert_to_numpy(w).copy() for w in layer.weights]
            for name, layer in weighted_layers(keras_model).items()}


def changed(before, after, name) -> bool:
    return any(not np.array_equal(a, b) for a, b in zip(before[name], after[name]))


# ------------------------------------------------------------------------- JAX process

JAX_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    sys.modules["tensorflow"] = None  # like the GPU machine: JAX without TensorFlow
    import keras
    import numpy as np
    assert keras.backend.backend() == "jax", keras.backend.backend()
    from mrcnn.model import MaskRCNN
    from tests.test_training import TrainConfig, fixed_dataset, snapshot, changed

    keras.utils.set_random_seed(0)

    class JaxConfig(TrainConfig):
        NAME = "jaxtrain"
        JIT_COMPILE = True

    config = JaxConfig()
    model = MaskRCNN("training", config, sys.argv[1])
    before = snapshot(model.keras_model)
    history = model.train(fixed_dataset(), None, learning_rate=float(sys.argv[2]), epochs=8,
                          layers="all")
    after = snapshot(model.keras_model)
    last = model.find_last()

    inference = MaskRCNN("inference", config, sys.argv[1])
    inference.load_weights(last)
    image = fixed_dataset().load_image(0)
    result = inference.detect([image[:48, :40]])[0]
    print("RESULT " + json.dumps({
        "history": history.history,
        "epochs": history.epoch,
        "backbone_changed": changed(before, after, "tiny_conv1"),
        "last": last,
        "detect": {k: [list(v.shape), str(v.dtype)] for k, v in result.items()},
    }))
    """
)


@pytest.fixture(scope="module", autouse=True)
def jax_run(tmp_path_factory, module_markers):
    """Start the JAX training subprocess; the JAX test collects its result."""
    if "jax" not in module_markers:  # the JAX test is deselected: start nothing
        yield None
        return
    model_dir = tmp_path_factory.mktemp("jax_logs")
    log_path = model_dir.parent / "jax_training.log"  # a file: a full pipe would block it
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", CI="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", JAX_SCRIPT, str(model_dir),
                                 str(LEARNING_RATE)], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    yield SimpleNamespace(proc=proc, model_dir=model_dir, log_path=log_path)
    if proc.poll() is None:  # the JAX test was deselected or failed early
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------- TensorFlow run

@pytest.fixture(scope="module")
def tf_run(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model_dir = tmp_path_factory.mktemp("logs")
    model = MaskRCNN("training", TrainConfig(), str(model_dir))
    dataset = fixed_dataset()
    start = snapshot(model.keras_model)
    heads = model.train(dataset, None, learning_rate=LEARNING_RATE, epochs=1, layers="heads")
    after_heads = snapshot(model.keras_model)
    log_dir = model.log_dir
    # A low mmap threshold, as tf.data leaves it: train() must raise it for its steps.
    probe = Probe() if PROBE_AVAILABLE else None
    if probe is not None:
        allocator.set_mmap_threshold(64 * 1024)
    full = model.train(dataset, None, learning_rate=LEARNING_RATE, epochs=8, layers="all",
                       custom_callbacks=[probe] if probe is not None else None)
    return SimpleNamespace(model=model, model_dir=model_dir, log_dir=log_dir, heads=heads,
                           full=full, start=start, after_heads=after_heads,
                           end=snapshot(model.keras_model), probe=probe)


def test_heads_training_leaves_backbone_bit_identical(tf_run):
    names = list(tf_run.start)
    backbone = [n for n in names if BACKBONE.fullmatch(n)]
    heads = [n for n in names if HEADS.fullmatch(n)]
    assert len(backbone) == 5 and len(heads) > 20
    assert set(backbone) | set(heads) == set(names)
    for name in backbone:
        assert not changed(tf_run.start, tf_run.after_heads, name), name
    # Every head layer trains, except that the 3x3 convs of P3..P5 only get a gradient
    # when the RPN samples anchors of their level (a 64 px image puts every ROI on P2).
    for name in heads:
        if not re.fullmatch(r"fpn_p[345](_gn)?", name):
            assert changed(tf_run.start, tf_run.after_heads, name), name


def test_all_layers_training_changes_backbone(tf_run):
    for name in tf_run.start:
        if BACKBONE.fullmatch(name):
            assert changed(tf_run.after_heads, tf_run.end, name), name


def test_loss_falls_on_a_fixed_batch(tf_run):
    losses = tf_run.heads.history["loss"] + tf_run.full.history["loss"]
    assert len(losses) == 8 and np.isfinite(losses).all()
    # The first value is the loss of the initial weights. The predictors start neutral (zero
    # deltas, near-uniform scores), so it is the uninformed baseline, not a random-init
    # outlier that is easy to halve: a quarter off it in 8 steps shows learning.
    assert np.mean(losses[-3:]) < FALL * losses[0], losses


def test_loss_metrics_in_history(tf_run):
    for history in (tf_run.heads, tf_run.full):
        assert set(LOSS_NAMES) | {"loss"} <= set(history.history)
        for name in LOSS_NAMES:
            values = history.history[name]
            assert np.isfinite(values).all() and all(v >= 0 for v in values), name
    # The weighted sum (weights 1, plus the small L2 term) is the loss.
    full = tf_run.full.history
    total = sum(np.asarray(full[name]) for name in LOSS_NAMES)
    np.testing.assert_allclose(full["loss"], total, rtol=0.05)
    # Every term is trained: the positives of the image with shapes give head losses.
    assert all(full[name][0] > 0 for name in LOSS_NAMES)


def test_epochs_continue_and_checkpoints_are_named_by_epoch(tf_run):
    model = tf_run.model
    assert tf_run.heads.epoch == [0]
    assert tf_run.full.epoch == list(range(1, 8))  # initial_epoch = last epoch (1)
    assert model.epoch == 8 and model.log_dir == tf_run.log_dir
    run_dir = Path(tf_run.log_dir)
    assert run_dir.parent == Path(tf_run.model_dir)
    assert re.fullmatch(r"traintest\d{8}T\d{6}", run_dir.name)  # seconds: runs never collide
    checkpoints = sorted(p.name for p in run_dir.glob("*.h5"))
    assert checkpoints == [f"mask_rcnn_traintest_{e:04d}.h5" for e in range(1, 9)]
    assert model.find_last() == str(run_dir / "mask_rcnn_traintest_0008.h5")
    # Each checkpoint holds the weights at the end of its epoch.
    stored = read_weights(str(run_dir / "mask_rcnn_traintest_0001.h5"))
    assert set(stored) == set(tf_run.after_heads)
    for name, arrays in tf_run.after_heads.items():
        for a, b in zip(arrays, stored[name]):
            np.testing.assert_array_equal(a, b)


def test_train_holds_glibc_mmap_threshold(tf_run):
    if tf_run.probe is None:
        pytest.skip("glibc >= 2.33 only (mallopt, mallinfo2)")
    # Config.MALLOC_MMAP_THRESHOLD (32 MiB) is in force: 1 MiB blocks stay in the heap.
    assert len(tf_run.probe.seen) == 7 and not any(tf_run.probe.seen)


def test_find_last_prefers_the_newest_run(tf_run, tmp_path):
    model = tf_run.model
    older = Path(tf_run.model_dir) / "traintest20000101T0000"
    older.mkdir(exist_ok=True)
    (older / "mask_rcnn_traintest_0099.h5").write_bytes(b"")
    try:
        assert model.find_last() == str(Path(tf_run.log_dir) / "mask_rcnn_traintest_0008.h5")
    finally:
        (older / "mask_rcnn_traintest_0099.h5").unlink()
        older.rmdir()
    empty = MaskRCNN("inference", TrainConfig(), str(tmp_path))
    with pytest.raises(FileNotFoundError):
        empty.find_last()


def test_checkpoint_resumes_in_an_inference_model(tf_run):
    last = tf_run.model.find_last()
    inference = MaskRCNN("inference", TrainConfig(), str(tf_run.model_dir))
    inference.load_weights(last)  # strict: every layer of the model is in the file
    assert inference.epoch == 8 and inference.log_dir == tf_run.log_dir
    loaded = snapshot(inference.keras_model)
    assert set(loaded) == set(tf_run.end)
    for name, arrays in tf_run.end.items():
        for a, b in zip(arrays, loaded[name]):
            np.testing.assert_array_equal(a, b)


def _train_steps(config, steps):
    """A fresh model trained on the fixed batch with ``train_on_batch``."""
    keras.utils.set_random_seed(1)
    model = MaskRCNN("training", config, "/tmp/unused")
    batch = DataGenerator(fixed_dataset(), config, shuffle=False, workers=0)[0][0]
    model.set_trainable(".*", verbose=0)
    model.compile(LEARNING_RATE, config.LEARNING_MOMENTUM)
    logs = [model.keras_model.train_on_batch(list(batch), return_dict=True)
            for _ in range(steps)]
    return model, batch, logs


def test_xla_train_step_on_tensorflow():
    class XlaConfig(TrainConfig):
        JIT_COMPILE = True

    config = XlaConfig()
    model, _, logs = _train_steps(config, 3)
    assert model.keras_model.jit_compile is True
    for log in logs:
        assert set(LOSS_NAMES) <= set(log) and all(np.isfinite(v) for v in log.values())
    assert logs[-1]["loss"] < logs[0]["loss"]
    # A batch where no image has an instance: no positive ROI, so the head losses are 0
    # (not NaN) and only the RPN learns (its anchors are all negatives).
    empty = fixed_dataset()
    empty.image_info[0]["shapes"] = []
    batch = DataGenerator(empty, config, shuffle=False, workers=0)[0][0]
    assert not batch[4].any()  # input_gt_class_ids
    # This batch's losses, not running means over the steps above (Keras < 3.15 keeps them).
    model.keras_model.reset_metrics()
    log = model.keras_model.train_on_batch(list(batch), return_dict=True)
    assert all(np.isfinite(v) for v in log.values())
    assert log["mrcnn_class_loss"] == log["mrcnn_bbox_loss"] == log["mrcnn_mask_loss"] == 0
    assert log["rpn_class_loss"] > 0 and log["rpn_bbox_loss"] == 0


def test_mixed_bfloat16_trains_with_float32_losses():
    class Bf16Config(TrainConfig):
        MIXED_PRECISION = "mixed_bfloat16"

    model, _, logs = _train_steps(Bf16Config(), 2)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    keras_model = model.keras_model
    assert keras_model.get_layer("fpn_p2").compute_dtype == "bfloat16"
    assert all(w.dtype == "float32" for w in keras_model.trainable_weights)
    assert keras_model.get_layer("mrcnn_mask").compute_dtype == "float32"  # probabilities
    for log in logs:
        assert set(LOSS_NAMES) <= set(log) and all(np.isfinite(v) for v in log.values())
    assert logs[-1]["loss"] < logs[0]["loss"]
    # (That each loss is computed in float32 from bfloat16 outputs is checked on the loss
    # functions in test_model_layers.)


# ------------------------------------------------------------------------------- JAX

def test_jax_training_without_tensorflow(jax_run):
    result = background_result(jax_run)
    history = result["history"]
    losses = history["loss"]
    assert result["epochs"] == list(range(8)) and len(losses) == 8
    assert set(LOSS_NAMES) <= set(history)
    assert np.isfinite([history[n] for n in LOSS_NAMES]).all()
    assert np.mean(losses[-3:]) < FALL * losses[0], losses
    assert result["backbone_changed"]
    assert result["last"].endswith("mask_rcnn_jaxtrain_0008.h5")
    assert Path(result["last"]).parent.parent == Path(jax_run.model_dir)
    detect = result["detect"]
    count = detect["rois"][0][0]
    assert detect["rois"] == [[count, 4], "int32"]
    assert detect["class_ids"][0] == [count] and detect["scores"][0] == [count]
    assert detect["masks"] == [[48, 40, count], "bool"]


def test_training_without_tensorboard_warns_instead_of_failing(monkeypatch, tmp_path):
    # TensorFlow 2.21 no longer installs TensorBoard; tf.summary then raises at the first
    # epoch. tensorboard_callbacks must notice and train without the logs.
    import importlib.util

    from mrcnn import model as modellib

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.warns(UserWarning, match="TensorBoard is not installed"):
        assert modellib.tensorboard_callbacks(str(tmp_path)) == []
    monkeypatch.undo()
    callbacks = modellib.tensorboard_callbacks(str(tmp_path))
    assert [type(c).__name__ for c in callbacks] == ["TensorBoard"]
