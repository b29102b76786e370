"""mrcnn.transform (OpenCV resizing, mask paste, meta layout) against the previous
skimage-based implementation, copied here as the reference (``_old_*``)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import skimage.transform

from mrcnn import transform, utils
from mrcnn.config import Config
from mrcnn.model import MaskRCNN
from tests.tiny import TinyFastConfig, unrounded_boxes

############################################################
#  The previous implementation (commit dece6be), the reference
############################################################


def _old_resize(image, output_shape):
    return skimage.transform.resize(image, tuple(int(s) for s in output_shape), order=1,
                                    mode="constant", cval=0, clip=True, preserve_range=True,
                                    anti_aliasing=False)


def _old_resize_image(image, min_dim=None, max_dim=None, min_scale=None, mode="square"):
    image_dtype = image.dtype
    h, w = image.shape[:2]
    window, scale, padding, crop = (0, 0, h, w), 1, [(0, 0), (0, 0), (0, 0)], None
    if mode == "none":
        return image, window, scale, padding, crop
    if min_dim:
        scale = max(1, min_dim / min(h, w))
    if min_scale and scale < min_scale:
        scale = min_scale
    if max_dim and mode == "square":
        image_max = max(h, w)
        if round(image_max * scale) > max_dim:
            scale = max_dim / image_max
    if scale != 1:
        image = _old_resize(image, (round(h * scale), round(w * scale)))
    h, w = image.shape[:2]
    if mode == "square":
        top_pad, left_pad = (max_dim - h) // 2, (max_dim - w) // 2
        padding = [(top_pad, max_dim - h - top_pad), (left_pad, max_dim - w - left_pad), (0, 0)]
        image = np.pad(image, padding[: image.ndim], mode="constant", constant_values=0)
        window = (top_pad, left_pad, h + top_pad, w + left_pad)
    elif mode == "pad64":
        pad_h, pad_w = (-h) % 64, (-w) % 64
        top_pad, left_pad = pad_h // 2, pad_w // 2
        padding = [(top_pad, pad_h - top_pad), (left_pad, pad_w - left_pad), (0, 0)]
        image = np.pad(image, padding[: image.ndim], mode="constant", constant_values=0)
        window = (top_pad, left_pad, h + top_pad, w + left_pad)
    else:
        y = int(np.random.randint(0, h - min_dim + 1))
        x = int(np.random.randint(0, w - min_dim + 1))
        crop = (y, x, min_dim, min_dim)
        image = image[y : y + min_dim, x : x + min_dim]
        window = (0, 0, min_dim, min_dim)
    return image.astype(image_dtype), window, scale, padding, crop


def _old_nearest_indices(in_size, out_size):
    centers = (np.arange(out_size) + 0.5) * (in_size / out_size)
    return np.clip(np.floor(centers).astype(np.int64), 0, max(in_size - 1, 0))


def _old_resize_mask(mask, scale, padding, crop=None):
    h, w = mask.shape[:2]
    out_h, out_w = round(h * scale), round(w * scale)
    mask = mask.astype(bool, copy=False)
    if (out_h, out_w) != (h, w):
        mask = mask[_old_nearest_indices(h, out_h)][:, _old_nearest_indices(w, out_w)]
    if crop is not None:
        y, x, ch, cw = crop
        return mask[y : y + ch, x : x + cw]
    pad = [tuple(p) for p in padding][: mask.ndim]
    pad += [(0, 0)] * (mask.ndim - len(pad))
    return np.pad(mask, pad, mode="constant", constant_values=False)


def _old_unmold_mask(mask, bbox, image_shape):
    y1, x1, y2, x2 = (int(v) for v in bbox[:4])
    height, width = int(image_shape[0]), int(image_shape[1])
    full_mask = np.zeros((height, width), dtype=bool)
    if y2 <= y1 or x2 <= x1:
        return full_mask
    small = _old_resize(np.asarray(mask, dtype=np.float32), (y2 - y1, x2 - x1)) >= 0.5
    ty1, tx1, ty2, tx2 = max(y1, 0), max(x1, 0), min(y2, height), min(x2, width)
    if ty2 > ty1 and tx2 > tx1:
        full_mask[ty1:ty2, tx1:tx2] = small[ty1 - y1 : ty2 - y1, tx1 - x1 : tx2 - x1]
    return full_mask


def _old_unmold_detections(detections, mrcnn_mask, original_image_shape, image_shape, window):
    zero_ix = np.where(detections[:, 4] == 0)[0]
    n = zero_ix[0] if zero_ix.shape[0] > 0 else detections.shape[0]
    boxes = detections[:n, :4]
    class_ids = detections[:n, 4].astype(np.int32)
    scores = detections[:n, 5]
    masks = mrcnn_mask[np.arange(n), :, :, class_ids]
    wy1, wx1, wy2, wx2 = utils.norm_boxes(np.asarray(window), image_shape[:2])
    shift = np.array([wy1, wx1, wy1, wx1])
    scale = np.array([wy2 - wy1, wx2 - wx1, wy2 - wy1, wx2 - wx1])
    boxes = utils.denorm_boxes((boxes - shift) / scale, original_image_shape[:2])
    keep = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0
    boxes, class_ids, scores, masks = boxes[keep], class_ids[keep], scores[keep], masks[keep]
    full = [_old_unmold_mask(masks[i], boxes[i], original_image_shape) for i in range(len(boxes))]
    full_masks = (np.stack(full, axis=-1) if full else
                  np.zeros(tuple(original_image_shape[:2]) + (0,), dtype=bool))
    return boxes, class_ids, scores, full_masks


############################################################
#  Resizing
############################################################


def _random_case(rng):
    h, w = (int(v) for v in rng.integers(8, 300, 2))
    mode = str(rng.choice(["none", "square", "pad64", "crop"]))
    min_dim = int(rng.choice([64, 128, 192]))
    max_dim = int(rng.choice([128, 256])) if mode != "crop" else min_dim
    min_scale = rng.choice([None, 0, 1.5, 2.0])
    return h, w, mode, min_dim, max(max_dim, min_dim), min_scale


@pytest.mark.parametrize("seed", range(6))
def test_resize_image_geometry_exact_and_pixels_close_to_skimage(seed):
    rng = np.random.default_rng(seed)
    for _ in range(15):
        h, w, mode, min_dim, max_dim, min_scale = _random_case(rng)
        channels = int(rng.choice([1, 3, 4]))
        image = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        np.random.seed(seed)
        old = _old_resize_image(image, min_dim, max_dim, min_scale, mode)
        np.random.seed(seed)
        new = transform.resize_image(image, min_dim, max_dim, min_scale, mode)
        assert new[1:] == old[1:], (h, w, mode)  # window, scale, padding, crop identical
        assert new[0].dtype == np.uint8 and new[0].shape == old[0].shape
        diff = np.abs(new[0].astype(np.int64) - old[0])
        # skimage's float result was truncated by astype; OpenCV rounds.
        assert diff.mean() <= 1.0 and diff.max() <= 2, (h, w, mode, diff.mean(), diff.max())


def test_resize_float_images_match_skimage_including_the_faded_border():
    rng = np.random.default_rng(0)
    for in_hw, out_hw in [((10, 10), (160, 160)), ((37, 5), (300, 41)), ((100, 80), (50, 30)),
                          ((48, 64), (77, 101))]:
        image = rng.random(in_hw + (3,)).astype(np.float32)
        np.testing.assert_allclose(transform.resize_bilinear(image, out_hw),
                                   _old_resize(image, out_hw), atol=1e-4)
    # More channels than one OpenCV call takes are resized in chunks.
    wide = rng.random((9, 7, 300)).astype(np.float32)
    np.testing.assert_allclose(transform.resize_bilinear(wide, (20, 15)),
                               _old_resize(wide, (20, 15)), atol=1e-4)
    single = rng.random((9, 7, 1)).astype(np.float32)
    assert transform.resize_bilinear(single, (20, 15)).shape == (20, 15, 1)


@pytest.mark.parametrize("seed", range(4))
def test_resize_mask_is_exactly_the_previous_nearest_neighbour(seed):
    rng = np.random.default_rng(100 + seed)
    for _ in range(20):
        h, w, mode, min_dim, max_dim, min_scale = _random_case(rng)
        count = int(rng.integers(0, 12))
        mask = np.zeros((h, w, count), bool)
        for i in range(count):
            if rng.random() < 0.15:
                continue  # empty instance
            y1, x1 = rng.integers(0, h), rng.integers(0, w)
            y2, x2 = rng.integers(y1 + 1, h + 1), rng.integers(x1 + 1, w + 1)
            mask[y1:y2, x1:x2, i] = rng.random((y2 - y1, x2 - x1)) < 0.6
        np.random.seed(seed)
        _, _, scale, padding, crop = transform.resize_image(
            np.zeros((h, w, 1), np.uint8), min_dim, max_dim, min_scale, mode)
        expected = _old_resize_mask(mask, scale, padding, crop)
        np.testing.assert_array_equal(transform.resize_mask(mask, scale, padding, crop),
                                      expected)
        kept_masks, kept = transform.resize_mask_nonempty(mask, scale, padding, crop)
        np.testing.assert_array_equal(kept, np.flatnonzero(expected.any(axis=(0, 1))))
        np.testing.assert_array_equal(kept_masks, expected[:, :, kept])


def test_very_elongated_image_keeps_one_pixel_per_side():
    # Used to raise ZeroDivisionError: round(10 * 64 / 2000) == 0 rows.
    image = np.full((10, 2000, 3), 200, np.uint8)
    out, window, scale, padding, _ = transform.resize_image(image, max_dim=64, mode="square")
    assert out.shape == (64, 64, 3) and window[2] - window[0] == 1
    assert window[3] - window[1] == 64 and scale == 64 / 2000
    mask = np.ones((10, 2000, 2), bool)
    resized = transform.resize_mask(mask, scale, padding)
    assert resized.shape == (64, 64, 2)
    y1, x1, y2, x2 = window
    assert resized[y1:y2, x1:x2].all() and resized.sum() == 2 * 64


def test_any_over_width_matches_numpy():
    rng = np.random.default_rng(3)
    for _ in range(50):
        shape = tuple(int(v) for v in rng.integers(1, 40, 3))
        mask = rng.random(shape) > 0.97
        np.testing.assert_array_equal(transform.any_over_width(mask), mask.any(axis=1))


def test_minimize_and_expand_mask_match_skimage():
    rng = np.random.default_rng(4)
    mask = np.zeros((90, 120, 6), bool)
    boxes = []
    for i in range(6):
        y1, x1 = rng.integers(0, 60), rng.integers(0, 90)
        y2, x2 = y1 + rng.integers(3, 30), x1 + rng.integers(3, 30)
        mask[y1:y2, x1:x2, i] = rng.random((y2 - y1, x2 - x1)) < 0.7
        boxes.append((y1, x1, y2, x2))
    boxes = np.array(boxes)
    mini = utils.minimize_mask(boxes, mask, (28, 28))
    for i, (y1, x1, y2, x2) in enumerate(boxes):
        expected = np.around(_old_resize(mask[y1:y2, x1:x2, i].astype(np.float32), (28, 28)))
        # Bilinear values equal to 1e-5: only exact 0.5 ties may round differently.
        assert (mini[:, :, i] != expected.astype(bool)).mean() <= 0.01
    full = utils.expand_mask(boxes, mini, mask.shape)
    for i, (y1, x1, y2, x2) in enumerate(boxes):
        expected = np.around(_old_resize(mini[:, :, i].astype(np.float32), (y2 - y1, x2 - x1)))
        assert (full[y1:y2, x1:x2, i] != expected.astype(bool)).mean() <= 0.01


############################################################
#  Unmolding: boxes and pasted masks
############################################################


def _smooth_masks(rng, count, size=28):
    """Mask-head-like outputs: a blob of high values with a soft edge."""
    yy, xx = np.mgrid[:size, :size] / (size - 1)
    cy, cx = rng.uniform(0.3, 0.7, (2, count, 1, 1))
    r = rng.uniform(0.2, 0.5, (count, 1, 1))
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / r
    noise = rng.normal(0, 0.05, (count, size, size))
    return np.clip(1 / (1 + np.exp(8 * (d - 1))) + noise, 0, 1).astype(np.float32)


def _random_boxes(draw, n, corner_range, size_range):
    """[n, (y1, x1, y2, x2)] boxes: corners from draw(lo, hi, n) in corner_range (y, x),
    sizes from draw(lo, hi, n) in size_range."""
    (y_lo, y_hi), (x_lo, x_hi) = corner_range
    y1, x1 = draw(y_lo, y_hi, n), draw(x_lo, x_hi, n)
    return np.stack([y1, x1, y1 + draw(*size_range, n), x1 + draw(*size_range, n)], 1)


def test_paste_masks_within_half_a_percent_of_skimage():
    rng = np.random.default_rng(5)
    shape = (300, 400)
    masks = _smooth_masks(rng, 60)
    boxes = _random_boxes(rng.integers, 60, ((-20, 280), (-20, 380)), (1, 200))
    boxes[0] = (50, 50, 50, 80)  # empty box
    pasted = transform.paste_masks(masks, boxes, shape)
    assert pasted.shape == shape + (60,) and pasted.dtype == bool
    expected = np.stack([_old_unmold_mask(m, b, shape) for m, b in zip(masks, boxes)], -1)
    assert not pasted[..., 0].any()
    assert (pasted != expected).sum() <= 0.005 * expected.sum()
    # One instance through Matterport's single-mask name.
    np.testing.assert_array_equal(utils.unmold_mask(masks[3], boxes[3], shape), pasted[..., 3])


def _assert_paste_is_the_reference(pasted, masks, boxes, shape, threshold=0.5):
    """``pasted`` [H, W, N] equals the reference paste except at pixels whose reference
    value lies within 0.02 of the threshold. OpenCV samples at positions quantized to 1/32
    pixel, which moves a value by at most (steepest slope of these masks, about 0.5 per
    mask pixel) / 64; how it rounds differs between OpenCV versions."""
    values = np.stack([_reference_values(m, b, shape) for m, b in zip(masks, boxes)], -1)
    differ = pasted != (values >= threshold)
    assert np.all(np.abs(values[differ] - threshold) < 0.02), (
        f"{differ.sum()} pixels differ, up to {np.abs(values[differ] - threshold).max():.3f} "
        "from the threshold")


def _reference_values(mask, box, shape):
    """Sub-pixel paste by definition, before the threshold: every pixel centre inside the
    image, mapped into the mask's pixel grid stretched over the box, sampled bilinearly with
    zeros outside (0 outside the box)."""
    from scipy import ndimage

    y1, x1, y2, x2 = (float(v) for v in box)
    h, w = mask.shape
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    src_y = (rows + 0.5 - y1) * h / (y2 - y1) - 0.5
    src_x = (cols + 0.5 - x1) * w / (x2 - x1) - 0.5
    # Zero border one pixel out, as bilinear sampling with a constant border blends it.
    padded = np.pad(mask.astype(np.float64), 1)
    values = ndimage.map_coordinates(padded, [src_y + 1, src_x + 1], order=1, mode="constant",
                                     cval=0.0)
    inside = (rows + 1 > y1) & (rows < y2) & (cols + 1 > x1) & (cols < x2)
    return np.where(inside, values, 0.0)


def test_paste_masks_with_fractional_boxes_samples_at_pixel_centres():
    rng = np.random.default_rng(9)
    shape = (120, 150)
    masks = _smooth_masks(rng, 30)
    boxes = _random_boxes(rng.uniform, 30, ((-10, 100), (-10, 130)), (3, 40))
    _assert_paste_is_the_reference(transform.paste_masks(masks, boxes, shape), masks, boxes,
                                   shape)
    # Integer boxes given as floats paste exactly as integer boxes.
    whole = np.round(boxes)
    np.testing.assert_array_equal(transform.paste_masks(masks, whole, shape),
                                  transform.paste_masks(masks, whole.astype(np.int64), shape))
    # Analytic: a mask whose left half is 1 on a box with fractional edges. The 0.5 level
    # (between mask columns 13 and 14) lands at x = 3.6 + 14 / 28 * 5.6 = 6.4, so pixel
    # columns 4 and 5 (centres 4.5, 5.5) are in and column 6 (centre 6.5) is out; rows
    # 2..6 have their centres in [2.3, 7.4). Rounding the box to (2, 4, 7, 9) first, as
    # Matterport did, would move the level to 6.5 and take column 6 in.
    half = np.zeros((1, 28, 28), np.float32)
    half[:, :, :14] = 1
    got = transform.paste_masks(half, [[2.3, 3.6, 7.4, 9.2]], (12, 12))[..., 0]
    expected = np.zeros((12, 12), bool)
    expected[2:7, 4:6] = True
    np.testing.assert_array_equal(got, expected)
    rounded = transform.paste_masks(half, [[2, 4, 7, 9]], (12, 12))[..., 0]
    assert rounded[2:7, 6].all()


def test_unmold_detections_matches_the_previous_implementation():
    rng = np.random.default_rng(6)
    num_classes, d = 5, 40
    for image_shape, original, window in [((1024, 1024, 3), (480, 640, 3), (128, 0, 896, 1024)),
                                          ((128, 192, 3), (100, 170, 3), (14, 11, 114, 181))]:
        y1 = rng.uniform(0, 0.8, d)
        x1 = rng.uniform(0, 0.8, d)
        boxes = np.stack([y1, x1, y1 + rng.uniform(0, 0.3, d), x1 + rng.uniform(0, 0.3, d)], 1)
        detections = np.zeros((d + 5, 6), np.float32)
        detections[:d, :4] = boxes
        detections[:d, 4] = rng.integers(1, num_classes, d)
        detections[:d, 5] = rng.uniform(0.5, 1, d)
        detections[3, 2] = detections[3, 0]  # zero height: dropped
        mrcnn_mask = np.moveaxis(np.stack([_smooth_masks(rng, d + 5)
                                           for _ in range(num_classes)]), 0, -1)
        new = transform.unmold_detections(detections, mrcnn_mask, original, image_shape, window,
                                          subpixel=False)
        old = _old_unmold_detections(detections, mrcnn_mask, original, image_shape, window)
        for got, want in zip(new[:3], old[:3]):
            np.testing.assert_array_equal(got, want)
        assert new[3].shape == old[3].shape and new[3].dtype == bool
        assert (new[3] != old[3]).sum() <= 0.005 * old[3].sum()
        # Sub-pixel paste: the same detections and boxes; each mask is the paste onto the
        # box before Matterport's rounding.
        sub = transform.unmold_detections(detections, mrcnn_mask, original, image_shape, window)
        for got, want in zip(sub[:3], old[:3]):
            np.testing.assert_array_equal(got, want)
        n = len(detections) - 5
        exact = unrounded_boxes(detections[:n], window, image_shape, original)
        kept = np.flatnonzero((np.round(exact[:, 2]) - np.round(exact[:, 0]))
                              * (np.round(exact[:, 3]) - np.round(exact[:, 1])) > 0)
        masks = mrcnn_mask[kept, :, :, detections[kept, 4].astype(int)]
        assert sub[3].shape == original[:2] + (len(kept),)
        _assert_paste_is_the_reference(sub[3], masks, exact[kept], original)
        assert (sub[3] != new[3]).any()  # the rounding did change masks


def test_mold_batch_is_mold_image_zero_padded():
    class Cfg:
        MEAN_PIXEL = np.array([123.7, 116.8, 103.9])

    rng = np.random.default_rng(8)
    images = [rng.integers(0, 256, (40, 70, 3), dtype=np.uint8),
              rng.integers(0, 256, (64, 50, 3), dtype=np.uint8)]
    batch = transform.mold_batch(images, (64, 128), Cfg())
    assert batch.shape == (2, 64, 128, 3) and batch.dtype == np.float32
    for molded, image in zip(batch, images):
        h, w = image.shape[:2]
        reference = image.astype(np.float32) - Cfg.MEAN_PIXEL.astype(np.float32)
        np.testing.assert_array_equal(molded[:h, :w], reference)
        assert not molded[h:].any() and not molded[:, w:].any()
    for channels in (1, 5):  # OpenCV's path (<= 4 channels) and NumPy's
        image = rng.integers(0, 256, (9, 11, channels), dtype=np.uint8)
        config = type("C", (), {"MEAN_PIXEL": rng.uniform(0, 255, channels)})
        np.testing.assert_allclose(
            transform.mold_image(image, config),
            image.astype(np.float32) - config.MEAN_PIXEL.astype(np.float32), rtol=1e-6)


############################################################
#  Image meta
############################################################


def test_meta_layout_is_the_one_source_of_the_meta_size_and_fields():
    class Cfg(Config):
        NAME = "meta"
        NUM_CLASSES = 7

    config = Cfg()
    meta = transform.compose_image_meta(3, (480, 640, 3), (1024, 1024, 3), (128, 0, 896, 1024),
                                        1.6, np.arange(7) % 2)
    assert meta.shape == (config.IMAGE_META_SIZE,) == (transform.image_meta_size(7),)
    parsed = transform.parse_image_meta(meta)
    assert parsed["image_id"] == 3 and parsed["scale"] == np.float32(1.6)
    np.testing.assert_array_equal(parsed["window"], [128, 0, 896, 1024])
    np.testing.assert_array_equal(parsed["active_class_ids"], np.arange(7) % 2)
    batch = np.stack([meta, meta * 0])
    tensors = transform.parse_image_meta_graph(keras.ops.convert_to_tensor(batch, "float32"))
    numpy_parts = transform.parse_image_meta(batch)
    assert set(tensors) == set(numpy_parts)
    for name, value in tensors.items():
        np.testing.assert_allclose(keras.ops.convert_to_numpy(value), numpy_parts[name],
                                   rtol=1e-6)


############################################################
#  Batched detect of images of different molded sizes
############################################################


class Pad64Config(TinyFastConfig):
    NAME = "pad64test"
    IMAGES_PER_GPU = 2
    IMAGE_RESIZE_MODE = "pad64"
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 192
    DETECTION_MIN_CONFIDENCE = 0.0


def test_batched_detect_gives_each_image_what_it_gets_alone(tmp_path):
    keras.utils.set_random_seed(7)
    model = MaskRCNN("inference", Pad64Config(), str(tmp_path))
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, shape, dtype=np.uint8)
              for shape in [(64, 64, 3), (100, 150, 3), (64, 64, 3), (64, 130, 3)]]
    metas = transform.resize_inputs(images, model.config)[1]
    shapes = transform.parse_image_meta(metas)["image_shape"]
    assert len({tuple(s) for s in shapes}) == 3  # really different molded sizes
    together = model.detect(images)
    total = 0
    for image, result in zip(images, together):
        alone = model.detect([image])[0]
        assert set(result) == {"rois", "class_ids", "scores", "masks"}
        for key in ("rois", "class_ids", "masks"):
            np.testing.assert_array_equal(result[key], alone[key])
        np.testing.assert_allclose(result["scores"], alone["scores"], rtol=1e-5)
        assert result["masks"].shape[:2] == image.shape[:2]
        total += len(result["scores"])
    # With DETECTION_MIN_CONFIDENCE 0 an untrained model still reports detections, so the
    # comparison above compared real boxes, scores and masks.
    assert total > 0
    # Matterport's mold_inputs still returns one padded batch.
    batch, metas, windows = model.mold_inputs(images)
    assert batch.shape == (4, 128, 192, 3) and metas.shape == (4, model.config.IMAGE_META_SIZE)
    np.testing.assert_array_equal(transform.parse_image_meta(metas)["image_shape"][:, :2],
                                  [[128, 192]] * 4)
