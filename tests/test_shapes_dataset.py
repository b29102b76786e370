"""ShapesDataset: reproducible specs, images and masks that agree, occlusion handling."""

import numpy as np
import pytest

from mrcnn import utils
from samples.shapes.shapes import CLASS_IDS, ShapesConfig, ShapesDataset

H, W = 64, 80  # small and non-square, to catch swapped axes


def make(seed, count=12, height=H, width=W):
    dataset = ShapesDataset()
    dataset.load_shapes(count, height, width, seed=seed)
    dataset.prepare()
    return dataset


def test_config_validates():
    config = ShapesConfig()
    assert config.NAME == "shapes"
    assert config.NUM_CLASSES == 4
    assert config.BATCH_SIZE == 8
    assert list(config.IMAGE_SHAPE) == [128, 128, 3]
    assert config.BACKBONE in ("resnet18", "resnet34", "resnet50", "resnet101")


def test_same_seed_same_dataset():
    a, b = make(3), make(3)
    for i in a.image_ids:
        np.testing.assert_array_equal(a.load_image(i), b.load_image(i))
        ma, ca = a.load_mask(i)
        mb, cb = b.load_mask(i)
        np.testing.assert_array_equal(ma, mb)
        np.testing.assert_array_equal(ca, cb)
        assert a.image_reference(i) == b.image_reference(i)


def test_seed_prefix_and_no_global_state():
    np.random.seed(0)
    a = make(5, count=4)
    np.random.seed(1)  # the global state must not matter
    b = make(5, count=8)
    for i in a.image_ids:
        np.testing.assert_array_equal(a.load_image(i), b.load_image(i))


def test_different_seed_differs():
    a, b = make(1), make(2)
    assert any(not np.array_equal(a.load_image(i), b.load_image(i)) for i in a.image_ids)
    assert [x["shapes"] for x in a.image_info] != [x["shapes"] for x in b.image_info]


def test_images_and_masks_agree():
    dataset = make(0, count=30)
    full = 0
    for i in dataset.image_ids:
        image = dataset.load_image(i)
        masks, class_ids = dataset.load_mask(i)
        assert image.dtype == np.uint8 and image.shape == (H, W, 3)
        assert masks.dtype == bool and masks.shape[:2] == (H, W)
        assert class_ids.dtype == np.int32 and class_ids.shape == (masks.shape[-1],)
        assert masks.shape[-1] >= 1
        assert masks.reshape(-1, masks.shape[-1]).any(axis=0).all(), "empty instance"
        assert set(class_ids.tolist()) <= {1, 2, 3}
        # Visible masks never overlap: each pixel belongs to the topmost shape only.
        assert masks.sum(axis=-1).max() <= 1
        shapes = dataset.image_info[i]["shapes"]
        if len(shapes) != masks.shape[-1]:
            continue  # a shape was fully hidden; covered by test_fully_hidden_shape_dropped
        full += 1
        for k, (name, color, _) in enumerate(shapes):
            assert class_ids[k] == CLASS_IDS[name]
            pixels = image[masks[:, :, k]]
            colors, counts = np.unique(pixels, axis=0, return_counts=True)
            assert tuple(colors[counts.argmax()]) == color  # majority color
            assert (pixels == color).all()  # in fact every visible pixel
        # Outside all masks lies the background.
        assert (image[~masks.any(axis=-1)] == dataset.image_info[i]["bg_color"]).all()
    assert full >= 20


def test_fully_hidden_shape_dropped_and_partial_occlusion_subtracted():
    dataset = ShapesDataset()
    dataset.load_shapes(0, 64, 64)
    shapes = [("circle", (255, 0, 0), (20, 20, 4)),      # hidden under the square
              ("triangle", (0, 255, 0), (44, 32, 12)),   # partly under the square
              ("square", (0, 0, 255), (24, 24, 14))]
    dataset.add_image("shapes", image_id=0, path=None, height=64, width=64,
                      bg_color=(9, 9, 9), shapes=shapes)
    dataset.prepare()
    masks, class_ids = dataset.load_mask(0)
    assert class_ids.tolist() == [CLASS_IDS["triangle"], CLASS_IDS["square"]]
    triangle_alone = ShapesDataset.draw_shape(np.zeros((64, 64), np.uint8), "triangle",
                                              (44, 32, 12), 1).astype(bool)
    square = ShapesDataset.draw_shape(np.zeros((64, 64), np.uint8), "square",
                                      (24, 24, 14), 1).astype(bool)
    np.testing.assert_array_equal(masks[:, :, 1], square)
    np.testing.assert_array_equal(masks[:, :, 0], triangle_alone & ~square)
    assert 0 < masks[:, :, 0].sum() < triangle_alone.sum()


def test_random_image_nms_limits_overlap():
    rng = np.random.default_rng(0)
    for _ in range(50):
        _, shapes = ShapesDataset.random_image(128, 128, rng)
        assert 1 <= len(shapes) <= 4
        boxes = np.array([[y - s, x - s, y + s, x + s] for _, _, (x, y, s) in shapes], float)
        iou = utils.compute_overlaps(boxes, boxes)
        np.fill_diagonal(iou, 0)
        assert iou.max() <= 0.3 + 1e-6


def test_prepare_and_classes():
    dataset = make(0, count=3)
    assert dataset.num_images == 3
    assert dataset.class_names == ["BG", "square", "circle", "triangle"]
    assert dataset.num_classes == 4
    assert dataset.image_reference(0).startswith("shapes")
    assert str(dataset.image_info[0]["shapes"]) in dataset.image_reference(0)


def test_too_small_images_rejected():
    with pytest.raises(ValueError, match="40x40"):
        ShapesDataset().load_shapes(1, 32, 128, seed=0)
