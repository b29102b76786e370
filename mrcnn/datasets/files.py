"""What the annotation-file loaders share: reading json, the coordinate limit."""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from mrcnn.errors import InputError, fail, one_line

# Coordinates beyond this many pixels are refused: no image is that large, and rasterizing
# them would take the time and memory of one that is.
COORDINATE_LIMIT = 1e6


def read_json(path: str, what: str = "annotation file") -> Any:
    """Parse a json file; ``InputError`` naming it when it is missing or malformed."""
    require_file(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: malformed JSON ({err})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the {what} ({err})") from None


def require_dir(path: str | None, what: str, hint: str = "") -> str:
    """Return ``path`` if it is a folder; otherwise fail naming it."""
    if not path:
        fail(f"{what} not given{hint and ' (' + hint + ')'}")
    if not os.path.isdir(path):
        fail(f"{what} not found: {path}{hint and ' (' + hint + ')'}")
    return path


def require_file(path: str | None, what: str) -> str:
    """Return ``path`` if it is a file; otherwise fail naming it."""
    if not path:
        fail(f"{what} not given")
    if not os.path.isfile(path):
        fail(f"{what} not found: {path}")
    return path


def verify_image(path: str) -> tuple[int, int]:
    """Check that an image file can be decoded (header and chunk checksums, via Pillow).

    Cheap enough to run over a whole dataset before training starts, so that a corrupt
    file is reported by name at once rather than hours later.

    Returns:
        (height, width) from the header.

    Raises:
        InputError: naming the file.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            image.verify()
    except FileNotFoundError:
        fail(f"image file not found: {path}")
    except Exception as err:  # Pillow raises many types for broken files
        fail(f"cannot read image {path}: {one_line(err) or type(err).__name__}")
    return int(height), int(width)


def stack_instance_masks(masks: Sequence[np.ndarray], height: int,
                         width: int) -> tuple[np.ndarray, np.ndarray]:
    """``load_mask``'s output for one-class datasets: empty masks dropped, class id 1.

    Args:
        masks: bool [height, width] masks, one per instance.
        height, width: the image size (for the empty result).

    Returns:
        masks: bool [height, width, N]; class_ids: int32 [N] of ones.
    """
    masks = [np.asarray(m, dtype=bool) for m in masks]
    masks = [m for m in masks if m.any()]
    if not masks:
        return np.zeros([height, width, 0], dtype=bool), np.zeros([0], dtype=np.int32)
    return np.stack(masks, axis=-1), np.ones([len(masks)], dtype=np.int32)
