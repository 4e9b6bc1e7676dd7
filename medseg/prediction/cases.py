"""Running prediction over many cases: skip finished ones, isolate failures, report.

Outputs are written atomically under their final names only when complete. A case counts as finished only when
every output asked for exists (mask, overlay, DICOM-SEG, JSON sidecar, probabilities): a rerun skips finished
cases, and for a case with some outputs missing (interrupted, or an output first asked for on the rerun) it runs
the case again and writes only the missing ones, keeping those that exist (``overwrite`` redoes them all). Before
that, the batch functions refuse a rerun whose label-shaping settings differ from those a case's sidecar recorded
(:mod:`medseg.prediction.run_settings`). Each case is claimed before it is computed
(:mod:`medseg.prediction.claims`), so processes sharing an output folder never compute one case twice. A case
whose settings record cannot be read, or one that would write over a folder (``overwrite``), fails alone, naming
the file; folders are never removed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import ConfigError, DataError, MedsegError
from medseg.prediction.claims import Sharing, run_claimed, shard_indices
from medseg.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class BatchReport:
    """What a batch prediction did, case by case.

    Attributes:
        written: Files written.
        skipped: Outputs of the cases found finished (not recomputed).
        failed: ``(input, message)`` of each case that failed (the case name for a case of several channel files).
        seconds: Wall time.
        predicted: Names of the cases computed here.
        elsewhere: Names of the cases other processes finished while this run waited for them.
        workers: Processes that took part (``--workers``, torchrun ranks).
    """

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    predicted: list[str] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)
    workers: int = 1

    @property
    def ok(self) -> bool:
        """True when no case failed."""
        return not self.failed

    def counts(self) -> str:
        """The cases by outcome, e.g. ``"4 cases predicted, 2 skipped, 0 failed, 1 finished by other processes"``."""
        text = (f"{len(self.predicted)} cases predicted, {len(self.skipped)} skipped, {len(self.failed)} failed, "
                f"{len(self.elsewhere)} finished by other processes")
        return text + (f" ({self.workers} workers)" if self.workers > 1 else "")


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
    """Refuse an output folder that is, or lies inside, an input folder (inputs are never written to), and an
    output that is a file.

    Raises:
        ConfigError: naming both folders, or the file.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"-o: {out_dir} is a file; the output must be a folder (new or existing)")
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
    run: Callable[[Case, set[Path]], list[Path]],
    *,
    overwrite: bool,
    progress: bool,
    sharing: Sharing | None = None,
    refused: Mapping[str, str] | None = None,
) -> BatchReport:
    """Run each case whose outputs are not all there, collecting failures (a failing case does not stop the others);
    each case is claimed first, and only this process's shard is run (:func:`~medseg.prediction.claims.run_claimed`).

    Args:
        cases: The cases.
        output_of: Every output a case is asked to write (one path, or a list with the label map first).
        run: Runs one case and writes the outputs in the set it is given (the missing ones, or all with
            ``overwrite``), returning the paths written.
        overwrite: Run every case and rewrite all its outputs.
        progress: Progress bar on stderr.
        sharing: How processes share the output folder.
        refused: Case name -> message: cases that fail with that message without being run (their settings
            record cannot be read). Claimed like the others, so processes sharing the folder report each once.

    Returns:
        The report: a case with every output present is listed once in ``skipped`` (by its label map).
    """
    sharing, refused = sharing or Sharing(), refused or {}
    report = BatchReport()
    t0 = time.perf_counter()
    if not cases:
        return report

    def work(i: int) -> None:
        case = cases[i]
        targets = _outputs(output_of(case))
        todo = set(targets) if overwrite else {t for t in targets if not t.exists()}
        if 0 < len(todo) < len(targets):
            log.info("%s: completing the case: writing %s (the other outputs exist and are kept)", case.source,
                     ", ".join(sorted(t.name for t in todo)))
        try:
            if case.name in refused:
                raise DataError(refused[case.name])
            folder = next((t for t in sorted(todo) if t.is_dir()), None)  # with overwrite: outputs that exist
            if folder is not None:
                raise DataError(f"{folder}: is a folder where this case's output belongs; remove or rename it to "
                                "predict this case (medseg does not delete folders, not even with --overwrite)")
            report.written += run(case, todo or set(targets))
            report.predicted.append(case.name)
        except MedsegError as err:  # the report lists it (medseg predict prints it once)
            several = len(getattr(case, "channels", ())) > 1  # a multi-channel case: named by its case name
            report.failed.append((case.name if several else str(case.source), str(err)))
            log.debug("%s: failed: %s", case.name if several else case.source, err)

    names = [c.name for c in cases]
    share = len(cases) if sharing.shard is None else len(shard_indices(names, sharing.shard))
    with progress_bar("predicting", share, enabled=progress) as advance:
        found = run_claimed(names, _outputs(output_of(cases[0]))[0].parent,
                            finished=lambda i: names[i] not in refused
                            and all(t.exists() for t in _outputs(output_of(cases[i]))),
                            work=work, overwrite=overwrite, sharing=sharing, advance=lambda i: advance(case=names[i]))
    report.skipped += [_outputs(output_of(cases[i]))[0] for i in found.skipped]
    report.elsewhere += [names[i] for i in found.elsewhere]
    report.seconds = time.perf_counter() - t0
    return report


def _outputs(targets: Path | Sequence[Path]) -> list[Path]:
    """The outputs of a case as a list (the first is the label map)."""
    return [targets] if isinstance(targets, Path) else list(targets)
