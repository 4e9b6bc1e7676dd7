"""Tests for medseg.io.volume_io: NIfTI/MHA/NRRD reading and writing, on real files and known geometry."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.errors import DataError, OutputExistsError
from medseg.io import Volume, read_volume, write_label_map, write_volume

# an oblique affine whose entries are exact float32 values (NIfTI stores float32)
_ROT = np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
AFFINE = np.eye(4)
AFFINE[:3, :3] = _ROT @ np.diag([0.75, 1.5, 2.5])
AFFINE[:3, 3] = [-120.5, 33.25, 7.0]
AFFINE = AFFINE.astype(np.float32).astype(np.float64)


def _volume(array: np.ndarray, **meta: object) -> Volume:
    return Volume(array, AFFINE, {"path": "mem", "format": "nifti", **meta})


def test_volume_lps_properties_match_simpleitk_convention():
    v = Volume(np.zeros((2, 3, 4)), np.diag([-0.5, -2.0, 3.0, 1.0]) + np.array([[0, 0, 0, 10.0]] * 3 + [[0] * 4]))
    assert v.spacing == (0.5, 2.0, 3.0)
    assert v.origin_lps == (-10.0, -10.0, 10.0)
    np.testing.assert_array_equal(v.direction_lps, np.eye(3))
    assert v.shape == (2, 3, 4)


def test_volume_rejects_2d_array():
    with pytest.raises(ValueError, match="3D"):
        Volume(np.zeros((3, 4)), np.eye(4))


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_write_read_round_trip_keeps_array_affine_and_codes(tmp_path, suffix):
    array = np.random.default_rng(0).integers(-1000, 2000, (7, 6, 5)).astype(np.int16)
    path = write_volume(tmp_path / f"v{suffix}", _volume(array, qform_code=2, sform_code=4))
    back = read_volume(path)
    np.testing.assert_array_equal(back.array, array)
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.affine, AFFINE)
    assert (back.meta["qform_code"], back.meta["sform_code"]) == (2, 4)
    assert back.meta["format"] == "nifti" and back.meta["path"] == str(path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_write_volume_defaults_codes_to_scanner_and_refuses_overwrite_when_asked(tmp_path):
    path = write_volume(tmp_path / "v.nii.gz", Volume(np.zeros((2, 2, 2), np.float32), AFFINE))
    back = read_volume(path)
    assert (back.meta["qform_code"], back.meta["sform_code"]) == (1, 1)
    with pytest.raises(OutputExistsError, match="v.nii.gz"):
        write_volume(path, back, overwrite=False)


def test_write_volume_rejects_unknown_suffix_and_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"out\.png.*\.nii"):
        write_volume(tmp_path / "out.png", _volume(np.zeros((2, 2, 2))))
    with pytest.raises(DataError, match="does not exist"):
        write_volume(tmp_path / "missing" / "out.nii", _volume(np.zeros((2, 2, 2))))


@pytest.mark.parametrize(
    ("low", "high", "dtype"),
    [(0, 1, np.uint8), (0, 255, np.uint8), (0, 256, np.uint16), (0, 65535, np.uint16), (-1, 5, np.int16),
     (-5, 40000, np.int32), (0, 70000, np.int32)],
)  # fmt: skip
def test_write_label_map_uses_smallest_dtype_and_reference_geometry(tmp_path, low, high, dtype):
    reference = _volume(np.zeros((4, 3, 2), np.float32), qform_code=1, sform_code=2)
    labels = np.full(reference.shape, low, dtype=np.int64)
    labels[1, 2, 1] = high
    path = write_label_map(tmp_path / "labels.nii.gz", labels, reference)
    img = nib.load(path)
    assert img.get_data_dtype() == dtype
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), labels)
    np.testing.assert_array_equal(img.get_sform(), AFFINE)
    np.testing.assert_allclose(img.get_qform(), AFFINE, rtol=0, atol=1e-5)
    assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == (1, 2)


def test_write_label_map_bool_labels_become_uint8(tmp_path):
    reference = _volume(np.zeros((3, 3, 3)))
    path = write_label_map(tmp_path / "mask.nii", np.ones((3, 3, 3), bool), reference)
    back = read_volume(path)
    assert back.array.dtype == np.uint8 and int(back.array.sum()) == 27


def test_write_label_map_shape_mismatch_names_file(tmp_path):
    reference = _volume(np.zeros((4, 3, 2)))
    with pytest.raises(DataError, match=r"bad\.nii\.gz.*\(4, 3, 3\).*\(4, 3, 2\)"):
        write_label_map(tmp_path / "bad.nii.gz", np.zeros((4, 3, 3), np.uint8), reference)


def test_write_label_map_rejects_float_labels(tmp_path):
    with pytest.raises(DataError, match="float32"):
        write_label_map(tmp_path / "f.nii", np.zeros((2, 2, 2), np.float32), _volume(np.zeros((2, 2, 2))))


def test_read_real_nifti_ct(shared_data):
    v = read_volume(shared_data / "spine-ct-totalseg" / "example_ct.nii.gz")
    assert v.shape == (122, 101, 112)
    np.testing.assert_allclose(v.spacing, (3.0, 3.0, 3.0), atol=1e-5)
    assert v.array.min() == -1207 and v.array.max() == 3382


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_itk_formats_match_nifti_geometry(tmp_path, shared_data, suffix):
    source = shared_data / "spine-ct-verse-cutout" / "sub-ct_label-22_ct.nii.gz"
    nifti = read_volume(source)
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(source)), str(path))
    other = read_volume(path)
    np.testing.assert_array_equal(other.array, nifti.array)
    np.testing.assert_allclose(other.affine, nifti.affine, rtol=0, atol=1e-4)
    assert other.meta["format"] == suffix[1:].replace("mha", "mha")


def test_4d_nifti_is_refused_but_singleton_4th_dim_is_squeezed(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.int16), AFFINE), tmp_path / "four.nii.gz")
    with pytest.raises(DataError, match=r"four\.nii\.gz.*4D.*allowed 3D"):
        read_volume(tmp_path / "four.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((3, 4, 5, 1), np.int16), AFFINE), tmp_path / "one.nii.gz")
    assert read_volume(tmp_path / "one.nii.gz").shape == (3, 4, 5)


def test_nan_voxels_are_refused_with_count(tmp_path):
    array = np.zeros((4, 4, 4), np.float32)
    array[0, 0, :3] = np.nan
    array[1, 1, 1] = np.inf
    nib.save(nib.Nifti1Image(array, AFFINE), tmp_path / "nan.nii.gz")
    with pytest.raises(DataError, match=r"nan\.nii\.gz: 4 NaN/Inf voxels"):
        read_volume(tmp_path / "nan.nii.gz")


def test_truncated_nifti_gz_is_refused(tmp_path, shared_data):
    data = (shared_data / "spine-ct-totalseg" / "example_ct.nii.gz").read_bytes()
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.nii\.gz.*(truncated|corrupt)"):
        read_volume(path)


def test_truncated_uncompressed_nifti_is_refused(tmp_path, shared_data):
    raw = gzip.decompress((shared_data / "ct-organs-totalseg" / "example_ct_sm.nii.gz").read_bytes())
    path = tmp_path / "cut.nii"
    path.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(DataError, match=r"cut\.nii.*truncated"):
        read_volume(path)


def test_absurd_header_size_is_refused_before_allocating(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((5000, 5000, 5000))
    path = tmp_path / "huge.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 1000)
    with pytest.raises(DataError, match=r"huge\.nii.*5000x5000x5000"):
        read_volume(path)


def test_gzip_that_cannot_hold_claimed_size_is_refused(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape((400, 400, 400))
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * 100))
    with pytest.raises(DataError, match=r"bomb\.nii\.gz.*gzip"):
        read_volume(path)


def test_max_bytes_keyword_caps_size(shared_data):
    with pytest.raises(DataError, match="max_bytes=1000"):
        read_volume(shared_data / "ct-organs-totalseg" / "example_ct_sm.nii.gz", max_bytes=1000)


def test_missing_and_unknown_files_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.nii\.gz: no such file"):
        read_volume(tmp_path / "nothere.nii.gz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes\.txt: unknown volume file type"):
        read_volume(tmp_path / "notes.txt")
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti at all")
    with pytest.raises(DataError, match=r"junk\.nii\.gz"):
        read_volume(tmp_path / "junk.nii.gz")


def test_series_uid_on_a_file_is_refused(shared_data):
    with pytest.raises(DataError, match="series_uid"):
        read_volume(shared_data / "ct-organs-totalseg" / "example_ct_sm.nii.gz", series_uid="1.2.3")


def test_label_map_on_real_reference_round_trips(tmp_path, shared_data):
    reference = read_volume(shared_data / "spine-ct-totalseg" / "example_ct.nii.gz")
    labels = read_volume(shared_data / "spine-ct-totalseg" / "totalseg_vertebrae.nii.gz").array
    back = read_volume(write_label_map(tmp_path / "lab.nii.gz", labels, reference))
    np.testing.assert_array_equal(back.array, labels)
    assert back.array.dtype == np.uint8
    np.testing.assert_allclose(back.affine, reference.affine, rtol=0, atol=1e-6)
    assert back.meta["sform_code"] == reference.meta["sform_code"]
    assert Path(back.meta["path"]).name == "lab.nii.gz"
