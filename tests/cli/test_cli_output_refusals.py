"""Refusals of `evaluate` and `synth` check every output before writing any: exit 2, one line naming the path and
--overwrite (or what is wrong with -o), and the folder is left as it was, files and folders alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medseg.cli.main import app

runner = CliRunner()



def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder``: a file's bytes, None for a folder (so an empty folder left behind shows)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


# ------------------------------------------------------------------------------------------------------ evaluate
@pytest.fixture()
def masks(tmp_path: Path) -> Path:
    """pred/ and truth/ with one 4x4 mask each (0/255), equal: Dice 1."""
    mask = np.zeros((4, 4), np.uint8)
    mask[1:3, 1:3] = 255
    for sub in ("pred", "truth"):
        (tmp_path / sub).mkdir()
        Image.fromarray(mask).save(tmp_path / sub / "case.png")
    return tmp_path


def test_evaluate_refuses_an_existing_summary_before_writing_the_csv(cli_refusal, masks: Path) -> None:
    (masks / "he2.summary.json").write_text('{"mine": 1}\n')
    before = _tree(masks)
    args = ["evaluate", "--pred", masks / "pred", "--truth", masks / "truth", "-o", masks / "he2.csv"]
    assert cli_refusal(args) == (f"error: {masks}/he2.summary.json: exists (the summary written beside he2.csv); "
                              "pass --overwrite to replace it")
    assert _tree(masks) == before  # no he2.csv either
    result = runner.invoke(app, [*map(str, args), "--overwrite"])
    assert result.exit_code == 0, result.output
    summary = json.loads((masks / "he2.summary.json").read_text())
    assert summary["n_cases"] == 1 and summary["summary"]["class_255"]["dice"]["mean"] == 1.0
    assert (masks / "he2.csv").read_text().splitlines()[0].startswith("case,class,")



@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_evaluate_refuses_a_folder_as_its_csv_or_summary_with_and_without_overwrite(cli_refusal, masks: Path,
                                                                                   overwrite: list[str]) -> None:
    """Found by a hostile review: a folder at -o was 'exists; pass --overwrite', and with --overwrite the whole
    evaluation ran, then failed naming a temporary file."""
    (masks / "out").mkdir()
    (masks / "m.summary.json").mkdir()
    before = _tree(masks)
    base = ["evaluate", "--pred", masks / "pred", "--truth", masks / "truth", *overwrite, "-o"]
    assert cli_refusal([*base, masks / "out"]) == (
        f"error: {masks}/out: is a folder; -o is the per-case CSV file to write, e.g. {masks}/out/metrics.csv")
    assert cli_refusal([*base, masks / "m.csv"]) == (
        f"error: {masks}/m.summary.json: is a folder where the summary beside m.csv goes; remove it or choose "
        "another -o")
    assert _tree(masks) == before


# --------------------------------------------------------------------------------------------------------- synth
NOT_EMPTY = ("error: {d}: folder is not empty (holds {names}); synth writes into a new or empty folder: pass "
             "--overwrite to replace its contents, or choose another -o")


@pytest.mark.parametrize(("files", "names"), [
    ({"README.txt": "MY OWN README\n"}, "README.txt"),
    ({"masks/case_000.png": "keep me"}, "masks"),  # no images/ folder is created beside it
    ({".hidden": ""}, ".hidden"),  # like demo: any entry makes the folder not empty
])
def test_synth_refuses_a_folder_that_is_not_empty(cli_refusal, tmp_path: Path, files: dict[str, str],
                                                  names: str) -> None:
    out = tmp_path / "d"
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    before = _tree(tmp_path)
    assert cli_refusal(["synth", "polyp", "-o", out, "--n", "2"]) == NOT_EMPTY.format(d=out, names=names)
    assert _tree(tmp_path) == before


def test_synth_spine_into_a_polyp_dataset_is_refused_and_overwrite_replaces_it(cli_refusal, tmp_path: Path) -> None:
    out = tmp_path / "d"
    assert runner.invoke(app, ["synth", "polyp", "-o", str(out), "--n", "2"]).exit_code == 0
    before = _tree(tmp_path)
    line = cli_refusal(["synth", "spine", "-o", out, "--n", "1"])
    assert line == NOT_EMPTY.format(d=out, names="README.txt, images, masks")
    assert _tree(tmp_path) == before
    result = runner.invoke(app, ["synth", "spine", "-o", str(out), "--n", "1", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert sorted(_tree(out)) == ["README.txt", "imagesTr", "imagesTr/case_000.nii.gz", "labelsTr",
                                  "labelsTr/case_000.nii.gz"]
    assert "CT spine phantoms" in (out / "README.txt").read_text()


def test_synth_into_a_file_is_a_usage_error_and_into_an_empty_folder_works(cli_refusal, tmp_path: Path) -> None:
    target = tmp_path / "h_synfile"
    target.write_text("keep me")
    for extra in ([], ["--overwrite"]):
        line = cli_refusal(["synth", "polyp", "-o", target, "--n", "1", *extra])
        assert line == f"error: {target}: is a file; -o is the dataset folder to write: give a new or empty folder"
        assert _tree(tmp_path) == {"h_synfile": b"keep me"}
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["synth", "polyp", "-o", str(empty), "--n", "1"])
    assert result.exit_code == 0, result.output
    assert sorted(_tree(empty)) == ["README.txt", "images", "images/case_000.png", "masks", "masks/case_000.png"]
