"""Data the ``mrcnn`` command tests write: a multi-class VIA dataset with exact masks."""

from __future__ import annotations

import json
import os
from typing import Any

import cv2
import numpy as np

from tests.sample_data import paint

VIA_CLASSES = ("cat", "dog")


def write_via_multiclass(folder: str, count: int = 4, size: tuple[int, int] = (64, 64),
                         class_key: str = "type", seed: int = 0) -> dict[str, Any]:
    """``<folder>/via.json`` + PNG images; rectangles of two classes named by
    ``region_attributes[class_key]`` (VIA 2 list regions; the first image's as a VIA 1 dict).

    Returns:
        {"json", "folder", "images": {filename: (bool [H, W, N] masks, [class names])}}.
    """
    rng = np.random.default_rng(seed)
    height, width = size
    os.makedirs(folder, exist_ok=True)
    data, images = {}, {}
    for k in range(count):
        filename = f"img{k}.png"
        regions, masks, names = [], [], []
        for j in range(2):
            name = VIA_CLASSES[(k + j) % 2]
            x, y = int(rng.integers(2, 30)), int(rng.integers(2, 30))
            w, h = int(rng.integers(8, 30)), int(rng.integers(8, 30))
            m = np.zeros(size, bool)
            m[y:y + h, x:x + w] = True
            regions.append({"shape_attributes": {"name": "rect", "x": x, "y": y,
                                                 "width": w, "height": h},
                            "region_attributes": {class_key: name}})
            masks.append(m)
            names.append(name)
        image = paint(rng, height, width, masks)
        cv2.imwrite(os.path.join(folder, filename), image[..., ::-1])
        data[filename] = {"filename": filename, "size": 0, "file_attributes": {},
                          "regions": {str(i): r for i, r in enumerate(regions)} if k == 0
                          else regions}
        images[filename] = (np.stack(masks, axis=-1), names)
    path = os.path.join(folder, "via.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return {"json": path, "folder": folder, "images": images}
