"""docs/cli-reference.md is generated from the Typer app and must be current and complete."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medseg.cli.reference import cli_reference_markdown, command_options, iter_commands

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli-reference.md"
COMMANDS = dict(iter_commands())


def test_cli_reference_is_current():
    hint = "regenerate: python -m medseg.cli.reference > docs/cli-reference.md"
    assert DOC.read_text() == cli_reference_markdown(), hint


def test_every_command_has_a_section():
    expected = ["medseg", "medseg train", "medseg predict", "medseg export", "medseg evaluate", "medseg compare",
                "medseg postprocess-select", "medseg demo", "medseg synth", "medseg plan", "medseg preprocess",
                "medseg inspect", "medseg doctor", "medseg config", "medseg config check",
                "medseg config show"]
    assert list(COMMANDS) == expected
    headings = re.findall(r"^## `(.+)`$", cli_reference_markdown(), re.MULTILINE)
    assert headings == expected


def test_predict_rows_name_every_option_with_type_and_default():
    assert command_options(COMMANDS["medseg predict"]) == [
        "--output", "-o", "--device", "--overwrite", "--no-overwrite", "--overlay", "--no-overlay", "--tta",
        "--no-tta", "--largest-component", "--all-components", "--precision", "--backend", "--overlap",
        "--sw-batch-size", "--roi-size", "--dicom-seg", "--no-dicom-seg", "--statistics", "--no-statistics",
        "--shard", "--workers", "--claim-timeout", "--probabilities", "--no-probabilities", "--threshold",
        "--irregular", "--verbose", "-v", "--quiet", "-q"]
    text = cli_reference_markdown()
    assert "medseg predict [OPTIONS] CHECKPOINT INPUTS...\n" in text
    assert "| `INPUTS...` | path, one or more | **required** |" in text
    assert "| `--output`, `-o` | path | **required** | Output folder. |" in text
    assert "| `--device` | text | `auto` | auto, cpu or cuda. |" in text
    assert "| `--overlap` | number | not set | Sliding-window overlap (0..1). |" in text
    assert "| `--tta` / `--no-tta` | flag (on/off) | not set | Flip test-time augmentation. |" in text
    assert "| `--set` | text, repeatable | not set | Override a config key: key.path=value. |" in text
    assert "| `--tolerance` | integer | `0` |" in text
    # a literal <name> in a help text is escaped, or the browser would swallow it as a tag
    assert "Run folder (default runs/&lt;name&gt;-&lt;time&gt;). |" in text


@pytest.mark.parametrize("name", [n for n in COMMANDS if n != "medseg"])
def test_options_agree_with_help_output(name):
    """The option names in the reference are exactly those `medseg ... --help` prints (an independent reader)."""
    from medseg.cli.main import app

    result = CliRunner().invoke(app, [*name.split()[1:], "--help"], env={"COLUMNS": "240", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    shown = set(re.findall(r"(?<![\w<-])(--?[a-z][a-z0-9-]*)", result.output)) - {"--help", "-h"}
    assert shown == set(command_options(COMMANDS[name])), result.output


def test_every_option_and_argument_is_described():
    rows = [line for line in cli_reference_markdown().splitlines() if line.startswith("| `") and "| --- |" not in line]
    undescribed = [row.split("|")[1].strip() for row in rows if row.rstrip().endswith("|  |")]
    assert rows and undescribed == []
