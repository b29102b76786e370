"""Mixed precision (``MIXED_PRECISION = "mixed_bfloat16"``) and ``JIT_COMPILE = "auto"``.

bfloat16 keeps ~3 significant digits, so a bf16 model cannot reproduce float32 outputs bit
for bit; what it must do is train (finite losses that fall) and detect what the float32 model
detects with the same weights, within tolerances stated below. The JAX run happens in a
subprocess started with the module (``KERAS_BACKEND`` is fixed per process), overlapping the
TensorFlow tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from mrcnn import utils
from mrcnn.config import Config
from mrcnn.data import DataGenerator
from mrcnn.model import MaskRCNN
from mrcnn.ops import accelerator_present, resolve_jit_compile
from tests.tiny import TinyFastConfig, background_result, shapes_dataset

REPO = Path(__file__).resolve().parents[1]

# Tolerances of bf16 against float32 on the same weights (measured max on this model: RPN
# probabilities 0.005, RPN deltas 0.023, detection scores 0.005, box IoU >= 0.97).
RPN_PROB_ATOL = 0.02
RPN_DELTA_ATOL = 0.1
PROPOSAL_MATCH_IOU, PROPOSAL_MATCH_SHARE = 0.9, 0.9
DETECTION_MATCH_IOU, DETECTION_SCORE_ATOL = 0.7, 0.05


class MixedConfig(TinyFastConfig):
    NAME = "mixed"
    IMAGES_PER_GPU = 2
    JIT_COMPILE = "auto"


JAX_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["tensorflow"] = None  # like the GPU machine: JAX without TensorFlow
    import keras
    assert keras.backend.backend() == "jax", keras.backend.backend()
    from mrcnn.data import DataGenerator
    from mrcnn.model import MaskRCNN
    from mrcnn.ops import resolve_jit_compile
    from tests.test_mixed_precision import MixedConfig
    from tests.tiny import shapes_dataset

    class Bf16Config(MixedConfig):
        MIXED_PRECISION = "mixed_bfloat16"

    keras.utils.set_random_seed(0)
    config = Bf16Config()
    model = MaskRCNN("training", config, sys.argv[1])
    batch = DataGenerator(shapes_dataset(2), config, shuffle=False, workers=0)[0][0]
    model.set_trainable(".*", verbose=0)
    model.compile(0.01, 0.9)
    logs = [model.keras_model.train_on_batch(list(batch), return_dict=True) for _ in range(4)]
    print("RESULT " + json.dumps({
        "logs": [{k: float(v) for k, v in log.items()} for log in logs],
        "jit_auto": resolve_jit_compile("auto"),
        "jit_compile": bool(model.keras_model.jit_compile),
        "policy": keras.config.dtype_policy().name,
        "fpn_p2": model.keras_model.get_layer("fpn_p2").compute_dtype,
    }))
    """
)


@pytest.fixture(scope="module", autouse=True)
def jax_run(tmp_path_factory, module_markers):
    """Start the JAX bf16 training subprocess; its test collects the result."""
    if "jax" not in module_markers:  # the JAX test is deselected: start nothing
        yield None
        return
    model_dir = tmp_path_factory.mktemp("jax_bf16")
    log_path = model_dir / "run.log"  # a file: a full pipe would block the process
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", JAX_SCRIPT, str(model_dir)], cwd=REPO,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    yield SimpleNamespace(proc=proc, log_path=log_path)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _matches(a: np.ndarray, b: np.ndarray, min_iou: float) -> np.ndarray:
    """For each box of ``a``, whether some box of ``b`` overlaps it with IoU >= min_iou."""
    if len(a) == 0:
        return np.zeros(0, bool)
    if len(b) == 0:
        return np.zeros(len(a), bool)
    return utils.compute_overlaps(a, b).max(axis=1) >= min_iou


def test_bf16_inference_agrees_with_float32(tmp_path):
    config = MixedConfig()
    keras.utils.set_random_seed(0)
    dataset = shapes_dataset(2, seed=0)
    model = MaskRCNN("training", config, "/tmp/unused")
    batch = DataGenerator(dataset, config, shuffle=False, workers=0)[0][0]
    model.set_trainable(".*", verbose=0)
    model.compile(0.01, 0.9)
    # "auto" resolves per device: plain graph on this CPU, XLA with an accelerator.
    assert model.keras_model.jit_compile is accelerator_present()
    for _ in range(12):  # a few steps, so that the heads' outputs are not all alike
        model.keras_model.train_on_batch(list(batch))
    weights = str(tmp_path / "float32.h5")
    model.save_weights(weights)

    images = [dataset.load_image(i) for i in range(2)]
    outputs = {}
    for policy in (None, "mixed_bfloat16"):
        class InferenceConfig(MixedConfig):
            MIXED_PRECISION = policy

        inference = MaskRCNN("inference", InferenceConfig(), "/tmp/unused")
        inference.load_weights(weights, by_name=True)
        assert keras.config.dtype_policy().name == "float32"  # no global policy leaks
        compute = inference.keras_model.get_layer("fpn_p2").compute_dtype
        assert compute == ("bfloat16" if policy else "float32")
        molded, metas, _ = inference.mold_inputs(images)
        outputs[policy] = {k: np.asarray(v, "float32")
                           for k, v in inference._run_batches(molded, metas)[0].items()}
    full, half = outputs[None], outputs["mixed_bfloat16"]

    # Per-anchor RPN outputs: same order, so compared element-wise.
    np.testing.assert_allclose(half["rpn_class"], full["rpn_class"], atol=RPN_PROB_ATOL)
    np.testing.assert_allclose(half["rpn_bbox"], full["rpn_bbox"], atol=RPN_DELTA_ATOL)
    assert not np.array_equal(half["rpn_class"], full["rpn_class"])  # bf16 really ran
    for b in range(2):
        # Proposals (float32 NMS over scores rounded by bf16): the same boxes, order may vary.
        real = np.abs(half["ROI"][b]).sum(1) > 0
        assert real.sum() > len(real) // 2
        hits = _matches(half["ROI"][b][real], full["ROI"][b], PROPOSAL_MATCH_IOU)
        assert hits.mean() >= PROPOSAL_MATCH_SHARE
        # Detections: every bf16 one has a float32 twin (class, box, score), whatever the
        # (barely trained) model detects; none is required.
        d16, d32 = half["mrcnn_detection"][b], full["mrcnn_detection"][b]
        d16, d32 = d16[d16[:, 4] > 0], d32[d32[:, 4] > 0]
        assert abs(len(d16) - len(d32)) <= 1
        for det in d16:
            same = d32[(d32[:, 4] == det[4])]
            ok = _matches(det[None, :4], same[:, :4], DETECTION_MATCH_IOU)
            assert ok.all(), (det, d32)
            best = utils.compute_overlaps(det[None, :4], same[:, :4])[0].argmax()
            assert abs(same[best, 5] - det[5]) <= DETECTION_SCORE_ATOL


def test_mixed_bfloat16_trains_on_jax(jax_run):
    result = background_result(jax_run)
    assert result["jit_auto"] is True and result["jit_compile"] is True  # JAX always jits
    assert result["policy"] == "float32" and result["fpn_p2"] == "bfloat16"
    losses = [log["loss"] for log in result["logs"]]
    assert all(np.isfinite(v) for log in result["logs"] for v in log.values())
    assert losses[-1] < losses[0]


def test_jit_compile_auto_and_validation():
    assert resolve_jit_compile(True) is True and resolve_jit_compile(False) is False
    assert resolve_jit_compile("auto") is accelerator_present()  # TensorFlow: XLA on GPU/TPU
    with pytest.raises(ValueError, match="JIT_COMPILE"):
        resolve_jit_compile("yes")
    for bad in ("yes", 1, None):
        class BadConfig(Config):
            NUM_CLASSES = 2
            JIT_COMPILE = bad

        with pytest.raises(ValueError, match=r"BadConfig\.JIT_COMPILE = .* is invalid"):
            BadConfig()
    assert Config.JIT_COMPILE == "auto"
