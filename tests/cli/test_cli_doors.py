"""The command line's refusals: an output that exists is a usage refusal (exit 2, one line naming the path and
--overwrite); a file where medseg keeps its settings records is one line, nothing left behind; inspect of a DICOM
folder medseg cannot read exits 1 with the reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medseg.cli.main import app

runner = CliRunner()


def _refusal(args: list[str], code: int) -> str:
    """Run ``medseg ARGS``; assert the exit code, no traceback and a single stderr line, and return it."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


# ------------------------------------------------------------------------------------------- outputs that exist
@pytest.fixture()
def existing(tmp_path: Path) -> Path:
    """A folder where each command's output exists already (the checks run before any input is read)."""
    for name in ("model.onnx", "curves.png", "plan.yaml", "metrics.csv"):
        (tmp_path / name).write_text("keep me")
    for folder in ("run", "demo", "synth/images"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "run" / "log.json").write_text("keep me")
    (tmp_path / "demo" / "notes.txt").write_text("keep me")
    (tmp_path / "synth" / "images" / "case_000.png").write_text("keep me")
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({
        "data": {"kind": "images2d", "root": str(tmp_path / "data"), "image_size": [32, 32],
                 "labels": {"classes": {0: "background", 255: "polyp"}}},
        "train": {"device": "cpu"}}))
    return tmp_path


@pytest.mark.parametrize(("args", "line"), [
    (["train", "{t}/exp.yaml", "--run-dir", "{t}/run"],
     "error: {t}/run: run folder exists and is not empty; use --resume {t}/run to continue it, --overwrite to "
     "replace it, or another --run-dir"),
    (["export", "{t}/missing.pt", "-o", "{t}/model.onnx"],
     "error: {t}/model.onnx: exists; pass --overwrite (overwrite=True) to replace it"),
    (["compare", "{t}/run", "-o", "{t}/curves.png"], "error: --output {t}/curves.png exists; pass --overwrite to "
                                                     "replace it"),
    (["plan", "{t}/data", "-o", "{t}/plan.yaml"], "error: {t}/plan.yaml exists; pass --overwrite to replace it"),
    (["evaluate", "--pred", "{t}", "--truth", "{t}", "-o", "{t}/metrics.csv"],
     "error: {t}/metrics.csv: exists; pass --overwrite to replace it"),
    (["demo", "-o", "{t}/demo"], "error: {t}/demo: demo folder exists and is not empty; pass --overwrite or "
                                 "another -o"),
    (["synth", "polyp", "-o", "{t}/synth"],
     "error: {t}/synth/images: already holds 1 case file(s) such as case_000.png; use an empty folder or pass "
     "--overwrite (overwrite=True)"),
])
def test_an_output_that_exists_is_a_usage_refusal_exit_2(existing, args, line):
    """Like a predict rerun with other settings (exit 2): the user is to pass --overwrite or choose another path."""
    before = _files(existing)
    assert _refusal([a.format(t=existing) for a in args], 2) == line.format(t=existing)
    assert _files(existing) == before  # nothing replaced


def _files(folder: Path) -> dict[Path, bytes]:
    """Every file under ``folder`` with its bytes, less a run folder's lock file (kept there by design)."""
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}
