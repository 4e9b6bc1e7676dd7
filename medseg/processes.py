"""Worker processes that end with their parent.

A process pool cannot stop its workers when its own process is killed with SIGKILL: re-parented, they would build
their remaining tasks and then wait for more forever. :func:`exit_with_parent`, run as a pool's initializer, ends
each worker within a second of its parent's death.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["exit_with_parent"]


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
