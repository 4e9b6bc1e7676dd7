"""medseg.io.decoders: what the decoder table says agrees with what read_volume actually reads.

The real series are read as shipped; the 3-slice CT is also rewritten in other transfer syntaxes (each lossless,
so every voxel must come back), and for each one "the table says decodable" must equal "read_volume reads it".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.encaps import encapsulate

import medseg.io.decoders as decoders
from medseg.errors import DataError
from medseg.io import read_volume
from medseg.io.decoders import SyntaxSupport, decoder_support

#: the syntaxes the doctor must report on (written out here, not taken from the module)
UIDS = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"]


def _row(uid: str) -> SyntaxSupport:
    return next(row for row in decoder_support() if row.uid == uid)


def _syntaxes(folder: Path) -> set[str]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
            for f in folder.iterdir() if f.is_file() and f.suffix != ".md"}


def test_table_covers_every_syntax_with_a_decoder_or_an_install_hint():
    table = decoder_support()
    assert [row.uid for row in table] == UIDS
    for row in table:
        assert row.decodable != bool(row.hint()), row
        assert not row.hint() or row.hint().startswith("pip install "), row


def test_uncompressed_jpeg2000_and_jpeg_rows_name_the_decoders_medseg_uses():
    assert _row("1.2.840.10008.1.2.1").decoders == ("pydicom",)
    # JPEG 2000 and JPEG go through imagecodecs first (medseg's threaded path), pydicom's plug-ins after
    assert _row("1.2.840.10008.1.2.4.90").decoders[0] == "imagecodecs"
    assert _row("1.2.840.10008.1.2.4.203").decoders[0] == "imagecodecs"
    for uid in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                "1.2.840.10008.1.2.4.70"):
        assert _row(uid).decoders[0] == "imagecodecs", uid
    # lossless JPEG: no pydicom plug-in is a dependency (pylibjpeg-libjpeg is GPL-3, python-gdcm large)
    assert _row("1.2.840.10008.1.2.4.57").decoders == ("imagecodecs",)
    assert _row("1.2.840.10008.1.2.4.70").decoders == ("imagecodecs",)
    # JPEG-LS: pydicom's pyjpegls plug-in (pyjpegls is a declared dependency)
    assert "pyjpegls" in _row("1.2.840.10008.1.2.4.80").decoders
    assert "pyjpegls" in _row("1.2.840.10008.1.2.4.81").decoders


def test_table_agrees_with_pydicoms_registry():
    from pydicom.pixels.decoders.base import get_decoder

    for row in decoder_support():
        pydicom_can = get_decoder(row.uid).is_available
        medseg_can = (row.uid in decoders.JPEG2000_SYNTAXES and decoders.jpeg2k_decoder() is not None) or (
            row.uid in decoders.JPEG_SYNTAXES and decoders.jpeg_decoder() is not None)
        assert row.decodable == (pydicom_can or medseg_can), row


@pytest.mark.parametrize(
    ("sub", "uid", "shape", "low", "high"),
    [
        ("dicom-ct-totalseg/series", "1.2.840.10008.1.2.4.90", (512, 512, 20), -1024, 1839),  # SOURCE.md
        ("dicom-seg-dcmqi/ct", "1.2.840.10008.1.2", (512, 512, 3), -3024, 1381),  # SOURCE.md
    ],
)
def test_shared_series_in_a_syntax_reported_decodable_is_read(shared_data, sub, uid, shape, low, high):
    folder = shared_data / sub
    assert _syntaxes(folder) == {uid}
    assert _row(uid).decodable
    volume = read_volume(folder)
    assert volume.shape == shape and volume.array.dtype == np.int16
    assert (int(volume.array.min()), int(volume.array.max())) == (low, high)
    # the same voxels as GDCM (inside SimpleITK), an independent decoder
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(reader.Execute()).transpose(2, 1, 0))


def _same(ds: pydicom.Dataset, uid: str) -> None:
    ds.file_meta.TransferSyntaxUID = uid


def _big_endian(ds: pydicom.Dataset, uid: str) -> None:
    ds.PixelData = ds.pixel_array.astype(">i2").tobytes()
    ds["PixelData"].VR = "OW"
    ds.file_meta.TransferSyntaxUID = uid


def _compress(ds: pydicom.Dataset, uid: str) -> None:
    ds.compress(uid)


def _frame(encode: Callable[[np.ndarray], bytes]) -> Callable[[pydicom.Dataset, str], None]:
    def put(ds: pydicom.Dataset, uid: str) -> None:
        ds.PixelData = encapsulate([encode(ds.pixel_array)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = uid

    return put


def _htj2k(arr: np.ndarray) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.htj2k_encode(arr))


def _lossless_jpeg(predictor: int) -> Callable[[pydicom.Dataset, str], None]:
    """Lossless JPEG (SOF3) of the stored values shifted to unsigned, the intercept shifted back: same HU."""

    def put(ds: pydicom.Dataset, uid: str) -> None:
        import imagecodecs

        shift = 3024  # the series' lowest stored value is -2000 (HU -3024 after the -1024 intercept)
        unsigned = (ds.pixel_array.astype(np.int32) + shift).astype(np.uint16)
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = int(ds.RescaleIntercept) - shift
        frame = imagecodecs.jpeg8_encode(unsigned, lossless=True, predictor=predictor, bitspersample=16)
        ds.PixelData = encapsulate([bytes(frame)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = uid

    return put


def _write(ds: pydicom.Dataset, path: Path) -> None:
    if ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRBigEndian:
        pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    else:
        ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize(
    ("uid", "rewrite"),
    [
        ("1.2.840.10008.1.2.1", _same),
        ("1.2.840.10008.1.2.1.99", _same),
        ("1.2.840.10008.1.2.2", _big_endian),
        ("1.2.840.10008.1.2.5", _compress),
        ("1.2.840.10008.1.2.4.80", _compress),
        ("1.2.840.10008.1.2.4.90", _compress),
        ("1.2.840.10008.1.2.4.201", _frame(_htj2k)),
        ("1.2.840.10008.1.2.4.70", _lossless_jpeg(1)),
        ("1.2.840.10008.1.2.4.57", _lossless_jpeg(6)),
    ],
)
def test_reported_decodable_exactly_when_read_volume_reads_it(tmp_path, dcmqi_ct, uid, rewrite):
    reference = read_volume(dcmqi_ct).array
    for path in sorted(dcmqi_ct.iterdir()):
        ds = pydicom.dcmread(path)
        rewrite(ds, uid)
        _write(ds, tmp_path / path.name)
    assert _syntaxes(tmp_path) == {uid}
    if _row(uid).decodable:
        np.testing.assert_array_equal(read_volume(tmp_path).array, reference)
    else:  # e.g. JPEG Lossless where imagecodecs is too old: one clear error, not a crash
        with pytest.raises(DataError, match=r"cannot decode pixel data of 0[123]\.dcm .*") as err:
            read_volume(tmp_path)
        assert str(err.value).endswith(f"no decoder for {_row(uid).name} is installed: {_row(uid).hint()}")


def test_nothing_available_gives_every_syntax_an_install_hint(monkeypatch):
    monkeypatch.setattr(decoders, "pydicom_decoders", lambda uid: ())
    monkeypatch.setattr(decoders, "jpeg2k_decoder", lambda: None)
    monkeypatch.setattr(decoders, "jpeg_decoder", lambda: None)
    table = {row.uid: row for row in decoder_support()}
    assert [uid for uid, row in table.items() if row.decodable] == []
    for row in table.values():
        assert row.hint().startswith("pip install "), row
    monkeypatch.setattr(decoders, "_installed", lambda name: False)  # and no decoder package installed at all
    hints = {row.uid: row.hint() for row in decoder_support()}
    assert hints["1.2.840.10008.1.2.1"] == "pip install --upgrade 'pydicom>=3'"  # only pydicom < 3 cannot
    assert hints["1.2.840.10008.1.2.4.70"] == "pip install imagecodecs (or: pip install python-gdcm)"
    assert hints["1.2.840.10008.1.2.4.51"] == "pip install imagecodecs (or: pip install python-gdcm)"
    assert hints["1.2.840.10008.1.2.4.90"] == "pip install imagecodecs (or: pip install python-gdcm)"
    assert hints["1.2.840.10008.1.2.4.203"] == (
        "pip install imagecodecs (or: pip install pylibjpeg pylibjpeg-openjpeg)")
    assert hints["1.2.840.10008.1.2.5"] == "pip install pylibjpeg pylibjpeg-rle"


def test_install_hint_prefers_the_alternative_with_fewest_missing_packages(monkeypatch):
    installed = {"pylibjpeg"}
    monkeypatch.setattr(decoders, "_installed", lambda name: name in installed)
    monkeypatch.setattr(decoders, "pydicom_decoders", lambda uid: ())
    monkeypatch.setattr(decoders, "pydicom_alternatives", lambda uid: [
        ("pylibjpeg", "pylibjpeg-libjpeg"), ("pyjpegls",), ("python-gdcm",)])
    row = _row("1.2.840.10008.1.2.4.80")
    # three one-package options: the first two in preference order are shown, the third is left out
    assert row.install == ("pylibjpeg-libjpeg", "pyjpegls")
    installed |= {"pylibjpeg-libjpeg", "pyjpegls", "python-gdcm"}  # installed but not decoding: upgrade them
    assert _row("1.2.840.10008.1.2.4.80").install == ("--upgrade pyjpegls", "--upgrade python-gdcm")


def test_pip_names_from_pydicom_requirements():
    assert decoders.pydicom_alternatives("1.2.840.10008.1.2.4.70") == [
        ("pylibjpeg", "pylibjpeg-libjpeg"), ("python-gdcm",)]
    # pydicom's own RLE decoder needs nothing: only the pylibjpeg-rle alternative has packages
    assert decoders.pydicom_alternatives("1.2.840.10008.1.2.5") == [("pylibjpeg", "pylibjpeg-rle")]


def test_syntax_outside_the_table_is_named_and_gets_no_made_up_hint():
    row = decoders.syntax_support("1.2.840.10008.1.2.4.100")  # MPEG-2: pydicom has no decoder for video
    assert (row.name, row.decodable, row.hint()) == ("MPEG2 Main Profile / Main Level", False, "")
