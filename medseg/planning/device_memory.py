"""``medseg plan --device-memory``: the device a plan is for and how much memory it may use."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from medseg.errors import ConfigError

__all__ = ["CPU_BUDGET_BYTES", "MAX_DEVICE_BYTES", "DeviceMemory", "parse_device_memory"]

#: Largest ``--device-memory`` accepted (a typo guard: no accelerator has more).
MAX_DEVICE_BYTES = 4 * 2**40
#: Memory budget when the device is the CPU (fixed, so a plan does not depend on what else is running).
CPU_BUDGET_BYTES = 8 * 2**30
_UNITS = {"": 2**30, "g": 2**30, "gb": 2**30, "gib": 2**30, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "t": 2**40, "tb": 2**40, "tib": 2**40}


@dataclass(frozen=True)
class DeviceMemory:
    """What ``--device-memory`` said: the device trained on and its memory."""

    device: Literal["cpu", "cuda"]
    bytes: float
    label: str


def parse_device_memory(text: str | None) -> DeviceMemory:
    """Read ``--device-memory``: ``24GB`` / ``11000MB`` / ``24`` (a GPU of that much memory), ``cpu``, or
    ``auto`` / None (this machine's first CUDA device, else the CPU).

    Raises:
        ConfigError: Anything else, or a size that is not positive.

    Example:
        >>> parse_device_memory("24GB").bytes / 2**30, parse_device_memory("512 MiB").device
        (24.0, 'cuda')
    """
    value = "auto" if text is None else str(text).strip().lower()
    if value == "cpu":
        return DeviceMemory("cpu", float(CPU_BUDGET_BYTES), f"CPU, {CPU_BUDGET_BYTES / 2**30:g} GiB budget")
    if value == "auto":
        import torch

        if torch.cuda.is_available():
            total = torch.cuda.get_device_properties(0).total_memory
            return DeviceMemory("cuda", float(total), f"{total / 2**30:.1f} GiB ({torch.cuda.get_device_name(0)})")
        return parse_device_memory("cpu")
    number = value.rstrip("abcdefghijklmnopqrstuvwxyz ").strip()
    unit = value[len(number):].strip()
    try:
        amount = float(number)
    except ValueError:
        amount = float("nan")
    size = amount * _UNITS.get(unit, float("nan"))
    if unit not in _UNITS or not math.isfinite(amount) or amount <= 0 or size > MAX_DEVICE_BYTES:
        raise ConfigError(f"--device-memory: got {text!r}; allowed a GPU memory size up to 4 TB such as 24GB, "
                          "11000MB or 8GiB (GB and MB are read as GiB and MiB), or 'cpu', or 'auto'")
    return DeviceMemory("cuda", size, f"{size / 2**30:.1f} GiB GPU")
