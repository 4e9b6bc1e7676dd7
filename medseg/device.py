"""Choosing the torch device, and listing the CUDA devices there are."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch

from medseg.errors import ConfigError

log = logging.getLogger(__name__)


_ALLOWED = "auto, cpu, cuda or cuda:N"
_DEVICE_NAME = re.compile(r"(auto|cpu|cuda)(:\d+)?")


def resolve_device(name: str) -> torch.device:
    """Turn ``auto|cpu|cuda[:N]`` into a device; ``auto`` picks CUDA when available.

    ``cpu:N`` is accepted as torch accepts it (there is one CPU device: it means ``cpu``).

    Example:
        >>> resolve_device("cpu"), resolve_device("cpu:0")
        (device(type='cpu'), device(type='cpu'))
        >>> resolve_device("gpu")
        Traceback (most recent call last):
        ...
        medseg.errors.ConfigError: device: got 'gpu'; allowed: auto, cpu, cuda or cuda:N

    Raises:
        ConfigError: Not a string, an unknown name, or CUDA asked for (``cuda``, ``cuda:N``) where there is no
            such CUDA device.
    """
    if not isinstance(name, str):
        raise ConfigError(f"device: got {name!r} ({type(name).__name__}); allowed: {_ALLOWED}")
    match = _DEVICE_NAME.fullmatch(name.strip().lower())
    if match is None or (match.group(1) == "auto" and match.group(2)):
        raise ConfigError(f"device: got {name!r}; allowed: {_ALLOWED}")
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but no CUDA device is available; use 'cpu' or 'auto'")
    if index is None:
        return torch.device("cuda")
    count = torch.cuda.device_count()
    if int(index[1:]) >= count:
        raise ConfigError(f"device: got {name!r} but this machine has {count} CUDA device(s) "
                          f"(allowed: cuda:0 to cuda:{count - 1})")
    return torch.device(f"cuda{index}")


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
