"""Deterministic synthetic datasets for demos and tests (no download, no real patient data).

- :func:`make_polyp_dataset`: 2D endoscopy-like RGB images with polyp masks (Kvasir-SEG layout).
- :mod:`medseg.data.synthetic.spine`: 3D CT phantoms in HU with vertebra labels (uses the helpers here).

The same arguments always give byte-identical files. Case ``i`` uses its own random stream
derived from ``(seed, i)``, so the first cases do not change when ``n`` grows.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from scipy import ndimage

from medseg.data.synthetic.common import case_rng, dataset_folder, write_readme

__all__ = ["make_polyp_dataset"]

# --------------------------------------------------------------------------- polyps (2D)


def _smooth(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return (field - field.mean()) / (field.std() + 1e-8)


def _blob(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One polyp: (inside mask, dome profile in [0, 1]) of an ellipse with a wavy boundary."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    cy, cx = rng.uniform(0.28, 0.72) * height, rng.uniform(0.28, 0.72) * width
    a, b = rng.uniform(0.10, 0.22, size=2) * min(height, width)
    angle = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    rho = np.hypot(u / a, v / b)
    phi = np.arctan2(v / b, u / a)
    edge = np.ones_like(phi)
    for k in range(2, 6):
        edge += rng.uniform(0.0, 0.07) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    inside = rho <= edge
    dome = np.clip(1.0 - (rho / edge) ** 2, 0.0, 1.0)
    return inside, dome


def _polyp_case(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image (H, W, 3) uint8, mask (H, W) uint8 0/255)``."""
    base = np.array([195.0, 88.0, 78.0]) + rng.uniform(-15, 15, size=3)
    shade = 1.0 + 0.10 * _smooth(rng, (height, width), min(height, width) / 6)
    shade += 0.04 * _smooth(rng, (height, width), 2.5)
    image = base * shade[..., None] + rng.normal(0, 3, (height, width, 1))

    mask = np.zeros((height, width), dtype=bool)
    tint = np.array([1.10, 0.80, 0.78]) * rng.uniform(0.95, 1.05, size=3)
    for _ in range(int(rng.integers(1, 3))):
        inside, dome = _blob(rng, height, width)
        mask |= inside
        soft = ndimage.gaussian_filter(inside.astype(np.float64), 0.8)
        shadow = np.clip(ndimage.gaussian_filter(inside.astype(np.float64), 3.0) - soft, 0, 1)
        texture = 1.0 + 0.06 * _smooth(rng, (height, width), 1.2)
        polyp = base * tint * ((0.80 + 0.35 * np.sqrt(dome)) * texture)[..., None]
        image = image * (1 - soft[..., None]) + polyp * soft[..., None]
        image *= 1.0 - 0.35 * shadow[..., None]

    yy, xx = np.mgrid[0:height, 0:width]
    r2 = ((yy - (height - 1) / 2) / (height / 2)) ** 2 + ((xx - (width - 1) / 2) / (width / 2)) ** 2
    image *= (1.0 - 0.28 * r2)[..., None]
    for _ in range(int(rng.integers(2, 6))):
        spot = np.exp(
            -((yy - rng.uniform(0, height)) ** 2 + (xx - rng.uniform(0, width)) ** 2)
            / (2 * rng.uniform(0.8, 2.2) ** 2)
        )
        image = image * (1 - spot[..., None]) + 250.0 * spot[..., None]
    image_u8 = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image_u8, mask.astype(np.uint8) * 255


def _jpeg_roundtrip(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        decoded.load()
        return decoded.copy()


def make_polyp_dataset(
    root: Path,
    *,
    n: int = 24,
    size: tuple[int, int] = (128, 160),
    seed: int = 0,
    mask_format: Literal["png", "jpg"] = "png",
    jpeg_noise: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic polyp segmentation dataset in the Kvasir-SEG layout.

    Files: ``root/images/case_000.png`` (RGB: pinkish-red mucosa with smooth texture,
    vignetting and specular highlights; 1-2 polyps, i.e. irregular ellipses with a redder
    dome-shaded surface and a soft shadow), ``root/masks/case_000.png`` (uint8 gray, exactly
    0 and 255) and ``root/README.txt`` marking the data as synthetic.

    Args:
        root: Output folder (created).
        n: Number of cases.
        size: Image size ``(H, W)`` in pixels, each at least 32.
        seed: Random seed; the same arguments give byte-identical files.
        mask_format: ``"png"`` (exact 0/255) or ``"jpg"``: masks saved as RGB JPEG (quality 95),
            with noisy values near 0 and 255 like Kvasir-SEG's masks.
        jpeg_noise: Pass images through JPEG compression (quality 80) before saving them as
            PNG, to add compression artifacts.
        overwrite: Write into a ``root`` that is not empty, replacing everything in it (once the new files are
            complete).

    Returns:
        ``root``.

    Raises:
        ValueError: If ``n``, ``size`` or ``mask_format`` is invalid.
        ConfigError: ``root`` is a file.
        OutputExistsError: ``root`` is a folder that is not empty and not ``overwrite`` (nothing is written).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if len(size) != 2 or min(size) < 32:
        raise ValueError(f"size must be (H, W) with both >= 32, got {size}")
    if mask_format not in ("png", "jpg"):
        raise ValueError(f"mask_format must be 'png' or 'jpg', got {mask_format!r}")
    root = Path(root)
    height, width = int(size[0]), int(size[1])
    with dataset_folder(root, overwrite) as build:
        (build / "images").mkdir()
        (build / "masks").mkdir()
        for index in range(n):
            image, mask = _polyp_case(case_rng(seed, index), height, width)
            picture = Image.fromarray(image)
            if jpeg_noise:
                picture = _jpeg_roundtrip(picture, quality=80)
            picture.save(build / "images" / f"case_{index:03d}.png", format="PNG")
            if mask_format == "png":
                Image.fromarray(mask).save(build / "masks" / f"case_{index:03d}.png", format="PNG")
            else:
                Image.fromarray(mask).convert("RGB").save(
                    build / "masks" / f"case_{index:03d}.jpg", format="JPEG", quality=95
                )
        write_readme(
            build,
            [
                "Synthetic endoscopy-like polyp images (images/) and binary masks (masks/, 0/255).",
                (
                    f"Parameters: n={n}, size=(H={height}, W={width}), seed={seed}, "
                    f"mask_format={mask_format}, jpeg_noise={jpeg_noise}"
                ),
            ],
        )
    return root


# --------------------------------------------------------------------------- spine CT (3D)
