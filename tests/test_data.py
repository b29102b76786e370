"""Tests of mrcnn.data: image meta, ground truth loading, RPN targets and the generators.

Everything runs on 64x64 synthetic images (rectangles and ellipses drawn in flat colours)
so the whole file takes seconds. RPN targets are checked against a loop-by-loop NumPy
reimplementation of Matterport's rules.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pytest

from mrcnn import data, inspection, utils
from mrcnn.config import Config

A = pytest.importorskip("albumentations")

BACKGROUND = 30
PALETTE = [(220, 40, 40), (40, 220, 40), (40, 40, 220), (220, 220, 40), (220, 40, 220),
           (40, 220, 220), (250, 150, 60), (120, 60, 250), (250, 250, 250), (160, 100, 40)]


############################################################
#  Fixtures: a tiny config and dataset
############################################################


class ToyConfig(Config):
    NAME = "toy"
    BACKBONE = "resnet50"
    NUM_CLASSES = 4  # BG + toy.rect + toy.ellipse + other.blob
    IMAGES_PER_GPU = 2
    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    RPN_TRAIN_ANCHORS_PER_IMAGE = 32
    MAX_GT_INSTANCES = 6
    TRAIN_ROIS_PER_IMAGE = 20
    MINI_MASK_SHAPE = (16, 16)
    USE_MINI_MASK = True


def make_config(**overrides) -> Config:
    """A ToyConfig subclass with some attributes overridden (derived ones recomputed)."""
    return type("TestConfig", (ToyConfig,), overrides)()


def object_mask(obj: dict, height: int, width: int) -> np.ndarray:
    y1, x1, y2, x2 = obj["box"]
    mask = np.zeros([height, width], dtype=bool)
    if obj["shape"] == "rect":
        mask[y1:y2, x1:x2] = True
    else:
        yy, xx = np.mgrid[:height, :width]
        cy, cx = (y1 + y2 - 1) / 2, (x1 + x2 - 1) / 2
        ry, rx = max((y2 - y1) / 2, 0.5), max((x2 - x1) / 2, 0.5)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return mask


class ToyDataset(utils.Dataset):
    """Flat-coloured rectangles (class 1) and ellipses (class 2); source "other" has blobs."""

    def __init__(self) -> None:
        super().__init__()
        self.add_class("toy", 1, "rect")
        self.add_class("toy", 2, "ellipse")
        self.add_class("other", 1, "blob")

    def add_toy_image(self, height: int, width: int, objects: list[dict],
                      source: str = "toy") -> None:
        self.add_image(source, image_id=len(self.image_info), path=None, height=height,
                       width=width, objects=objects)

    def load_image(self, image_id: int) -> np.ndarray:
        info = self.image_info[image_id]
        image = np.full([info["height"], info["width"], 3], BACKGROUND, dtype=np.uint8)
        for obj in info["objects"]:
            image[object_mask(obj, info["height"], info["width"])] = obj["color"]
        return image

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        info = self.image_info[image_id]
        objects = info["objects"]
        if not objects:
            return np.empty([0, 0, 0], dtype=bool), np.empty([0], np.int32)
        masks = np.stack([object_mask(o, info["height"], info["width"]) for o in objects], -1)
        names = {"rect": "toy.1", "ellipse": "toy.2", "blob": "other.1"}
        class_ids = np.array([self.map_source_class_id(names[o["shape"]]) for o in objects],
                             dtype=np.int32)
        return masks, class_ids


def random_objects(rng: np.random.Generator, height: int, width: int, count: int,
                   cell: int = 32) -> list[dict]:
    """Non-overlapping objects, one per grid cell, each with its own palette colour."""
    cells = [(y, x) for y in range(0, height - cell + 1, cell)
             for x in range(0, width - cell + 1, cell)]
    chosen = rng.choice(len(cells), size=min(count, len(cells)), replace=False)
    objects = []
    for k, c in enumerate(chosen):
        cy, cx = cells[c]
        h, w = rng.integers(8, cell - 4, size=2)
        y1 = cy + rng.integers(0, cell - h + 1)
        x1 = cx + rng.integers(0, cell - w + 1)
        objects.append({"shape": ["rect", "ellipse"][k % 2],
                        "box": (int(y1), int(x1), int(y1 + h), int(x1 + w)),
                        "color": PALETTE[k % len(PALETTE)]})
    return objects


def make_dataset(count: int = 5, size: tuple[int, int] = (64, 64), seed: int = 0,
                 dataset_cls: type = ToyDataset) -> ToyDataset:
    rng = np.random.default_rng(seed)
    dataset = dataset_cls()
    for _ in range(count):
        dataset.add_toy_image(*size, random_objects(rng, *size, int(rng.integers(1, 4))))
    dataset.prepare()
    return dataset


@pytest.fixture
def config() -> Config:
    return make_config()


@pytest.fixture
def dataset() -> ToyDataset:
    return make_dataset()


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1)


############################################################
#  Meta, molding, backbone shapes
############################################################


def test_image_meta_round_trip(config):
    active = np.array([1, 1, 0, 1])
    metas = [data.compose_image_meta(7, (480, 640, 3), (64, 64, 3), (8, 0, 56, 64), 0.1,
                                     active),
             data.compose_image_meta(12345, (30, 20, 3), (64, 64, 3), (0, 0, 30, 20), 1.0,
                                     np.array([1, 0, 0, 0]))]
    assert metas[0].shape == (config.IMAGE_META_SIZE,)
    # The model sees float32; parsing must still give exact integers.
    batch = np.stack(metas).astype(np.float32)
    meta = data.parse_image_meta(batch)
    np.testing.assert_array_equal(meta["image_id"], [7, 12345])
    np.testing.assert_array_equal(meta["original_image_shape"], [[480, 640, 3], [30, 20, 3]])
    np.testing.assert_array_equal(meta["image_shape"], [[64, 64, 3]] * 2)
    np.testing.assert_array_equal(meta["window"], [[8, 0, 56, 64], [0, 0, 30, 20]])
    np.testing.assert_allclose(meta["scale"], [0.1, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(meta["active_class_ids"], [active, [1, 0, 0, 0]])
    for key in ("image_id", "original_image_shape", "image_shape", "window",
                "active_class_ids"):
        assert meta[key].dtype == np.int32, key
    assert meta["scale"].dtype == np.float32
    single = data.parse_image_meta(metas[0])
    assert single["image_id"] == 7 and single["window"].tolist() == [8, 0, 56, 64]


def test_mold_unmold_round_trip(config):
    images = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    molded = data.mold_image(images, config)
    assert molded.dtype == np.float32
    np.testing.assert_allclose(molded[0, 0, 0], images[0, 0, 0] - config.MEAN_PIXEL,
                               rtol=1e-6)
    restored = data.unmold_image(molded, config)
    assert restored.dtype == np.uint8
    np.testing.assert_array_equal(restored, images)


def test_compute_backbone_shapes(config):
    np.testing.assert_array_equal(data.compute_backbone_shapes(config, (64, 64, 3)),
                                  [[16, 16], [8, 8], [4, 4], [2, 2], [1, 1]])
    np.testing.assert_array_equal(data.compute_backbone_shapes(config, (100, 70)),
                                  [[25, 18], [13, 9], [7, 5], [4, 3], [2, 2]])

    def custom_shapes(image_shape):
        return np.array([[image_shape[0] // s, image_shape[1] // s] for s in (2, 4, 8, 16, 32)])

    custom = make_config(BACKBONE=staticmethod(lambda *a, **k: None),
                         COMPUTE_BACKBONE_SHAPE=staticmethod(custom_shapes))
    np.testing.assert_array_equal(data.compute_backbone_shapes(custom, (64, 64)),
                                  custom_shapes((64, 64)))


############################################################
#  load_image_gt
############################################################


def test_load_image_gt_boxes_classes_meta(dataset, config):
    for image_id in dataset.image_ids:
        image, meta, class_ids, bbox, mask = data.load_image_gt(dataset, config, image_id)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert mask.dtype == bool and mask.shape[:2] == (64, 64)
        assert class_ids.dtype == np.int32 and bbox.dtype == np.int32
        assert mask.shape[-1] == class_ids.shape[0] == bbox.shape[0] > 0
        np.testing.assert_array_equal(bbox, utils.extract_bboxes(mask))
        _, expected_ids = dataset.load_mask(image_id)
        np.testing.assert_array_equal(class_ids, expected_ids)
        parsed = data.parse_image_meta(meta[np.newaxis])
        assert parsed["image_id"][0] == image_id
        np.testing.assert_array_equal(parsed["active_class_ids"][0], [1, 1, 1, 0])
        assert meta.shape == (config.IMAGE_META_SIZE,)


def test_load_image_gt_square_resize_keeps_masks_on_objects(config):
    # 40x56 images are scaled by 64/56 and padded top/bottom.
    dataset = make_dataset(count=2, size=(40, 56), seed=3)
    image, meta, class_ids, bbox, mask = data.load_image_gt(dataset, config, 0)
    parsed = data.parse_image_meta(meta)
    assert image.shape == (64, 64, 3)
    np.testing.assert_array_equal(parsed["original_image_shape"], [40, 56, 3])
    y1, x1, y2, x2 = parsed["window"]
    assert (y1, x1, y2 - y1, x2 - x1) == (9, 0, 46, 64)
    np.testing.assert_allclose(parsed["scale"], 64 / 56, rtol=1e-6)
    np.testing.assert_array_equal(bbox, utils.extract_bboxes(mask))
    assert not mask[:y1].any() and not mask[y2:].any()
    # Interior mask pixels (away from interpolated edges) carry the object's colour.
    colors = [o["color"] for o in dataset.image_info[0]["objects"]]
    for i in range(mask.shape[-1]):
        inner = mask[:, :, i] & np.roll(mask[:, :, i], 1, 0) & np.roll(mask[:, :, i], -1, 0) \
            & np.roll(mask[:, :, i], 1, 1) & np.roll(mask[:, :, i], -1, 1)
        assert inner.any()
        assert (image[inner] == colors[i]).all()


def test_mini_masks_expand_back_to_full_masks(dataset, config):
    for image_id in dataset.image_ids:
        _, _, ids_full, bbox_full, full = data.load_image_gt(dataset, config, image_id,
                                                             use_mini_mask=False)
        _, _, ids_mini, bbox_mini, mini = data.load_image_gt(dataset, config, image_id,
                                                             use_mini_mask=True)
        assert mini.shape == tuple(config.MINI_MASK_SHAPE) + (ids_full.shape[0],)
        assert mini.dtype == bool
        np.testing.assert_array_equal(bbox_full, bbox_mini)
        expanded = utils.expand_mask(bbox_mini, mini, full.shape)
        for i in range(full.shape[-1]):
            assert mask_iou(expanded[..., i], full[..., i]) > 0.85


def test_horizontal_flip_moves_masks_with_image(dataset, config):
    flip = A.Compose([A.HorizontalFlip(p=1.0)])
    for image_id in dataset.image_ids:
        image0, _, ids0, bbox0, mask0 = data.load_image_gt(dataset, config, image_id)
        image, _, ids, bbox, mask = data.load_image_gt(dataset, config, image_id,
                                                       augmentation=flip)
        assert image.dtype == np.uint8 and mask.dtype == bool
        np.testing.assert_array_equal(image, image0[:, ::-1])
        np.testing.assert_array_equal(mask, mask0[:, ::-1])
        np.testing.assert_array_equal(ids, ids0)
        np.testing.assert_array_equal(bbox[:, [1, 3]], 64 - bbox0[:, [3, 1]])
        colors = [o["color"] for o in dataset.image_info[image_id]["objects"]]
        for i in range(mask.shape[-1]):
            assert (image[mask[:, :, i]] == colors[i]).all()
    # A single transform (no Compose) works too.
    image, _, _, _, mask = data.load_image_gt(dataset, config, 0,
                                              augmentation=A.HorizontalFlip(p=1.0))
    np.testing.assert_array_equal(mask, data.load_image_gt(dataset, config, 0)[4][:, ::-1])


def test_pixel_transform_changes_image_only(dataset, config):
    image0, _, ids0, bbox0, mask0 = data.load_image_gt(dataset, config, 1)
    image, _, ids, bbox, mask = data.load_image_gt(dataset, config, 1,
                                                   augmentation=A.InvertImg(p=1.0))
    np.testing.assert_array_equal(image, 255 - image0)
    np.testing.assert_array_equal(mask, mask0)
    np.testing.assert_array_equal(bbox, bbox0)


def test_geometric_transform_keeps_instance_channels(config):
    # A rotation about the centre moves every instance with the image; each keeps its own
    # channel (class id) and its mask still covers its own colour.
    dataset = ToyDataset()
    dataset.add_toy_image(64, 64, [
        {"shape": "rect", "box": (16, 14, 30, 28), "color": PALETTE[0]},
        {"shape": "ellipse", "box": (32, 34, 50, 50), "color": PALETTE[2]},
        {"shape": "rect", "box": (36, 14, 46, 26), "color": PALETTE[1]}])
    dataset.prepare()
    _, _, ids0, _, mask0 = data.load_image_gt(dataset, config, 0)
    rotate = A.Compose([A.Rotate(limit=(30, 30), p=1.0)], seed=1)
    image, _, ids, bbox, mask = data.load_image_gt(dataset, config, 0, augmentation=rotate)
    np.testing.assert_array_equal(ids, ids0)
    np.testing.assert_array_equal(bbox, utils.extract_bboxes(mask))
    assert mask.dtype == bool and not (mask == mask0).all()
    for i, obj in enumerate(dataset.image_info[0]["objects"]):
        assert abs(int(mask[..., i].sum()) - int(mask0[..., i].sum())) < 0.15 * mask0[..., i].sum()
        pixels = image[mask[:, :, i]].astype(int)
        assert (np.abs(pixels - obj["color"]).sum(axis=1) < 60).mean() > 0.8


def test_shape_changing_transform_raises(dataset, config):
    with pytest.raises(ValueError, match=r"RandomCrop.*(64, 64, 3).*(32, 32, 3)"):
        data.load_image_gt(dataset, config, 0, augmentation=A.Compose([A.RandomCrop(32, 32)]))


def test_deprecated_augment_flag(dataset, config):
    image0 = data.load_image_gt(dataset, config, 0)[0]
    flipped = set()
    for seed in range(8):
        np.random.seed(seed)
        with pytest.warns(DeprecationWarning):
            image = data.load_image_gt(dataset, config, 0, augment=True)[0]
        flipped.add(bool((image != image0).any()))
        assert (image == image0).all() or (image == image0[:, ::-1]).all()
    assert flipped == {True, False}


def crop_config_and_dataset():
    """Crop mode on 256x64 images whose objects sit in rows 0..5: most crops miss them."""
    config = make_config(IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64)
    dataset = ToyDataset()
    dataset.add_toy_image(256, 64, [{"shape": "rect", "box": (0, 4, 6, 20),
                                     "color": PALETTE[0]},
                                    {"shape": "ellipse", "box": (0, 30, 6, 50),
                                     "color": PALETTE[1]}])
    dataset.prepare()
    return config, dataset


def test_crop_missing_all_objects_gives_empty_image_that_batches():
    config, dataset = crop_config_and_dataset()
    for seed in range(20):
        np.random.seed(seed)
        image, meta, class_ids, bbox, mask = data.load_image_gt(dataset, config, 0,
                                                                use_mini_mask=True)
        if class_ids.shape[0] == 0:
            break
    else:
        pytest.fail("no random crop missed the objects")
    assert image.shape == (64, 64, 3)
    assert class_ids.shape == (0,) and bbox.shape == (0, 4)
    assert mask.shape == (16, 16, 0) and mask.dtype == bool

    generator = data.DataGenerator(dataset, config, shuffle=False, batch_size=2, workers=0)
    np.random.seed(seed)
    inputs, outputs = generator.load_batch([0])
    assert outputs == []
    images, metas, rpn_match, rpn_bbox, gt_ids, gt_boxes, gt_masks = inputs
    assert images.shape == (1, 64, 64, 3)
    assert not (rpn_match == 1).any()
    assert (rpn_match == -1).sum() == config.RPN_TRAIN_ANCHORS_PER_IMAGE
    assert not gt_ids.any() and not gt_boxes.any() and not gt_masks.any()
    assert not rpn_bbox.any()
    # The debugging extras cope with an empty image too.
    generator = inspection.InspectionGenerator(dataset, config, shuffle=False, batch_size=1,
                                               workers=0, random_rois=30,
                                               detection_targets=True)
    np.random.seed(seed)
    inputs, outputs = generator.load_batch([0])
    assert len(inputs) == 9 and len(outputs) == 3
    assert not outputs[0].any() and not outputs[1].any() and not outputs[2].any()


def test_too_many_instances_are_subsampled_with_warning(config):
    dataset = ToyDataset()
    objects = random_objects(np.random.default_rng(1), 64, 64, 16, cell=16)
    dataset.add_toy_image(64, 64, objects)
    dataset.prepare()
    assert len(objects) == 16 > config.MAX_GT_INSTANCES
    np.random.seed(0)
    with pytest.warns(UserWarning, match=r"image_id=0 .*16 instances.*MAX_GT_INSTANCES"):
        image, _, class_ids, bbox, mask = data.load_image_gt(dataset, config, 0)
    assert class_ids.shape == (6,) and mask.shape == (64, 64, 6) and bbox.shape == (6, 4)
    np.testing.assert_array_equal(bbox, utils.extract_bboxes(mask))
    full_masks = dataset.load_mask(0)[0]
    kept = [next(j for j in range(16) if (full_masks[..., j] == mask[..., i]).all())
            for i in range(6)]
    assert kept == sorted(set(kept))  # a subset, in the original order
    np.testing.assert_array_equal(class_ids, dataset.load_mask(0)[1][kept])
    np.random.seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = data.load_image_gt(dataset, config, 0)[4]
    np.testing.assert_array_equal(again, mask)  # np.random drives the choice
    subsets = set()
    for seed in range(1, 6):
        np.random.seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            subsets.add(data.load_image_gt(dataset, config, 0)[2].tobytes() +
                        data.load_image_gt(dataset, config, 0)[3].tobytes())
    assert len(subsets) > 1  # a random subset, not the first MAX_GT_INSTANCES


def test_none_mode_pads_small_and_rejects_large_images():
    config = make_config(IMAGE_RESIZE_MODE="none")
    dataset = ToyDataset()
    rng = np.random.default_rng(2)
    dataset.add_toy_image(40, 56, random_objects(rng, 40, 56, 1))
    dataset.add_toy_image(80, 48, random_objects(rng, 80, 48, 1))
    dataset.prepare()
    # Matterport behaviour by default: the image as it is.
    assert data.load_image_gt(dataset, config, 0)[0].shape == (40, 56, 3)
    image, meta, _, bbox, mask = data.load_image_gt(dataset, config, 0, fixed_shape=True)
    assert image.shape == (64, 64, 3) and mask.shape[:2] == (64, 64)
    assert not image[40:].any() and not image[:, 56:].any()
    parsed = data.parse_image_meta(meta)
    np.testing.assert_array_equal(parsed["window"], [0, 0, 40, 56])
    np.testing.assert_array_equal(parsed["image_shape"], [64, 64, 3])
    np.testing.assert_array_equal(bbox, utils.extract_bboxes(mask))
    with pytest.raises(ValueError, match=r"image_id=1 .*80x48.*64x64"):
        data.load_image_gt(dataset, config, 1, fixed_shape=True)


def test_bad_mask_names_the_image(config):
    class BadMask(ToyDataset):
        def load_mask(self, image_id):
            masks, ids = super().load_mask(image_id)
            return masks[:, :, :1], ids  # one mask, more class ids

    dataset = make_dataset(count=3, seed=4, dataset_cls=BadMask)
    bad = next(i for i in dataset.image_ids if len(dataset.image_info[i]["objects"]) > 1)
    with pytest.raises(ValueError, match=f"image_id={bad}"):
        data.load_image_gt(dataset, config, bad)


############################################################
#  RPN targets
############################################################


def brute_force_rpn(anchors, class_ids, boxes):
    """Matterport's rules, one anchor and one box at a time (no subsampling).

    Returns:
        match [A] and, for every anchor, the index into ``boxes`` of its best non-crowd box.
    """

    def iou(a, b):
        inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * \
            max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    anchors = [list(map(float, a)) for a in anchors]
    boxes = [list(map(float, b)) for b in boxes]
    objects = [g for g in range(len(boxes)) if class_ids[g] >= 0]
    crowds = [g for g in range(len(boxes)) if class_ids[g] < 0]
    match = np.zeros(len(anchors), dtype=np.int32)
    best_box = np.full(len(anchors), -1)
    table = {}
    for a, anchor in enumerate(anchors):
        best, best_g = 0.0, -1
        for g in objects:
            table[a, g] = value = iou(anchor, boxes[g])
            if best_g < 0 or value > best:
                best, best_g = value, g
        best_box[a] = best_g
        crowd_iou = max([iou(anchor, boxes[c]) for c in crowds], default=0.0)
        if best < 0.3 and crowd_iou < 0.001:
            match[a] = -1
    for g in objects:
        top = max(table[a, g] for a in range(len(anchors)))
        if top > 0:
            for a in range(len(anchors)):
                if table[a, g] == top:
                    match[a] = 1
    for a in range(len(anchors)):
        if best_box[a] >= 0 and table[a, best_box[a]] >= 0.7:
            match[a] = 1
    return match, best_box


def toy_anchors(config):
    shapes = data.compute_backbone_shapes(config, config.IMAGE_SHAPE)
    return utils.generate_pyramid_anchors(config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS,
                                          shapes, config.BACKBONE_STRIDES,
                                          config.RPN_ANCHOR_STRIDE)


def random_boxes(rng, count, size=64):
    y1 = rng.integers(0, size - 8, count)
    x1 = rng.integers(0, size - 8, count)
    h = rng.integers(4, 40, count)
    w = rng.integers(4, 40, count)
    return np.stack([y1, x1, np.minimum(y1 + h, size), np.minimum(x1 + w, size)], 1).astype(
        np.int32)


def check_deltas(anchors, match, rpn_bbox, boxes, best_box, config):
    positives = np.flatnonzero(match == 1)  # ascending: the order rpn_bbox must follow
    count = positives.shape[0]
    decoded = utils.apply_box_deltas(anchors[positives],
                                     rpn_bbox[:count] * config.RPN_BBOX_STD_DEV)
    np.testing.assert_allclose(decoded, boxes[best_box[positives]], atol=1e-3)
    assert not rpn_bbox[count:].any()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("anchor_kind", ["pyramid", "random"])
def test_build_rpn_targets_matches_brute_force(seed, anchor_kind):
    config = make_config(RPN_TRAIN_ANCHORS_PER_IMAGE=100_000)  # no subsampling
    rng = np.random.default_rng(seed)
    if anchor_kind == "pyramid":
        anchors = toy_anchors(config)
    else:  # arbitrary float anchors of many heights, some outside the image
        corner = rng.uniform(-20, 70, (800, 2))
        size = rng.uniform(1, 60, (800, 2))
        anchors = np.concatenate([corner, corner + size], axis=1)
    boxes = random_boxes(rng, int(rng.integers(1, 7)))
    class_ids = rng.integers(1, 4, boxes.shape[0]).astype(np.int32)
    match, rpn_bbox = data.build_rpn_targets(config.IMAGE_SHAPE, anchors, class_ids, boxes,
                                             config)
    expected, best_box = brute_force_rpn(anchors, class_ids, boxes)
    assert match.dtype == np.int32 and match.shape == (anchors.shape[0],)
    assert rpn_bbox.dtype == np.float32 and rpn_bbox.shape == (100_000, 4)
    np.testing.assert_array_equal(match, expected)
    # Every GT box gets at least one positive anchor.
    overlaps = utils.compute_overlaps(anchors, boxes)
    for g in range(boxes.shape[0]):
        assert (overlaps[match == 1, g] == overlaps[:, g].max()).any()
    check_deltas(anchors, match, rpn_bbox, boxes, best_box, config)


def test_build_rpn_targets_ties_go_to_the_first_box(config):
    anchors = np.array([[24, 24, 40, 40], [0, 0, 4, 4]], np.float64)
    # Mirror images about the anchor: the same IoU (0.385) with the first anchor.
    boxes = np.array([[24, 14, 40, 34], [24, 30, 40, 50]], np.int32)
    match, rpn_bbox = data.build_rpn_targets(config.IMAGE_SHAPE, anchors, np.array([1, 2]),
                                             boxes, config)
    np.testing.assert_array_equal(match, [1, -1])
    decoded = utils.apply_box_deltas(anchors[:1], rpn_bbox[:1] * config.RPN_BBOX_STD_DEV)
    np.testing.assert_allclose(decoded[0], boxes[0], atol=1e-4)  # np.argmax's choice


def test_build_rpn_targets_subsamples(config):
    anchors = toy_anchors(config)
    rng = np.random.default_rng(7)
    # Many large boxes: more positive candidates than RPN_TRAIN_ANCHORS_PER_IMAGE / 2.
    boxes = np.array([[y, x, y + 24, x + 24] for y in range(0, 40, 6)
                      for x in range(0, 40, 6)], dtype=np.int32)
    class_ids = np.ones(boxes.shape[0], np.int32)
    expected, best_box = brute_force_rpn(anchors, class_ids, boxes)
    assert (expected == 1).sum() > config.RPN_TRAIN_ANCHORS_PER_IMAGE // 2
    np.random.seed(int(rng.integers(1000)))
    match, rpn_bbox = data.build_rpn_targets(config.IMAGE_SHAPE, anchors, class_ids, boxes,
                                             config)
    assert (match == 1).sum() == config.RPN_TRAIN_ANCHORS_PER_IMAGE // 2
    assert (match != 0).sum() == config.RPN_TRAIN_ANCHORS_PER_IMAGE
    assert set(np.flatnonzero(match == 1)) <= set(np.flatnonzero(expected == 1))
    assert set(np.flatnonzero(match == -1)) <= set(np.flatnonzero(expected == -1))
    check_deltas(anchors, match, rpn_bbox, boxes, best_box, config)


def test_build_rpn_targets_crowds(config):
    config = make_config(RPN_TRAIN_ANCHORS_PER_IMAGE=100_000)
    anchors = toy_anchors(config)
    boxes = np.array([[4, 4, 20, 24], [30, 30, 60, 62], [10, 40, 26, 52]], np.int32)
    class_ids = np.array([1, -2, 2], np.int32)  # the middle box is a crowd
    match, rpn_bbox = data.build_rpn_targets(config.IMAGE_SHAPE, anchors, class_ids, boxes,
                                             config)
    expected, best_box = brute_force_rpn(anchors, class_ids, boxes)
    np.testing.assert_array_equal(match, expected)
    crowd_iou = utils.compute_overlaps(anchors, boxes[1:2])[:, 0]
    object_iou = utils.compute_overlaps(anchors, boxes[[0, 2]]).max(axis=1)
    assert not (match[crowd_iou >= 0.001] == -1).any()
    # Anchors on the crowd alone are never positive.
    assert not (match[(crowd_iou > 0.7) & (object_iou == 0)] == 1).any()
    assert ((crowd_iou > 0.7) & (object_iou == 0)).any()
    assert (best_box[match == 1] != 1).all()
    check_deltas(anchors, match, rpn_bbox, boxes, best_box, config)


def test_build_rpn_targets_without_gt(config):
    anchors = toy_anchors(config)
    match, rpn_bbox = data.build_rpn_targets(config.IMAGE_SHAPE, anchors,
                                             np.zeros([0], np.int32), np.zeros([0, 4]), config)
    assert (match == 1).sum() == 0
    assert (match == -1).sum() == config.RPN_TRAIN_ANCHORS_PER_IMAGE
    assert rpn_bbox.shape == (config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4) and not rpn_bbox.any()
    # A box that no anchor touches gets no positive (Matterport made every anchor with
    # IoU 0, i.e. all of them, "best" for such a box).
    far = np.array([[20, 0, 30, 8], [0, 8, 8, 16], [40, 40, 56, 56]], np.float64)
    match, _ = data.build_rpn_targets(config.IMAGE_SHAPE, far, np.array([1, 2]),
                                      np.array([[20, 20, 30, 30], [40, 40, 56, 56]]), config)
    np.testing.assert_array_equal(match, [-1, -1, 1])
    # ... but a box's best anchor is positive however small its IoU (here 0.004).
    near = np.array([[-3.3, 10, 10.1, 20], [40, 40, 52.5, 50]], np.float64)
    match, rpn_bbox = data.build_rpn_targets(config.IMAGE_SHAPE, near, np.array([1]),
                                             np.array([[10, 10, 20, 20]]), config)
    np.testing.assert_array_equal(match, [1, -1])
    decoded = utils.apply_box_deltas(near[:1], rpn_bbox[:1] * config.RPN_BBOX_STD_DEV)
    np.testing.assert_allclose(decoded[0], [10, 10, 20, 20], atol=1e-3)
    # Only a crowd: no positives, no negatives on the crowd.
    big = make_config(RPN_TRAIN_ANCHORS_PER_IMAGE=100_000)
    crowd = np.array([[0, 0, 32, 32]], np.int32)
    match, _ = data.build_rpn_targets(big.IMAGE_SHAPE, anchors, np.array([-1]), crowd, big)
    crowd_iou = utils.compute_overlaps(anchors, crowd)[:, 0]
    assert not (match == 1).any()
    np.testing.assert_array_equal(match == -1, crowd_iou < 0.001)


############################################################
#  Random ROIs and detection targets
############################################################


def test_generate_random_rois():
    np.random.seed(0)
    boxes = np.array([[10, 10, 20, 30], [40, 0, 64, 2]], np.int32)
    rois = inspection.generate_random_rois((64, 64, 3), 50, np.array([1, 2]), boxes)
    assert rois.shape == (50, 4) and rois.dtype == np.int32
    assert (rois[:, 2] > rois[:, 0]).all() and (rois[:, 3] > rois[:, 1]).all()
    assert (rois >= 0).all() and (rois[:, [2, 3]] <= 64).all()
    # 90% around the boxes: 22 per box, inside each box grown by its size.
    first = rois[:22]
    assert (first[:, :2] >= 0).all() and (first[:, 2] <= 30).all() and (first[:, 3] <= 50).all()
    for count, gt in [(7, np.zeros([0, 4])), (10, boxes[:1])]:
        rois = inspection.generate_random_rois((64, 64, 3), count, np.ones(len(gt)), gt)
        assert rois.shape == (count, 4)
        assert (rois[:, 2] > rois[:, 0]).all() and (rois[:, 3] > rois[:, 1]).all()


def test_build_detection_targets(dataset, config):
    np.random.seed(1)
    _, _, class_ids, boxes, masks = data.load_image_gt(dataset, config, 0, use_mini_mask=True,
                                                       fixed_shape=True)
    rois = np.concatenate([boxes,
                           inspection.generate_random_rois((64, 64), 40, class_ids, boxes)])
    out_rois, roi_ids, deltas, roi_masks = inspection.build_detection_targets(
        rois, class_ids, boxes, masks, config)
    total = config.TRAIN_ROIS_PER_IMAGE
    assert out_rois.shape == (total, 4) and roi_ids.shape == (total,)
    assert deltas.shape == (total, config.NUM_CLASSES, 4)
    assert roi_masks.shape == (total, 28, 28, config.NUM_CLASSES)
    positive = np.flatnonzero(roi_ids > 0)
    assert 0 < positive.shape[0] <= int(total * config.ROI_POSITIVE_RATIO)
    overlaps = utils.compute_overlaps(out_rois, boxes)
    np.testing.assert_array_equal(roi_ids > 0, overlaps.max(axis=1) > 0.5)
    for i in positive:
        g = overlaps[i].argmax()
        assert roi_ids[i] == class_ids[g]
        decoded = utils.apply_box_deltas(out_rois[i:i + 1].astype(float),
                                         deltas[i:i + 1, roi_ids[i]] * config.BBOX_STD_DEV)
        np.testing.assert_allclose(decoded[0], boxes[g], atol=1e-3)
        other = [c for c in range(config.NUM_CLASSES) if c != roi_ids[i]]
        assert not deltas[i, other].any() and not roi_masks[i, ..., other].any()
        assert roi_masks[i, ..., roi_ids[i]].mean() > 0.2
    assert not deltas[roi_ids == 0].any() and not roi_masks[roi_ids == 0].any()


############################################################
#  DataGenerator and data_generator
############################################################


def check_training_inputs(inputs, config, batch, num_anchors):
    expected = [
        ((batch, 64, 64, 3), np.float32),
        ((batch, config.IMAGE_META_SIZE), np.float32),
        ((batch, num_anchors, 1), np.int32),
        ((batch, config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4), np.float32),
        ((batch, config.MAX_GT_INSTANCES), np.int32),
        ((batch, config.MAX_GT_INSTANCES, 4), np.float32),
        ((batch,) + tuple(config.MINI_MASK_SHAPE) + (config.MAX_GT_INSTANCES,), np.bool_),
    ]
    assert len(inputs) == 7
    for k, (array, (shape, dtype)) in enumerate(zip(inputs, expected)):
        assert array.shape == shape, (k, array.shape, shape)
        assert array.dtype == dtype, (k, array.dtype, dtype)


def test_data_generator_batches(dataset, config):
    generator = data.DataGenerator(dataset, config, seed=0)
    assert generator.workers == config.DATA_WORKERS
    assert generator.use_multiprocessing == config.DATA_USE_MULTIPROCESSING
    assert len(generator) == math.ceil(5 / 2) == 3
    num_anchors = toy_anchors(config).shape[0]
    seen = []
    for idx in range(len(generator)):
        batch = generator[idx]
        assert isinstance(batch, tuple) and len(batch) == 1
        inputs = batch[0]
        assert isinstance(inputs, tuple)
        check_training_inputs(inputs, config, 2, num_anchors)
        images, metas, rpn_match, rpn_bbox, gt_ids, gt_boxes, gt_masks = inputs
        ids = data.parse_image_meta(metas)["image_id"]
        np.testing.assert_array_equal(ids, generator.batch_image_ids(idx))
        seen.extend(ids.tolist())
        for b, image_id in enumerate(ids):
            _, _, class_ids, bbox, _ = data.load_image_gt(dataset, config, image_id)
            n = class_ids.shape[0]
            np.testing.assert_array_equal(gt_ids[b, :n], class_ids)
            np.testing.assert_array_equal(gt_boxes[b, :n], bbox)
            assert not gt_ids[b, n:].any() and not gt_masks[b, ..., n:].any()
            assert gt_masks[b, ..., :n].any(axis=(0, 1)).all()
            assert (rpn_match[b] == 1).sum() >= n
            np.testing.assert_allclose(images[b] + config.MEAN_PIXEL,
                                       dataset.load_image(image_id), atol=1e-3)
    # One epoch covers every image; the last batch is filled up from the start.
    assert sorted(set(seen)) == list(range(5)) and len(seen) == 6
    order = generator.order.copy()
    generator.on_epoch_end()
    assert not np.array_equal(order, generator.order)
    assert sorted(generator.order) == list(range(5))
    with pytest.raises(IndexError):
        generator[3]


def test_data_generator_without_shuffle_and_full_masks(dataset):
    config = make_config(USE_MINI_MASK=False)
    generator = data.DataGenerator(dataset, config, shuffle=False, batch_size=3)
    np.testing.assert_array_equal(generator.order, np.arange(5))
    generator.on_epoch_end()
    np.testing.assert_array_equal(generator.order, np.arange(5))
    (inputs,) = generator[1]
    assert inputs[6].shape == (3, 64, 64, config.MAX_GT_INSTANCES)
    np.testing.assert_array_equal(data.parse_image_meta(inputs[1])["image_id"], [3, 4, 0])


def test_keras_adapter_reads_the_generator(dataset, config):
    adapter_mod = pytest.importorskip("keras.src.trainers.data_adapters.py_dataset_adapter")
    generator = data.DataGenerator(dataset, config, seed=1, workers=2)
    adapter = adapter_mod.PyDatasetAdapter(generator)
    adapter.on_epoch_begin()
    batches = list(adapter.get_numpy_iterator())
    adapter.on_epoch_end()
    assert len(batches) == 3
    check_training_inputs(batches[0][0], config, 2, toy_anchors(config).shape[0])


def test_no_augmentation_sources(config):
    dataset = ToyDataset()
    rng = np.random.default_rng(0)
    dataset.add_toy_image(64, 64, random_objects(rng, 64, 64, 1))
    blob = [{"shape": "blob", "box": (5, 5, 20, 20), "color": PALETTE[2]}]
    dataset.add_toy_image(64, 64, blob, source="other")
    dataset.prepare()
    generator = data.DataGenerator(dataset, config, shuffle=False,
                                   augmentation=A.InvertImg(p=1.0),
                                   no_augmentation_sources=["other"])
    toy, other = generator.load_example(0), generator.load_example(1)
    np.testing.assert_array_equal(toy["image"], 255 - dataset.load_image(0))
    np.testing.assert_array_equal(other["image"], dataset.load_image(1))
    np.testing.assert_array_equal(data.parse_image_meta(other["image_meta"])
                                  ["active_class_ids"], [1, 0, 0, 1])


class BrokenDataset(ToyDataset):
    broken: set = set()

    def load_image(self, image_id):
        if image_id in self.broken:
            raise OSError(f"corrupt file #{image_id}")
        return super().load_image(image_id)


def test_broken_image_is_replaced_with_a_warning(config, caplog):
    dataset = make_dataset(count=4, dataset_cls=BrokenDataset)
    dataset.broken = {2}
    generator = data.DataGenerator(dataset, config, shuffle=False, seed=0)
    with caplog.at_level(logging.WARNING, logger="mrcnn.data"):
        (inputs,) = generator[1]  # images 2 and 3
    check_training_inputs(inputs, config, 2, toy_anchors(config).shape[0])
    ids = data.parse_image_meta(inputs[1])["image_id"]
    assert ids[1] == 3 and ids[0] != 2
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("image_id=2" in m and "corrupt file #2" in m for m in messages)


def test_all_images_broken_raises(config):
    dataset = make_dataset(count=3, dataset_cls=BrokenDataset)
    dataset.broken = {0, 1, 2}
    generator = data.DataGenerator(dataset, config, seed=0)
    logging.getLogger("mrcnn.data").disabled = True
    try:
        with pytest.raises(RuntimeError, match="corrupt file") as info:
            generator[0]
    finally:
        logging.getLogger("mrcnn.data").disabled = False
    assert isinstance(info.value.__cause__, OSError)


def test_data_generator_matterport_structure(dataset, config):
    np.random.seed(0)
    gen = inspection.data_generator(dataset, config, shuffle=True, batch_size=2)
    inputs, outputs = next(gen)
    assert isinstance(inputs, list) and outputs == []
    check_training_inputs(inputs, config, 2, toy_anchors(config).shape[0])

    gen = inspection.data_generator(dataset, config, shuffle=True, random_rois=40,
                                    batch_size=2)
    inputs, outputs = next(gen)
    assert len(inputs) == 8 and outputs == []
    assert inputs[7].shape == (2, 40, 4) and inputs[7].dtype == np.int32

    np.random.seed(0)
    gen = inspection.data_generator(dataset, config, shuffle=True, random_rois=300,
                                    batch_size=2, detection_targets=True)
    for _ in range(4):  # crosses an epoch boundary (3 batches per epoch)
        inputs, outputs = next(gen)
    total, classes = config.TRAIN_ROIS_PER_IMAGE, config.NUM_CLASSES
    assert len(inputs) == 9 and len(outputs) == 3
    check_training_inputs(inputs[:7], config, 2, toy_anchors(config).shape[0])
    assert inputs[7].shape == (2, 300, 4)
    assert inputs[8].shape == (2, total, 4)
    mrcnn_class_ids, mrcnn_bbox, mrcnn_mask = outputs
    assert mrcnn_class_ids.shape == (2, total, 1) and mrcnn_class_ids.dtype == np.int32
    assert mrcnn_bbox.shape == (2, total, classes, 4) and mrcnn_bbox.dtype == np.float32
    assert mrcnn_mask.shape == (2, total, 28, 28, classes) and mrcnn_mask.dtype == np.float32
    positive = mrcnn_class_ids[..., 0] > 0
    assert positive.any()
    assert mrcnn_mask[positive].any(axis=(1, 2, 3)).all()
    assert not mrcnn_mask[~positive].any() and not mrcnn_bbox[~positive].any()


############################################################
#  Vectorized RPN matching vs the previous implementation; workers
############################################################


def _previous_rpn_targets(anchors, gt_class_ids, gt_boxes, config):
    """build_rpn_targets as of commit dece6be (per-box loop over height buckets)."""

    def overlaps(anchors, boxes):
        num = anchors.shape[0]
        iou_max, iou_argmax = np.zeros([num]), np.zeros([num], dtype=np.int64)
        best_hits = np.zeros([num], dtype=bool)
        if boxes.shape[0] == 0:
            return iou_max, iou_argmax, np.zeros([0], dtype=np.int64)
        ay1, ax1, ay2, ax2 = (anchors[:, i] for i in range(4))
        areas, heights = (ay2 - ay1) * (ax2 - ax1), ay2 - ay1
        bucket = np.floor(4 * np.log2(np.maximum(heights, 1e-3))).astype(np.int64)
        order = np.lexsort((ay1, bucket))
        starts = np.flatnonzero(np.r_[True, bucket[order][1:] != bucket[order][:-1]])
        ends = np.r_[starts[1:], num]
        tops = ay1[order]
        ranges = []
        for start, end in zip(starts, ends):
            max_height = heights[order[start:end]].max()
            low = start + np.searchsorted(tops[start:end], boxes[:, 0] - max_height - 1e-6,
                                          side="right")
            high = start + np.searchsorted(tops[start:end], boxes[:, 2] + 1e-6, side="left")
            ranges.append((low, high))
        box_areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        for g, (y1, x1, y2, x2) in enumerate(boxes):
            idx = np.concatenate([order[low[g]:high[g]] for low, high in ranges])
            if idx.shape[0] == 0:
                continue
            height = np.minimum(ay2[idx], y2) - np.maximum(ay1[idx], y1)
            width = np.minimum(ax2[idx], x2) - np.maximum(ax1[idx], x1)
            intersection = np.maximum(height, 0) * np.maximum(width, 0)
            union = areas[idx] + box_areas[g] - intersection
            iou = np.zeros_like(intersection)
            np.divide(intersection, union, out=iou, where=union > 0)
            better = iou > iou_max[idx]
            iou_max[idx[better]] = iou[better]
            iou_argmax[idx[better]] = g
            top = iou.max()
            if top > 0:
                best_hits[idx[iou == top]] = True
        return iou_max, iou_argmax, np.flatnonzero(best_hits)

    anchors = np.asarray(anchors, dtype=np.float64)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    total = int(config.RPN_TRAIN_ANCHORS_PER_IMAGE)
    rpn_match = np.zeros([anchors.shape[0]], dtype=np.int32)
    rpn_bbox = np.zeros([total, 4], dtype=np.float32)
    crowd = gt_class_ids < 0
    not_crowded = np.ones([anchors.shape[0]], dtype=bool)
    if crowd.any():
        not_crowded = overlaps(anchors, gt_boxes[crowd])[0] < 0.001
        gt_boxes = gt_boxes[~crowd]
    iou_max, iou_argmax, best_anchors = overlaps(anchors, gt_boxes)
    rpn_match[(iou_max < 0.3) & not_crowded] = -1
    rpn_match[best_anchors] = 1
    rpn_match[iou_max >= 0.7] = 1
    positives = np.flatnonzero(rpn_match == 1)
    extra = positives.shape[0] - total // 2
    if extra > 0:
        rpn_match[np.random.choice(positives, extra, replace=False)] = 0
    negatives = np.flatnonzero(rpn_match == -1)
    extra = negatives.shape[0] - (total - int(np.sum(rpn_match == 1)))
    if extra > 0:
        rpn_match[np.random.choice(negatives, extra, replace=False)] = 0
    positives = np.flatnonzero(rpn_match == 1)
    if positives.shape[0]:
        anchor, gt = anchors[positives], gt_boxes[iou_argmax[positives]]
        a_h, a_w = anchor[:, 2] - anchor[:, 0], anchor[:, 3] - anchor[:, 1]
        gt_h, gt_w = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
        deltas = np.stack([((gt[:, 0] + 0.5 * gt_h) - (anchor[:, 0] + 0.5 * a_h)) / a_h,
                           ((gt[:, 1] + 0.5 * gt_w) - (anchor[:, 1] + 0.5 * a_w)) / a_w,
                           np.log(gt_h / a_h), np.log(gt_w / a_w)], axis=1)
        rpn_bbox[:positives.shape[0]] = deltas / np.asarray(config.RPN_BBOX_STD_DEV)
    return rpn_match, rpn_bbox


@pytest.mark.parametrize("seed", range(3))
def test_vectorized_rpn_targets_equal_the_previous_implementation(seed):
    config = make_config(IMAGE_MIN_DIM=256, IMAGE_MAX_DIM=256, RPN_TRAIN_ANCHORS_PER_IMAGE=64)
    pyramid = toy_anchors(config)
    rng = np.random.default_rng(seed)
    corner = rng.uniform(-20, 250, (3000, 2))  # arbitrary anchors too (no grid)
    arbitrary = np.concatenate([corner, corner + rng.uniform(1, 120, (3000, 2))], axis=1)
    for anchors in (pyramid, arbitrary):
        for case in range(8):
            count = int(rng.integers(0, 25))
            y1, x1 = rng.integers(-10, 240, (2, count))
            boxes = np.stack([y1, x1, y1 + rng.integers(1, 150, count),
                              x1 + rng.integers(1, 150, count)], 1)
            if count > 2:
                boxes[2] = boxes[1]  # duplicate box: ties go to the first
            class_ids = rng.integers(1, 4, count).astype(np.int32)
            class_ids[rng.random(count) < 0.2] *= -1  # crowds
            np.random.seed(case)
            expected = _previous_rpn_targets(anchors, class_ids, boxes, config)
            np.random.seed(case)  # same np.random draws: same sampling
            match, rpn_bbox = data.build_rpn_targets(config.IMAGE_SHAPE, anchors, class_ids,
                                                     boxes, config)
            np.testing.assert_array_equal(match, expected[0])
            np.testing.assert_array_equal(rpn_bbox, expected[1])
            # A RandomState seeded the same way draws the same sample.
            again = data.build_rpn_targets(config.IMAGE_SHAPE, anchors, class_ids, boxes,
                                           config, rng=np.random.RandomState(case))
            np.testing.assert_array_equal(again[0], expected[0])


def _adapter_batches(generator):
    adapter_mod = pytest.importorskip("keras.src.trainers.data_adapters.py_dataset_adapter")
    adapter = adapter_mod.PyDatasetAdapter(generator)
    adapter.on_epoch_begin()
    batches = list(adapter.get_numpy_iterator())
    adapter.on_epoch_end()
    return batches


def test_seeded_batches_are_the_same_with_any_number_of_workers():
    check_seeded_batches_are_the_same_with_any_number_of_workers()


def check_seeded_batches_are_the_same_with_any_number_of_workers(augmentation=None):
    """Two seeded epochs with 0 and 3 worker threads: the same batches (tests/test_imgaug.py
    runs it with an imgaug augmenter)."""
    # Crop mode, MAX_GT subsets and anchor sampling: every random draw of a batch.
    config = make_config(IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64,
                         MAX_GT_INSTANCES=3)
    dataset = make_dataset(count=6, size=(96, 128), seed=4)

    def epochs(workers):
        generator = data.DataGenerator(dataset, config, seed=11, workers=workers,
                                       use_multiprocessing=False, augmentation=augmentation)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # more instances than MAX_GT_INSTANCES
            first = _adapter_batches(generator)
            second = _adapter_batches(generator)
        return first, second

    main_thread, threads = epochs(0), epochs(3)
    for one, other in zip(main_thread, threads):
        assert len(one) == len(other) == 3
        for a, b in zip(one, other):
            for x, y in zip(a[0], b[0]):
                np.testing.assert_array_equal(x, y)
    # Epochs draw anew (other crops or samples), not the same batches again.
    first, second = main_thread
    assert any(not np.array_equal(x, y) for a, b in zip(first, second)
               for x, y in zip(a[0], b[0]))


def test_broken_image_in_a_worker_is_replaced_with_the_same_warning(config, caplog):
    dataset = make_dataset(count=4, dataset_cls=BrokenDataset)
    dataset.broken = {2}
    generator = data.DataGenerator(dataset, config, shuffle=False, seed=0, workers=2)
    with caplog.at_level(logging.WARNING, logger="mrcnn.data"):
        batches = _adapter_batches(generator)
    assert len(batches) == 2
    ids = data.parse_image_meta(batches[1][0][1])["image_id"]
    assert ids[1] == 3 and ids[0] != 2
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("image_id=2" in m and "corrupt file #2" in m and "Skipping" in m
               for m in messages)


def test_default_workers_are_the_usable_cores():
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert Config.DATA_WORKERS == cores >= 1
    assert Config.DATA_USE_MULTIPROCESSING is False
