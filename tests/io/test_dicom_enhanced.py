"""Enhanced multi-frame DICOM (one file, many frames, per-frame functional groups) read with the geometry and voxels
of the classic series it was made from.

Each file is built at test time from a real shared CT series with highdicom's
``LegacyConvertedEnhancedCTImage``: positions in the per-frame PlanePositionSequence, orientation, pixel spacing
and rescale in the shared functional groups. The frames are given in a shuffled order, so the reader must sort
them by position as it sorts single-frame slices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from medseg.io import list_series, read_dicom_seg, read_dicom_series, read_volume, write_dicom_seg

highdicom = pytest.importorskip("highdicom")


def _enhanced(files: list[Path], out: Path, order: list[int]) -> Path:
    datasets = []
    for path in files:
        ds = pydicom.dcmread(path)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        ds.SOPClassUID = ds.SOPClassUID or ds.file_meta.MediaStorageSOPClassUID  # the TotalSegmentator CT has
        for key in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):  # no UIDs: give it some
            if not ds.get(key):
                setattr(ds, key, generate_uid(entropy_srcs=[key, str(ds.ImagePositionPatient)]
                                              if key == "SOPInstanceUID" else [key]))
        datasets.append(ds)
    image = highdicom.legacy.LegacyConvertedEnhancedCTImage([datasets[k] for k in order], generate_uid(), 9,
                                                            generate_uid(), 1)
    out.mkdir()
    image.save_as(out / "enhanced.dcm")
    return out


@pytest.mark.parametrize(("sub", "count", "order"), [
    ("dicom-seg-dcmqi/ct", 3, [1, 2, 0]),  # signed 16-bit, intercept -1024
    ("dicom-ct-totalseg/series", 4, [3, 0, 2, 1]),  # unsigned 12-bit stored (from JPEG 2000)
])
def test_enhanced_ct_reads_like_the_classic_series(tmp_path, shared_data, sub, count, order):
    files = sorted((shared_data / sub).iterdir())[:count]
    folder = _enhanced(files, tmp_path / "enhanced", order)
    classic = read_dicom_series(files)
    volume = read_volume(folder)
    [series] = list_series(folder)
    assert series.usable and series.n_files == 1 and series.size == (512, 512, count)
    assert volume.shape == classic.shape == (512, 512, count)
    np.testing.assert_allclose(volume.origin_lps, classic.origin_lps, atol=1e-4)
    np.testing.assert_allclose(volume.spacing, classic.spacing, atol=1e-6)
    np.testing.assert_allclose(volume.direction_lps, classic.direction_lps, atol=1e-9)
    np.testing.assert_array_equal(volume.array, classic.array)
    assert volume.array.dtype == classic.array.dtype == np.int16


def test_seg_on_an_enhanced_ct_follows_its_frames(tmp_path, shared_data):
    files = sorted((shared_data / "dicom-seg-dcmqi" / "ct").iterdir())
    volume = read_volume(_enhanced(files, tmp_path / "enhanced", [2, 0, 1]))
    labels = np.zeros(volume.shape, np.uint8)
    labels[100:200, 50:60, 0] = 1
    labels[10:20, 300:400, 2] = 2
    path = write_dicom_seg(tmp_path / "a.seg.dcm", labels, volume, {1: "a", 2: "b"})
    np.testing.assert_array_equal(read_dicom_seg(path, volume, class_names={1: "a", 2: "b"}), labels)
    np.testing.assert_array_equal(read_dicom_seg(path, read_dicom_series(files), class_names={1: "a", 2: "b"}), labels)
