"""BoxCoder (NumPy and graph twins) and the one IoU, against independent NumPy arithmetic."""

import numpy as np
import pytest

from mrcnn.box_coder import MAX_LOG_SCALE, BoxCoder, box_iou, pairwise_iou

STD = np.array([0.1, 0.2, 0.3, 0.4])


def _random_boxes(rng, n, low=0.0, high=60.0):
    yx = rng.uniform(low, high, size=(n, 2))
    hw = rng.uniform(1.0, 30.0, size=(n, 2))
    return np.concatenate([yx, yx + hw], axis=1)


def _reference_deltas(boxes, targets):
    """Written from the definition, per box, in Python floats."""
    out = []
    for (y1, x1, y2, x2), (gy1, gx1, gy2, gx2) in zip(boxes.tolist(), targets.tolist()):
        h, w, gh, gw = y2 - y1, x2 - x1, gy2 - gy1, gx2 - gx1
        out.append([((gy1 + gy2) / 2 - (y1 + y2) / 2) / h, ((gx1 + gx2) / 2 - (x1 + x2) / 2) / w,
                    np.log(gh / h), np.log(gw / w)])
    return np.array(out)


def test_encode_matches_the_definition_and_divides_by_std_dev():
    rng = np.random.default_rng(0)
    boxes, targets = _random_boxes(rng, 50), _random_boxes(rng, 50)
    deltas = BoxCoder(STD).encode(boxes, targets)
    assert deltas.dtype == np.float64
    np.testing.assert_allclose(deltas, _reference_deltas(boxes, targets) / STD, rtol=1e-9)
    np.testing.assert_allclose(BoxCoder().encode(boxes, targets),
                               _reference_deltas(boxes, targets), rtol=1e-9)


def test_round_trip_with_std_dev_and_dtype():
    rng = np.random.default_rng(1)
    boxes, targets = _random_boxes(rng, 40), _random_boxes(rng, 40)
    coder = BoxCoder(STD)
    np.testing.assert_allclose(coder.decode(boxes, coder.encode(boxes, targets)), targets,
                               atol=1e-9)
    b32, t32 = boxes.astype(np.float32), targets.astype(np.float32)
    d32 = coder.encode(b32, t32)
    assert d32.dtype == np.float32 and coder.decode(b32, d32).dtype == np.float32
    np.testing.assert_allclose(coder.decode(b32, d32), targets, atol=1e-3)


def test_decode_clamps_log_scales_after_std_dev():
    boxes = np.array([[10.0, 10.0, 20.0, 30.0]])
    deltas = np.array([[0.5, -0.5, 100.0, -3.0]])  # log dh = 100 * 0.3 after scaling
    out = BoxCoder(STD).decode(boxes, deltas)
    h, w = 10.0 * np.exp(MAX_LOG_SCALE), 20.0 * np.exp(-3.0 * 0.4)
    cy, cx = 15.0 + 0.5 * 0.1 * 10.0, 20.0 - 0.5 * 0.2 * 20.0
    np.testing.assert_allclose(out, [[cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2]],
                               rtol=1e-12)
    unclamped = BoxCoder(max_log_scale=None).decode(boxes, np.array([[0, 0, 5.0, 0]]))
    np.testing.assert_allclose(unclamped[0, 2] - unclamped[0, 0], 10.0 * np.exp(5.0))


def test_degenerate_pairs_encode_to_zero():
    boxes = np.array([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 5.0, 5.0], [2.0, 2.0, 2.0, 9.0]])
    targets = np.array([[1.0, 1.0, 5.0, 5.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 5.0, 5.0]])
    with np.errstate(all="raise"):
        np.testing.assert_array_equal(BoxCoder(STD).encode(boxes, targets), 0.0)


def test_std_dev_must_have_four_values():
    with pytest.raises(ValueError, match="4 values"):
        BoxCoder([0.1, 0.1, 0.2])


def test_config_round_trip():
    coder = BoxCoder(STD, max_log_scale=2.0)
    again = BoxCoder(**coder.get_config())
    np.testing.assert_array_equal(again.std_dev, STD)
    assert again.max_log_scale == 2.0


def _brute_iou(a, b):
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ih * iw
    return ih * iw / union if union > 0 else 0.0


def test_iou_pairwise_and_broadcast_against_brute_force():
    rng = np.random.default_rng(2)
    a, b = _random_boxes(rng, 7, high=20), _random_boxes(rng, 5, high=20)
    b[-1] = 0.0  # zero box: IoU 0, not NaN
    expected = np.array([[_brute_iou(x, y) for y in b] for x in a])
    assert (expected > 0.05).any()
    np.testing.assert_allclose(pairwise_iou(a, b), expected, atol=1e-12)
    np.testing.assert_allclose(box_iou(a[:, None], b[None]), expected, atol=1e-12)
    np.testing.assert_allclose(box_iou(a[0], b), expected[0], atol=1e-12)
    assert pairwise_iou(np.zeros((0, 4)), b).shape == (0, 5)


def test_numpy_module_does_not_import_keras():
    # utils builds on box_coder and must stay importable without Keras.
    import subprocess
    import sys
    code = ("import mrcnn.box_coder, sys; "
            "bad = [m for m in ('tensorflow', 'jax', 'keras') if m in sys.modules]; "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- graph twin


def test_graph_coder_equals_numpy_twin():
    from mrcnn import ops as mops
    rng = np.random.default_rng(3)
    boxes = _random_boxes(rng, 24).astype(np.float32).reshape(2, 12, 4) / 100
    targets = _random_boxes(rng, 24).astype(np.float32).reshape(2, 12, 4) / 100
    boxes[0, 0] = 0.0  # padding row
    np_coder, graph_coder = BoxCoder(STD), mops.BoxCoder(STD)
    np.testing.assert_allclose(np.asarray(graph_coder.encode(boxes, targets)),
                               np_coder.encode(boxes, targets), rtol=1e-6, atol=1e-6)
    deltas = rng.normal(0, 3, size=(2, 12, 4)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(graph_coder.decode(boxes, deltas)),
                               np_coder.decode(boxes, deltas), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(graph_coder.clamp(deltas)), np_coder.clamp(deltas))
    np.testing.assert_allclose(np.asarray(mops.overlaps(boxes, targets)),
                               np.stack([pairwise_iou(boxes[i], targets[i]) for i in range(2)]),
                               atol=1e-6)
