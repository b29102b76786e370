"""The 2018 Data Science Bowl (DSB2018) folder layout: one mask PNG per nucleus.

::

    <dataset>/<subset>/<image_id>/images/<image_id>.png
    <dataset>/<subset>/<image_id>/masks/*.png        one PNG per instance (training subsets)

Subsets: folders ("stage1_train", "stage1_test", ...), and "train" / "val": stage1_train
split into training and validation images (Matterport's 25 VAL_IMAGE_IDS when they are
there, otherwise a seeded 10 %). Image and mask files must stay inside the subset folder
(symlinks included; ``allow_outside=True`` accepts them). A mask PNG holds one instance:
0 and one other value (0/1, 0/255); anything else is an error naming the file.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from mrcnn.dataset import Dataset
from mrcnn.datasets import files
from mrcnn.errors import InputError, fail, one_line
from mrcnn.paths import inside

# The dataset has no standard train/val split; Matterport picked these stage1_train
# images (a variety of imaging types) as the validation set.
VAL_IMAGE_IDS = [
    "0c2550a23b8a0f29a7575de8c61690d3c31bc897dd5ba66caec201d201a278c2",
    "92f31f591929a30e4309ab75185c96ff4314ce0a7ead2ed2c2171897ad1da0c7",
    "1e488c42eb1a54a3e8412b1f12cde530f950f238d71078f2ede6a85a02168e1f",
    "c901794d1a421d52e5734500c0a2a8ca84651fb93b19cec2f411855e70cae339",
    "8e507d58f4c27cd2a82bee79fe27b069befd62a46fdaed20970a95a2ba819c7b",
    "60cb718759bff13f81c4055a7679e81326f78b6a193a2d856546097c949b20ff",
    "da5f98f2b8a64eee735a398de48ed42cd31bf17a6063db46a9e0783ac13cd844",
    "9ebcfaf2322932d464f15b5662cae4d669b2d785b8299556d73fffcae8365d32",
    "1b44d22643830cd4f23c9deadb0bd499fb392fb2cd9526d81547d93077d983df",
    "97126a9791f0c1176e4563ad679a301dac27c59011f579e808bbd6e9f4cd1034",
    "e81c758e1ca177b0942ecad62cf8d321ffc315376135bcbed3df932a6e5b40c0",
    "f29fd9c52e04403cd2c7d43b6fe2479292e53b2f61969d25256d2d2aca7c6a81",
    "0ea221716cf13710214dcd331a61cea48308c3940df1d28cfc7fd817c83714e1",
    "3ab9cab6212fabd723a2c5a1949c2ded19980398b56e6080978e796f45cbbc90",
    "ebc18868864ad075548cc1784f4f9a237bb98335f9645ee727dac8332a3e3716",
    "bb61fc17daf8bdd4e16fdcf50137a8d7762bec486ede9249d92e511fcb693676",
    "e1bcb583985325d0ef5f3ef52957d0371c96d4af767b13e48102bca9d5351a9b",
    "947c0d94c8213ac7aaa41c4efc95d854246550298259cf1bb489654d0e969050",
    "cbca32daaae36a872a11da4eaff65d1068ff3f154eedc9d3fc0c214a4e5d32bd",
    "f4c4db3df4ff0de90f44b027fc2e28c16bf7e5c75ea75b0a9762bbb7ac86e7a3",
    "4193474b2f1c72f735b13633b219d9cabdd43c21d9c2bb4dfc4809f104ba4c06",
    "f73e37957c74f554be132986f38b6f1d75339f636dfe2b681a0cf3f88d2733af",
    "a4c44fc5f5bf213e2be6091ccaed49d8bf039d78f6fbd9c4d7b7428cfcb2eda4",
    "cab4875269f44a701c5e58190a1d2f6fcb577ea79d842522dcab20ccb39b7ad2",
    "8ecdb93582b2d5270457b36651b62776256ade3aaa2d7432ae65c14f07432d49",
]

# Subsets whose images must come with masks.
TRAINING_SUBSETS = ("train", "val", "stage1_train")

# Without Matterport's validation images (another dataset in the same layout), this share
# of stage1_train, drawn with VAL_SEED, is the validation set.
DEFAULT_VAL_FRACTION = 0.1
VAL_SEED = 0



def read_mask_png(path: str) -> np.ndarray:
    """Read one instance mask PNG as bool [H, W]: the non-zero pixels are the instance.

    Gray, RGB, RGBA and 16-bit files are accepted. The alpha channel is ignored unless
    the color channels are empty (a mask drawn only in alpha). A mask holds 0 and ONE other
    value (0/1 and 0/255 masks are fine): a file with several non-zero values (background 1
    and nucleus 255, a label image of several instances) is refused rather than read as one
    instance covering everything.

    Raises:
        OSError: the file cannot be decoded (the message names it).
        InputError: the file has more than one non-zero value (naming it).
    """
    import skimage.io

    try:
        mask = np.asarray(skimage.io.imread(path))
    except Exception as err:  # decoders raise many types
        raise OSError(f"cannot read mask {path}: {one_line(err)}") from err
    if mask.ndim == 3:
        color = mask[..., :-1] if mask.shape[-1] in (2, 4) else mask
        mask = color if color.any() or mask.shape[-1] not in (2, 4) else mask[..., -1:]
        mask = mask.max(axis=-1)
    if mask.ndim != 2:
        raise OSError(f"cannot read mask {path}: unexpected array shape {mask.shape}")
    foreground = mask[mask != 0]
    if foreground.size and foreground.min() != foreground.max():
        fail(f"mask {path} has several non-zero values ({foreground.min()} .. "
             f"{foreground.max()}); a mask PNG holds one instance: 0 for the background and "
             "one value (1 or 255) for the instance")
    return mask != 0


def mask_files(image_dir: str, root: str | None = None, allow_outside: bool = False) -> list[str]:
    """Sorted paths of ``<image_dir>/masks/*.png``.

    Args:
        image_dir: the image's folder.
        root: the folder every mask must stay in (symlinks followed; default ``image_dir``).
        allow_outside: accept masks that leave ``root``.

    Raises:
        UnsafePathError: a mask (a symlink) leads outside ``root``.
    """
    mask_dir = os.path.join(image_dir, "masks")
    if not os.path.isdir(mask_dir):
        return []
    root = root or image_dir
    return [inside(root, os.path.relpath(os.path.join(mask_dir, f), root), what="mask file",
                   source=mask_dir, allow_outside=allow_outside)
            for f in sorted(os.listdir(mask_dir)) if f.lower().endswith(".png")]


def verify_image_and_masks(image_path: str, mask_paths: Sequence[str]) -> None:
    """Decode-check an image and its mask PNGs: masks of one instance each (``read_mask_png``)
    and of the image's size.

    Raises:
        InputError: naming the first bad file.
    """
    size = files.verify_image(image_path)
    for path in mask_paths:
        try:
            mask_size = read_mask_png(path).shape
        except OSError as err:
            fail(str(err))
        if mask_size != size:
            fail(f"mask {path} is {mask_size[0]}x{mask_size[1]} pixels but its image "
                 f"{image_path} is {size[0]}x{size[1]}")


def read_val_ids(path: str) -> list[str]:
    """Image ids from a text file, one per line (blank lines and # comments ignored)."""
    files.require_file(path, "validation id file")
    with open(path, encoding="utf-8") as f:
        ids = [line.split("#", 1)[0].strip() for line in f]
    ids = [i for i in ids if i]
    if not ids:
        fail(f"validation id file {path} lists no image ids")
    return ids


def split_val_ids(all_ids: Sequence[str], val_ids: Sequence[str] | None = None,
                  val_fraction: float = DEFAULT_VAL_FRACTION,
                  seed: int = VAL_SEED) -> list[str]:
    """The validation images among the stage1_train ids.

    Args:
        all_ids: the image ids of stage1_train.
        val_ids: explicit validation ids (all must exist), or None.
        val_fraction: share of the images used when neither ``val_ids`` nor Matterport's
            VAL_IMAGE_IDS are there; at least one image, and one image is left for training.
        seed: seed of that draw.

    Returns:
        The validation ids.
    """
    available = set(all_ids)
    if val_ids is not None:
        missing = [i for i in val_ids if i not in available]
        if missing:
            fail(f"{len(missing)} validation id(s) are not image folders of stage1_train, "
                 f"e.g. {missing[0]!r}")
        return list(dict.fromkeys(val_ids))
    present = [i for i in VAL_IMAGE_IDS if i in available]
    if present:
        return present
    if not 0 < val_fraction < 1:
        fail(f"--val-fraction must be in (0, 1), got {val_fraction}")
    ordered = sorted(all_ids)
    count = int(round(val_fraction * len(ordered)))
    count = max(1, min(count, len(ordered) - 1))
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(ordered), size=count, replace=False)
    return [ordered[i] for i in sorted(picked)]


class NucleusDataset(Dataset):
    """DSB2018 nuclei: one class, one mask PNG per instance."""

    def load_nucleus(self, dataset_dir: str, subset: str, val_ids: Sequence[str] | None = None,
                     val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = VAL_SEED,
                     require_masks: bool | None = None, verify: bool = False,
                     allow_outside: bool = False) -> None:
        """Register the images of a subset.

        Args:
            dataset_dir: root folder of the dataset.
            subset: a folder name ("stage1_train", "stage1_test", "stage2_test", ...), or
                "train" (stage1_train minus the validation images) or "val".
            val_ids, val_fraction, seed: the validation split, see ``split_val_ids``.
            require_masks: every image must have at least one mask PNG; default: for
                "train", "val" and "stage1_train".
            verify: decode-check every image and mask file now, and that the masks have
                the image's size (names the bad file at once, not hours into training).
            allow_outside: accept image and mask files (symlinks) that lead outside the
                subset folder.

        Raises:
            InputError: missing folders or files, an image without masks, a corrupt image.
        """
        self.add_class("nucleus", 1, "nucleus")
        files.require_dir(dataset_dir, "dataset folder")
        folder = "stage1_train" if subset in ("train", "val") else subset
        subset_dir = os.path.join(dataset_dir, folder)
        if not os.path.isdir(subset_dir):
            fail(f"subset folder not found: {subset_dir} (subset {subset!r})")
        all_ids = sorted(d for d in os.listdir(subset_dir)
                         if os.path.isdir(os.path.join(subset_dir, d)))
        if subset in ("train", "val"):
            val = set(split_val_ids(all_ids, val_ids, val_fraction, seed)) if all_ids else set()
            image_ids = [i for i in all_ids if (i in val) == (subset == "val")]
        else:
            image_ids = all_ids
        if not image_ids:
            fail(f"no image folders for subset {subset!r} in {subset_dir}")
        if require_masks is None:
            require_masks = subset in TRAINING_SUBSETS
        for image_id in image_ids:
            image_dir = os.path.join(subset_dir, image_id)
            path = inside(subset_dir, os.path.join(image_id, "images", f"{image_id}.png"),
                          what=f"image {image_id}", source=subset_dir,
                          allow_outside=allow_outside)
            if not os.path.isfile(path):
                fail(f"image file not found: {path} (expected "
                     "<subset>/<image_id>/images/<image_id>.png)")
            masks = mask_files(image_dir, subset_dir, allow_outside)
            if require_masks and not masks:
                fail(f"image {image_id} has no masks: no .png file in "
                     f"{os.path.join(image_dir, 'masks')} (subset {subset!r} is used for "
                     "training or evaluation and needs one mask PNG per nucleus)")
            if verify:
                verify_image_and_masks(path, masks)
            self.add_image("nucleus", image_id=image_id, path=path, mask_paths=masks)

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Instance masks from the image's mask PNGs.

        Returns:
            masks: bool [H, W, N], one channel per mask file (empty files are dropped).
            class_ids: int32 [N] of ones.
        """
        info = self.image_info[image_id]
        if info["source"] != "nucleus":
            return super().load_mask(image_id)
        masks = [read_mask_png(p) for p in info["mask_paths"]]
        shapes = {m.shape for m in masks}
        if len(shapes) > 1:
            raise ValueError(f"masks of image {info['id']} have different sizes {sorted(shapes)}")
        # An image without masks: [0, 0, 0] as the base class (the size is not read here).
        return files.stack_instance_masks(masks, *(shapes.pop() if shapes else (0, 0)))

    def image_reference(self, image_id: int) -> str:
        """The image id (the folder name)."""
        info = self.image_info[image_id]
        if info["source"] == "nucleus":
            return info["id"]
        return super().image_reference(image_id)
