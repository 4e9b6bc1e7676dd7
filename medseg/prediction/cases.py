"""Running prediction over many cases: skip finished ones, isolate failures, report.

Outputs are written atomically under their final names only when complete, so a rerun after a
crash skips finished cases and redoes the one that was interrupted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import ConfigError, DataError, MedsegError
from medseg.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class BatchReport:
    """What a batch prediction did, case by case."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no case failed."""
        return not self.failed


@dataclass(frozen=True)
class Case:
    """One unit of prediction: an input and the name its output takes."""

    name: str
    source: Path


def check_unique_names(cases: Sequence[Case]) -> None:
    """Refuse two cases that would write the same output name.

    Raises:
        DataError: naming both inputs and the clashing name.
    """
    seen: dict[str, Path] = {}
    for c in cases:
        if c.name in seen:
            raise DataError(f"inputs {seen[c.name]} and {c.source} would both write output {c.name!r}; rename one")
        seen[c.name] = c.source


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path, folder = path.resolve(), folder.resolve()
    except (OSError, RuntimeError) as err:  # symlink loop (RuntimeError before Python 3.13), name too long
        raise DataError(f"{path}: cannot resolve path: {err}") from None
    return path == folder or folder in path.parents


def check_output_dir(out_dir: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output folder that is, or lies inside, an input folder (inputs are never written to).

    Raises:
        ConfigError: naming both folders.
    """
    for src in inputs:
        folder = src if src.is_dir() else src.parent
        if src.is_dir() and _is_inside(out_dir, folder):
            raise ConfigError(
                f"output folder {out_dir} is inside input folder {folder}; choose an output folder outside the inputs"
            )
        if src.is_file() and _is_inside(out_dir, src.parent) and src.parent.resolve() == out_dir.resolve():
            raise ConfigError(f"output folder {out_dir} is the folder of input {src.name}; choose another -o")


def run_cases(
    cases: Sequence[Case],
    output_of: Callable[[Case], Path | Sequence[Path]],
    run: Callable[[Case], list[Path]],
    *,
    overwrite: bool,
    progress: bool,
) -> BatchReport:
    """Run ``run`` on each case, skipping those whose outputs (``output_of``: one path or every path asked for) all
    exist, and collecting failures (a failing case does not stop the others)."""
    report = BatchReport()
    t0 = time.perf_counter()
    with progress_bar("predicting", len(cases), enabled=progress) as advance:
        for case in cases:
            targets = output_of(case)
            target = targets if isinstance(targets, Path) else targets[0]
            done = target.exists() if isinstance(targets, Path) else all(t.exists() for t in targets)
            if done and not overwrite:
                report.skipped.append(target)
                advance(case=case.name)
                continue
            try:
                report.written += run(case)
            except MedsegError as err:
                report.failed.append((str(case.source), str(err)))
                log.error("%s: failed: %s", case.source, err)
            advance(case=case.name)
    report.seconds = time.perf_counter() - t0
    return report
