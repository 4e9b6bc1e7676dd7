"""RLE Lossless, Deflated Explicit VR Little Endian and HTJ2K read by medseg, voxel for voxel against GDCM (inside
SimpleITK) and against the uncompressed source.

Each case rewrites real shared CT slices at test time (the 3-slice dcmqi CT, signed 16 bits, and three slices of
the TotalSegmentator CT, unsigned 12 bits stored): RLE with pydicom's own encoder, Deflate by saving with that
transfer syntax (pydicom deflates the dataset), HTJ2K with imagecodecs' OpenJPH encoder (pydicom 3.0 has no HTJ2K
encoder). SimpleITK 2.5's GDCM reads all three, so each is compared with it. Explicit VR Big Endian (retired in
2004) is not made here: pydicom 3 no longer writes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.encaps import encapsulate

from medseg.io import read_dicom_series, read_volume
from medseg.io.decoders import syntax_support

RLE = "1.2.840.10008.1.2.5"
DEFLATE = "1.2.840.10008.1.2.1.99"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"


@pytest.fixture(scope="module")
def sources(shared_data: Path) -> dict[str, list[Path]]:
    return {"signed16": sorted((shared_data / "dicom-seg-dcmqi" / "ct").iterdir()),
            "unsigned12": sorted((shared_data / "dicom-ct-totalseg" / "series").iterdir())[:3]}


def _gdcm(folder: Path) -> np.ndarray:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute()).transpose(2, 1, 0)


def _rewrite(files: list[Path], out: Path, uid: str) -> Path:
    out.mkdir()
    for path in files:
        ds = pydicom.dcmread(path)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        if uid == RLE:
            ds.compress(RLE)  # pydicom's own RLE encoder
        elif uid == DEFLATE:
            ds.file_meta.TransferSyntaxUID = DEFLATE  # written deflated by pydicom
        else:
            import imagecodecs

            values = ds.pixel_array
            # lossy: irreversible wavelet, quantisation step 1e-4 (imagecodecs' ``level`` for HTJ2K)
            lossy = {"level": 1e-4, "reversible": False} if uid == HTJ2K else {}
            frame = imagecodecs.htj2k_encode(values, **lossy)
            ds.PixelData = encapsulate([bytes(frame)])
            ds["PixelData"].VR = "OB"
            ds.file_meta.TransferSyntaxUID = uid
        ds.save_as(out / path.name, enforce_file_format=True)
    return out


@pytest.mark.parametrize(("uid", "source"), [
    *[(uid, source) for uid in (RLE, DEFLATE, HTJ2K_LOSSLESS) for source in ("signed16", "unsigned12")],
    (HTJ2K_RPCL, "unsigned12"),
])
def test_lossless_syntax_reads_like_gdcm_and_the_source(tmp_path, sources, source, uid):
    folder = _rewrite(sources[source], tmp_path / "enc", uid)
    assert {str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
            for f in folder.iterdir()} == {uid}
    assert syntax_support(uid).decodable
    volume = read_volume(folder)
    plain = read_dicom_series(sources[source])
    np.testing.assert_array_equal(volume.array, _gdcm(folder))
    np.testing.assert_array_equal(volume.array, plain.array)
    np.testing.assert_allclose(volume.affine, plain.affine)
    np.testing.assert_array_equal(read_dicom_series(folder, workers=1).array, volume.array)


def test_lossy_htj2k_reads_what_gdcm_decodes(tmp_path, sources):
    """Lossy HTJ2K: GDCM's decode of the same files is the reference; the source values are only near."""
    folder = _rewrite(sources["unsigned12"], tmp_path / "enc", HTJ2K)
    volume = read_volume(folder)
    np.testing.assert_array_equal(volume.array, _gdcm(folder))
    error = np.abs(volume.array.astype(np.int32) - read_dicom_series(sources["unsigned12"]).array)
    assert 0 < error.mean() < 4 and error.max() < 64
