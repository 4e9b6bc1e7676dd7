"""Choosing the torch device."""

from __future__ import annotations

import logging

import torch

from medseg.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """Turn ``auto|cpu|cuda[:N]`` into a device; ``auto`` picks CUDA when available.

    Raises:
        ConfigError: ``cuda`` was asked for but no CUDA device is available, or the name is unknown.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but no CUDA device is available; use 'cpu' or 'auto'")
        return torch.device(name)
    raise ConfigError(f"device: unknown {name!r}; choose from auto, cpu, cuda")
