"""Irregular geometry: every DICOM slice checked against the stack, refused by default with one line naming the
option, resampled on request with the original slices' world positions honoured; sheared NIfTI likewise; NIfTI
qform and sform written back as they were read.

DICOM cases rewrite ImagePositionPatient (and, for the linear-intensity cases, the pixels) of copies of the real
3-slice dcmqi CT (axial, 0.810547 mm pixels, 1 mm apart) at test time.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy.ndimage import map_coordinates

from medseg.errors import ConfigError, DataError
from medseg.io import list_series, read_volume, write_label_map, write_volume
from medseg.io.describe import describe_path
from medseg.io.volume import LPS_RAS

PIXEL = 0.810547


def _edit(folder: Path, edit) -> list[pydicom.Dataset]:
    """Apply ``edit(k, ds)`` to each file (k = file order, 01.dcm first) and return the edited datasets."""
    out = []
    for k, path in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(path)
        edit(k, ds)
        ds.save_as(path)
        out.append(ds)
    return out


def _move(shifts: dict[int, tuple[float, float, float]]):
    def edit(k, ds):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        dx, dy, dz = shifts.get(k, (0.0, 0.0, 0.0))
        ds.ImagePositionPatient = [x + dx, y + dy, z + dz]
    return edit


def _pixel_world_lps(ds: pydicom.Dataset) -> np.ndarray:
    """(cols, rows, 3) LPS position of every pixel of an axial slice (row direction +x, column direction +y)."""
    x0, y0, z0 = (float(v) for v in ds.ImagePositionPatient)
    dy, dx = (float(v) for v in ds.PixelSpacing)
    c, r = np.meshgrid(np.arange(ds.Columns), np.arange(ds.Rows), indexing="ij")
    return np.stack([x0 + c * dx, y0 + r * dy, np.full(c.shape, z0)], axis=-1)


def _sample(volume, world_lps: np.ndarray) -> np.ndarray:
    """Trilinear samples of ``volume`` at LPS points (an independent look-up through the affine)."""
    index = (world_lps @ LPS_RAS.T - volume.affine[:3, 3]) @ np.linalg.inv(volume.affine[:3, :3]).T
    return map_coordinates(volume.array.astype(np.float64), np.moveaxis(index, -1, 0), order=1, mode="nearest")


def test_a_slice_shifted_in_plane_is_refused_naming_the_slice_and_the_option(tmp_path, dcmqi_ct, copy_files):
    folder = copy_files(sorted(dcmqi_ct.iterdir()), tmp_path / "shifted")
    _edit(folder, _move({1: (5.0, 0.0, 0.0)}))  # the middle slice, 5 mm along x: first and last are in line
    with pytest.raises(DataError) as err:
        read_volume(folder)
    assert str(err.value) == (
        f"{folder}: series '{list_series(folder)[0].series_uid}': slice 1 (02.dcm (instance 2)) lies 5.000 mm off "
        "the line through the first and last slices (shifted in-plane or out of line); irregular='resample' "
        "(--irregular resample) resamples it onto a regular grid")
    assert "irregular volume, refused unless --irregular resample: slice 1 (02.dcm" in describe_path(folder)
    with pytest.raises(ConfigError, match=r"^irregular: got 'fix'; allowed 'refuse', 'resample'$"):
        read_volume(folder, irregular="fix")


def test_tilt_by_whole_pixels_resamples_onto_the_original_pixels_exactly(tmp_path, dcmqi_ct, copy_files):
    """Each slice 1 pixel further along +y (a 39 deg gantry tilt): the grid's nodes are the original pixels."""
    folder = copy_files(sorted(dcmqi_ct.iterdir()), tmp_path / "tilt")
    reference = read_volume(dcmqi_ct)
    datasets = _edit(folder, _move({0: (0.0, 2 * PIXEL, 0.0), 1: (0.0, PIXEL, 0.0)}))  # 01.dcm is the top slice
    with pytest.raises(DataError, match=r"gantry tilt / sheared stack: slices move 39\.03 deg off the slice normal"):
        read_volume(folder)
    volume = read_volume(folder, irregular="resample")
    report = volume.meta["resampled"]
    assert volume.shape == (512, 514, 3) and report["shape_from"] == [512, 512, 3]
    np.testing.assert_allclose(volume.spacing, (PIXEL, PIXEL, 1.0), atol=1e-6)
    np.testing.assert_allclose(volume.direction_lps, np.eye(3), atol=1e-9)
    # the bottom slice (03.dcm) fills j 0..511, the next j 1..512, the top j 2..513; the rest gets the minimum
    for k in range(3):
        np.testing.assert_array_equal(volume.array[:, k:k + 512, k], reference.array[:, :, k])
    assert report["filled_voxels"] == 2 * 512 * 3 and report["fill_value"] == reference.array.min() == -3024
    assert np.all(volume.array[:, :2, 2] == -3024) and np.all(volume.array[:, 512:, 0] == -3024)
    # sampled at every original pixel's world position (through the affine), the original pixel comes back
    for ds in datasets:
        values = ds.pixel_array.T.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        np.testing.assert_allclose(_sample(volume, _pixel_world_lps(ds)), values, atol=1e-9)


def test_missing_slice_is_interpolated_between_its_neighbours(tmp_path, dcmqi_ct, copy_files):
    folder = copy_files(sorted(dcmqi_ct.iterdir()), tmp_path / "gap")
    reference = read_volume(dcmqi_ct)
    _edit(folder, _move({0: (0.0, 0.0, 1.0)}))  # top slice 1 mm higher: gaps 1 and 2 mm
    with pytest.raises(DataError, match=r"non-uniform slice spacing: 2\.000 mm between slices 1 and 2 "
                                        r"\(02\.dcm \(instance 2\), 01\.dcm \(instance 1\)\)"):
        read_volume(folder)
    volume = read_volume(folder, irregular="resample")
    assert volume.shape == (512, 512, 4) and volume.meta["resampled"]["spacing_mm"][2] == pytest.approx(1.0)
    np.testing.assert_array_equal(volume.array[..., [0, 1, 3]], reference.array)
    middle = (reference.array[..., 1].astype(np.float64) + reference.array[..., 2]) / 2
    assert np.abs(volume.array[..., 2] - middle).max() <= 0.5  # rounded to int16 like the source
    assert volume.meta["resampled"]["filled_voxels"] == 0


def test_any_tilt_and_uneven_gaps_reproduce_a_linear_field(tmp_path, dcmqi_ct, copy_files):
    """Slices at uneven gaps (1.5, 2.5 mm) shifted by fractions of a pixel in x and y, holding a field linear in
    the world: every resampled node equals the field at its own world position (within the rounding to integers
    of the stored and the resampled values), so the original positions were used as stored, none rounded."""
    folder = copy_files(sorted(dcmqi_ct.iterdir()), tmp_path / "linear")

    def field(world: np.ndarray) -> np.ndarray:
        return 3.0 * world[..., 0] - 2.0 * world[..., 1] + 40.0 * world[..., 2] + 6000.0

    def edit(k, ds):
        _move({0: (0.9, -0.6, 2.0), 1: (0.37, -0.25, 0.5)})(k, ds)
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.rint(field(_pixel_world_lps(ds))).T.astype(np.int16).tobytes()

    _edit(folder, edit)
    volume = read_volume(folder, irregular="resample")
    report = volume.meta["resampled"]
    assert report["slice_gaps_mm"] == pytest.approx({"min": 1.5, "max": 2.5})
    assert report["spacing_mm"][2] == pytest.approx(4.0 / 3.0)  # 4 mm span in ceil(4 / 1.5) = 3 steps
    ijk = np.indices(volume.shape).reshape(3, -1).T
    world = (ijk @ volume.affine[:3, :3].T + volume.affine[:3, 3]) @ LPS_RAS.T
    filled = (volume.array.ravel() == report["fill_value"])
    error = np.abs(volume.array.ravel() - field(world))[~filled]
    assert error.max() <= 1.0 + 1e-6 and filled.sum() >= report["filled_voxels"] > 0


def test_sheared_nifti_is_refused_then_resampled(tmp_path):
    affine = np.array([[2.0, 0.0, 0.6, -10], [0.0, 2.0, 0.0, 5], [0.0, 0.0, 3.0, 1], [0, 0, 0, 1]])
    index = np.indices((12, 10, 8)).reshape(3, -1).T
    world = index @ affine[:3, :3].T + affine[:3, 3]
    values = (world @ [1.5, -2.0, 4.0] + 100).reshape(12, 10, 8).astype(np.float32)
    path = tmp_path / "sheared.nii.gz"
    nib.save(nib.Nifti1Image(values, affine), path)
    with pytest.raises(DataError, match=r"sheared\.nii\.gz: the affine shears the voxel axes by 11\.31 deg "
                                        r"\(no regular grid\); irregular='resample' \(--irregular resample\)"):
        read_volume(path)
    volume = read_volume(path, irregular="resample")
    assert volume.meta["resampled"]["shear_deg"] == pytest.approx(11.31, abs=0.01)
    axes = volume.affine[:3, :3] / np.asarray(volume.spacing)
    np.testing.assert_allclose(axes.T @ axes, np.eye(3), atol=1e-9)  # orthogonal now
    np.testing.assert_allclose(volume.spacing, np.linalg.norm(affine[:3, :3], axis=0), atol=1e-9)
    new_world = index @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    inside = volume.array.ravel() != volume.meta["resampled"]["fill_value"]
    np.testing.assert_allclose(volume.array.ravel()[inside], (new_world @ [1.5, -2.0, 4.0] + 100)[inside], atol=1e-3)
    assert inside.mean() > 0.7


def test_qform_and_sform_are_written_back_as_read(tmp_path):
    """A qform (code 1) that disagrees with the sform (code 2), and one that cannot hold a shear: both kept."""
    sform = np.array([[-0.9, 0.0, 0.0, 90], [0.0, 0.9, 0.0, -120], [0.0, 0.0, 2.5, -40], [0, 0, 0, 1]])
    qform = np.array([[-0.9, 0.0, 0.0, 91], [0.0, 0.9, 0.0, -121], [0.0, 0.0, 2.5, -41], [0, 0, 0, 1]])
    for name, codes in (("agree.nii.gz", (1, 2)), ("qform-off.nii.gz", (0, 2)), ("qform-only.nii", (1, 0))):
        img = nib.Nifti1Image(np.arange(60, dtype=np.int16).reshape(3, 4, 5), None)
        img.set_qform(qform, code=codes[0])
        img.set_sform(sform, code=codes[1])
        nib.save(img, tmp_path / name)
        volume = read_volume(tmp_path / name)
        for out, write in ((tmp_path / f"labels-{name}", lambda p, v: write_label_map(p, v.array > 30, v)),
                           (tmp_path / f"copy-{name}", write_volume)):
            write(out, volume)
            header = nib.load(out).header
            assert (int(header["qform_code"]), int(header["sform_code"])) == codes
            np.testing.assert_allclose(header.get_qform(), qform, atol=1e-5)
            np.testing.assert_allclose(header.get_sform(), sform, atol=1e-5)


def test_seg_of_a_resampled_series_lies_on_the_original_slices(tmp_path, dcmqi_ct, copy_files):
    """Labels on the regular grid of a tilted series -> a SEG whose frames are the original slices, each frame's
    position that slice's ImagePositionPatient and its pixels the labels at that slice's pixels."""
    from medseg.io.dicom_seg import write_dicom_seg

    folder = copy_files(sorted(dcmqi_ct.iterdir()), tmp_path / "tilt")
    datasets = _edit(folder, _move({0: (0.0, 2 * PIXEL, 0.0), 1: (0.0, PIXEL, 0.0)}))
    volume = read_volume(folder, irregular="resample")
    labels = np.zeros(volume.shape, np.uint8)
    labels[100:200, 150:300, :] = 1  # a box on the grid: on slice k it covers rows 150 - k .. 299 - k
    labels[300:320, 10:20, 1] = 2
    seg = pydicom.dcmread(write_dicom_seg(tmp_path / "a.seg.dcm", labels, volume, {1: "box", 2: "dot"}))
    by_position = {tuple(round(float(v), 3) for v in ds.ImagePositionPatient): k
                   for k, ds in enumerate(datasets)}  # 01.dcm is the top slice, k = 2 on the grid
    frames = seg.pixel_array.reshape(-1, 512, 512)
    found = {}
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        position = tuple(round(float(v), 3) for v in item.PlanePositionSequence[0].ImagePositionPatient)
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = by_position[position]
        assert source == datasets[k].SOPInstanceUID
        found[(k, segment)] = frames[f]
    for k in range(3):
        grid_k = 2 - k
        expected = np.zeros((512, 512), np.uint8)  # [row, col]
        expected[150 - grid_k:300 - grid_k, 100:200] = 1
        np.testing.assert_array_equal(found[(k, 1)], expected)
    dot = np.zeros((512, 512), np.uint8)
    dot[9:19, 300:320] = 1  # grid k = 1 is 02.dcm, one pixel along +y
    np.testing.assert_array_equal(found[(1, 2)], dot)
    assert set(found) == {(0, 1), (1, 1), (2, 1), (1, 2)}  # empty frames are left out
