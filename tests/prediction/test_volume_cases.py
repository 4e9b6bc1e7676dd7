"""A folder of DICOM studies: a study whose only series is refused fails alone, with its reason in one line, the
others are still predicted and the run exits 1 (as a bad image among good ones does); a lone scout slice is no
study and is only skipped (tests/prediction/test_review_fixes.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medseg.errors import DataError
from medseg.prediction.predictor import Predictor
from medseg.prediction.volume import find_volume_cases, predict_volumes

AXIAL, SAGITTAL = [1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, -1]


def _study(folder: Path, *, sagittal: tuple[int, ...] = (), shift: float = 0.0, prefix: str = "") -> str:
    """Six 8x8 CT slices 2 mm apart in ``folder`` (the slices in ``sagittal`` turned sagittal, the last two moved
    ``shift`` mm further; file names start with ``prefix``); returns the SeriesInstanceUID."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    for k in range(6):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "CT"
        ds.SeriesDescription, ds.InstanceNumber = "tiny", k + 1
        ds.ImageOrientationPatient = SAGITTAL if k in sagittal else AXIAL
        ds.ImagePositionPatient = [0.0, 0.0, 2.0 * k + (shift if k >= 4 else 0.0)]
        ds.PixelSpacing, ds.Rows, ds.Columns = [1.0, 1.0], 8, 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.full((8, 8), 10 * k, np.int16).tobytes()
        ds.save_as(folder / f"{prefix}{k + 1:02d}.dcm", enforce_file_format=True)
    return series


def test_a_study_whose_only_series_is_refused_fails_alone_naming_why(ckpt3d, predict_cli, tmp_path):
    studies, out = tmp_path / "studies", tmp_path / "out"
    _study(studies / "a_good")
    mixed = _study(studies / "b_mixed", sagittal=(3, 4, 5))
    _study(studies / "d_good")
    refused = (f"failed: {studies / 'b_mixed'}: no usable DICOM volume series: series '{mixed}': slices in 2 "
               "orientations: axial [1, 0, 0, 0, 1, 0] (3 slices), sagittal [0, 1, 0, 0, 0, -1] (3 slices); a volume's "
               f"slices share one orientation, size and pixel spacing (see `medseg inspect {studies / 'b_mixed'}`)")
    code, stdout, stderr = predict_cli(ckpt3d[0], studies, "-o", out)
    assert code == 1, stdout + stderr
    assert stdout.startswith(f"4 files written to {out}, 0 existing skipped (--overwrite redoes them), 1 failed, ")
    assert stderr.splitlines() == [refused]  # and no warning beside it
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "a_good.json", "a_good.nii.gz", "d_good.json", "d_good.nii.gz"]

    gap = _study(studies / "c_gap", shift=3.0)  # a rerun: the refused study fails again, as an irregular one does
    code, stdout, stderr = predict_cli(ckpt3d[0], studies, "-o", out)
    assert code == 1, stdout + stderr
    assert stdout.startswith(f"0 files written to {out}, 2 existing skipped (--overwrite redoes them), 2 failed, ")
    assert sorted(stderr.splitlines()) == [refused, (
        f"failed: {studies / 'c_gap'}: series '{gap}': non-uniform slice spacing: 5.000 mm between slices 3 and 4 "
        "(04.dcm (instance 4), 05.dcm (instance 5)), expected 2.000 mm (missing slice?); irregular='resample' "
        "(--irregular resample) resamples it onto a regular grid")]


def test_the_python_api_reports_the_refused_study_and_refuses_inputs_with_nothing_else(ckpt3d, tmp_path):
    studies = tmp_path / "studies"
    _study(studies / "good")
    mixed = _study(studies / "mixed", sagittal=(0,))
    cases = find_volume_cases([studies])
    assert [(c.name, c.refused is None) for c in cases] == [("good", True), ("mixed", False)]
    report = predict_volumes(Predictor.from_checkpoint(ckpt3d[0], device="cpu"), [studies],
                             tmp_path / "out", progress=False)
    assert report.predicted == ["good"]
    assert [(source, message.split(": slices in")[0]) for source, message in report.failed] == [
        (str(studies / "mixed"), f"{studies / 'mixed'}: no usable DICOM volume series: series '{mixed}'")]
    with pytest.raises(DataError, match=r"mixed: no usable DICOM volume series: series '.*': slices in 2 orientations"):
        find_volume_cases([studies / "mixed"])  # the only case: refused before anything is written


def test_a_refused_series_beside_a_good_one_in_a_study_fails_as_its_own_case(ckpt3d, predict_cli, tmp_path):
    """Found by a hostile review: the broken second series of a study was dropped without a word (exit 0)."""
    study, out = tmp_path / "study", tmp_path / "out"
    _study(study, prefix="a")
    mixed = _study(study, sagittal=(1, 3, 5), prefix="b")
    cases = find_volume_cases([study])
    assert sorted(c.name for c in cases) == ["study_01", "study_02"]  # numbered in the order the series are listed
    assert sorted(c.refused is None for c in cases) == [False, True]
    code, stdout, stderr = predict_cli(ckpt3d[0], study, "-o", out)
    assert code == 1, stdout + stderr
    assert stdout.startswith(f"2 files written to {out}, 0 existing skipped (--overwrite redoes them), 1 failed, ")
    good = next(c.name for c in cases if c.refused is None)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [f"{good}.json", f"{good}.nii.gz"]
    assert stderr.splitlines() == [
        f"failed: {study}: series '{mixed}': slices in 2 orientations: axial [1, 0, 0, 0, 1, 0] (3 slices), sagittal "
        "[0, 1, 0, 0, 0, -1] (3 slices); a volume's slices share one orientation, size and pixel spacing (see "
        f"`medseg inspect {study}`)"]
