"""Process-wide settings of the ``medseg`` command and worker processes that end with their parent.

:func:`prefer_huge_pages` asks PyTorch's CPU allocator for transparent huge pages before torch is imported.
A process pool cannot stop its workers when its own process is killed with SIGKILL: re-parented, they would build
their remaining tasks and then wait for more forever. :func:`exit_with_parent`, run as a pool's initializer, ends
each worker within a second of its parent's death.
"""

from __future__ import annotations

import os
import sys
import threading
import time

__all__ = ["HUGE_PAGES_ENV", "exit_with_parent", "prefer_huge_pages"]

#: PyTorch's switch: CPU blocks of 2 MB and more are 2 MB-aligned and advised as transparent huge pages.
HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"


def prefer_huge_pages() -> bool:
    """Turn on PyTorch's huge-page CPU allocations for this process and its children, unless the user chose.

    A 3D network's feature maps are tens to hundreds of MB, each a fresh ``mmap`` that the kernel fills page by page
    on first touch: 4 KiB pages cost one fault each (a bf16 UNet 16-256 pass over 256x208x224: 125k-335k faults,
    0.25-0.77 s of system time), 2 MB pages 512 times fewer (13k-23k faults, 0.18-0.24 s); see docs/design.md.
    PyTorch reads ``THP_MEM_ALLOC_ENABLE`` once, at its first allocation, so this only acts before ``torch`` is
    imported: the ``medseg`` command calls it first thing. A value the user set (``0`` to keep 4 KiB pages) is kept.

    Returns:
        True when huge pages are requested for this process (set here or by the user), False otherwise.

    Example:
        >>> isinstance(prefer_huge_pages(), bool)
        True
    """
    if HUGE_PAGES_ENV in os.environ:
        return os.environ[HUGE_PAGES_ENV] == "1"  # PyTorch ignores other values (with a warning)
    if "torch" in sys.modules or not sys.platform.startswith("linux"):
        return False  # too late for this process (PyTorch has read its setting), or no transparent huge pages
    os.environ[HUGE_PAGES_ENV] = "1"
    return True


def exit_with_parent(parent: int, interval_s: float = 1.0) -> None:
    """End this process (``os._exit(1)``) within ``interval_s`` once process ``parent`` is no longer its parent.

    Meant as a pool initializer: ``ProcessPoolExecutor(n, initializer=exit_with_parent, initargs=(os.getpid(),))``.
    A daemon thread compares ``os.getppid()`` with ``parent`` (portable: an orphan gets another parent). Linux's
    ``PR_SET_PDEATHSIG`` is not used: it fires when the *thread* that started the worker ends, not the process.

    Args:
        parent: The process id of the parent (the pool's process).
        interval_s: How often to look, in seconds.

    Example:
        >>> exit_with_parent(os.getppid(), interval_s=60.0)  # this process's parent is alive: nothing happens
    """
    if os.getppid() != parent:  # orphaned before this ran
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="medseg-exit-with-parent", daemon=True).start()
