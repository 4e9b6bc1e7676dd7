"""DICOM scanning as ``medseg inspect`` shows it: files that are no DICOM image get a short reason of medseg's own,
pydicom's warnings stay out of the output (in the debug log), and a series whose slices disagree in orientation
is refused whole, naming the orientations, never read as the half of it that agrees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner

from medseg.cli.main import app
from medseg.io.dicom_scan import list_series

runner = CliRunner()
AXIAL, SAGITTAL = [1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, -1]


def _ct_series(folder: Path, n: int = 6) -> str:
    """``n`` axial 4x4 CT slices 2 mm apart (files 01.dcm ...); returns the SeriesInstanceUID."""
    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "CT"
        ds.SeriesDescription, ds.InstanceNumber = "tiny", k + 1
        ds.ImageOrientationPatient, ds.ImagePositionPatient = AXIAL, [0.0, 0.0, 2.0 * k]
        ds.PixelSpacing, ds.Rows, ds.Columns = [1.0, 1.0], 4, 4
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.full((4, 4), k, np.int16).tobytes()
        ds.save_as(folder / f"{k + 1:02d}.dcm", enforce_file_format=True)
    return series


def _edit(folder: Path, indices: range | list[int], **changes: object) -> None:
    for f in [sorted(folder.iterdir())[i] for i in indices]:
        ds = pydicom.dcmread(f)
        for key, value in changes.items():
            setattr(ds, key, value)
        ds.save_as(f)


def test_files_that_are_no_dicom_image_get_short_reasons_and_no_pydicom_warnings(tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(b"DICM" * 300)  # pydicom warns reading it (implicit/explicit VR)
    (folder / "x.dcm").write_text("hello")
    result = runner.invoke(app, ["inspect", str(folder)])
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == [
        f"{folder}: 0 series (0 usable as volumes)",
        "  skipped 1 file(s) (malformed DICOM header (a DICM prefix, but no SOP class, Rows or Columns)): a.dcm",
        "  skipped 1 file(s) (not a DICOM file (no DICM prefix)): x.dcm"]
    assert result.stderr.splitlines() == [  # no pydicom warning lines around it
        f"error: {folder}: no DICOM image series to read as a volume; a.dcm: malformed DICOM header (a DICM prefix, "
        "but no SOP class, Rows or Columns)"]
    verbose = runner.invoke(app, ["inspect", str(folder), "-v"])  # the warning is kept in the debug log
    assert ("DEBUG medseg.io.dicom_scan: pydicom, while reading DICOM headers: Expected implicit VR, but found "
            "explicit VR - using explicit VR for reading") in verbose.stderr.splitlines()


def test_a_series_without_rows_and_sop_class_says_so_in_one_space(tmp_path):
    _ct_series(tmp_path / "s", n=2)
    for f in sorted((tmp_path / "s").iterdir()):
        ds = pydicom.dcmread(f)
        del ds.Rows, ds.Columns, ds.SOPClassUID
        del ds.file_meta.MediaStorageSOPClassUID
        ds.save_as(f)
    [series] = list_series(tmp_path / "s")
    assert (series.usable, series.reason) == (False, "no SOP class (no Rows/Columns)")


def test_a_series_whose_slices_disagree_in_orientation_is_refused_whole(tmp_path, ckpt3d):
    folder = tmp_path / "study"
    uid = _ct_series(folder)
    _edit(folder, range(1, 6, 2), ImageOrientationPatient=SAGITTAL)  # every second slice
    result = runner.invoke(app, ["inspect", str(folder)])
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"{folder}: 1 series (0 usable as volumes)" and len(lines) == 2
    reason = ("slices in 2 orientations: axial [1, 0, 0, 0, 1, 0] (3 slices), sagittal [0, 1, 0, 0, 0, -1] "
              "(3 slices); a volume's slices share one orientation, size and pixel spacing")
    assert lines[1].endswith(f"uid={uid}  [skipped: {reason}]") and " 6 files " in lines[1]
    assert result.stderr.splitlines() == [f"error: {folder}: no series can be read as a volume: series '{uid}': "
                                          f"{reason}"]

    predicted = runner.invoke(app, ["predict", str(ckpt3d[0]), str(folder), "-o", str(tmp_path / "out"),
                                    "--device", "cpu", "-q"])
    assert predicted.exit_code == 1, predicted.output
    assert predicted.stderr.splitlines() == [
        f"error: {folder}: no usable DICOM volume series: series '{uid}': {reason} (see `medseg inspect {folder}`)"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("changes", "found"), [
    ({"Rows": 2, "PixelData": np.zeros((2, 4), np.int16).tobytes()},
     "slices in 2 sizes: 4x4 (4 slices), 4x2 (2 slices)"),
    ({"PixelSpacing": [0.5, 0.5]}, "slices in 2 pixel spacings: 1x1 mm (4 slices), 0.5x0.5 mm (2 slices)"),
])
def test_slices_of_other_sizes_or_pixel_spacings_refuse_the_series(tmp_path, changes, found):
    _ct_series(tmp_path / "s")
    _edit(tmp_path / "s", [1, 4], **changes)
    [series] = list_series(tmp_path / "s")
    assert (series.usable, series.n_files) == (False, 6) and series.reason.startswith(f"{found}; ")


def test_header_noise_is_one_geometry_and_a_localizer_part_is_named(tmp_path):
    _ct_series(tmp_path / "s")
    _edit(tmp_path / "s", [2], ImageOrientationPatient=[1, 0.00006, 0, 0, 1, 0])  # rounds apart at 4 decimals
    _edit(tmp_path / "s", [3], PixelSpacing=[1.00006, 1])
    [series] = list_series(tmp_path / "s")
    assert series.usable and series.size == (4, 4, 6) and series.reason is None

    _edit(tmp_path / "s", [0], ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])  # a scout inside the series
    result = runner.invoke(app, ["inspect", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].endswith("2 series (1 usable as volumes)")  # the two parts of the series, the volume first
    assert lines[1].endswith("[volume; split (mixed image/localizer): part 2 of 2]") and "4x4x5" in lines[1]
    assert lines[2].endswith("[skipped: split (mixed image/localizer): part 1 of 2; localizer]")
