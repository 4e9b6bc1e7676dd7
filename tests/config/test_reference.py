"""docs/config.md is generated from the schema and must be current."""

from __future__ import annotations

from pathlib import Path

from medseg.config.reference import config_reference_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_config_reference_is_current():
    hint = "regenerate: python -m medseg.config.reference > docs/config.md"
    assert DOC.read_text() == config_reference_markdown(), hint


def test_every_field_is_described():
    text = config_reference_markdown()
    undocumented = [line.split("|")[1].strip() for line in text.splitlines()
                    if line.startswith("| `") and line.rstrip().endswith("|  |") and "(section)" not in line
                    and "**required**" not in line]
    assert undocumented == []
