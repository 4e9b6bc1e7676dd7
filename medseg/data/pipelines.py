"""MONAI transform pipelines built from the ``data`` section (training augmentation)."""

from __future__ import annotations

import math

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

KEYS = ("image", "label")


def build_train_transforms(cfg: AugmentConfig, *, spatial_dims: int) -> Compose:
    """Random augmentation applied to ``{"image": (C, *spatial) float, "label": (1, *spatial)}`` samples.

    Spatial ops move image and label together (label with nearest-neighbour); intensity ops touch the
    image only. Returns a plain ``monai.transforms.Compose`` (``print`` shows it).
    """
    p = cfg.probability
    ops: list[object] = []
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
