"""Training augmentation: whole batches on the device (:class:`BatchAugment`, 2D images) and MONAI
per-sample pipelines (:func:`build_train_transforms`, volume patches).

Batch augmentation, one call per step:

Per-sample transforms cost a Python round trip and a grid resample per image; on a 2-core machine that
is 10-20 % of a 2D training step. Here one ``affine_grid`` + ``grid_sample`` moves a whole batch, flips
and intensity changes are tensor ops, and every random draw comes from ``torch.Generator`` s seeded by
the caller. Training gives one generator per sample, seeded by ``(train.seed, epoch, sample index)``, so a
sample is augmented the same way whatever batch, data-loader worker or training process it lands in, and a
resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.transforms import (
    Compose,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from medseg.config.schema import AugmentConfig


class BatchAugment:
    """Random flips, 90-degree turns, rotation + zoom, contrast, brightness and noise for a batch.

    Args:
        cfg: The ``data.augment`` section (probabilities and ranges).
        spatial_dims: 2 or 3.

    Call with ``image`` (B, C, *spatial) float, ``label`` (B, 1, *spatial) integer and a generator, or a
    sequence of B generators (sample ``i`` then draws only from the ``i``-th, so its augmentation does not
    depend on the rest of the batch); returns both augmented (label values are never interpolated:
    nearest-neighbour resampling).

    Example:
        >>> aug = BatchAugment(AugmentConfig(probability=1.0), spatial_dims=2)
        >>> img, lab = aug(torch.rand(2, 3, 8, 8), torch.zeros(2, 1, 8, 8, dtype=torch.long),
        ...                torch.Generator().manual_seed(0))
        >>> tuple(img.shape), lab.dtype
        ((2, 3, 8, 8), torch.int64)
    """

    def __init__(self, cfg: AugmentConfig, *, spatial_dims: int) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.cfg = cfg
        self.dims = spatial_dims

    def __repr__(self) -> str:
        return f"BatchAugment({self.cfg!r}, spatial_dims={self.dims})"

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, b = self.cfg, image.shape[0]
        single = generator if isinstance(generator, torch.Generator) else None
        gens = [] if isinstance(generator, torch.Generator) else list(generator)
        if single is None and len(gens) != b:
            raise ValueError(f"got {len(gens)} generators for a batch of {b}")

        def draw(*shape: int) -> torch.Tensor:
            if single is None:  # shape[0] is the batch: each sample's values from its own generator
                return torch.stack([torch.rand(shape[1:], generator=g) for g in gens]).to(image.device)
            return torch.rand(shape, generator=single).to(image.device)

        if cfg.flip:
            for axis in range(self.dims):
                flip = (draw(b) < 0.5).view(b, *([1] * (image.ndim - 1)))
                image = torch.where(flip, image.flip(2 + axis), image)
                label = torch.where(flip, label.flip(2 + axis), label)
        theta = self._affine(b, draw)
        if theta is not None:
            grid = F.affine_grid(theta.to(image), list(image.shape), align_corners=False)
            image = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            label = F.grid_sample(label.float(), grid, mode="nearest", padding_mode="zeros",
                                  align_corners=False).round().to(label.dtype)
        image = self._intensity(image, b, draw, generator)
        return image, label

    def _affine(self, b: int, draw: Callable[..., torch.Tensor]) -> torch.Tensor | None:
        cfg = self.cfg
        turn = cfg.rotate90 and self.dims == 2
        if not (turn or cfg.rotate_degrees > 0 or cfg.scale > 0):
            return None
        apply = (draw(b) < cfg.probability).float()
        angle = (draw(b) * 2 - 1) * math.radians(cfg.rotate_degrees) * apply
        zoom = 1 + (draw(b) * 2 - 1) * cfg.scale * apply
        if turn:
            quarter = torch.floor(draw(b) * 4) * (draw(b) < cfg.probability).float()
            angle = angle + quarter * (math.pi / 2)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        if self.dims == 2:
            zero = torch.zeros_like(cos)
            return torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        # 3D: rotate in the plane of the first two axes (in-plane, as slices usually are), zoom all axes
        theta = torch.zeros(b, 3, 4, device=cos.device)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        theta[:, 2, 2] = 1 / zoom
        return theta

    def _intensity(self, image: torch.Tensor, b: int, draw: Callable[..., torch.Tensor],
                   generator: torch.Generator | Sequence[torch.Generator]) -> torch.Tensor:
        cfg = self.cfg
        shape = (b, *([1] * (image.ndim - 1)))
        if cfg.contrast > 0:
            apply = (draw(b) < cfg.probability).float()
            factor = 1 + (draw(b) * 2 - 1) * cfg.contrast * apply
            image = image * factor.view(shape)
        if cfg.brightness > 0:
            apply = (draw(b) < cfg.probability).float()
            image = image + ((draw(b) * 2 - 1) * cfg.brightness * apply).view(shape)
        if cfg.noise_std > 0:
            apply = (draw(b) < cfg.probability).float().view(shape)
            if isinstance(generator, torch.Generator):
                noise = torch.randn(tuple(image.shape), generator=generator).to(image)
            else:
                noise = torch.stack([torch.randn(tuple(image.shape[1:]), generator=g) for g in generator]).to(image)
            image = image + noise * cfg.noise_std * apply
        return image


KEYS = ("image", "label")


def build_train_transforms(cfg: AugmentConfig, *, spatial_dims: int) -> Compose:
    """Random augmentation applied to ``{"image": (C, *spatial) float, "label": (1, *spatial)}`` samples.

    Spatial ops move image and label together (label with nearest-neighbour); intensity ops touch the
    image only. Returns a plain ``monai.transforms.Compose`` (``print`` shows it).
    """
    p = cfg.probability
    ops: list[Callable[..., Any]] = []
    if cfg.flip:
        ops += [RandFlipd(KEYS, prob=0.5, spatial_axis=axis) for axis in range(spatial_dims)]
    if cfg.rotate90:
        ops.append(RandRotate90d(KEYS, prob=p, max_k=3, spatial_axes=(0, 1)))
    if cfg.rotate_degrees > 0 or cfg.scale > 0:
        angle = math.radians(cfg.rotate_degrees)
        rotate = angle if spatial_dims == 2 else (angle, angle, angle)
        ops.append(
            RandAffined(
                KEYS,
                prob=p,
                rotate_range=rotate,
                scale_range=cfg.scale,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            )
        )
    if cfg.contrast > 0:
        ops.append(RandScaleIntensityd("image", factors=cfg.contrast, prob=p))
    if cfg.brightness > 0:
        ops.append(RandShiftIntensityd("image", offsets=cfg.brightness, prob=p))
    if cfg.noise_std > 0:
        ops.append(RandGaussianNoised("image", prob=p, std=cfg.noise_std))
    return Compose(ops)
