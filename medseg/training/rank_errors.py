"""One error line for ``medseg train --nproc N``, however many processes meet the error.

Every process of a training runs the same checks on the same config and data, so a data error (a mask with an
unknown value, a missing file) stops them all with the same line, which each would print. Under
:func:`~medseg.training.launcher.launch_local` the launcher names a folder in :data:`RANK_ERRORS_ENV` (an
internal hand-over from the launcher to its own processes, never a user setting): each process writes its error
line there (:func:`hand_over`) and only rank 0 prints it. When the process that failed first is another rank,
with another line (its own CUDA device out of memory, a file only its share reads), the launcher's own line
carries it (:func:`first_failure_line`), so that error is printed once too and none is lost.

Processes started by ``torchrun`` directly (no such folder) print their errors as before, each its own.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["RANK_ERRORS_ENV", "first_failure_line", "hand_over", "printed_already", "recorded_lines", "under_launcher"]

#: The variable through which the launcher gives its processes the folder for their error lines.
RANK_ERRORS_ENV = "MEDSEG_RANK_ERRORS"


def _rank() -> int | None:
    try:
        return int(os.environ["RANK"])
    except (KeyError, ValueError):
        return None


def under_launcher() -> bool:
    """True in a process that medseg's launcher started (it then tells a Ctrl-C once, for all processes)."""
    return bool(os.environ.get(RANK_ERRORS_ENV)) and _rank() is not None


def hand_over(line: str) -> bool:
    """Record this process's error ``line`` for the launcher; True when this process is to print it itself.

    Outside the launcher (no folder given, or no ``RANK``) nothing is recorded and every process prints. A line
    that cannot be recorded (the folder is gone) is printed.
    """
    folder, rank = os.environ.get(RANK_ERRORS_ENV), _rank()
    if not folder or rank is None:
        return True
    try:
        (Path(folder) / f"rank-{rank}.txt").write_text(line, encoding="utf-8", errors="surrogateescape")
    except OSError:
        return True
    return rank == 0


def recorded_lines(folder: Path) -> dict[int, str]:
    """The error line each rank recorded in ``folder``, by rank."""
    lines: dict[int, str] = {}
    for path in Path(folder).glob("rank-*.txt"):
        rank = path.stem.removeprefix("rank-")
        if rank.isdigit():
            lines[int(rank)] = path.read_text(encoding="utf-8", errors="surrogateescape").strip()
    return lines


def first_failure_line(lines: dict[int, str], rank: int) -> str | None:
    """The error of ``rank``, the process that failed first, when nobody printed it: another rank's line that
    rank 0 did not print (rank 0 prints its own). None when it is printed already, or was never recorded (a
    traceback, a signal)."""
    line = lines.get(rank)
    if rank == 0 or line is None or line == lines.get(0):
        return None
    return line.removeprefix("error: ")


def printed_already(lines: dict[int, str], rank: int) -> bool:
    """Whether the error of ``rank``, the process that failed first, is on the screen already: rank 0 printed a
    line and ``rank``'s is that same line (the error every process met; rank 1 may well stop first), or ``rank``
    is 0. Then the launcher has nothing to add, and names no rank (the line is not necessarily the first
    failure's own).

    Example:
        >>> printed_already({0: "error: a", 1: "error: a"}, 1), printed_already({0: "error: a", 1: "error: b"}, 1)
        (True, False)
        >>> printed_already({1: "error: b"}, 1), printed_already({0: "error: a"}, 1)  # rank 1 left no line
        (False, False)
    """
    printed = lines.get(0)
    return printed is not None and (rank == 0 or lines.get(rank) == printed)
