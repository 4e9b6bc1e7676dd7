"""A rerun of `predict` completes a batch: every output asked for counts (mask, overlay, sidecar, DICOM-SEG); the
missing ones are written, the existing ones kept byte for byte (only --overwrite rewrites them)."""

from __future__ import annotations

import errno
import json
import shutil
import traceback
from pathlib import Path

import pytest


@pytest.fixture()
def images(ckpt2d, tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for p in sorted(ckpt2d[1].iterdir())[:3]:
        shutil.copy(p, folder / p.name)
    return folder


def test_overlay_asked_on_rerun_is_written_masks_kept(ckpt2d, images, tmp_path, predict_cli, snapshot_outputs):
    out = tmp_path / "out"
    code, stdout, _ = predict_cli(ckpt2d[0], images, "-o", out)
    assert code == 0 and stdout.startswith("3 files written")
    before = snapshot_outputs(out)
    code, stdout, _ = predict_cli(ckpt2d[0], images, "-o", out, "--overlay")
    assert code == 0 and stdout.startswith("3 files written to") and ", 0 existing skipped" in stdout
    after = snapshot_outputs(out)
    stems = sorted(p.stem for p in images.iterdir())
    assert sorted(after) == sorted([f"{s}.png" for s in stems] + [f"{s}_overlay.png" for s in stems])
    assert all(after[name] == before[name] for name in before)  # masks untouched: same bytes, same mtime
    code, stdout, _ = predict_cli(ckpt2d[0], images, "-o", out, "--overlay")
    assert code == 0 and stdout.startswith("0 files written") and ", 3 existing skipped" in stdout


def test_interrupted_case_gets_only_its_missing_outputs(ckpt2d, images, tmp_path, predict_cli, snapshot_outputs):
    out = tmp_path / "out"
    assert predict_cli(ckpt2d[0], images, "-o", out, "--overlay", "--statistics")[0] == 0
    first = sorted(images.iterdir())[0].stem
    (out / f"{first}_overlay.png").unlink()  # as if the run had been killed between two writes
    (out / f"{first}.json").unlink()
    before = snapshot_outputs(out)
    code, stdout, _ = predict_cli(ckpt2d[0], images, "-o", out, "--overlay", "--statistics")
    assert code == 0 and stdout.startswith("3 files written") and ", 2 existing skipped" in stdout  # + the CSV
    after = snapshot_outputs(out)
    assert {f"{first}_overlay.png", f"{first}.json"} <= set(after)
    assert all(after[name] == before[name] for name in before if name != "statistics.csv")
    assert json.loads((out / f"{first}.json").read_text())["case"] == first


def test_overwrite_rewrites_every_output(ckpt2d, images, tmp_path, predict_cli):
    out = tmp_path / "out"
    predict_cli(ckpt2d[0], images, "-o", out, "--overlay")
    code, stdout, _ = predict_cli(ckpt2d[0], images, "-o", out, "--overlay", "--overwrite")
    assert code == 0 and stdout.startswith("6 files written") and ", 0 existing skipped" in stdout


@pytest.fixture()
def dicom_series(shared_data, tmp_path) -> Path:
    folder = tmp_path / "series"
    shutil.copytree(shared_data / "dicom-seg-dcmqi" / "ct", folder)
    return folder


def test_dicom_seg_asked_on_rerun_is_written(ckpt3d, dicom_series, tmp_path, predict_cli, snapshot_outputs):
    out = tmp_path / "out"
    assert predict_cli(ckpt3d[0], dicom_series, "-o", out)[0] == 0
    before = snapshot_outputs(out)
    assert sorted(before) == ["series.json", "series.nii.gz"]
    code, stdout, _ = predict_cli(ckpt3d[0], dicom_series, "-o", out, "--dicom-seg")
    assert code == 0 and stdout.startswith("1 files written") and ", 0 existing skipped" in stdout
    after = snapshot_outputs(out)
    assert sorted(after) == ["series.json", "series.nii.gz", "series.seg.dcm"]
    assert all(after[n] == before[n] for n in before)
    assert predict_cli(ckpt3d[0], dicom_series, "-o", out, "--dicom-seg")[1].startswith("0 files written")


def test_disk_full_writing_dicom_seg_is_one_line(ckpt3d, dicom_series, tmp_path, monkeypatch, predict_cli):
    """pydicom re-raises a write error with its whole traceback as the message and no errno."""
    import pydicom

    def full(self, *args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise OSError(f"With tag (7FE0,0010) got exception: {exc}\n{traceback.format_exc()}") from exc

    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", full)
    out = tmp_path / "out"
    code, stdout, stderr = predict_cli(ckpt3d[0], dicom_series, "-o", out, "--dicom-seg")
    assert code == 1 and "Traceback" not in stderr
    failed = [line for line in stderr.splitlines() if line.startswith(("failed:", "error:"))]
    assert failed == [f"failed: {dicom_series}: no space left on device writing {out}/series.seg.dcm; "
                      "free some space or choose another output folder"]
    assert not out.exists()  # no temporary file left behind: nothing was written, so the run removed its folder


def test_probabilities_asked_on_rerun_are_written(ckpt2d, images, tmp_path, predict_cli, snapshot_outputs):
    out = tmp_path / "out"
    assert predict_cli(ckpt2d[0], images, "-o", out)[0] == 0
    before = snapshot_outputs(out)
    code, stdout, _ = predict_cli(ckpt2d[0], images, "-o", out, "--probabilities")
    assert code == 0 and stdout.startswith("3 files written")
    after = snapshot_outputs(out)
    assert sorted(set(after) - set(before)) == sorted(f"{p.stem}_probabilities.npz" for p in images.iterdir())
    assert all(after[n] == before[n] for n in before)
