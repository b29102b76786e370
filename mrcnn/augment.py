"""Augmentation of an image and its instance masks: albumentations or imgaug.

``MaskRCNN.train(augmentation=...)`` takes either library, told apart by what the object is:

- an imgaug augmenter (it has ``to_deterministic``) runs with Matterport's semantics: one
  deterministic copy per image augments the image, then the masks as uint8, through a hook
  that lets only the geometric augmenters in ``MASK_AUGMENTERS`` touch them;
- an albumentations transform (``A.Compose([...])`` or a single transform) gets the image and
  the masks in one call (``transform(image=..., masks=...)``).

Anything else is refused by ``check_augmentation`` before any image is loaded.

imgaug 0.4.0 (the last release) reads ``np.sctypes`` when it is imported, and NumPy 2 removed
that attribute: ``restore_numpy_for_imgaug`` (or ``import mrcnn.imgaug_compat``) puts back the
part imgaug reads, before ``import imgaug``.

NumPy only; albumentations and imgaug are imported here only when the caller already has them.
"""

from __future__ import annotations

import reprlib
import sys
from typing import Any

import numpy as np

# Matterport's list (mrcnn/model.py, load_image_gt): the augmenters that also move the masks.
# Pixel-level augmenters (Multiply, GaussianBlur, ...) change the image only. Affine and
# PiecewiseAffine interpolate the 0/1 masks (Matterport's behaviour: any non-zero pixel stays
# in the mask); CropAndPad pads with zeros.
MASK_AUGMENTERS = ("Sequential", "SomeOf", "OneOf", "Sometimes", "Fliplr", "Flipud",
                   "CropAndPad", "Affine", "PiecewiseAffine")

ACCEPTED = ("an albumentations transform (e.g. A.Compose([A.HorizontalFlip(p=0.5)])) or an "
            "imgaug augmenter (e.g. iaa.Fliplr(0.5)), or None")


############################################################
#  imgaug on NumPy 2
############################################################


def restore_numpy_for_imgaug() -> bool:
    """Give NumPy 2 back the ``np.sctypes`` entries that imgaug 0.4.0 reads on import.

    imgaug 0.4.0 builds its dtype sets from ``np.sctypes["int"]``, ``["uint"]`` and
    ``["float"]`` when it is imported; NumPy 2 removed ``np.sctypes``, so ``import imgaug``
    fails with an AttributeError. This restores those three lists, with the types NumPy 1.x
    listed, and nothing else. Call it before ``import imgaug``; ``import mrcnn.imgaug_compat``
    does it in one line. Where ``np.sctypes`` exists (NumPy 1.x, or restored already) it
    changes nothing.

    Returns:
        True if ``np.sctypes`` was set, False if it was there already.
    """
    if hasattr(np, "sctypes"):
        return False
    # dict.fromkeys drops repeats where longdouble is float64 itself, as NumPy 1.x listed it.
    np.sctypes = {
        "int": list(dict.fromkeys([np.int8, np.int16, np.int32, np.int64])),
        "uint": list(dict.fromkeys([np.uint8, np.uint16, np.uint32, np.uint64])),
        "float": list(dict.fromkeys([np.float16, np.float32, np.float64, np.longdouble])),
    }
    return True


############################################################
#  Which library
############################################################


def is_imgaug(augmentation: Any) -> bool:
    """True for an imgaug augmenter (it has ``to_deterministic`` and ``augment_image``)."""
    return (callable(getattr(augmentation, "to_deterministic", None))
            and callable(getattr(augmentation, "augment_image", None)))


def is_albumentations(augmentation: Any) -> bool:
    """True for an albumentations transform or composition (``A.Compose``, ``A.OneOf``, ...)."""
    if "albumentations" not in sys.modules:  # nobody imported it: the object is not one
        return False
    from albumentations.core.composition import BaseCompose
    from albumentations.core.transforms_interface import BasicTransform

    return isinstance(augmentation, (BaseCompose, BasicTransform))


def _describe(augmentation: Any) -> str:
    cls = type(augmentation)
    return f"{reprlib.repr(augmentation)} (type {cls.__module__}.{cls.__qualname__})"


def check_augmentation(augmentation: Any, where: str = "augmentation") -> None:
    """Refuse what is neither an albumentations transform nor an imgaug augmenter.

    Args:
        augmentation: what the user passed (None is accepted: no augmentation).
        where: the argument's name for the message, e.g. ``"train(augmentation=...)"``.

    Raises:
        TypeError: naming what was passed and what is accepted.
    """
    if augmentation is None or is_imgaug(augmentation) or is_albumentations(augmentation):
        return
    raise TypeError(f"{where} must be {ACCEPTED}; got {_describe(augmentation)}")


############################################################
#  Augmenting one image and its masks
############################################################


def transform_name(augmentation: Any) -> str:
    """Short name of a transform, e.g. ``Compose([HorizontalFlip, Rotate])``."""
    children = getattr(augmentation, "transforms", None)
    if children is not None:
        try:
            inner = ", ".join(transform_name(t) for t in children)
            return f"{type(augmentation).__name__}([{inner}])"
        except TypeError:
            pass
    return type(augmentation).__name__


def _shape_error(where: str, name: str, what: str, before: tuple, after: tuple,
                 example: str) -> ValueError:
    return ValueError(
        f"{where}: augmentation {name} changed the {what} shape from {before} to {after}. "
        "The model's input shape is fixed by the Config, so the augmentation must keep it "
        f"(crop and resize back, e.g. {example}, or let IMAGE_RESIZE_MODE='crop' do the "
        "cropping).")


_IMGAUG_KEEP_SIZE = "iaa.CropAndPad(percent=(-0.1, 0.1)), whose keep_size=True resizes back"
_ALBUMENTATIONS_KEEP_SIZE = "A.RandomSizedCrop with size=(height, width)"


def apply_augmentation(augmentation: Any, image: np.ndarray, mask: np.ndarray, where: str,
                       rng: np.random.RandomState | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Augment an image and its instance masks together (albumentations or imgaug).

    Args:
        augmentation: an albumentations transform or an imgaug augmenter.
        image: [H, W, C] image (uint8 normally).
        mask: bool [H, W, N] instance masks.
        where: the image, for error messages (``describe_image``).
        rng: random state of the batch. imgaug only: when given, each image's deterministic
            copy comes from ``augmentation.deepcopy()`` seeded with ``rng.randint(2**31 - 1)``
            (one draw), so runs with any number of workers are the same; when None, from
            ``augmentation.to_deterministic()`` as in Matterport (the augmenter's own random
            state; seed it, e.g. ``imgaug.seed(1)``, to reproduce). albumentations transforms
            use their own generator (``A.Compose(..., seed=...)``).

    Returns:
        (image, mask): same shapes and dtypes as given; masks are bool.

    Raises:
        TypeError: ``augmentation`` is neither (see ``check_augmentation``).
        ValueError: the augmentation changed the image or mask shape.
    """
    if is_imgaug(augmentation):
        return _imgaug(augmentation, image, mask, where, rng)
    if augmentation is None or not is_albumentations(augmentation):
        raise TypeError(f"{where}: augmentation must be {ACCEPTED}; got "
                        f"{_describe(augmentation)}")
    return _albumentations(augmentation, image, mask, where)


def _mask_hook(images: Any, augmenter: Any, parents: Any, default: bool) -> bool:
    """imgaug activator: only the augmenters in MASK_AUGMENTERS run on the masks."""
    return augmenter.__class__.__name__ in MASK_AUGMENTERS


def _imgaug(augmentation: Any, image: np.ndarray, mask: np.ndarray, where: str,
            rng: np.random.RandomState | None) -> tuple[np.ndarray, np.ndarray]:
    """Matterport's ``load_image_gt`` augmentation branch, with the seeding above."""
    import imgaug  # whoever built the augmenter has imported it (and made it importable)

    name = transform_name(augmentation)
    if rng is None:
        det = augmentation.to_deterministic()
    else:
        # A seeded copy: the shared augmenter's state is never touched, so worker threads
        # and processes give the same result as one thread.
        local = augmentation.deepcopy()
        local.seed_(int(rng.randint(2**31 - 1)))
        det = local.to_deterministic()
    new_image = det.augment_image(image)
    if new_image.shape != image.shape:
        raise _shape_error(where, name, "image", image.shape, new_image.shape,
                           _IMGAUG_KEEP_SIZE)
    if not mask.shape[-1]:  # no instance to move
        return new_image, mask
    # uint8 because imgaug does not take bool images (Matterport's conversion).
    new_mask = det.augment_image(mask.astype(np.uint8),
                                 hooks=imgaug.HooksImages(activator=_mask_hook))
    if new_mask.shape != mask.shape:
        raise _shape_error(where, name, "mask", mask.shape, new_mask.shape,
                           _IMGAUG_KEEP_SIZE)
    return new_image, new_mask.astype(bool)


def _albumentations(transform: Any, image: np.ndarray, mask: np.ndarray,
                    where: str) -> tuple[np.ndarray, np.ndarray]:
    """Run an albumentations transform on the image and its instance masks together.

    Masks go in as ``masks`` [N, H, W] (one array per instance), so each instance keeps its
    own channel, geometric transforms move them with the image and pixel-level transforms
    leave them alone.
    """
    name = transform_name(transform)
    count = mask.shape[-1]
    data = {"image": image}
    if count:
        # albumentations cannot stack an empty mask list, so zero instances pass no masks.
        data["masks"] = np.ascontiguousarray(np.moveaxis(mask, -1, 0).astype(np.uint8))
    result = transform(**data)
    if not isinstance(result, dict) or "image" not in result:
        raise TypeError(f"augmentation {name} must be an albumentations transform: called as "
                        f"transform(image=..., masks=...) it must return a dict with 'image', "
                        f"got {type(result).__name__}")
    new_image = np.asarray(result["image"])
    if new_image.shape != image.shape:
        raise _shape_error(where, name, "image", image.shape, new_image.shape,
                           _ALBUMENTATIONS_KEEP_SIZE)
    if new_image.dtype != image.dtype:
        if image.dtype == np.uint8:
            new_image = np.clip(np.rint(new_image), 0, 255)
        new_image = new_image.astype(image.dtype)
    if not count:
        return new_image, mask
    new_masks = np.asarray(result.get("masks"))
    if new_masks.shape != (count,) + image.shape[:2]:
        raise ValueError(f"{where}: augmentation {name} returned masks of shape "
                         f"{new_masks.shape}, expected {(count,) + image.shape[:2]}")
    return new_image, np.moveaxis(new_masks, 0, -1) > 0
