"""Tests for medseg.io.dicom_seg: write a SEG on the shared CT and read it back; read the dcmqi liver SEG."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from medseg.errors import DataError
from medseg.io import read_dicom_seg, read_dicom_seg_segments, read_volume, write_dicom_seg

CLASSES = {2: "air", 7: "bone", 300: "contrast"}


@pytest.fixture(scope="module")
def ct_labels(ct_volume):
    labels = np.zeros(ct_volume.shape, np.uint16)
    labels[ct_volume.array < -900] = 2
    labels[ct_volume.array > 300] = 7
    labels[100:120, 200:230, 5:9] = 300  # a box: checks the i/j/k order of the frames
    return labels


@pytest.fixture(scope="module")
def seg_path(tmp_path_factory, ct_volume, ct_labels):
    return write_dicom_seg(tmp_path_factory.mktemp("seg") / "seg.dcm", ct_labels, ct_volume, CLASSES)


def test_seg_round_trip_puts_every_segment_on_the_same_voxels(seg_path, ct_volume, ct_labels):
    back = read_dicom_seg(seg_path, ct_volume, class_names=CLASSES)
    np.testing.assert_array_equal(back, ct_labels)
    assert back.dtype == np.uint16


def test_seg_segments_are_numbered_in_class_order(seg_path, ct_volume, ct_labels):
    assert read_dicom_seg_segments(seg_path) == {1: "air", 2: "bone", 3: "contrast"}
    numbers = read_dicom_seg(seg_path, ct_volume)
    np.testing.assert_array_equal(numbers == 3, ct_labels == 300)
    assert numbers.dtype == np.uint8


def test_seg_references_the_source_series(seg_path, ct_volume):
    ds = pydicom.dcmread(seg_path, stop_before_pixels=True)
    assert ds.Modality == "SEG" and ds.FrameOfReferenceUID == ct_volume.meta["frame_of_reference_uid"]
    referenced = {item.ReferencedSOPInstanceUID for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    files = [pydicom.dcmread(f, stop_before_pixels=True) for f in ct_volume.meta["files"]]
    assert referenced <= {f.file_meta.MediaStorageSOPInstanceUID for f in files}


def test_seg_from_folder_source_matches(tmp_path, ct_series, ct_volume, ct_labels):
    labels = (ct_labels == 7).astype(np.uint8)
    path = write_dicom_seg(tmp_path / "bone.dcm", labels, ct_series, {1: "bone"})
    np.testing.assert_array_equal(read_dicom_seg(path, ct_series), labels)


def test_dcmqi_liver_lands_on_referenced_slices(shared_data, dcmqi_ct):
    seg_file = shared_data / "dicom-seg-dcmqi" / "liver_seg.dcm"
    reference = read_volume(dcmqi_ct)
    labels = read_dicom_seg(seg_file, reference)
    assert read_dicom_seg_segments(seg_file) == {1: "Liver"}
    assert labels.shape == reference.shape and set(np.unique(labels)) == {0, 1}
    ds = pydicom.dcmread(seg_file)
    frames = ds.pixel_array
    uids = reference.meta["sop_instance_uids"]
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        sop = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = uids.index(sop)
        z = float(item.PlanePositionSequence[0].ImagePositionPatient[2])
        assert abs(z - reference.origin_lps[2] - k * reference.spacing[2]) < 1e-3
        np.testing.assert_array_equal(labels[:, :, k], frames[f].T)
    liver_hu = reference.array[labels == 1]
    assert 20 < liver_hu.mean() < 200  # soft tissue, i.e. not flipped onto air or bone


def test_seg_on_wrong_reference_is_refused(shared_data, mr_folder):
    seg_file = shared_data / "dicom-seg-dcmqi" / "liver_seg.dcm"
    with pytest.raises(DataError, match=r"liver_seg\.dcm.*FrameOfReferenceUID"):
        read_dicom_seg(seg_file, mr_folder)


def test_reading_a_non_seg_file_is_refused(dcmqi_ct, ct_volume):
    with pytest.raises(DataError, match=r"01\.dcm: SOP class .*allowed Segmentation Storage"):
        read_dicom_seg(dcmqi_ct / "01.dcm", ct_volume)


def test_write_refuses_unnamed_labels_and_wrong_shape(tmp_path, ct_volume, ct_labels):
    with pytest.raises(DataError, match=r"x\.dcm: label values \[300\] have no entry"):
        write_dicom_seg(tmp_path / "x.dcm", ct_labels, ct_volume, {2: "air", 7: "bone"})
    with pytest.raises(DataError, match=r"y\.dcm: label map shape \(512, 512, 19\)"):
        write_dicom_seg(tmp_path / "y.dcm", ct_labels[:, :, 1:], ct_volume, CLASSES)


def test_write_refuses_non_dicom_source(tmp_path, shared_data):
    nifti = read_volume(shared_data / "ct-organs-totalseg" / "example_ct_sm.nii.gz")
    with pytest.raises(DataError, match="needs a DICOM source"):
        write_dicom_seg(tmp_path / "z.dcm", np.zeros(nifti.shape, np.uint8), nifti, {1: "a"})


def test_seg_from_a_series_without_type2_patient_attributes(tmp_path, dcmqi_ct):
    # anonymised exports often drop type-2 attributes; highdicom needs them present (empty is allowed)
    folder = tmp_path / "anon"
    folder.mkdir()
    for i, f in enumerate(sorted(p for p in dcmqi_ct.iterdir() if p.is_file())):
        ds = pydicom.dcmread(f)
        for key in ("PatientBirthDate", "PatientSex", "ReferringPhysicianName"):
            if key in ds:
                delattr(ds, key)
        ds.save_as(folder / f"{i:03d}.dcm")
    volume = read_volume(folder)
    labels = np.zeros(volume.shape, np.uint8)
    labels[2:6, 3:7, 0] = 5
    out = write_dicom_seg(tmp_path / "anon.seg.dcm", labels, volume, {5: "liver"})
    seg = pydicom.dcmread(out)
    assert seg.PatientBirthDate == "" and seg.PatientSex == ""
    np.testing.assert_array_equal(read_dicom_seg(out, volume, class_names={5: "liver"}), labels)
