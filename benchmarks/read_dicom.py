"""Time medseg.io.read_volume against SimpleITK's ImageSeriesReader on the shared DICOM series.

Run from the repository root: ``python benchmarks/read_dicom.py [--repeats 5] [--data PATH]``.
Prints one line per series: name, medseg s, sitk s, ratio medseg/sitk (median of the repeats). Besides the series
as shipped, the JPEG 2000 CT is re-encoded at run time as lossless JPEG (SV1, precision 12 as its BitsStored) in a
temporary folder: the commonest lossless syntax of PACS exports.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medseg.io import read_volume  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SERIES = {  # name -> (folder, description of the series to pick)
    "ct-totalseg-j2k-20": ("dicom-ct-totalseg/series", None),
    "ct-dcmqi-3": ("dicom-seg-dcmqi/ct", None),
    "mr-t1-sag-35 (of 48 files)": ("dicom-mr-multiseries-decubitus", "t1_fl2d_sag"),
}
#: name -> (folder re-encoded, transfer syntax)
REENCODED = {"ct-totalseg-ljpeg-sv1-20": ("dicom-ct-totalseg/series", "1.2.840.10008.1.2.4.70")}


def _lossless_jpeg_copy(folder: Path, out: Path, uid: str) -> Path:
    """Every file of ``folder`` with its pixels as one lossless JPEG frame (predictor 1, precision = BitsStored)."""
    from pydicom.encaps import encapsulate

    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        precision = int(ds.BitsStored)
        samples = ds.pixel_array.astype(np.uint16) & ((1 << precision) - 1)  # two's complement if signed
        frame = imagecodecs.jpeg8_encode(samples, lossless=True, predictor=1, bitspersample=precision)
        ds.PixelData = encapsulate([bytes(frame)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = uid
        ds.save_as(out / path.name, enforce_file_format=True)
    return out


def _uid_for(folder: Path, description: str | None) -> str:
    reader = sitk.ImageSeriesReader()
    for uid in reader.GetGDCMSeriesIDs(str(folder)):
        files = reader.GetGDCMSeriesFileNames(str(folder), uid)
        info = sitk.ImageFileReader()
        info.SetFileName(files[0])
        info.ReadImageInformation()
        if description is None or info.GetMetaData("0008|103e").strip() == description:
            return uid
    raise SystemExit(f"{folder}: no series {description!r}")


def _sitk_read(folder: Path, uid: str) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), uid))
    return reader.Execute()


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    print(f"{'series':28s} {'medseg s':>9s} {'sitk s':>8s} {'ratio':>6s}")
    with tempfile.TemporaryDirectory() as tmp:
        series = {name: (args.data / sub, description) for name, (sub, description) in SERIES.items()}
        for name, (sub, syntax) in REENCODED.items():
            out = Path(tmp) / name
            out.mkdir()
            series[name] = (_lossless_jpeg_copy(args.data / sub, out, syntax), None)
        for name, (folder, description) in series.items():
            _time_one(name, folder, description, args.repeats)


def _time_one(name: str, folder: Path, description: str | None, repeats: int) -> None:
    uid = _uid_for(folder, description)
    kwargs = {"series_uid": uid} if description else {}
    volume, image = read_volume(folder, **kwargs), _sitk_read(folder, uid)  # warm the file cache and imports
    if not np.array_equal(volume.array, sitk.GetArrayFromImage(image).transpose(2, 1, 0)):
        raise SystemExit(f"{name}: medseg and SimpleITK read different voxels")
    t_medseg = _median_time(lambda: read_volume(folder, **kwargs), repeats)
    t_sitk = _median_time(lambda: _sitk_read(folder, uid), repeats)
    print(f"{name:28s} {t_medseg:9.3f} {t_sitk:8.3f} {t_medseg / t_sitk:6.2f}")


if __name__ == "__main__":
    main()
