"""Time medseg.io.read_volume against SimpleITK's ImageSeriesReader on the shared DICOM series.

Run from the repository root: ``python benchmarks/read_dicom.py [--repeats 5] [--data PATH]``.
Prints one line per series: name, medseg s, sitk s, ratio medseg/sitk (median of the repeats).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medseg.io import read_volume  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SERIES = {  # name -> (folder, description of the series to pick)
    "ct-totalseg-j2k-20": ("dicom-ct-totalseg/series", None),
    "ct-dcmqi-3": ("dicom-seg-dcmqi/ct", None),
    "mr-t1-sag-35 (of 48 files)": ("dicom-mr-multiseries-decubitus", "t1_fl2d_sag"),
}


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
    for name, (sub, description) in SERIES.items():
        folder = args.data / sub
        uid = _uid_for(folder, description)
        kwargs = {"series_uid": uid} if description else {}
        _sitk_read(folder, uid), read_volume(folder, **kwargs)  # warm the file cache and imports
        t_medseg = _median_time(lambda folder=folder, kwargs=kwargs: read_volume(folder, **kwargs), args.repeats)
        t_sitk = _median_time(lambda folder=folder, uid=uid: _sitk_read(folder, uid), args.repeats)
        print(f"{name:28s} {t_medseg:9.3f} {t_sitk:8.3f} {t_medseg / t_sitk:6.2f}")


if __name__ == "__main__":
    main()
