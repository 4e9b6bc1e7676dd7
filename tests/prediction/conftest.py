"""Helpers shared by the prediction tests, as fixtures: ``medseg predict`` run in this process, and snapshots of an
output folder (to show that a rerun left files untouched: same bytes, same modification time)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medseg.cli.main import app

Snapshot = dict[str, tuple[int, bytes]]


def run_predict(*args: object) -> tuple[int, str, str]:
    """``medseg predict ARGS --device cpu -q``: exit code, stdout, stderr. An exception other than the exit (a
    traceback the user would see) fails the test."""
    result = CliRunner().invoke(app, ["predict", *map(str, args), "--device", "cpu", "-q"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def outputs_of(folder: Path) -> Snapshot:
    """The files directly in ``folder`` (not the hidden settings records) by name: modification time and bytes."""
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()}


def every_file_of(folder: Path) -> Snapshot:
    """Every file under ``folder`` (the records too) by its relative path: modification time and bytes."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def predict_cli() -> Callable[..., tuple[int, str, str]]:
    """:func:`run_predict`."""
    return run_predict


@pytest.fixture()
def snapshot_outputs() -> Callable[[Path], Snapshot]:
    """:func:`outputs_of`."""
    return outputs_of


@pytest.fixture()
def snapshot_all() -> Callable[[Path], Snapshot]:
    """:func:`every_file_of`."""
    return every_file_of
