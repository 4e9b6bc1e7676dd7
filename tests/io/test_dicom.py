"""Tests for medseg.io.dicom on real series: SimpleITK agreement, series selection and refusals."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medseg.errors import DataError
from medseg.io import list_series, list_skipped, read_dicom_series, read_volume

MR_T1_UID = "1.3.12.2.1107.5.2.43.67060.2022040715044210837860713.0.0.0"
MR_DWI_UID = "1.3.12.2.1107.5.2.43.67060.2022040715055547872760857.0.0.0"


def _sitk_series(folder: Path, uid: str) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), uid))
    return reader.Execute()


@pytest.mark.parametrize(
    ("sub", "uid", "shape"),
    [
        ("dicom-ct-totalseg/series", None, (512, 512, 20)),
        ("dicom-seg-dcmqi/ct", None, (512, 512, 3)),
        ("dicom-mr-multiseries-decubitus", MR_T1_UID, (256, 256, 35)),
    ],
)
def test_geometry_and_voxels_equal_simpleitk(shared_data, sub, uid, shape):
    folder = shared_data / sub
    volume = read_volume(folder, series_uid=uid)
    image = _sitk_series(folder, volume.meta["series_uid"])
    assert volume.shape == shape == image.GetSize()
    np.testing.assert_allclose(volume.origin_lps, image.GetOrigin(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(volume.spacing, image.GetSpacing(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(volume.direction_lps.ravel(), image.GetDirection(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(image).transpose(2, 1, 0))
    assert volume.meta["format"] == "dicom" and volume.meta["path"] == str(folder)


def test_ct_is_int16_hounsfield_and_meta(ct_volume):
    volume = ct_volume
    assert volume.array.dtype == np.int16
    assert (int(volume.array.min()), int(volume.array.max())) == (-1024, 1839)
    assert volume.meta["modality"] == "CT" and volume.meta["description"] == "CT Body 3.0"
    assert volume.meta["series_uid"] == ""  # these anonymised files carry no Study/Series/SOP UIDs
    assert len(volume.meta["sop_instance_uids"]) == 20
    # sorted along the slice normal (+z), not by InstanceNumber (which grows with -z here)
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in volume.meta["files"]]
    assert z == sorted(z) and z[0] == -804.5


def test_totalseg_labels_line_up_with_dicom_series(shared_data, ct_volume):
    volume = ct_volume
    labels = nib.load(shared_data / "dicom-ct-totalseg" / "totalseg_labels.nii.gz")  # stored LAS
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(labels.affine), nib.orientations.io_orientation(volume.affine)
    )
    labels = labels.as_reoriented(ornt)
    assert labels.shape == volume.shape
    np.testing.assert_allclose(labels.affine, volume.affine, rtol=0, atol=1e-4)
    lab = np.asarray(labels.dataobj)
    liver, vertebra = volume.array[lab == 5], volume.array[np.isin(lab, (32, 33))]
    assert 30 < liver.mean() < 200 and vertebra.mean() > 200  # soft tissue vs bone: right voxels


def test_mr_folder_gives_t1_volume_not_mosaic(mr_folder):
    volume = read_volume(mr_folder)  # no series_uid needed: the mosaic series is not a volume
    assert volume.shape == (256, 256, 35) and volume.meta["series_uid"] == MR_T1_UID
    assert volume.meta["description"] == "t1_fl2d_sag" and volume.array.dtype == np.uint16
    series = {s.series_uid: s for s in list_series(mr_folder)}
    assert series[MR_T1_UID].usable and series[MR_T1_UID].orientation == "PIR"
    assert series[MR_T1_UID].size == (256, 256, 35)
    assert not series[MR_DWI_UID].usable and series[MR_DWI_UID].reason == "mosaic"
    skipped = {p.path.name: p.reason for p in list_skipped(mr_folder)}
    assert sum(reason == "mosaic" for reason in skipped.values()) == 13
    assert skipped["SOURCE.md"].startswith("not a DICOM file")
    with pytest.raises(DataError, match=r"ep2d_diff.*mosaic"):
        read_volume(mr_folder, series_uid=MR_DWI_UID)


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(DataError, match=rf"{tmp_path.name}: folder is empty"):
        read_volume(tmp_path)


def test_folder_without_dicom_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.dcm").write_bytes(b"\0" * 300)
    with pytest.raises(DataError, match=rf"{tmp_path.name}: no DICOM image files among 2 files"):
        read_volume(tmp_path)


def test_missing_middle_slice_is_refused_naming_the_gap(tmp_path, ct_series, copy_files):
    files = sorted(ct_series.iterdir())
    folder = copy_files(files[:10] + files[11:], tmp_path / "gap")
    with pytest.raises(DataError, match=r"gap.*4\.000 mm between slices.*expected 2\.0\d\d mm \(missing slice\?\)"):
        read_volume(folder)


def test_mixed_series_are_listed_and_selectable(tmp_path, ct_series, dcmqi_ct, copy_files):
    folder = copy_files(sorted(ct_series.iterdir()), tmp_path / "mixed" / "a")
    copy_files(sorted(dcmqi_ct.iterdir()), tmp_path / "mixed" / "b" / "c")  # nested: recursion
    with pytest.raises(DataError, match=r"2 volume series found, pass series_uid=.*CT Body 3.0.*20 files.*3 files"):
        read_volume(folder.parent)
    assert [s.n_files for s in list_series(folder.parent)] == [20, 3]
    uid = pydicom.dcmread(next(dcmqi_ct.iterdir()), stop_before_pixels=True).SeriesInstanceUID
    assert read_volume(folder.parent, series_uid=uid).shape == (512, 512, 3)
    with pytest.raises(DataError, match=r"no series '1\.2\.3'"):
        read_volume(folder.parent, series_uid="1.2.3")


def test_seg_file_in_folder_is_skipped_with_reason(tmp_path, shared_data, dcmqi_ct, copy_files):
    folder = copy_files([*sorted(dcmqi_ct.iterdir()), shared_data / "dicom-seg-dcmqi" / "liver_seg.dcm"], tmp_path)
    assert read_volume(folder).shape == (512, 512, 3)
    skipped = list_skipped(folder)
    assert [(s.path.name, s.reason) for s in skipped] == [("liver_seg.dcm", "non-image SOP class SEG")]


def _edit(folder: Path, edit) -> None:
    for k, path in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(path)
        edit(k, ds)
        ds.save_as(path)


def test_gantry_tilt_is_refused(tmp_path, dcmqi_ct, copy_files):
    folder = copy_files(sorted(dcmqi_ct.iterdir()), tmp_path / "tilt")

    def tilt(k, ds):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.5 * k, z]

    _edit(folder, tilt)
    with pytest.raises(DataError, match=r"tilt.*gantry tilt.*26\.57 deg"):
        read_volume(folder)


def test_slices_are_sorted_by_position_not_instance_number(tmp_path, dcmqi_ct, copy_files):
    reference = read_volume(dcmqi_ct)
    folder = copy_files(sorted(dcmqi_ct.iterdir()), tmp_path / "shuffled")
    _edit(folder, lambda k, ds: setattr(ds, "InstanceNumber", [2, 3, 1][k]))
    np.testing.assert_array_equal(read_volume(folder).array, reference.array)


def test_duplicate_positions_are_not_stacked(tmp_path, dcmqi_ct, copy_files):
    folder = copy_files(sorted(dcmqi_ct.iterdir()), tmp_path / "dup")
    copy_files(sorted(dcmqi_ct.iterdir()), folder / "again")
    with pytest.raises(DataError, match="share a slice position"):
        read_volume(folder)


def test_non_integral_rescale_gives_float32(tmp_path, dcmqi_ct, copy_files):
    reference = read_volume(dcmqi_ct)
    folder = copy_files(sorted(dcmqi_ct.iterdir()), tmp_path / "float")
    _edit(folder, lambda k, ds: setattr(ds, "RescaleSlope", "0.5"))
    volume = read_volume(folder)
    assert volume.array.dtype == np.float32
    np.testing.assert_allclose(volume.array, (reference.array + 1024) * 0.5 - 1024, rtol=0, atol=1e-3)


def test_truncated_slice_is_refused_naming_the_file(tmp_path, dcmqi_ct, copy_files):
    folder = copy_files(sorted(dcmqi_ct.iterdir()), tmp_path / "trunc")
    data = (folder / "02.dcm").read_bytes()
    (folder / "02.dcm").write_bytes(data[: len(data) - 5000])
    with pytest.raises(DataError, match=r"trunc.*02\.dcm"):
        read_volume(folder)


def test_localizer_and_single_file_are_not_volumes(tmp_path, dcmqi_ct, copy_files):
    folder = copy_files(sorted(dcmqi_ct.iterdir())[:1], tmp_path / "single")
    with pytest.raises(DataError, match="single frame"):
        read_volume(folder)
    _edit(folder, lambda k, ds: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    assert list_series(folder)[0].reason == "localizer"


def test_read_dicom_series_accepts_file_list(dcmqi_ct):
    files = sorted(dcmqi_ct.iterdir())[::-1]
    np.testing.assert_array_equal(read_dicom_series(files).array, read_volume(dcmqi_ct).array)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("imagecodecs", [True, False])
def test_every_decoding_path_agrees(ct_series, ct_volume, monkeypatch, workers, imagecodecs):
    """Threads + imagecodecs, or pydicom in this process / in forked workers: the same array."""
    import medseg.io.dicom as dicom

    if not imagecodecs:
        monkeypatch.setattr(dicom, "jpeg2k_decoder", lambda: None)
    other = read_dicom_series(ct_series, workers=workers)
    np.testing.assert_array_equal(other.array, ct_volume.array)  # ct_volume: default path
    assert other.array.dtype == ct_volume.array.dtype == np.int16


def test_max_bytes_refuses_large_series(ct_series):
    with pytest.raises(DataError, match="max_bytes=1000"):
        read_volume(ct_series, max_bytes=1000)


def _ct_datasets(ct_series: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f) for f in sorted(ct_series.rglob("*")) if f.is_file() and not f.name.endswith(".md")]


def test_threaded_jpeg2000_decoder_equals_pydicom_on_every_slice(ct_series):
    from medseg.io.decoders import jpeg2k_decoder
    from medseg.io.dicom import _jpeg2k_pixels

    assert jpeg2k_decoder() is not None  # a dependency: the fast path must be the one tested here
    datasets = _ct_datasets(ct_series)
    assert {str(ds.file_meta.TransferSyntaxUID) for ds in datasets} == {"1.2.840.10008.1.2.4.90"}
    for ds in datasets:
        fast = _jpeg2k_pixels(ds)
        assert isinstance(fast, np.ndarray)
        np.testing.assert_array_equal(fast, ds.pixel_array)
        assert fast.dtype == ds.pixel_array.dtype


def test_jpeg2000_slice_disagreeing_with_its_header_is_left_to_pydicom(ct_series):
    from medseg.io.dicom import _jpeg2k_pixels, _stored_pixels

    ds = _ct_datasets(ct_series)[10]
    ds.BitsStored = 8  # the codestream holds 12-bit values (up to ~2400): the header is wrong, pydicom decides
    np.testing.assert_array_equal(_jpeg2k_pixels(ds), _stored_pixels(ds))
    ds = _ct_datasets(ct_series)[10]
    ds.PixelRepresentation = 1  # header says signed, codestream is unsigned
    np.testing.assert_array_equal(_jpeg2k_pixels(ds), _stored_pixels(ds))


@pytest.mark.parametrize(
    ("dtype", "low", "high", "slopes", "inters", "expected_dtype"),
    [
        (np.uint16, 0, 4095, [1, 1, 1], [-1024, -1024, -1024], np.int16),  # the usual CT
        (np.uint16, 0, 65535, [1, 1, 1], [-32768, -32768, -32768], np.int16),  # needs int32 on the way
        (np.int16, -2000, 3000, [2, 1, 3], [-1024, 0, 10], np.int16),  # per-slice values
        (np.uint16, 0, 65535, [40000, 1, 1], [-2 * 10**9, 0, 0], np.int32),  # int64 on the way (2.6e9)
        (np.int32, -(2**30), 2**30, [4, 1, 1], [0, 0, 0], np.float32),  # beyond int32: float32
    ],
)
def test_rescale_matches_exact_integer_arithmetic(dtype, low, high, slopes, inters, expected_dtype):
    from types import SimpleNamespace

    from medseg.io.dicom import _rescale

    rng = np.random.default_rng(0)
    stack = rng.integers(low, high, size=(3, 7, 5), endpoint=True).astype(dtype)
    stack[0, 0, 0], stack[-1, -1, -1] = low, high
    headers = [
        SimpleNamespace(dataset={"RescaleSlope": m, "RescaleIntercept": b}) for m, b in zip(slopes, inters, strict=True)
    ]
    out, rescaled = _rescale("x", stack, headers)
    exact = stack.astype(object) * np.array(slopes, dtype=object).reshape(-1, 1, 1) + np.array(
        inters, dtype=object
    ).reshape(-1, 1, 1)
    assert rescaled and out.dtype == expected_dtype
    if expected_dtype == np.float32:
        np.testing.assert_allclose(out, exact.astype(np.float64), rtol=1e-6)
    else:
        np.testing.assert_array_equal(out.astype(object), exact)


#: a decoder plug-in's error, longer than the 200 characters a message keeps of it
_LONG_ERROR = ("Unable to decode the pixel data: the 'gdcm' plugin is missing dependencies (python-gdcm), the "
               "'pylibjpeg' plugin is missing dependencies (pylibjpeg-openjpeg) and the 'pillow' plugin does not "
               "support 'RLE Lossless' transfer syntax pixel data\nTraceback lines that follow are not shown")


def test_a_long_decoder_error_is_cut_at_a_word_boundary(tmp_path, ckpt3d, monkeypatch):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import CTImageStorage, RLELossless, generate_uid
    from typer.testing import CliRunner

    from medseg.cli.main import app

    folder = tmp_path / "rle"
    folder.mkdir()
    series = generate_uid()
    for k in range(3):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = RLELossless
        ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.Modality = (CTImageStorage, generate_uid(),
                                                                                 series, "CT")
        ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [0.0, 0.0, 2.0 * k]
        ds.PixelSpacing, ds.Rows, ds.Columns = [1.0, 1.0], 8, 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = encapsulate([bytes(64)])
        ds["PixelData"].VR = "OB"
        ds.save_as(folder / f"{k + 1:02d}.dcm", enforce_file_format=True)

    def fail(self):  # noqa: ANN001, ANN202
        raise ValueError(_LONG_ERROR)

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(fail))
    result = CliRunner().invoke(app, ["predict", str(ckpt3d[0]), str(folder), "-o", str(tmp_path / "out"),
                                      "--device", "cpu", "-q"])
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [  # 193 characters of the error, cut after "not", not inside "support"
        f"failed: {folder}: cannot decode pixel data of 01.dcm (RLE Lossless: ValueError: Unable to decode the pixel "
        "data: the 'gdcm' plugin is missing dependencies (python-gdcm), the 'pylibjpeg' plugin is missing "
        "dependencies (pylibjpeg-openjpeg) and the 'pillow' plugin does not...)"]
