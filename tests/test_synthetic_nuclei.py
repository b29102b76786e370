"""samples/nucleus/synthetic.py: dense synthetic nuclei that the nucleus sample reads as is."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from samples.nucleus import nucleus, synthetic


@pytest.fixture(scope="module")
def field():
    return synthetic.make_image(np.random.default_rng(7), 192, 224)


def test_masks_are_disjoint_instances_of_the_image_size(field):
    image, masks = field
    assert image.shape == (192, 224, 3) and image.dtype == np.uint8
    assert masks.shape[:2] == (192, 224) and masks.dtype == bool
    assert masks.sum(axis=-1).max() <= 1  # z-order occlusion: one nucleus per pixel
    assert masks.sum(axis=(0, 1)).min() >= 4  # no empty or speck instances
    # Gray replicated to RGB, like most DSB2018 images.
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_fields_are_dense_with_touching_and_occluded_nuclei(field):
    _, masks = field
    style = synthetic.NucleiStyle()
    assert masks.shape[-1] >= 0.5 * style.count[0]  # "several hundred" at 256 px defaults
    # Touching: a nucleus grown by one pixel reaches another one.
    grown = np.stack([cv2.dilate(masks[..., k].astype(np.uint8), np.ones((3, 3), np.uint8))
                      for k in range(masks.shape[-1])], axis=-1).astype(bool)
    touching = [(grown[..., k] & masks.any(-1) & ~masks[..., k]).any()
                for k in range(masks.shape[-1])]
    assert np.mean(touching) > 0.2
    # Occluded: some visible shapes are far from convex (an ellipse cut by another).
    solidity = []
    for k in range(masks.shape[-1]):
        contours, _ = cv2.findContours(masks[..., k].astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        hull = cv2.contourArea(cv2.convexHull(np.concatenate(contours)))
        solidity.append(masks[..., k].sum() / max(hull, 1.0))
    assert np.min(solidity) < 0.85


def test_nuclei_are_brighter_than_the_background_and_the_image_is_noisy(field):
    image, masks = field
    gray = image[..., 0].astype(np.float32)
    inside, outside = gray[masks.any(-1)], gray[~masks.any(-1)]
    assert inside.mean() > outside.mean() + 40
    # Shot noise: neighbouring background pixels differ (a smooth render would not).
    assert np.abs(np.diff(gray, axis=1))[~masks.any(-1)[:, 1:]].mean() > 1.0


def test_same_seed_same_images_other_seed_other_images():
    a = synthetic.make_image(np.random.default_rng([3, 0, 1]), 64, 64)
    b = synthetic.make_image(np.random.default_rng([3, 0, 1]), 64, 64)
    c = synthetic.make_image(np.random.default_rng([4, 0, 1]), 64, 64)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_the_nucleus_sample_reads_the_written_dataset_unchanged(tmp_path):
    root = str(tmp_path / "synth")
    out = synthetic.write_dataset(root, train_images=3, test_images=1, size=(96, 80), seed=5)
    dataset = nucleus.NucleusDataset()
    dataset.load_nucleus(root, "stage1_train", verify=True)
    dataset.prepare()
    assert sorted(info["id"] for info in dataset.image_info) == sorted(out["train_ids"])
    for image_id in dataset.image_ids:
        info = dataset.image_info[image_id]
        k = int(info["id"][len("synth0"):len("synth0") + 4])
        image, masks = synthetic.make_image(np.random.default_rng([5, 0, k]), 96, 80)
        np.testing.assert_array_equal(dataset.load_image(image_id), image)
        loaded, class_ids = dataset.load_mask(image_id)
        assert loaded.shape[-1] == out["instances"][info["id"]] == masks.shape[-1]
        np.testing.assert_array_equal(loaded, masks)
        assert (class_ids == 1).all()
    test_set = nucleus.NucleusDataset()
    test_set.load_nucleus(root, "stage1_test")
    assert [i["id"] for i in test_set.image_info] == out["test_ids"]


def test_an_existing_image_folder_is_never_overwritten(tmp_path):
    root = str(tmp_path / "synth")
    synthetic.write_dataset(root, train_images=1, test_images=0, size=(32, 32))
    with pytest.raises(FileExistsError):
        synthetic.write_dataset(root, train_images=1, test_images=0, size=(32, 32))


def _field_stats(style, seeds=(0, 1, 2)):
    """Log-area spread, share of visibly occluded (non-convex) nuclei, and contrast."""
    log_areas, solidity, contrast = [], [], []
    for seed in seeds:
        image, masks = synthetic.make_image(np.random.default_rng(seed), 192, 192, style)
        areas = masks.sum(axis=(0, 1))
        log_areas += list(np.log(areas))
        for k in range(masks.shape[-1]):
            contours, _ = cv2.findContours(masks[..., k].astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            hull = cv2.contourArea(cv2.convexHull(np.concatenate(contours)))
            solidity.append(areas[k] / max(hull, 1.0))
        gray = image[..., 0].astype(np.float32)
        fg = masks.any(-1)
        contrast.append((gray[fg].mean() - gray[~fg].mean()) / gray[~fg].std())
    return np.std(log_areas), np.mean(np.array(solidity) < 0.8), np.mean(contrast)


def test_the_hard_style_is_harder_on_every_axis_it_names():
    sizes, occluded, contrast = _field_stats(synthetic.NucleiStyle())
    hard_sizes, hard_occluded, hard_contrast = _field_stats(synthetic.HARD)
    assert hard_sizes > 1.2 * sizes  # a wider range of sizes
    assert hard_occluded > 1.3 * occluded  # more nuclei cut by a neighbour
    assert hard_contrast < 0.7 * contrast  # dimmer nuclei, brighter background, more noise
    assert synthetic.STYLES["default"] == synthetic.NucleiStyle()


def test_the_command_line_writes_the_hard_style(tmp_path):
    out = synthetic.main([str(tmp_path / "d"), "--train", "1", "--test", "0", "--size", "96",
                          "96", "--style", "hard"])
    image, masks = synthetic.make_image(np.random.default_rng([0, 0, 0]), 96, 96, synthetic.HARD)
    written = cv2.imread(str(tmp_path / "d" / "stage1_train" / out["train_ids"][0] / "images" /
                             f"{out['train_ids'][0]}.png"))
    np.testing.assert_array_equal(written, image)
    assert out["instances"][out["train_ids"][0]] == masks.shape[-1]
