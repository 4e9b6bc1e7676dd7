"""Output names of ``medseg predict``: nnU-Net's ``_0000`` dropped for one-channel volume models (as training
names the case), clashes refused, models after the inputs named, and no empty output folder left behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medseg.cli.main import app
from medseg.errors import DataError
from medseg.prediction.volume import find_volume_cases, one_channel_case_name

runner = CliRunner()


def _lines(output: str) -> list[str]:
    return [line for line in output.strip().splitlines() if line.strip()]


def test_one_channel_case_names_drop_only_the_first_channel_suffix(tmp_path: Path) -> None:
    assert [one_channel_case_name(n) for n in ("a_0000.nii.gz", "a_0001.nii.gz", "a.mha", "x_000.nrrd", "_0000.nii")] \
        == ["a", "a_0001", "a", "x_000", "_0000"]
    for name in ("b_0000.nii.gz", "c.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    assert [(c.name, c.source.name) for c in find_volume_cases([tmp_path])] == [
        ("b", "b_0000.nii.gz"), ("c", "c.nii.gz")]
    (tmp_path / "b.nii.gz").write_bytes(b"")
    with pytest.raises(DataError) as err:
        find_volume_cases([tmp_path])
    assert str(err.value) == (f"inputs {tmp_path / 'b.nii.gz'} and {tmp_path / 'b_0000.nii.gz'} would both write "
                              "output 'b'; rename one")


def test_predict_names_nnunet_cases_as_training_did_and_evaluate_pairs_them(ckpt3d, tmp_path: Path) -> None:
    ckpt, training_images = ckpt3d
    cases = sorted(p.name[:-len(".nii.gz")] for p in training_images.iterdir())
    images = tmp_path / "imagesTs"  # nnU-Net's names: case_0000.nii.gz, labels case.nii.gz
    images.mkdir()
    for case in cases:
        shutil.copy(training_images / f"{case}.nii.gz", images / f"{case}_0000.nii.gz")
    result = runner.invoke(app, ["predict", str(ckpt), str(images), "-o", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{c}{s}" for c in cases for s in (".json", ".nii.gz"))
    scored = runner.invoke(app, ["evaluate", "--pred", str(tmp_path / "out"), "--truth",
                                 str(training_images.parent / "labelsTr"), "-o", str(tmp_path / "scores.csv"), "-q"])
    assert scored.exit_code == 0, scored.output
    rows = (tmp_path / "scores.csv").read_text().splitlines()
    assert {row.split(",")[0] for row in rows[1:]} == set(cases)
    assert "True" not in "".join(rows[1:])  # no case scored as a missing prediction


def test_a_model_among_the_inputs_is_named(ckpt3d, tmp_path: Path) -> None:
    ckpt, images = ckpt3d
    run = ckpt.parent.parent
    result = runner.invoke(app, ["predict", str(ckpt), str(images), str(run), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert _lines(result.output) == [
        f"error: {run} is a model; models come before the inputs (medseg predict MODEL... INPUT...)"]
    assert not (tmp_path / "out").exists()


def test_no_empty_output_folder_is_left_when_every_case_fails(ckpt3d, tmp_path: Path) -> None:
    ckpt, _ = ckpt3d
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), tmp_path / "in" / "flat.nii.gz")  # 2D
    result = runner.invoke(app, ["predict", str(ckpt), str(tmp_path / "in"), "-o", str(tmp_path / "a" / "b")])
    assert result.exit_code == 1, result.output
    assert [line for line in _lines(result.output) if "flat.nii.gz" in line][0].startswith("failed: ")
    assert not (tmp_path / "a").exists()  # both folders this run created are gone
    (tmp_path / "kept").mkdir()  # a folder that was there stays
    result = runner.invoke(app, ["predict", str(ckpt), str(tmp_path / "in"), "-o", str(tmp_path / "kept")])
    assert result.exit_code == 1 and (tmp_path / "kept").is_dir()
    shutil.rmtree(tmp_path / "kept")
