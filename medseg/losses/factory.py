"""Losses by name, built from MONAI's implementations.

All losses take logits ``(B, K, *spatial)`` and integer targets ``(B, 1, *spatial)`` holding class
indices 0..K-1; softmax and one-hot encoding happen inside.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from medseg.config.schema import LossConfig
from medseg.errors import ConfigError


def _weights(cfg: LossConfig, num_classes: int) -> torch.Tensor | None:
    if cfg.class_weights is None:
        return None
    if len(cfg.class_weights) != num_classes:
        raise ConfigError(
            f"loss.class_weights has {len(cfg.class_weights)} entries; the model predicts {num_classes} classes"
        )
    return torch.tensor(cfg.class_weights, dtype=torch.float32)


def _dice(cfg: LossConfig, k: int) -> nn.Module:
    from monai.losses import DiceLoss

    return DiceLoss(include_background=cfg.include_background, to_onehot_y=True, softmax=True)


def _focal(cfg: LossConfig, k: int) -> nn.Module:
    from monai.losses import FocalLoss

    return FocalLoss(
        include_background=True, to_onehot_y=True, gamma=cfg.focal_gamma, weight=_weights(cfg, k), use_softmax=True
    )


def _dice_focal(cfg: LossConfig, k: int) -> nn.Module:
    from monai.losses import DiceFocalLoss

    return DiceFocalLoss(
        include_background=cfg.include_background,
        to_onehot_y=True,
        softmax=True,
        gamma=cfg.focal_gamma,
        weight=_weights(cfg, k),
        lambda_dice=cfg.lambda_dice,
        lambda_focal=cfg.lambda_other,
    )


def _dice_ce(cfg: LossConfig, k: int) -> nn.Module:
    from monai.losses import DiceCELoss

    return DiceCELoss(
        include_background=cfg.include_background,
        to_onehot_y=True,
        softmax=True,
        weight=_weights(cfg, k),
        lambda_dice=cfg.lambda_dice,
        lambda_ce=cfg.lambda_other,
    )


LOSS_BUILDERS: dict[str, Callable[[LossConfig, int], nn.Module]] = {
    "dice": _dice,
    "focal": _focal,
    "dice_focal": _dice_focal,
    "dice_ce": _dice_ce,
}


def build_loss(cfg: LossConfig, num_classes: int) -> nn.Module:
    """Build the loss a config names.

    Args:
        cfg: The ``loss`` section.
        num_classes: Classes incl. background (checks ``class_weights``).

    Returns:
        A module called as ``loss(logits, target)`` with logits ``(B, K, *spatial)`` and integer
        targets ``(B, 1, *spatial)``.

    Raises:
        ConfigError: Unknown loss name or class weights of the wrong length.

    Example:
        >>> from medseg.config import LossConfig
        >>> loss = build_loss(LossConfig(name="dice"), 2)
        >>> logits = torch.tensor([[[[9.0, -9.0]], [[-9.0, 9.0]]]])   # (1, 2, 1, 2)
        >>> round(float(loss(logits, torch.tensor([[[[0, 1]]]]))), 3)
        0.0
    """
    if cfg.name not in LOSS_BUILDERS:
        raise ConfigError(f"loss.name: unknown {cfg.name!r}; choose from {sorted(LOSS_BUILDERS)}")
    if num_classes < 2:
        raise ConfigError(f"a segmentation loss needs at least 2 classes, got {num_classes}")
    return LOSS_BUILDERS[cfg.name](cfg, num_classes)
