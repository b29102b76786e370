"""imgaug augmenters in the training data path, with Matterport's semantics; refusals.

The reference is a re-implementation, here, of the augmentation branch of Matterport's
``load_image_gt`` (mrcnn/model.py): ``det = augmentation.to_deterministic()``, the image
augmented, the masks augmented as uint8 through a hook that lets only the geometric
augmenters touch them, vanished instances dropped, boxes from the masks. mrcnn's
``load_image_gt`` must give the same image, masks, class ids and boxes.

imgaug is optional: ``pip install "mrcnn[imgaug]" && pip install --no-deps imgaug==0.4.0``.
Where it is not installed the tests that need it skip, except when the environment variable
MRCNN_REQUIRE_IMGAUG=1 says it must be there (CI's imgaug step sets it): then this module
fails to import, so a broken install cannot pass as a skip. An imgaug that is installed but
fails to import always fails the module.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

import mrcnn.imgaug_compat  # noqa: F401  (before imgaug: NumPy 2)
from mrcnn import augment, data
from tests.test_data import (ToyDataset, make_config, make_dataset,
                             check_seeded_batches_are_the_same_with_any_number_of_workers)

A = pytest.importorskip("albumentations")

try:
    import imgaug
    import imgaug.augmenters as iaa
except ModuleNotFoundError as err:
    if err.name != "imgaug" or os.environ.get("MRCNN_REQUIRE_IMGAUG") == "1":
        raise
    imgaug = iaa = None

needs_imgaug = pytest.mark.skipif(
    imgaug is None, reason="imgaug is not installed (pip install 'mrcnn[imgaug]' && pip "
    "install --no-deps imgaug==0.4.0); MRCNN_REQUIRE_IMGAUG=1 makes its absence an error")

ROOT = Path(__file__).resolve().parents[1]


############################################################
#  Matterport's augmenters and the reference
############################################################


def nucleus_augmentation():
    """samples/nucleus/nucleus.py (Matterport), train()."""
    return iaa.SomeOf((0, 2), [
        iaa.Fliplr(0.5),
        iaa.Flipud(0.5),
        iaa.OneOf([iaa.Affine(rotate=90), iaa.Affine(rotate=180), iaa.Affine(rotate=270)]),
        iaa.Multiply((0.8, 1.5)),
        iaa.GaussianBlur(sigma=(0.0, 5.0)),
    ])


def coco_augmentation():
    """samples/coco/coco.py (Matterport), train."""
    return imgaug.augmenters.Fliplr(0.5)


def geometric_augmentation():
    """The rest of Matterport's MASK_AUGMENTERS, with pixel augmenters between them."""
    return iaa.Sequential([
        iaa.Sometimes(0.7, iaa.Affine(rotate=(-40, 40), scale=(0.8, 1.2))),
        iaa.CropAndPad(percent=(-0.3, 0.1)),
        iaa.Sometimes(0.5, iaa.PiecewiseAffine(scale=(0.01, 0.04), nb_rows=3, nb_cols=3)),
        iaa.Flipud(0.5),
        iaa.Multiply((0.5, 1.5), per_channel=0.5),
    ])


AUGMENTATIONS = {"nucleus": nucleus_augmentation, "coco": coco_augmentation,
                 "geometric": geometric_augmentation}


def reference_boxes(mask: np.ndarray) -> np.ndarray:
    """Matterport's utils.extract_bboxes: [y1, x1, y2, x2], y2/x2 one past the last pixel."""
    boxes = np.zeros([mask.shape[-1], 4], dtype=np.int32)
    for i in range(mask.shape[-1]):
        rows = np.flatnonzero(mask[:, :, i].any(axis=1))
        cols = np.flatnonzero(mask[:, :, i].any(axis=0))
        if rows.size:
            boxes[i] = rows[0], cols[0], rows[-1] + 1, cols[-1] + 1
    return boxes


def matterport_augment(augmentation, image, mask, class_ids):
    """Matterport's load_image_gt from ``if augmentation:`` to the boxes."""
    mask_augmenters = ["Sequential", "SomeOf", "OneOf", "Sometimes", "Fliplr", "Flipud",
                       "CropAndPad", "Affine", "PiecewiseAffine"]

    def hook(images, augmenter, parents, default):
        return augmenter.__class__.__name__ in mask_augmenters

    image_shape, mask_shape = image.shape, mask.shape
    det = augmentation.to_deterministic()
    image = det.augment_image(image)
    mask = det.augment_image(mask.astype(np.uint8), hooks=imgaug.HooksImages(activator=hook))
    assert image.shape == image_shape and mask.shape == mask_shape
    mask = mask.astype(bool)
    keep = np.sum(mask, axis=(0, 1)) > 0
    mask, class_ids = mask[:, :, keep], class_ids[keep]
    return image, class_ids, reference_boxes(mask), mask


def quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        # skimage 0.26 deprecates the estimate() PiecewiseAffine calls.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return function(*args, **kwargs)


def assert_same(ours, expected):
    image, _, class_ids, bbox, mask = ours
    ref_image, ref_ids, ref_bbox, ref_mask = expected
    np.testing.assert_array_equal(image, ref_image)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_array_equal(class_ids, ref_ids)
    np.testing.assert_array_equal(bbox, ref_bbox)


############################################################
#  Same results as Matterport's branch
############################################################


@needs_imgaug
@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_unseeded_path_is_matterports_branch(name):
    # Without a pipeline rng, the augmenter's own random state decides, as in Matterport:
    # two twin augmenters, one through load_image_gt and one through the reference, stay in
    # step over a run of images.
    config, dataset = make_config(), make_dataset(count=8, seed=3)
    ours, theirs = AUGMENTATIONS[name](), AUGMENTATIONS[name]()
    ours.seed_(5)
    theirs.seed_(5)
    changed_images = changed_masks = 0
    for image_id in dataset.image_ids:
        image, _, class_ids, _, mask = data.load_image_gt(dataset, config, image_id)
        expected = quiet(matterport_augment, theirs, image, mask, class_ids)
        assert_same(quiet(data.load_image_gt, dataset, config, image_id, augmentation=ours),
                     expected)
        changed_images += not np.array_equal(expected[0], image)
        changed_masks += expected[3].shape != mask.shape or not np.array_equal(expected[3], mask)
    assert changed_images > 0 and changed_masks > 0  # the augmenters did something


@needs_imgaug
@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_rng_path_is_matterports_branch_on_a_seeded_copy(name):
    # With the batch's RandomState (the DataGenerator path), each image is Matterport's
    # branch on a copy of the augmenter seeded with one rng.randint(2**31 - 1) draw (square
    # resize draws nothing before it).
    config, dataset = make_config(), make_dataset(count=6, seed=7)
    augmentation = AUGMENTATIONS[name]()
    for image_id in dataset.image_ids:
        image, _, class_ids, _, mask = data.load_image_gt(dataset, config, image_id)
        twin = AUGMENTATIONS[name]()
        twin.seed_(int(np.random.RandomState(image_id).randint(2**31 - 1)))
        expected = quiet(matterport_augment, twin, image, mask, class_ids)
        ours = quiet(data.load_image_gt, dataset, config, image_id, augmentation=augmentation,
                     rng=np.random.RandomState(image_id))
        assert_same(ours, expected)


@needs_imgaug
def test_geometric_augmenters_move_masks_and_pixel_ones_do_not():
    config, dataset = make_config(), make_dataset(count=3, seed=1)
    for image_id in dataset.image_ids:
        image, _, ids, bbox, mask = data.load_image_gt(dataset, config, image_id)
        flipped = data.load_image_gt(dataset, config, image_id, augmentation=iaa.Flipud(1.0))
        np.testing.assert_array_equal(flipped[0], image[::-1])
        np.testing.assert_array_equal(flipped[4], mask[::-1])
        np.testing.assert_array_equal(flipped[3][:, [0, 2]], 64 - bbox[:, [2, 0]])
        brighter = data.load_image_gt(dataset, config, image_id,
                                      augmentation=iaa.Sequential([iaa.Multiply(2.0)]))
        np.testing.assert_array_equal(brighter[0], np.minimum(image.astype(int) * 2, 255))
        np.testing.assert_array_equal(brighter[4], mask)
        np.testing.assert_array_equal(brighter[2], ids)


@needs_imgaug
def test_image_without_instances_and_shape_changes():
    config = make_config()
    dataset = ToyDataset()
    dataset.add_toy_image(64, 64, [])
    dataset.prepare()
    image, _, ids, bbox, mask = data.load_image_gt(dataset, config, 0,
                                                   augmentation=nucleus_augmentation(),
                                                   rng=np.random.RandomState(0))
    assert image.shape == (64, 64, 3) and mask.shape == (64, 64, 0) and ids.shape == (0,)
    with pytest.raises(ValueError, match=r"image_id=0 .*Resize.*\(64, 64, 3\) to "
                                         r"\(32, 32, 3\)"):
        data.load_image_gt(dataset, config, 0, augmentation=iaa.Resize(0.5))


############################################################
#  Reproducible with workers; train's data path
############################################################


@needs_imgaug
def test_seeded_imgaug_batches_are_the_same_with_any_number_of_workers():
    check_seeded_batches_are_the_same_with_any_number_of_workers(
        augmentation=nucleus_augmentation())


@needs_imgaug
@pytest.mark.parametrize("name", ["nucleus", "coco"])
def test_matterport_sample_augmenters_through_the_generator(name):
    # DataGenerator as train() builds it (shuffle, seed, steps): each slot holds Matterport's
    # branch on a copy seeded from the batch's RandomState. Per image the generator draws the
    # augmenter's seed, then the RPN anchor sample (replayed here to stay in step).
    config, dataset = make_config(), make_dataset(count=4, seed=2)
    generator = data.DataGenerator(dataset, config, shuffle=True,
                                   augmentation=AUGMENTATIONS[name](), seed=3, steps=2,
                                   workers=0)
    for idx in range(len(generator)):
        inputs = quiet(generator.__getitem__, idx)[0]
        rng = generator.batch_rng(idx)
        for slot, image_id in enumerate(generator.batch_image_ids(idx)):
            image, _, class_ids, _, mask = data.load_image_gt(dataset, config, image_id)
            twin = AUGMENTATIONS[name]()
            twin.seed_(int(rng.randint(2**31 - 1)))
            image, class_ids, bbox, _ = quiet(matterport_augment, twin, image, mask, class_ids)
            data.build_rpn_targets(image.shape, generator.anchors, class_ids, bbox, config,
                                   rng=rng)
            count = class_ids.shape[0]
            np.testing.assert_allclose(inputs[0][slot] + config.MEAN_PIXEL, image, atol=1e-4)
            assert data.parse_image_meta(inputs[1])["image_id"][slot] == image_id
            np.testing.assert_array_equal(inputs[4][slot], np.pad(class_ids, (0, 6 - count)))
            np.testing.assert_array_equal(inputs[5][slot, :count], bbox)


@needs_imgaug
@pytest.mark.parametrize("name", ["nucleus", "coco"])
def test_train_feeds_matterports_augmenters_to_the_model(tmp_path, name):
    # train() up to model.fit: the generator it built batches images augmented by imgaug
    # (fitting itself is covered by the training tests).
    from mrcnn import model as modellib
    from tests.tiny import TinyFastConfig, shapes_dataset

    model = modellib.MaskRCNN("training", TinyFastConfig(), str(tmp_path))
    augmentation, fed = AUGMENTATIONS[name](), []

    def fit(train_generator, val_generator, epochs, callbacks):
        fed.append(quiet(train_generator.__getitem__, 0)[0])
        assert train_generator.augmentation is augmentation
        return keras.callbacks.History()

    model._fit = fit
    model.train(shapes_dataset(count=2), None, learning_rate=1e-3, epochs=1, layers="heads",
                augmentation=augmentation)
    images, gt_boxes = fed[0][0], fed[0][5]
    assert images.shape == (2, 64, 64, 3) and np.isfinite(images).all()
    assert (gt_boxes[:, 0, 2:] > gt_boxes[:, 0, :2]).all()  # every shapes image has objects


############################################################
#  Unsupported augmentations are refused before any image is loaded
############################################################


class UnloadableDataset(ToyDataset):
    """Any attempt to load data fails the test."""

    def load_image(self, image_id):
        raise AssertionError("an image was loaded")

    def load_mask(self, image_id):
        raise AssertionError("a mask was loaded")


def unloadable_dataset():
    return make_dataset(count=2, dataset_cls=UnloadableDataset)


def flip_function(image, masks):
    return image[:, ::-1], masks[:, ::-1]


UNSUPPORTED = {"string": "fliplr", "function": flip_function,
               "albumentations-like lambda": lambda **kw: kw, "flag": True}


def refusal(value, where):
    accepted = "an albumentations transform .* or an imgaug augmenter .*, or None"
    return rf"^{re.escape(where)} must be {accepted}; got .*{re.escape(type(value).__name__)}"


@pytest.mark.parametrize("kind", sorted(UNSUPPORTED))
def test_unsupported_augmentation_is_refused_by_the_generator(kind):
    value = UNSUPPORTED[kind]
    with pytest.raises(TypeError, match=refusal(value, "DataGenerator(augmentation=...)")):
        data.DataGenerator(unloadable_dataset(), make_config(), augmentation=value, workers=0)
    if kind == "flag":  # load_image_gt takes a bool as Matterport's old `augment` flag
        return
    with pytest.raises(TypeError, match=refusal(value, "load_image_gt(augmentation=...)")):
        data.load_image_gt(unloadable_dataset(), make_config(), 0, augmentation=value)


def test_unsupported_augmentation_is_refused_by_train(tmp_path):
    from mrcnn import model as modellib
    from tests.tiny import TinyFastConfig

    model = modellib.MaskRCNN("training", TinyFastConfig(), str(tmp_path))
    for value in UNSUPPORTED.values():
        with pytest.raises(TypeError, match=refusal(value, "train(augmentation=...)")):
            model.train(unloadable_dataset(), unloadable_dataset(), learning_rate=1e-3,
                        epochs=1, layers="heads", augmentation=value)
    assert list(tmp_path.iterdir()) == []  # no run folder either


def test_supported_augmentations_are_accepted():
    for value in (None, A.HorizontalFlip(p=0.5), A.Compose([A.HorizontalFlip(p=0.5)]),
                  A.OneOf([A.HorizontalFlip(), A.VerticalFlip()])):
        augment.check_augmentation(value)
    if imgaug is not None:
        for build in AUGMENTATIONS.values():
            augment.check_augmentation(build())


############################################################
#  imgaug on NumPy 2, the install, the docs page
############################################################


def test_numpy_shim_restores_what_imgaug_reads_and_nothing_else():
    # A fresh interpreter: NumPy 2 without np.sctypes; the shim's one line restores the
    # three lists imgaug reads, with NumPy 1.x's types, and imports nothing heavy.
    code = """
import sys, numpy as np
before = set(vars(np))
assert not hasattr(np, "sctypes")
import mrcnn.imgaug_compat
from mrcnn.augment import restore_numpy_for_imgaug
assert restore_numpy_for_imgaug() is False  # idempotent
assert set(vars(np)) - before == {"sctypes"}, set(vars(np)) - before
sized = lambda kind: [np.dtype(f"{kind}{n}").type for n in (1, 2, 4, 8)]
assert np.sctypes == {"int": sized("i"), "uint": sized("u"),
                      "float": [np.float16, np.float32, np.float64, np.longdouble]}
assert not {"keras", "tensorflow", "albumentations", "imgaug"} & set(sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr


@needs_imgaug
def test_exactly_one_opencv_is_installed():
    # imgaug declares opencv-python; installed with its dependencies it puts a second cv2
    # beside opencv-python-headless (one shared cv2 folder).
    names = ("opencv-python", "opencv-python-headless", "opencv-contrib-python",
             "opencv-contrib-python-headless")
    installed = []
    for name in names:
        try:
            installed.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    assert len(installed) == 1, installed
    import cv2

    assert cv2.resize(np.ones((4, 4), np.uint8), (2, 2)).shape == (2, 2)


def python_blocks(markdown: str) -> list[tuple[str | None, str]]:
    """(the reason of its ``docs-test: skip`` marker or None, code) of each ```python block."""
    pattern = re.compile(r"(?:<!-- docs-test: skip \((.*?)\) -->\s*\n)?```python\n(.*?)```",
                         re.S)
    return [(m.group(1), m.group(2)) for m in pattern.finditer(markdown)]


@needs_imgaug
def test_docs_page_examples_run_with_imgaug(tmp_path, monkeypatch):
    # The docs test skips the blocks that need imgaug; here they run too, all in order.
    blocks = python_blocks((ROOT / "docs" / "augmentation.md").read_text())
    runs = [code for reason, code in blocks if reason is None or "imgaug" in reason]
    assert len(runs) == 5 and len(blocks) == 6
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for code in runs:
        quiet(exec, compile(code, "docs/augmentation.md", "exec"), namespace)
    assert isinstance(namespace["augmentation"], iaa.SomeOf)
