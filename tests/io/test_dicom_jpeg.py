"""JPEG DICOM (lossless Process 14 and SV1, baseline, extended 12-bit) and JPEG-LS read by medseg, voxel for voxel
against GDCM (inside SimpleITK), an independent decoder.

Each case rewrites real shared CT slices at test time: the 3-slice dcmqi CT (signed, 16 bits stored) and three
slices of the TotalSegmentator CT (unsigned, 12 bits stored). Lossless cases also write the values they mean to
store as an uncompressed series, so "medseg reads the JPEG series" is checked against "medseg reads plain data"
as well as against GDCM.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.encaps import encapsulate, generate_frames

from medseg.errors import DataError
from medseg.io import read_dicom_series, read_volume
from medseg.io.decoders import syntax_support

imagecodecs = pytest.importorskip("imagecodecs")

SV1 = "1.2.840.10008.1.2.4.70"
PROCESS14 = "1.2.840.10008.1.2.4.57"
BASELINE = "1.2.840.10008.1.2.4.50"
EXTENDED = "1.2.840.10008.1.2.4.51"
JPEGLS = "1.2.840.10008.1.2.4.80"
JPEGLS_NEAR = "1.2.840.10008.1.2.4.81"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

#: stored values (int32) -> (JPEG frame, the stored values it holds, header changes)
Encoder = Callable[[np.ndarray], tuple[bytes, np.ndarray, dict[str, int]]]


@pytest.fixture(scope="module")
def sources(shared_data: Path) -> dict[str, list[Path]]:
    totalseg = sorted((shared_data / "dicom-ct-totalseg" / "series").iterdir())[:3]
    dcmqi = sorted((shared_data / "dicom-seg-dcmqi" / "ct").iterdir())
    return {"signed16": dcmqi, "unsigned12": totalseg}  # see each folder's SOURCE.md


def _rewrite(files: list[Path], out: Path, uid: str, encode: Encoder, reference: Path | None = None) -> Path:
    """Each file with its pixels replaced by ``encode``'s frame; the same values uncompressed under ``reference``."""
    out.mkdir()
    if reference is not None:
        reference.mkdir()
    for path in files:
        ds = pydicom.dcmread(path)
        frame, stored, attrs = encode(ds.pixel_array.astype(np.int32))
        for key, value in attrs.items():
            setattr(ds, key, value)
        if reference is not None:
            plain = pydicom.dcmread(path)
            for key, value in attrs.items():
                setattr(plain, key, value)
            dtype = f"<{'i' if plain.PixelRepresentation else 'u'}{plain.BitsAllocated // 8}"
            plain.PixelData = stored.astype(dtype).tobytes()
            plain["PixelData"].VR = "OW" if plain.BitsAllocated == 16 else "OB"
            plain.file_meta.TransferSyntaxUID = EXPLICIT_LE
            plain.save_as(reference / path.name, enforce_file_format=True)
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = uid
        ds.save_as(out / path.name, enforce_file_format=True)
    return out


def _gdcm(folder: Path) -> np.ndarray:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute()).transpose(2, 1, 0)


def _syntaxes(folder: Path) -> set[str]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID) for f in folder.iterdir()}


def _lossless(predictor: int, precision: int, *, signed12: bool = False, point_transform: int = 0) -> Encoder:
    """Lossless JPEG of the stored values, as a PACS writes it.

    Signed data are stored as two's complement in BitsStored bits (GDCM writes signed 16-bit CT this way):
    ``signed12`` clips the values to 12 bits and writes them in a frame of ``precision`` 12 (their low 12 bits)
    or 16 (sign-extended to 16 bits, as some encoders do). ``point_transform`` (Pt) drops the low bits: the frame
    holds ``value >> Pt`` and a decoder gives back ``(value >> Pt) << Pt``.
    """

    def encode(values: np.ndarray) -> tuple[bytes, np.ndarray, dict[str, int]]:
        attrs: dict[str, int] = {}
        if signed12:
            values = np.clip(values, -2048, 2047)
            attrs = {"BitsStored": 12, "HighBit": 11, "PixelRepresentation": 1}
        samples = values.astype(np.int16).view(np.uint16) & ((1 << precision) - 1)
        frame = imagecodecs.jpeg8_encode(samples >> point_transform, lossless=True, predictor=predictor,
                                         bitspersample=precision - point_transform)
        if point_transform:
            frame = _with_point_transform(bytes(frame), precision, point_transform)
            values = (values >> point_transform) << point_transform
        return bytes(frame), values, attrs

    return encode


def _with_point_transform(frame: bytes, precision: int, pt: int) -> bytes:
    """A frame of precision P - Pt (predictor default 2^(P-Pt-1)) relabelled as precision P with point transform Pt.

    A lossless decoder predicts the first sample from 2^(P-Pt-1) and shifts every sample left by Pt, so both
    frames decode to the same differences; imagecodecs' encoder has no point-transform option.
    """
    out = bytearray(frame)
    sof = out.index(b"\xff\xc3")
    out[sof + 4] = precision  # SOF3: length(2) then P
    sos = out.index(b"\xff\xda")
    components = out[sos + 4]
    al = sos + 5 + 2 * components + 2  # after Ns and the component specs: Ss (predictor), Se, then Ah|Al
    out[al] = (out[al] & 0xF0) | pt
    return bytes(out)


@pytest.mark.parametrize(
    ("source", "uid", "encode"),
    [
        # signed 16-bit CT as raw two's complement: differences wrap around 2^16
        pytest.param("signed16", SV1, _lossless(1, 16), id="sv1-signed16"),
        *[pytest.param("signed16", PROCESS14, _lossless(p, 16), id=f"p14-predictor{p}-signed16") for p in range(1, 8)],
        # 12 bits stored, unsigned, frames of precision 12 (the TotalSegmentator CT as a PACS exports it)
        pytest.param("unsigned12", SV1, _lossless(1, 12), id="sv1-unsigned12"),
        pytest.param("unsigned12", PROCESS14, _lossless(5, 12), id="p14-predictor5-unsigned12"),
        # signed 12-bit values in frames of precision 12 and 16 (sign-extended): both read as GDCM reads them
        pytest.param("signed16", PROCESS14, _lossless(1, 12, signed12=True), id="p14-signed12-precision12"),
        pytest.param("signed16", SV1, _lossless(1, 16, signed12=True), id="sv1-signed12-precision16"),
        # point transform: the low bits are dropped and come back as zeros
        pytest.param("unsigned12", PROCESS14, _lossless(1, 12, point_transform=2), id="p14-predictor1-pt2-unsigned12"),
        pytest.param("unsigned12", PROCESS14, _lossless(7, 12, point_transform=3), id="p14-predictor7-pt3-unsigned12"),
        pytest.param("signed16", PROCESS14, _lossless(4, 16, point_transform=1), id="p14-predictor4-pt1-signed16"),
    ],
)
def test_lossless_jpeg_reads_the_stored_values_like_gdcm(tmp_path, sources, source, uid, encode):
    jpeg = _rewrite(sources[source], tmp_path / "jpeg", uid, encode, reference=tmp_path / "plain")
    assert _syntaxes(jpeg) == {uid}
    assert syntax_support(uid).decoders[0] == "imagecodecs"
    volume = read_volume(jpeg)
    plain = read_volume(tmp_path / "plain")
    np.testing.assert_array_equal(volume.array, plain.array)  # every stored value, rescaled the same way
    np.testing.assert_array_equal(volume.array, _gdcm(jpeg))
    assert volume.array.dtype == plain.array.dtype == np.int16
    np.testing.assert_array_equal(read_dicom_series(jpeg, workers=1).array, volume.array)  # in this thread: the same


def _jpeg_of(precision: int, bits_allocated: int) -> Encoder:
    """Lossy JPEG, quality 90: 8-bit baseline (SOF0) of the values windowed to 0..255, or 12-bit extended (SOF1)."""

    def encode(values: np.ndarray) -> tuple[bytes, np.ndarray, dict[str, int]]:
        samples = np.clip(values, 0, 4095).astype(np.uint16)
        attrs = {"BitsStored": precision, "HighBit": precision - 1, "PixelRepresentation": 0}
        if precision == 8:
            samples = (samples >> 4).astype(np.uint8)
            attrs |= {"BitsAllocated": bits_allocated, "RescaleSlope": 16}
        frame = bytes(imagecodecs.jpeg8_encode(samples, level=90, bitspersample=precision))
        assert (b"\xff\xc0" if precision == 8 else b"\xff\xc1") in frame  # baseline or extended DCT
        return frame, samples, attrs

    return encode


@pytest.mark.parametrize(("uid", "precision", "bits_allocated"), [(BASELINE, 8, 8), (EXTENDED, 12, 16)])
def test_lossy_jpeg_reads_what_gdcm_decodes(tmp_path, sources, uid, precision, bits_allocated):
    """Lossy frames have no one right answer: the reference is GDCM's decode of the same files, which medseg must
    equal exactly (both use the accurate integer IDCT); the original values are only near (quality 90)."""
    jpeg = _rewrite(sources["unsigned12"], tmp_path / "jpeg", uid, _jpeg_of(precision, bits_allocated),
                    reference=tmp_path / "plain")
    assert _syntaxes(jpeg) == {uid}
    assert syntax_support(uid).decoders[0] == "imagecodecs"
    volume = read_volume(jpeg)
    np.testing.assert_array_equal(volume.array, _gdcm(jpeg))
    error = np.abs(volume.array.astype(np.int32) - read_volume(tmp_path / "plain").array)
    step = 16 if precision == 8 else 1  # HU per stored unit (RescaleSlope)
    assert 0 < error.mean() < 2 * step and error.max() < 64 * step


@pytest.mark.parametrize(("uid", "near"), [(JPEGLS, 0), (JPEGLS_NEAR, 3)])
def test_jpeg_ls_reads_like_gdcm_within_the_near_lossless_bound(tmp_path, dcmqi_ct, uid, near):
    """JPEG-LS through pydicom's pyjpegls plug-in (a declared dependency): equal to GDCM; near-lossless frames
    differ from the original by at most NEAR per sample, the bound the standard guarantees."""
    out = tmp_path / "jls"
    out.mkdir()
    for path in sorted(dcmqi_ct.iterdir()):
        ds = pydicom.dcmread(path)
        ds.compress(uid, **({"jls_error": near} if near else {}))
        ds.save_as(out / path.name, enforce_file_format=True)
    assert _syntaxes(out) == {uid}
    assert "pyjpegls" in syntax_support(uid).decoders
    volume = read_volume(out)
    np.testing.assert_array_equal(volume.array, _gdcm(out))
    error = np.abs(volume.array.astype(np.int32) - read_volume(dcmqi_ct).array)
    assert error.max() <= near and (near == 0 or error.any())


def _one_frame_cut(data: bytes) -> bytes:
    frame = next(generate_frames(data, number_of_frames=1))
    return encapsulate([frame[: len(frame) // 2]])


def test_truncated_lossless_frame_is_one_clear_error(tmp_path, sources):
    jpeg = _rewrite(sources["signed16"], tmp_path / "jpeg", SV1, _lossless(1, 16))
    victim = sorted(jpeg.iterdir())[1]
    ds = pydicom.dcmread(victim)
    ds.PixelData = _one_frame_cut(ds.PixelData)  # a well-formed file holding half a frame
    ds.save_as(victim, enforce_file_format=True)
    with pytest.raises(DataError) as err:
        read_volume(jpeg)
    assert str(err.value) == (
        f"{jpeg}: cannot decode pixel data of {victim.name} (JPEG Lossless SV1: the JPEG frame "
        f"({len(next(generate_frames(ds.PixelData, number_of_frames=1)))} bytes) ends without its end-of-image "
        "marker: truncated data)")


def test_truncated_lossless_file_is_one_clear_error(tmp_path, sources):
    jpeg = _rewrite(sources["unsigned12"], tmp_path / "jpeg", PROCESS14, _lossless(1, 12))
    victim = sorted(jpeg.iterdir())[1]  # the middle slice
    with open(victim, "r+b") as f:  # an interrupted copy: the file ends inside its pixel data
        f.truncate(victim.stat().st_size // 2)
    with pytest.raises(DataError) as err:  # the slice is not skipped (pydicom's warning goes to the debug log)
        read_volume(jpeg)
    assert str(err.value) == (
        f"{jpeg}: cannot decode pixel data of {victim.name} (JPEG Lossless (Process 14): no PixelData element "
        "could be read (truncated file?))")
