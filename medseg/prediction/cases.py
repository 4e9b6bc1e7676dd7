"""Running prediction over many cases: skip finished ones, isolate failures, report.

Outputs are written atomically under their final names only when complete. A case counts as finished only when
every output asked for exists (mask, overlay, DICOM-SEG, JSON sidecar): a rerun skips finished cases, and for a
case with some outputs missing (interrupted, or an output first asked for on the rerun) it runs the case again
and writes only the missing ones, keeping those that exist (``overwrite`` redoes them all).
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
    outputs_of: Callable[[Case], Sequence[Path]],
    run: Callable[[Case, set[Path]], list[Path]],
    *,
    overwrite: bool,
    progress: bool,
) -> BatchReport:
    """Run each case whose outputs are not all there, collecting failures (a failing case does not stop the others).

    Args:
        cases: The cases.
        outputs_of: Every output a case is asked to write, its main output (mask or label map) first.
        run: Runs one case and writes the outputs in the set it is given (the missing ones, or all with
            ``overwrite``), returning the paths written.
        overwrite: Run every case and rewrite all its outputs.
        progress: Progress bar on stderr.

    Returns:
        The report: a case with every output present is listed once in ``skipped`` (by its main output).
    """
    report = BatchReport()
    t0 = time.perf_counter()
    with progress_bar("predicting", len(cases), enabled=progress) as advance:
        for case in cases:
            targets = list(outputs_of(case))
            todo = set(targets) if overwrite else {p for p in targets if not p.exists()}
            if not todo:
                report.skipped.append(targets[0])
                advance(case=case.name)
                continue
            if len(todo) < len(targets):
                log.info("%s: completing the case: writing %s (the other outputs exist and are kept)", case.source,
                         ", ".join(sorted(p.name for p in todo)))
            try:
                report.written += run(case, todo)
            except MedsegError as err:
                report.failed.append((str(case.source), str(err)))
                log.error("%s: failed: %s", case.source, err)
            advance(case=case.name)
    report.seconds = time.perf_counter() - t0
    return report
