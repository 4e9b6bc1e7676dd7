"""Predict over many inputs: find the cases, skip finished ones, isolate failures, report.

Outputs are written atomically under their final names only when complete, so a rerun after a
crash skips finished cases and redoes the one that was interrupted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medseg.engine.inference import Predictor
from medseg.engine.progress import progress_bar
from medseg.errors import ConfigError, DataError, MedsegError
from medseg.io.images import IMAGE_SUFFIXES, write_mask, write_overlay

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


def find_image_cases(inputs: Sequence[Path]) -> list[Case]:
    """Image files given directly or inside the given folders (not recursive), in sorted order.

    Raises:
        DataError: An input does not exist, a folder holds no images, or two inputs share a name.
    """
    cases: list[Case] = []
    for src in inputs:
        if src.is_file():
            cases.append(Case(src.stem, src))
        elif src.is_dir():
            files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                           and not p.name.startswith("."))
            if not files:
                raise DataError(f"{src}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            cases += [Case(p.stem, p) for p in files]
        else:
            raise DataError(f"{src}: input does not exist")
    _check_unique(cases)
    return cases


def _check_unique(cases: Sequence[Case]) -> None:
    seen: dict[str, Path] = {}
    for c in cases:
        if c.name in seen:
            raise DataError(f"inputs {seen[c.name]} and {c.source} would both write output {c.name!r}; rename one")
        seen[c.name] = c.source


def predict_images(
    predictor: Predictor,
    inputs: Sequence[Path],
    out_dir: Path,
    *,
    overwrite: bool = False,
    overlay: bool = False,
    progress: bool = True,
) -> BatchReport:
    """Segment 2D images into ``out_dir/<name>.png`` masks in the original gray values.

    Args:
        predictor: A 2D image predictor.
        inputs: Image files and/or folders of images.
        out_dir: Output folder (created); must not be an input folder.
        overwrite: Redo cases whose output exists (otherwise they are skipped).
        overlay: Also write ``<name>_overlay.png`` with the mask drawn over the image.
        progress: Progress bar on stderr.
    """
    inputs = [Path(p) for p in inputs]
    check_output_dir(out_dir, inputs)
    cases = find_image_cases(inputs)
    out_dir.mkdir(parents=True, exist_ok=True)

    def run(case: Case) -> list[Path]:
        from medseg.io.images import read_image

        classes = predictor.predict_image_classes(case.source)
        paths = [write_mask(out_dir / f"{case.name}.png", predictor.labels.to_values(classes))]
        if overlay:
            image = read_image(case.source, mode="RGB")
            paths.append(write_overlay(out_dir / f"{case.name}_overlay.png", image, classes))
        return paths

    return run_cases(cases, lambda c: out_dir / f"{c.name}.png", run, overwrite=overwrite, progress=progress)


def run_cases(
    cases: Sequence[Case],
    output_of: Callable[[Case], Path],
    run: Callable[[Case], list[Path]],
    *,
    overwrite: bool,
    progress: bool,
) -> BatchReport:
    """Run ``run`` on each case, skipping existing outputs and collecting failures (a failing case
    does not stop the others)."""
    report = BatchReport()
    t0 = time.perf_counter()
    with progress_bar("predicting", len(cases), enabled=progress) as advance:
        for case in cases:
            target = output_of(case)
            if target.exists() and not overwrite:
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
