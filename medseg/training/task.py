"""What the training loop needs from a kind of data, as a typed protocol, and the factory that picks one.

Two tasks implement it: :class:`~medseg.training.image_task.ImageTask` (``data.kind: images2d``) and
:class:`~medseg.training.volume_task.VolumeTask` (``volumes3d``, and ``slices2d``: 2D models on volume slices).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from medseg.config.kinds import DataKind
from medseg.config.schema import ExperimentConfig
from medseg.data.labels import LabelMap
from medseg.training.image_task import ImageTask
from medseg.training.volume_task import VolumeTask

__all__ = ["Task", "build_task"]


class Task(Protocol):
    """The data side of a training run.

    Attributes:
        labels: Gray value <-> class mapping (configured, discovered, or from the checkpoint on resume).
        in_channels: Network input channels.
        spatial_dims: 2 or 3 (what the network sees).
    """

    labels: LabelMap
    in_channels: int
    spatial_dims: int

    @property
    def preprocessing(self) -> dict[str, Any]:
        """What a predictor must do to an input (stored in the checkpoint)."""
        ...

    def train_loader(self, epoch: int) -> DataLoader[Any]:
        """Batches ``{"image": (B, C, *spatial), "label": (B, 1, *spatial)}`` whose order depends on (seed, epoch)."""
        ...

    def augment_batch(self, image: torch.Tensor, label: torch.Tensor, epoch: int, step: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one batch on its device (draws depend only on seed, epoch, step); may return it unchanged."""
        ...

    def validate(self, model: torch.nn.Module, loss_fn: torch.nn.Module, device: torch.device) -> dict[str, Any]:
        """``{"val_loss": float, "cases": [per-case metrics], "confusions": [(K, K) per case], "example": {"image",
        "truth", "pred": 2D arrays}}``, or ``{}`` without validation cases."""
        ...

    def preview(self, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Up to ``n`` augmented training samples as uint8 images and class maps."""
        ...


def build_task(cfg: ExperimentConfig, run_dir: Path, *, labels: LabelMap | None, resume: bool) -> Task:
    """The task for ``cfg.data.kind`` (finds the cases, splits them, prepares the data)."""
    if DataKind(cfg.data.kind) is DataKind.IMAGES2D:
        return ImageTask(cfg, run_dir, labels=labels, resume=resume)
    return VolumeTask(cfg, run_dir, labels=labels, resume=resume)
