"""Device helpers of the sliding-window engine: memory budget, out-of-memory detection, peak memory."""

from __future__ import annotations

import resource
import sys

import torch
from torch import nn

from medseg.sliding_window.plan import available_memory_bytes

#: Default working-memory budget on CPU (MiB), beyond the input and the returned output.
CPU_BUDGET_MB = 768

__all__ = ["CPU_BUDGET_MB", "budget_bytes", "free_cache", "is_oom", "network_device", "peak_mb"]


def network_device(network: nn.Module) -> torch.device:
    for tensor in (*network.parameters(), *network.buffers()):
        return tensor.device
    return torch.device("cpu")


def budget_bytes(memory_budget_mb: float | None, device: torch.device) -> float:
    if memory_budget_mb is not None:
        if memory_budget_mb <= 0:
            raise ValueError(f"memory_budget_mb must be > 0, got {memory_budget_mb}")
        return memory_budget_mb * 2**20
    free = available_memory_bytes(device)
    if device.type == "cuda":
        return free / 2
    return min(CPU_BUDGET_MB * 2**20, free / 4)


def is_oom(err: BaseException) -> bool:
    if isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(err).lower()
    return "out of memory" in text or "can't allocate memory" in text or "failed to allocate" in text


def free_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
