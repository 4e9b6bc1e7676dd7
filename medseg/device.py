"""Choosing the torch device, and listing the CUDA devices there are."""

from __future__ import annotations

import logging
from dataclasses import dataclass

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


@dataclass(frozen=True)
class CudaDevice:
    """One CUDA device as torch sees it.

    Attributes:
        index: Device number (``cuda:<index>``).
        name: e.g. ``"NVIDIA H200"``.
        total_bytes: Memory of the device.
        free_bytes: Memory free now (other processes count), as the driver reports it.
    """

    index: int
    name: str
    total_bytes: int
    free_bytes: int


def cuda_devices() -> list[CudaDevice]:
    """The CUDA devices torch can use, with total and free memory; ``[]`` without CUDA.

    Asking for free memory opens a CUDA context on each device (a few hundred MB of device memory while this
    process lives).
    """
    if not torch.cuda.is_available():
        return []
    out = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        out.append(CudaDevice(index, torch.cuda.get_device_name(index), int(total), int(free)))
    return out
