"""What the annotation-file loaders share: reading json, the coordinate limit."""

from __future__ import annotations

import json
from typing import Any

from mrcnn import cli
from mrcnn.errors import InputError

# Coordinates beyond this many pixels are refused: no image is that large, and rasterizing
# them would take the time and memory of one that is.
COORDINATE_LIMIT = 1e6


def read_json(path: str, what: str = "annotation file") -> Any:
    """Parse a json file; ``InputError`` naming it when it is missing or malformed."""
    cli.require_file(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: malformed JSON ({err})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the {what} ({err})") from None
