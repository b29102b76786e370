"""Synthetic fluorescence nuclei in the DSB2018 folder layout, for tests and benchmarks.

No download is possible here, and the nucleus sample must still be measured on data that
looks like its real target: dense fields of touching and overlapping nuclei of varied size,
shape and brightness, on an uneven background, blurred by the optics and grainy from
photon shot noise. ``write_dataset`` writes such images in the layout ``nucleus.py``
reads unchanged::

    <root>/stage1_train/<image_id>/images/<image_id>.png
    <root>/stage1_train/<image_id>/masks/<k>.png       one binary PNG per nucleus
    <root>/stage1_test/<image_id>/images/<image_id>.png

How an image is made (one seeded ``np.random.Generator`` per image, so a seed always
gives the same dataset):

1. Nucleus centers: a few clusters (cells cluster in culture) plus uniformly scattered
   ones; sizes log-normal, ellipses with random axis ratio and angle, so neighbours touch.
2. Nuclei are drawn in z-order onto a label map with OpenCV: a later nucleus covers an
   earlier one where they overlap, as in a 2-D projection, so instance masks are disjoint
   (DSB's convention). A nucleus left with less than ``min_visible`` of its area is dropped.
3. Intensity: each nucleus its own brightness and a radial falloff, plus chromatin texture
   (smoothed noise); background: a low-frequency illumination gradient.
4. Gaussian blur (the point-spread function), then Poisson shot noise at ``photons`` per
   unit intensity and a little read noise; 8-bit gray stored as RGB like most DSB images.

``HARD`` (``--style hard``) is a harder field: denser and tighter clusters, more of each
nucleus hidden, a wider range of sizes, dim nuclei on a brighter background, more blur and
shot noise. The default style is unchanged, so earlier tables stay comparable.

This module imports only NumPy and OpenCV (not mrcnn): it is data, not model code.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np


@dataclass(frozen=True)
class NucleiStyle:
    """What the synthetic microscope sees. Defaults: a dense DSB-like field at 256 px.

    Attributes:
        count: (min, max) nuclei drawn per image (before occlusion removes some).
        radius: median nucleus radius in pixels and the log-normal spread of radii.
        aspect: (min, max) ratio of the short to the long axis.
        clusters: (min, max) number of clusters; ``cluster_share`` of nuclei sit in them.
        cluster_share: fraction of nuclei placed in clusters (the rest uniform).
        cluster_spread: cluster standard deviation in units of the median radius.
        min_visible: drop a nucleus when less than this share of it stays visible.
        brightness: (min, max) nucleus intensity (0..1 scale before noise).
        background: (min, max) mean background intensity.
        blur_sigma: Gaussian PSF sigma in pixels.
        photons: expected photon count per unit intensity (lower = noisier).
        read_noise: Gaussian read noise (0..1 scale).
    """

    count: tuple[int, int] = (150, 300)
    radius: tuple[float, float] = (6.0, 0.3)
    aspect: tuple[float, float] = (0.55, 1.0)
    clusters: tuple[int, int] = (3, 8)
    cluster_share: float = 0.6
    cluster_spread: float = 6.0
    min_visible: float = 0.35
    brightness: tuple[float, float] = (0.35, 0.95)
    background: tuple[float, float] = (0.02, 0.12)
    blur_sigma: float = 1.0
    photons: float = 60.0
    read_noise: float = 0.01


# Harder fields, closer to what real fluorescence images punish: more and tighter clusters
# (more touching and overlapping nuclei, more of each one hidden), a wider range of sizes and
# shapes, dim nuclei beside bright ones on a brighter, uneven background, more blur (a
# defocused plane) and fewer photons (more shot noise). The default style stays as it is, so
# earlier benchmark tables remain comparable.
HARD = NucleiStyle(count=(200, 380), radius=(6.0, 0.5), aspect=(0.4, 1.0), clusters=(4, 10),
                   cluster_share=0.75, cluster_spread=3.5, min_visible=0.2,
                   brightness=(0.12, 0.95), background=(0.04, 0.22), blur_sigma=1.6,
                   photons=25.0, read_noise=0.02)

# Styles by name, for the command lines of this module and of the benchmarks.
STYLES = {"default": NucleiStyle(), "hard": HARD}

def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std noise smoothed at scale ``sigma`` (float32)."""
    noise = rng.standard_normal(shape).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma)
    return noise / max(float(noise.std()), 1e-6)


def _centers(rng: np.random.Generator, count: int, height: int, width: int,
             style: NucleiStyle) -> np.ndarray:
    """[count, 2] (y, x) centers: clustered and uniform ones, inside the image."""
    in_clusters = int(round(count * style.cluster_share))
    k = int(rng.integers(style.clusters[0], style.clusters[1] + 1))
    seeds = rng.uniform([0, 0], [height, width], size=(k, 2))
    spread = style.cluster_spread * style.radius[0]
    clustered = seeds[rng.integers(0, k, in_clusters)] + rng.normal(0, spread, (in_clusters, 2))
    uniform = rng.uniform([0, 0], [height, width], size=(count - in_clusters, 2))
    centers = np.concatenate([clustered, uniform])
    return np.clip(centers, 0, [height - 1, width - 1])


def make_image(rng: np.random.Generator, height: int, width: int,
               style: NucleiStyle = NucleiStyle()) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic field of nuclei.

    Args:
        rng: the image's random generator.
        height, width: image size in pixels.
        style: the microscope and specimen (``NucleiStyle``).

    Returns:
        image: uint8 [H, W, 3] (gray replicated to RGB).
        masks: bool [H, W, N] disjoint instance masks of the visible nuclei (N >= 0).
    """
    count = int(rng.integers(style.count[0], style.count[1] + 1))
    centers = _centers(rng, count, height, width, style)
    long_axis = style.radius[0] * np.exp(rng.normal(0, style.radius[1], count))
    short_axis = long_axis * rng.uniform(style.aspect[0], style.aspect[1], count)
    angles = rng.uniform(0, 180, count)

    # z-order drawing: label k+1 for nucleus k, later ones on top.
    labels = np.zeros((height, width), np.int32)
    for k in range(count):  # one cv2 call per nucleus: a few hundred per image
        box = ((float(centers[k, 1]), float(centers[k, 0])),
               (float(2 * long_axis[k]), float(2 * short_axis[k])), float(angles[k]))
        cv2.ellipse(labels, box, color=k + 1, thickness=-1)
    # Full (unoccluded) area of each ellipse, analytically; visible area from the map.
    full_area = np.pi * long_axis * short_axis
    visible = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    keep = (visible >= style.min_visible * full_area) & (visible >= 4)
    # Relabel kept nuclei 1..N (dropped ones become background).
    remap = np.zeros(count + 1, np.int32)
    remap[1:][keep] = np.arange(1, int(keep.sum()) + 1)
    labels = remap[labels]
    n = int(keep.sum())

    # Intensity: per-nucleus brightness with a radial falloff, chromatin texture.
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    kept = np.flatnonzero(keep)
    lum = np.zeros(n + 1, np.float32)
    lum[1:] = rng.uniform(style.brightness[0], style.brightness[1], n)
    cy = np.zeros(n + 1, np.float32)
    cx = np.zeros(n + 1, np.float32)
    rad = np.ones(n + 1, np.float32)
    cy[1:], cx[1:], rad[1:] = centers[kept, 0], centers[kept, 1], long_axis[kept]
    dist2 = ((yy - cy[labels]) ** 2 + (xx - cx[labels]) ** 2) / rad[labels] ** 2
    falloff = np.where(labels > 0, 1.0 - 0.35 * np.clip(dist2, 0, 1), 0.0)
    texture = 1.0 + 0.15 * _smooth_noise(rng, (height, width), 1.2)
    nuclei = lum[labels] * falloff * texture

    # Uneven illumination: a smooth gradient over the field.
    base = rng.uniform(style.background[0], style.background[1])
    illumination = base * (1.0 + 0.5 * _smooth_noise(rng, (height, width),
                                                     max(height, width) / 4))
    signal = np.clip(nuclei + np.clip(illumination, 0, None), 0, None)
    signal = cv2.GaussianBlur(signal.astype(np.float32), (0, 0), style.blur_sigma)

    # Shot noise (Poisson in photons) and read noise, then 8 bits.
    photons = rng.poisson(signal * style.photons).astype(np.float32) / style.photons
    photons += rng.normal(0, style.read_noise, photons.shape).astype(np.float32)
    gray = np.clip(photons * 255.0, 0, 255).astype(np.uint8)
    image = np.repeat(gray[..., None], 3, axis=2)

    masks = labels[..., None] == np.arange(1, n + 1, dtype=np.int32)
    return image, masks


def write_dataset(root: str, train_images: int = 8, test_images: int = 2,
                  size: tuple[int, int] = (256, 256), seed: int = 0,
                  style: NucleiStyle = NucleiStyle()) -> dict[str, Any]:
    """Write a DSB2018-layout dataset of synthetic nuclei under ``root``.

    Args:
        root: dataset folder (created; existing image folders are never overwritten: a
            folder that exists is an error).
        train_images: images in ``stage1_train`` (with masks).
        test_images: images in ``stage1_test`` (masks written too, in ``masks/``, so the
            held-out images can be scored; the nucleus sample's detect ignores them).
        size: (height, width).
        seed: dataset seed; image k uses ``default_rng([seed, subset, k])``.
        style: the look of the images.

    Returns:
        {"root", "train_ids", "test_ids", "instances": {image_id: N}}.
    """
    out: dict[str, Any] = {"root": root, "train_ids": [], "test_ids": [], "instances": {}}
    for subset_index, (subset, count) in enumerate((("stage1_train", train_images),
                                                     ("stage1_test", test_images))):
        for k in range(count):
            rng = np.random.default_rng([seed, subset_index, k])
            image, masks = make_image(rng, size[0], size[1], style)
            image_id = f"synth{subset_index}{k:04d}s{seed}"
            image_dir = os.path.join(root, subset, image_id)
            os.makedirs(os.path.join(image_dir, "images"), exist_ok=False)
            os.makedirs(os.path.join(image_dir, "masks"))
            # OpenCV writes BGR; the image is gray, so channel order does not matter.
            cv2.imwrite(os.path.join(image_dir, "images", f"{image_id}.png"), image)
            for j in range(masks.shape[-1]):
                cv2.imwrite(os.path.join(image_dir, "masks", f"{j:04d}.png"),
                            masks[..., j].astype(np.uint8) * 255)
            out["train_ids" if subset_index == 0 else "test_ids"].append(image_id)
            out["instances"][image_id] = int(masks.shape[-1])
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python samples/nucleus/synthetic.py ROOT [--train N --test N --size H W --seed S]``."""
    parser = argparse.ArgumentParser(
        description="Write synthetic fluorescence nuclei in the DSB2018 layout.")
    parser.add_argument("root", help="dataset folder to create")
    parser.add_argument("--train", type=int, default=40, help="stage1_train images")
    parser.add_argument("--test", type=int, default=10, help="stage1_test images")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--style", choices=sorted(STYLES), default="default",
                        help="'hard': denser, more overlap, wider sizes, dimmer, noisier")
    args = parser.parse_args(argv)
    out = write_dataset(args.root, args.train, args.test, tuple(args.size), args.seed,
                        STYLES[args.style])
    total = sum(out["instances"].values())
    print(f"Wrote {len(out['train_ids'])} training and {len(out['test_ids'])} test images "
          f"({total} nuclei, {total / max(len(out['instances']), 1):.0f} per image) to "
          f"{args.root}")
    return out


if __name__ == "__main__":
    main()
