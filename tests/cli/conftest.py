"""Shared fixture of the command-line door tests: run ``medseg ARGS`` and return its one refusal line."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from typer.testing import CliRunner

from medseg.cli.main import app


@pytest.fixture()
def cli_refusal() -> Callable[..., str]:
    """``cli_refusal(args, code=2)``: run ``medseg ARGS``; assert the exit code, no traceback and a single stderr
    line, and return that line."""
    runner = CliRunner()

    def refusal(args: Sequence[object], code: int = 2) -> str:
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        assert result.exit_code == code, result.output
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and "Traceback" not in result.output, result.output
        return lines[0]

    return refusal
