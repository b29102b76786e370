"""Tiny configurations and data shared by the model, sample and notebook tests.

Everything here is sized for a 2-core CPU: 64 px images, a few ROIs, and (where layer names
do not matter) a five-conv backbone instead of ResNet-50, whose graph takes ~30 s to trace.
"""

from __future__ import annotations

import keras
import numpy as np

from mrcnn.config import Config
from mrcnn.tiny import tiny_backbone, tiny_backbone_shapes
from samples.shapes.shapes import ShapesDataset


class TinyConfig(Config):
    """64 px shapes, ResNet-50 with GroupNorm and slim heads."""
    NAME = "tiny"
    NUM_CLASSES = 1 + 3
    IMAGES_PER_GPU = 2
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    BACKBONE = "resnet50"
    NORM = "gn"
    GN_GROUPS = 16
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    RPN_TRAIN_ANCHORS_PER_IMAGE = 32
    PRE_NMS_LIMIT = 500
    POST_NMS_ROIS_TRAINING = 64
    POST_NMS_ROIS_INFERENCE = 32
    TRAIN_ROIS_PER_IMAGE = 16
    MAX_GT_INSTANCES = 5
    DETECTION_MAX_INSTANCES = 10
    DETECTION_MIN_CONFIDENCE = 0.0
    MINI_MASK_SHAPE = (16, 16)
    TOP_DOWN_PYRAMID_SIZE = 64
    FPN_CLASSIF_FC_LAYERS_SIZE = 128
    STEPS_PER_EPOCH = 2
    VALIDATION_STEPS = 1
    JIT_COMPILE = False
    # The tests pin their optimizer settings: no from-scratch recipe (tests/test_presets.py
    # turns it on).
    FROM_SCRATCH_RECIPE = "off"


class TinyFastConfig(TinyConfig):
    """TinyConfig on the five-conv backbone: for tests where ResNet names do not matter."""
    NAME = "tinyfast"
    BACKBONE = staticmethod(tiny_backbone)
    COMPUTE_BACKBONE_SHAPE = staticmethod(tiny_backbone_shapes)


def shapes_dataset(count: int = 8, size: int = 64, seed: int = 0) -> ShapesDataset:
    """A prepared synthetic shapes dataset."""
    ds = ShapesDataset()
    ds.load_shapes(count, size, size, seed=seed)
    ds.prepare()
    return ds


def force_detections(keras_model) -> None:
    """Make an inference model detect: the class head always says class 1 and the masks
    fill their boxes, so that detect() has detections to check whatever the other weights."""
    logits = keras_model.get_layer("mrcnn_class_logits")
    kernel, _ = logits.get_weights()
    bias = np.zeros(kernel.shape[1], np.float32)
    bias[1] = 6.0
    # Glorot-scaled kernel (the layer's own init, N(0, 0.01), is nearly flat): the scores of
    # different ROIs must differ, or near-ties make the detection order backend-dependent.
    spread = np.asarray(keras.initializers.GlorotUniform(seed=0)(kernel.shape))
    logits.set_weights([0.1 * spread, bias])
    mask = keras_model.get_layer("mrcnn_mask")
    kernel, bias = mask.get_weights()
    mask.set_weights([np.zeros_like(kernel), np.full_like(bias, 10.0)])


def unrounded_boxes(detections, window, molded_shape, original_shape) -> np.ndarray:
    """Detection boxes in original-image pixels before rounding, recomputed independently of
    ``transform.unmold_detections``: Matterport's norm_boxes of the window, the shift and
    scale into it, then denorm_boxes without its rounding (what MASK_PASTE = "subpixel"
    pastes onto).

    Args:
        detections: [N, >= 4] rows whose first four entries are normalized molded boxes.
        window: the image's pixel window inside the molded image.
        molded_shape: shape of the molded image (first two entries used).
        original_shape: shape of the original image (first two entries used).

    Returns:
        [N, (y1, x1, y2, x2)] float boxes (y2, x2 exclusive).
    """
    from mrcnn import utils

    wy1, wx1, wy2, wx2 = utils.norm_boxes(np.asarray(window), molded_shape[:2])
    norm = (np.asarray(detections)[:, :4] - np.array([wy1, wx1, wy1, wx1])) / np.array(
        [wy2 - wy1, wx2 - wx1, wy2 - wy1, wx2 - wx1])
    h, w = original_shape[:2]
    return norm * [h - 1, w - 1, h - 1, w - 1] + [0, 0, 1, 1]


def start_background(args: list[str], log_path, **env: str):
    """Start ``python args...`` from the repository root with ``env`` added, its output to
    ``log_path`` (a file: a full pipe would block it); collect it with ``background_result``.

    Returns:
        SimpleNamespace(proc, log_path).
    """
    import os
    import subprocess
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    repo = Path(__file__).resolve().parents[1]
    full_env = dict(os.environ, **env, PYTHONPATH=os.pathsep.join(
        [str(repo), os.environ.get("PYTHONPATH", "")]))
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, *args], cwd=repo, env=full_env, stdout=log,
                                stderr=subprocess.STDOUT)
    return SimpleNamespace(proc=proc, log_path=Path(log_path))


def background_result(run, timeout: float = 600) -> dict:
    """Wait for a background test process (``run.proc`` writing ``run.log_path``) and return
    the JSON of its last ``RESULT `` line; fail with the end of its log otherwise."""
    import json
    import subprocess

    try:
        run.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        run.proc.kill()
        run.proc.wait()
    output = run.log_path.read_text()
    assert run.proc.returncode == 0, output[-5000:]
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert lines, output[-5000:]
    return json.loads(lines[-1][len("RESULT "):])
