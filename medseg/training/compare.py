"""Several training runs side by side (``medseg compare``): their curves overlaid in one PNG, and a table of each
run's best epoch with its validation metrics, printed and optionally written as CSV or Markdown.

Every value in the table is copied from the run's ``log.json`` (the record of its best epoch), never recomputed.
The best epoch is the one ``best.pt`` holds: the best ``val_<train.best_metric>`` of ``config.yaml`` (``dice``
unless the run chose ``iou`` or ``loss``), the first such epoch on ties.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medseg.atomic import write_text_atomic
from medseg.errors import ConfigError, DataError, OutputExistsError
from medseg.training.plots import plot_runs
from medseg.training.run_folder import read_log

__all__ = ["SUMMARY_KEYS", "RunSummary", "compare_runs", "summarize_run", "table_text"]

#: Whole-run validation keys of the table, in column order (then ``<class> dice`` and ``<class> iou``).
SUMMARY_KEYS: tuple[str, ...] = ("val_loss", "val_dice", "val_iou", "val_pixel_accuracy",
                                 "val_miou_with_background", "val_miou_without_background")
TABLE_SUFFIXES = (".csv", ".md")


@dataclass(frozen=True)
class RunSummary:
    """One run's row: its name, folder, best epoch and the metrics of that epoch's log record."""

    name: str
    run_dir: Path
    best_metric: str
    best_epoch: int
    epochs: int
    values: dict[str, float]


def _best_metric(run_dir: Path) -> str:
    path = run_dir / "config.yaml"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    train = raw.get("train") if isinstance(raw, dict) else None
    metric = train.get("best_metric", "dice") if isinstance(train, dict) else "dice"
    return str(metric)


def summarize_run(run_dir: str | Path, name: str | None = None) -> RunSummary:
    """The table row of one run folder.

    Raises:
        DataError: No ``log.json``, an unreadable one, or no validated epoch in it.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: run folder does not exist")
    if not (run_dir / "log.json").is_file():
        raise DataError(f"{run_dir}: no log.json; give run folders written by `medseg train`")
    try:
        records = read_log(run_dir)
    except (ValueError, TypeError) as err:
        raise DataError(f"{run_dir / 'log.json'}: not a training log ({' '.join(str(err).split())})") from None
    metric = _best_metric(run_dir)
    key = f"val_{metric}"
    scored = [r for r in records if isinstance(r, dict) and isinstance(r.get(key), int | float)
              and not math.isnan(r[key])]
    if not scored:
        raise DataError(f"{run_dir / 'log.json'}: no epoch with {key}; was the run validated?")
    lower = metric == "loss"
    best = min(scored, key=lambda r: r[key]) if lower else max(scored, key=lambda r: r[key])
    values = {k: float(best[k]) for k in SUMMARY_KEYS if isinstance(best.get(k), int | float)}
    for cls, metrics in (best.get("val_per_class") or {}).items():
        for m in ("dice", "iou"):
            if isinstance(metrics.get(m), int | float):
                values[f"{cls} {m}"] = float(metrics[m])
    return RunSummary(name or run_dir.name, run_dir, metric, int(best["epoch"]), len(records), values)


def table_text(rows: Sequence[RunSummary], fmt: str = "md") -> str:
    """The rows as a Markdown table (``"md"``, values to 4 decimals) or CSV (``"csv"``, values in full)."""
    columns = list(dict.fromkeys(k for r in rows for k in r.values))
    header = ["run", "best_epoch", "best_metric", "epochs", *columns]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        for r in rows:
            writer.writerow([r.name, r.best_epoch, r.best_metric, r.epochs,
                             *(repr(r.values[c]) if c in r.values else "" for c in columns)])
        return buf.getvalue()
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r.name, str(r.best_epoch), r.best_metric, str(r.epochs),
                 *(f"{r.values[c]:.4f}" if c in r.values else "" for c in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _check_output(path: Path, overwrite: bool, what: str) -> None:
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{what} {path} exists; pass --overwrite to replace it")
    if path.parent != Path() and not path.parent.is_dir():
        raise DataError(f"{what} {path}: folder {path.parent} does not exist")


def compare_runs(
    run_dirs: Sequence[str | Path], output: str | Path, *, table: str | Path | None = None, overwrite: bool = False,
) -> list[RunSummary]:
    """Overlay the curves of several runs in ``output`` (PNG) and write their table to ``table`` (.csv or .md).

    Args:
        run_dirs: Run folders of ``medseg train`` (each with ``log.json``); runs are named after their folders
            (the whole path when two folders share a name; spaces become ``_``).
        output: The PNG of overlaid curves (loss, Dice, IoU, learning rate, per-class Dice).
        table: Also write the table here; ``.csv`` (full precision) or ``.md`` (Markdown, 4 decimals).
        overwrite: Replace existing outputs.

    Returns:
        One :class:`RunSummary` per run, in the order given.

    Raises:
        ConfigError: No run, a run given twice, an output that is not ``.png``, a table not ``.csv``/``.md``.
        OutputExistsError: An output exists and ``overwrite`` is not set.
        DataError: A folder without a readable ``log.json`` or without a validated epoch.
    """
    dirs = [Path(d) for d in run_dirs]
    out = Path(output)
    if not dirs:
        raise ConfigError("RUN_DIR: give at least one run folder to compare")
    if len({d.resolve() for d in dirs}) != len(dirs):
        raise ConfigError(f"RUN_DIR: a run folder is given twice ({', '.join(map(str, dirs))})")
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--output: {out} must end in .png")
    tab = Path(table) if table is not None else None
    if tab is not None and tab.suffix.lower() not in TABLE_SUFFIXES:
        raise ConfigError(f"--table: {tab} must end in .csv or .md")
    _check_output(out, overwrite, "--output")
    if tab is not None:
        _check_output(tab, overwrite, "--table")
    names = [d.name for d in dirs]
    rows = [summarize_run(d, name=(d.name if names.count(d.name) == 1 else str(d)).replace(" ", "_")) for d in dirs]
    runs: dict[str, list[dict[str, Any]]] = {r.name: read_log(r.run_dir) for r in rows}
    plot_runs(runs, out)
    if tab is not None:
        write_text_atomic(tab, table_text(rows, "csv" if tab.suffix.lower() == ".csv" else "md"))
    return rows
