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
     "error: {t}/model.onnx: exists; pass --overwrite to replace it"),
    (["compare", "{t}/run", "-o", "{t}/curves.png"], "error: --output {t}/curves.png exists; pass --overwrite to "
                                                     "replace it"),
    (["plan", "{t}/data", "-o", "{t}/plan.yaml"], "error: {t}/plan.yaml exists; pass --overwrite to replace it"),
    (["evaluate", "--pred", "{t}", "--truth", "{t}", "-o", "{t}/metrics.csv"],
     "error: {t}/metrics.csv: exists; pass --overwrite to replace it"),
    (["demo", "-o", "{t}/demo"], "error: {t}/demo: demo folder exists and is not empty; pass --overwrite or "
                                 "another -o"),
    (["synth", "polyp", "-o", "{t}/synth"],
     "error: {t}/synth: folder is not empty (holds images); synth writes into a new or empty folder: pass "
     "--overwrite to replace its contents, or choose another -o"),
])
def test_an_output_that_exists_is_a_usage_refusal_exit_2(cli_refusal, existing, args, line):
    """Like a predict rerun with other settings (exit 2): the user is to pass --overwrite or choose another path."""
    before = _files(existing)
    assert cli_refusal([a.format(t=existing) for a in args], 2) == line.format(t=existing)
    assert _files(existing) == before  # nothing replaced


def _files(folder: Path) -> dict[Path, bytes]:
    """Every file under ``folder`` with its bytes, less a run folder's lock file (kept there by design)."""
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


# ------------------------------------------------------------------------------------------- predict's records
@pytest.mark.parametrize("overwrite", [True, False])
def test_a_file_where_predict_keeps_its_records_is_one_line_and_nothing_is_left(cli_refusal, ckpt2d, tmp_path,
                                                                               overwrite):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(sorted(ckpt2d[1].iterdir())[0], images)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".medseg-predict").write_text("not medseg's")
    line = cli_refusal(["predict", ckpt2d[0], images, "-o", out, "--device", "cpu", "-q",
                     *(["--overwrite"] if overwrite else [])], 1)
    assert line == (f"error: {out}/.medseg-predict: is a file; expected a folder, where medseg predict writes the "
                    "settings record of each image case; remove or rename it, or choose another -o")
    assert [p.name for p in out.iterdir()] == [".medseg-predict"]  # no .medseg-claims/, no mask
    assert (out / ".medseg-predict").read_text() == "not medseg's"


# ------------------------------------------------------------------------------------------- inspect
def _series(shared_data: Path, folder: Path, edit: dict[int, dict[str, object]]) -> tuple[Path, str]:
    """A copy of the 3-slice CT series (slices 1 mm apart) with some slices' header attributes changed."""
    import pydicom

    shutil.copytree(shared_data / "dicom-seg-dcmqi" / "ct", folder)
    files = sorted(folder.iterdir())
    for index, changes in edit.items():
        ds = pydicom.dcmread(files[index])
        for key, value in changes.items():
            setattr(ds, key, value)
        ds.save_as(files[index])
    return folder, str(pydicom.dcmread(files[0]).SeriesInstanceUID)


def test_inspect_of_an_unevenly_spaced_series_says_why_and_exits_1(shared_data, tmp_path):
    # z of the slices 01, 02, 03: -126.69, -127.69, -128.69 mm; 03 moved to -135.69, 8 mm below 02
    folder, uid = _series(shared_data, tmp_path / "uneven", {2: {"ImagePositionPatient": [-235.2, -226.8, -135.69]}})
    result = runner.invoke(app, ["inspect", str(folder)])
    assert result.exit_code == 1, result.output
    assert result.stdout.startswith(f"{folder}: 1 series (0 usable as volumes)\n")
    assert "[irregular volume, refused unless --irregular resample: non-uniform slice spacing" in result.stdout
    assert result.stderr.splitlines() == [
        f"error: {folder}: no series can be read as a volume: series '{uid}': non-uniform slice spacing: 8.000 mm "
        "between slices 0 and 1 (03.dcm (instance 3), 02.dcm (instance 2)), expected 1.000 mm (missing slice?); "
        "--irregular resample reads it resampled onto a regular grid"]
    resampled = runner.invoke(app, ["inspect", str(folder), "--irregular", "resample"])
    assert resampled.exit_code == 0 and resampled.stderr == "", resampled.output
    assert resampled.stdout.startswith(f"{folder}: 1 series (1 usable as volumes)\n")


def test_inspect_of_a_series_that_mixes_orientations_says_why_and_exits_1(shared_data, tmp_path):
    folder, uid = _series(shared_data, tmp_path / "mixed", {1: {"ImageOrientationPatient": [0, 1, 0, 0, 0, -1]}})
    (folder / sorted(folder.iterdir())[2].name).unlink()  # two slices, one per orientation: neither is a volume
    result = runner.invoke(app, ["inspect", str(folder)])
    assert result.exit_code == 1, result.output
    assert result.stdout.startswith(f"{folder}: 1 series (0 usable as volumes)\n")  # one series, refused whole
    assert result.stderr.splitlines() == [
        f"error: {folder}: no series can be read as a volume: series '{uid}': slices in 2 orientations: axial "
        "[1, 0, 0, 0, 1, 0] (1 slice), sagittal [0, 1, 0, 0, 0, -1] (1 slice); a volume's slices share one "
        "orientation, size and pixel spacing"]


def test_inspect_of_dicom_without_images_exits_1_and_of_no_dicom_still_0(shared_data, tmp_path):
    seg = tmp_path / "seg"
    seg.mkdir()
    shutil.copy(shared_data / "dicom-seg-dcmqi" / "liver_seg.dcm", seg)
    result = runner.invoke(app, ["inspect", str(seg)])
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [
        f"error: {seg}: no DICOM image series to read as a volume; liver_seg.dcm: non-image SOP class SEG"]
    notes = tmp_path / "notes"  # no DICOM at all: the listing says so, and there is nothing medseg refused
    notes.mkdir()
    (notes / "README.txt").write_text("not DICOM")
    listed = runner.invoke(app, ["inspect", str(notes)])
    assert listed.exit_code == 0 and listed.stderr == "", listed.output
    assert listed.stdout.startswith(f"{notes}: 0 series (0 usable as volumes)\n  skipped 1 file(s) (not a DICOM file")


@pytest.mark.parametrize("command", [[], ["train"], ["predict"], ["config", "show"]])
def test_dash_h_is_help_like_dash_dash_help(command):
    """`-h` was 'No such option: -h' (found by a hostile review); it now prints the same help as `--help`."""
    short, long = (runner.invoke(app, [*command, flag]) for flag in ("-h", "--help"))
    assert short.exit_code == long.exit_code == 0, short.output
    assert short.stdout == long.stdout and "Usage: medseg" in short.stdout
