"""``OUT/statistics.csv`` of a prediction batch, rebuilt from the cases' JSON sidecars at the end of every run.

Each finished case keeps its statistics in the ``statistics`` section of ``OUT/<case>.json``; the table is
made from those sections, case by case in input order, so a batch that was interrupted and then resumed (its
finished cases skipped) still gets a table over all its cases. A finished case whose sidecar has no such
section yet (it was predicted without statistics) gets it computed from the label map on disk and added to its
sidecar; the sidecar's other fields are kept. Cases that failed have no output and no rows.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medseg.atomic import write_json_atomic, write_text_atomic
from medseg.errors import DataError, MedsegError
from medseg.prediction.cases import BatchReport, Case

__all__ = ["STATISTICS_CSV", "read_statistics_csv", "write_statistics_table"]

log = logging.getLogger(__name__)

#: File name of the table in the output folder.
STATISTICS_CSV = "statistics.csv"


def write_statistics_table(
    out_dir: Path,
    cases: Sequence[Case],
    columns: Sequence[str],
    *,
    is_done: Callable[[Case], bool],
    compute: Callable[[Case], dict[str, Any]],
    report: BatchReport,
) -> Path:
    """Write ``out_dir/statistics.csv`` (atomically): ``case`` then ``columns``, one row per case and structure.

    Args:
        out_dir: The batch's output folder, holding ``<case>.json`` sidecars.
        cases: The batch's cases, in order.
        columns: The fields of one structure (:data:`~medseg.prediction.statistics.VOLUME_COLUMNS` or
            ``IMAGE_COLUMNS``).
        is_done: Whether a case's output exists (cases without one are left out).
        compute: The ``statistics`` section of a finished case whose sidecar lacks one.
        report: Sidecars updated here are added to ``written``, cases whose statistics cannot be had to ``failed``.

    Returns:
        The path of the table.
    """
    rows: list[dict[str, Any]] = []
    for case in cases:
        if not is_done(case):
            continue
        try:
            section = _section_of(out_dir / f"{case.name}.json", case, compute, report)
            rows += [{"case": case.name, **row} for row in _rows_of(section, out_dir / f"{case.name}.json", columns)]
        except MedsegError as err:
            report.failed.append((str(case.source), f"statistics: {err}"))
            log.error("%s: statistics failed: %s", case.source, err)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["case", *columns], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = write_text_atomic(out_dir / STATISTICS_CSV, buffer.getvalue())
    report.written.append(path)
    return path


def read_statistics_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``statistics.csv`` back into the values the sidecars hold.

    Empty cells become ``None``, ``True``/``False`` booleans, whole numbers ``int``, other numbers ``float``
    (written with Python's shortest round-trip repr, so they equal the sidecars' values exactly); ``case`` and
    ``name`` stay strings.

    Raises:
        DataError: The file cannot be read.
    """
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return [{k: v if k in ("case", "name") else _parse(v) for k, v in row.items()}
                    for row in csv.DictReader(fh)]
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read statistics table: {err}") from err


def _parse(text: str) -> Any:
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        return float(text)


def _section_of(sidecar: Path, case: Case, compute: Callable[[Case], dict[str, Any]],
                report: BatchReport) -> Any:
    data: dict[str, Any] = {}
    if sidecar.exists():
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(f"{sidecar}: not readable JSON ({err}); delete it and its case's outputs, or rerun "
                            "with --overwrite") from err
        if not isinstance(data, dict):
            raise DataError(f"{sidecar}: holds a {type(data).__name__}, not a JSON object; rerun with --overwrite")
    if "statistics" not in data:
        data = {"case": case.name, "input": str(case.source), **data, "statistics": compute(case)}
        report.written.append(write_json_atomic(sidecar, data))
        log.info("%s: statistics added", sidecar)
    return data["statistics"]


def _rows_of(section: Any, sidecar: Path, columns: Sequence[str]) -> list[dict[str, Any]]:
    rows = section.get("structures") if isinstance(section, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and list(r) == list(columns) for r in rows):
        raise DataError(f"{sidecar}: its 'statistics' section does not hold the fields this medseg writes "
                        f"({', '.join(columns[:4])}, ...); remove the section to have it recomputed, or rerun "
                        "with --overwrite")
    return rows
