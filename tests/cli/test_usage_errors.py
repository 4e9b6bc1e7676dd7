"""Usage errors (unknown option, a value of the wrong type, a missing argument) are one stderr line, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from medseg.cli.main import app

runner = CliRunner()


@pytest.mark.parametrize(("args", "line"), [
    (["predict", "m.pt", "in", "-o", "out", "--overlap", "abc"],
     "error: medseg predict: Invalid value for '--overlap': Input should be a valid number, unable to parse string "
     "as a number (see medseg predict --help)"),
    (["predict", "m.pt"], "error: medseg predict: Missing argument 'inputs'. (see medseg predict --help)"),
    (["predict", "m.pt", "in"], "error: medseg predict: Missing option '--output' / '-o'. "
                                "(see medseg predict --help)"),
    (["evaluate", "--pred", "p", "--truth", "t", "--tolerance", "x"],
     "error: medseg evaluate: Invalid value for '--tolerance': Input should be a valid integer, unable to parse "
     "string as an integer (see medseg evaluate --help)"),
    (["synth", "polyp", "-o", "d", "--n", "1.5"],
     "error: medseg synth: Invalid value for '--n': Input should be a valid integer, unable to parse string as an "
     "integer (see medseg synth --help)"),
    (["config", "check"], "error: medseg config check: Missing argument 'config'. (see medseg config check --help)"),
    (["nosuch"], "error: medseg: No such command 'nosuch'. (see medseg --help)"),
    (["train", "c.yaml", "--epochs", "3"], "error: medseg train: No such option: --epochs "),
])
def test_usage_error_is_one_line_exit_2(args, line):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), lines
    assert result.stdout == "" and "Usage:" not in result.stderr and "╭" not in result.stderr


def test_medseg_error_after_parsing_keeps_its_exit_code(tmp_path):
    result = runner.invoke(app, ["evaluate", "--pred", str(tmp_path), "--truth", str(tmp_path), "--tolerance", "-5"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["error: --tolerance: got -5; allowed an integer 0..127 (gray levels)"]


def test_help_and_version_still_exit_0():
    helped = runner.invoke(app, ["predict", "--help"])
    assert helped.exit_code == 0 and "--overlap" in helped.stdout
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout.startswith("medseg ")


def test_bare_command_prints_help_exit_2():
    result = runner.invoke(app, [])
    assert result.exit_code == 2 and "Usage: medseg" in result.output and "train" in result.output


def test_console_script_path_gives_the_same_line(tmp_path):
    """``python -m medseg`` (what the console script runs) goes through the same handler."""
    proc = subprocess.run([sys.executable, "-m", "medseg", "predict", "m.pt", "in", "-o", "o", "--sw-batch-size",
                           "x"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: medseg predict: Invalid value for '--sw-batch-size': Input should be a valid integer, unable to "
        "parse string as an integer (see medseg predict --help)"]
