"""A settings record or sidecar that cannot be read (a folder, no JSON) fails its own case only: one line naming the
file and what to do, the other cases are predicted, the run exits 1 with its summary. ``--overwrite`` replaces a
garbage record but never removes a folder (user data)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medseg.prediction.case_records import case_record


@pytest.fixture()
def three_images(ckpt2d, tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for p in sorted(ckpt2d[1].iterdir())[:3]:
        shutil.copy(p, folder / p.name)
    return folder


def _failed_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(("failed:", "error:"))]


def test_folder_as_record_fails_that_case_only_and_is_never_removed(ckpt2d, three_images, tmp_path, predict_cli):
    out = tmp_path / "out"
    first, *others = sorted(p.stem for p in three_images.iterdir())
    record = case_record(out, first)
    record.mkdir(parents=True)
    (record / "notes.txt").write_text("the user's file")
    expected = (f"failed: {three_images / f'{first}.png'}: {record}: is a folder, where medseg predict keeps the "
                "settings that made this case's outputs in a file; remove or rename the folder to predict this case "
                "(medseg does not delete folders, not even with --overwrite)")
    for extra in ((), ("--overwrite",)):
        code, stdout, stderr = predict_cli(ckpt2d[0], three_images, "-o", out, *extra)
        assert code == 1, stderr
        assert stdout.startswith("2 files written") and ", 1 failed," in stdout
        assert _failed_lines(stderr) == [expected]
        assert sorted(p.name for p in out.glob("*.png")) == [f"{n}.png" for n in others]
        assert (record / "notes.txt").read_text() == "the user's file"  # the folder and its file are kept

    shutil.rmtree(record)  # as the message says: the case is then predicted
    code, stdout, _ = predict_cli(ckpt2d[0], three_images, "-o", out)
    assert code == 0 and stdout.startswith("1 files written") and (out / f"{first}.png").is_file()


def test_garbage_record_of_a_kept_mask_fails_that_case_overwrite_replaces_it(ckpt2d, three_images, tmp_path,
                                                                             predict_cli):
    out = tmp_path / "out"
    first, *others = sorted(p.stem for p in three_images.iterdir())
    assert predict_cli(ckpt2d[0], three_images, "-o", out)[0] == 0
    for name in others:
        (out / f"{name}.png").unlink()
    record = case_record(out, first)
    record.write_text("garbage")
    kept = (out / f"{first}.png").stat().st_mtime_ns

    code, stdout, stderr = predict_cli(ckpt2d[0], three_images, "-o", out)
    assert code == 1, stderr
    assert stdout.startswith("2 files written") and ", 1 failed," in stdout
    assert _failed_lines(stderr) == [
        f"failed: {three_images / f'{first}.png'}: {record}: not readable JSON (Expecting value: line 1 column 1 "
        "(char 0)), so the settings that made this case's outputs are unknown; delete it and the case's outputs to "
        "redo the case, or rerun with --overwrite"]
    assert all((out / f"{n}.png").is_file() for n in others)
    assert (out / f"{first}.png").stat().st_mtime_ns == kept and record.read_text() == "garbage"

    code, stdout, stderr = predict_cli(ckpt2d[0], three_images, "-o", out, "--overwrite")
    assert (code, _failed_lines(stderr)) == (0, []) and stdout.startswith("3 files written")
    assert json.loads(record.read_text())["settings"]["threshold"] is None


@pytest.fixture()
def two_volumes(ckpt3d, tmp_path):
    """A folder with copies of two of the 3D fixture's volumes: (folder, source files, case names)."""
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    files = sorted(ckpt3d[1].iterdir())[:2]
    for f in files:
        shutil.copy(f, volumes / f.name)
    names = [f.name.removesuffix(".nii.gz") for f in files]
    return volumes, files, names


def test_garbage_volume_sidecar_fails_that_case_only(ckpt3d, tmp_path, predict_cli, two_volumes):
    volumes, files, names = two_volumes
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{names[0]}.json").write_text("[1, 2]")

    code, stdout, stderr = predict_cli(ckpt3d[0], volumes, "-o", out)
    assert code == 1, stderr
    assert stdout.startswith("2 files written") and ", 1 failed," in stdout  # the other case's map and sidecar
    assert _failed_lines(stderr) == [
        f"failed: {volumes / files[0].name}: {out / f'{names[0]}.json'}: holds a JSON list, not an object, so the "
        "settings that made this case's outputs are unknown; delete it and the case's outputs to redo the case, or "
        "rerun with --overwrite"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        [f"{names[0]}.json", f"{names[1]}.json", f"{names[1]}.nii.gz"])


def test_folder_as_volume_sidecar_fails_that_case_with_and_without_overwrite(ckpt3d, tmp_path, predict_cli,
                                                                           two_volumes):
    volumes, files, names = two_volumes
    out = tmp_path / "out"
    (out / f"{names[0]}.json").mkdir(parents=True)
    folder, source = out / f"{names[0]}.json", volumes / files[0].name
    for extra, line in (((), f"failed: {source}: {folder}: is a folder, where medseg predict keeps the settings "
                             "that made this case's outputs in a file; remove or rename the folder to predict this "
                             "case (medseg does not delete folders, not even with --overwrite)"),
                        (("--overwrite",), f"failed: {source}: {folder}: is a folder where this case's output "
                                           "belongs; remove or rename it to predict this case (medseg does not "
                                           "delete folders, not even with --overwrite)")):
        code, stdout, stderr = predict_cli(ckpt3d[0], volumes, "-o", out, *extra)
        assert code == 1, stderr
        assert ", 1 failed," in stdout and _failed_lines(stderr) == [line]
        assert folder.is_dir() and (out / f"{names[1]}.nii.gz").is_file()
