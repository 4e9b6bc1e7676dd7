"""Predicting irregular inputs: refused by default naming --irregular, resampled on request with the sidecar saying
so; NIfTI qform and sform of the input come back in the prediction as they were (tiny 3D checkpoint ``ckpt3d``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from typer.testing import CliRunner

from medseg.cli.main import app
from medseg.io import read_volume
from medseg.prediction.predictor import Predictor
from medseg.prediction.volume import predict_volumes

runner = CliRunner()


def _tilted_ct(shared_data: Path, folder: Path) -> Path:
    """The 3-slice dcmqi CT with each slice 0.81 mm (one pixel) further along +y than the one below."""
    folder.mkdir()
    for k, path in enumerate(sorted((shared_data / "dicom-seg-dcmqi" / "ct").iterdir())):
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + (2 - k) * float(ds.PixelSpacing[0]), z]
        ds.save_as(folder / path.name)
    return folder


def test_tilted_series_fails_naming_the_option_then_resamples_with_the_sidecar_saying_so(ckpt3d, shared_data,
                                                                                          tmp_path, monkeypatch):
    """The network's classes are replaced by a known box on the grid it is given (the tiny model finds nothing in
    this CT), so that the SEG's frames can be checked against the original slices pixel for pixel."""
    import medseg.prediction.volume as volume_module

    def box(loaded, volume, *, probabilities=False):
        volume = volume[0] if isinstance(volume, (list, tuple)) else volume  # one volume per input channel
        classes = np.zeros(volume.shape, np.uint8)
        classes[100:200, 150:300, :] = 1
        return classes, None

    ckpt, _ = ckpt3d
    series = _tilted_ct(shared_data, tmp_path / "tilted")
    result = runner.invoke(app, ["predict", str(ckpt), str(series), "-o", str(tmp_path / "refused")])
    assert result.exit_code == 1
    assert "gantry tilt / sheared stack: slices move 39.03 deg" in result.output
    assert "--irregular resample" in result.output
    monkeypatch.setattr(volume_module, "predict_outputs", box)
    result = runner.invoke(app, ["predict", str(ckpt), str(series), "-o", str(tmp_path / "out"),
                                 "--irregular", "resample", "--dicom-seg"])
    assert result.exit_code == 0, result.output
    grid = read_volume(series, irregular="resample")
    labels = read_volume(tmp_path / "out" / "tilted.nii.gz")
    assert labels.shape == grid.shape == (512, 514, 3)
    np.testing.assert_allclose(labels.affine, grid.affine, atol=1e-4)
    side = json.loads((tmp_path / "out" / "tilted.json").read_text())
    assert side["resampled"]["reason"].startswith("gantry tilt / sheared stack: slices move 39.03 deg")
    assert side["resampled"]["spacing_mm"] == list(grid.meta["resampled"]["spacing_mm"])
    assert "DICOM-SEG lies on the original slices" in side["resampled"]["output"]
    assert side["input_geometry"]["shape"] == [512, 514, 3]
    assert np.unique(labels.array).tolist() == [0, 26] and (labels.array == 26).sum() == 100 * 150 * 3
    # the SEG: one frame per original slice, at its ImagePositionPatient, the box shifted by that slice's tilt
    seg = pydicom.dcmread(tmp_path / "out" / "tilted.seg.dcm")
    slices = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in series.iterdir()}
    frames = seg.pixel_array.reshape(-1, 512, 512)
    assert len(frames) == 3
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source = slices[item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, [float(v) for v in source.ImagePositionPatient], atol=1e-3)
        grid_k = 3 - int(source.InstanceNumber)  # 03.dcm is the bottom slice, grid k = 0
        expected = np.zeros((512, 512), np.uint8)
        expected[150 - grid_k:300 - grid_k, 100:200] = 1
        np.testing.assert_array_equal(frames[f], expected)
    result = runner.invoke(app, ["predict", str(ckpt), str(series), "-o", str(tmp_path / "x"), "--irregular", "yes"])
    assert result.exit_code == 2 and "--irregular: got 'yes'; allowed 'refuse', 'resample'" in result.output


def test_prediction_keeps_the_input_qform_and_sform_with_their_codes(ckpt3d, tmp_path):
    ckpt, images = ckpt3d
    source = nib.load(sorted(images.iterdir())[0])
    sform = source.affine.copy()
    qform = sform.copy()
    qform[:3, 3] += [1.0, -2.0, 0.5]  # disagrees with the sform: both must come back as they were
    folder = tmp_path / "in"
    folder.mkdir()
    img = nib.Nifti1Image(np.asanyarray(source.dataobj), None)
    img.set_qform(qform, code=1)
    img.set_sform(sform, code=2)
    nib.save(img, folder / "case.nii.gz")
    # a sheared sform (qform cannot hold a shear): refused by default, resampled on request
    sheared = sform.copy()
    sheared[0, 2] += 0.8
    img = nib.Nifti1Image(np.asanyarray(source.dataobj), None)
    img.set_qform(qform, code=1)
    img.set_sform(sheared, code=2)
    nib.save(img, folder / "sheared.nii.gz")
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    report = predict_volumes(predictor, [folder], tmp_path / "out", progress=False)
    assert [Path(s).name for s, _ in report.failed] == ["sheared.nii.gz"]
    assert "shears the voxel axes" in report.failed[0][1] and "--irregular resample" in report.failed[0][1]
    header = nib.load(tmp_path / "out" / "case.nii.gz").header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 2)
    np.testing.assert_allclose(header.get_qform(), qform, atol=1e-4)
    np.testing.assert_allclose(header.get_sform(), sform, atol=1e-4)
    shutil.rmtree(tmp_path / "out")
    report = predict_volumes(predictor, [folder / "sheared.nii.gz"], tmp_path / "out", progress=False,
                             irregular="resample")
    assert report.ok, report.failed
    out = nib.load(tmp_path / "out" / "sheared.nii.gz")
    axes = out.affine[:3, :3] / np.linalg.norm(out.affine[:3, :3], axis=0)
    np.testing.assert_allclose(axes.T @ axes, np.eye(3), atol=1e-5)  # the label map lies on the orthogonal grid
    side = json.loads((tmp_path / "out" / "sheared.json").read_text())
    assert side["resampled"]["reason"].startswith("affine sheared by")


def test_inspect_refuses_or_describes_a_sheared_volume(tmp_path):
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[0, 2] = 0.6
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), affine), tmp_path / "sheared.nii.gz")
    result = runner.invoke(app, ["inspect", str(tmp_path / "sheared.nii.gz")])
    assert result.exit_code == 1 and "shears the voxel axes by 11.31 deg" in result.output
    result = runner.invoke(app, ["inspect", str(tmp_path / "sheared.nii.gz"), "--irregular", "resample"])
    assert result.exit_code == 0 and "shape (4, 5, 6)" in result.output
    assert "(resampled: affine sheared by 11.31 deg)" in result.output
