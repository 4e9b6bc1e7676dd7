"""Optimizers and learning-rate schedules from the ``train`` section."""

from __future__ import annotations

import math

import torch

from medseg.config.schema import TrainConfig


def build_optimizer(cfg: TrainConfig, params: object) -> torch.optim.Optimizer:
    """adam, adamw or sgd (Nesterov) with ``train.lr`` and ``train.weight_decay``."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)  # type: ignore[arg-type]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)  # type: ignore[arg-type]
    return torch.optim.SGD(
        params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum, nesterov=True  # type: ignore[arg-type]
    )


def cosine_factor(epoch: int, *, max_epochs: int, warmup_epochs: int, final_fraction: float) -> float:
    """LR multiplier for ``epoch`` (0-based): linear warm-up, then cosine down to ``final_fraction``.

    Example:
        >>> round(cosine_factor(0, max_epochs=10, warmup_epochs=2, final_fraction=0.1), 4)
        0.3333
        >>> round(cosine_factor(9, max_epochs=10, warmup_epochs=0, final_fraction=0.1), 4)
        0.1
    """
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    span = max(1, max_epochs - warmup_epochs - 1)
    progress = min(1.0, (epoch - warmup_epochs) / span)
    return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


class EpochScheduler:
    """Per-epoch LR schedule whose whole state is plain numbers (for checkpoints)."""

    def __init__(self, cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> None:
        self.cfg = cfg
        self.optimizer = optimizer
        self.scale = 1.0  # plateau multiplier
        self.best = math.inf
        self.bad_epochs = 0

    def lr_for(self, epoch: int) -> float:
        s = self.cfg.scheduler
        if s.name == "cosine":
            return self.cfg.lr * cosine_factor(
                epoch, max_epochs=self.cfg.max_epochs, warmup_epochs=s.warmup_epochs, final_fraction=s.final_lr_fraction
            )
        return self.cfg.lr * self.scale

    def start_epoch(self, epoch: int) -> float:
        lr = self.lr_for(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def observe(self, val_loss: float) -> None:
        """Feed a validation loss to the plateau schedule (no-op for the others)."""
        s = self.cfg.scheduler
        if s.name != "plateau":
            return
        if val_loss < self.best - 1e-6:
            self.best, self.bad_epochs = val_loss, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= s.patience:
                self.scale *= s.factor
                self.bad_epochs = 0

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.scale = float(state["scale"])
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
