"""Reuse of freed memory while a network runs on the CPU (glibc's allocator on Linux).

A 3D network's feature maps are tens to hundreds of MB each. glibc serves every block above its mmap threshold
(at most 32 MB) with a fresh ``mmap`` and returns it to the system on ``free``, so each layer of each forward pass
touches new pages, and the kernel zeroes every one of them on first touch. On the development machine (2 cores)
one bf16 forward pass of a UNet 16-256 over a 256x208x224 volume took 1.5-2.2 s that way and 0.78-0.92 s when
freed blocks stay in the heap (see docs/design.md, "Heap reuse during inference").

:func:`reuse_freed_memory` turns that off for the duration of a call (``mallopt(M_MMAP_MAX, 0)``: big blocks come
from the heap; ``M_TRIM_THRESHOLD`` raised: freed blocks stay there for the next layer) and on exit puts glibc's
defaults back and calls ``malloc_trim(0)``, which returns the freed memory to the system, so the process does not
keep its peak after the call. Nested and concurrent calls share one setting (a counter under a lock).

It does nothing on other C libraries (macOS, Windows, musl), for CUDA devices, when the environment already
tunes glibc's allocator (``MALLOC_*_`` variables or ``glibc.malloc`` tunables: the user's choice wins), or when
``MEDSEG_HEAP_REUSE=0``. Side effect to know: after the first call glibc's mmap threshold stays at its default
(128 KiB) instead of adapting to the program, which is how glibc starts every process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
import threading
from collections.abc import Iterator
from functools import cache

import torch

__all__ = ["ENV_SWITCH", "heap_reuse_available", "reuse_freed_memory"]

#: Environment variable; "0" turns heap reuse off.
ENV_SWITCH = "MEDSEG_HEAP_REUSE"

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
_KEEP = 2**31 - 1  # an int; freed blocks below the heap top are never given back while active
_GLIBC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")

_lock = threading.Lock()
_depth = 0


@cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def heap_reuse_available() -> bool:
    """True when :func:`reuse_freed_memory` acts on CPU calls in this process (glibc, not switched off)."""
    if os.environ.get(ENV_SWITCH, "1").strip() == "0":
        return False
    if any(name in os.environ for name in _GLIBC_ENV) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    return _glibc() is not None


@contextlib.contextmanager
def reuse_freed_memory(device: torch.device | str = "cpu") -> Iterator[bool]:
    """Keep freed blocks in the C heap while the block runs on a CPU ``device``; yields whether it acts.

    >>> with reuse_freed_memory("cpu") as active:
    ...     y = torch.ones(4).sum()
    >>> float(y)
    4.0
    """
    global _depth
    libc = _glibc() if torch.device(device).type == "cpu" and heap_reuse_available() else None
    if libc is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, _KEEP)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
