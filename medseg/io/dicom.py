"""Read one DICOM series as a :class:`~medseg.io.volumes.Volume`.

Policy (see :mod:`medseg.io.dicom_scan` for how series are found and judged):

* slices are sorted by their position projected on the slice normal (row x col of
  ImageOrientationPatient), never by InstanceNumber; the k axis points along that normal;
* the slice spacing comes from the positions, not SliceThickness/SpacingBetweenSlices;
* a gap (missing slice, non-uniform spacing) and gantry tilt are refused with a :class:`DataError`;
  nothing is resampled silently;
* mosaics, localizers, several files at one position, single files and non-image SOP classes
  (SEG, SR, RTSTRUCT, KO, PR, ...) are never read as volumes;
* RescaleSlope/Intercept are applied: int16 (or int32) when they are integral and values fit,
  float32 otherwise; series without rescale keep their stored dtype.

Geometry equals SimpleITK's ``ImageSeriesReader`` (origin, spacing, direction in LPS).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from medseg.errors import DataError
from medseg.io.dicom_scan import (
    DicomHeader,
    SeriesInfo,
    SkippedFile,
    describe_groups,
    list_series,
    list_skipped,
    scan_dicom,
)
from medseg.io.volumes import DEFAULT_MAX_BYTES, Volume, affine_from_lps, check_volume_size

__all__ = ["SeriesInfo", "SkippedFile", "list_series", "list_skipped", "read_dicom_series", "select_series"]

logger = logging.getLogger(__name__)

_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
#: Compressed series with at least this many slices are decoded in worker processes.
_PARALLEL_MIN_SLICES = 8


def select_series(
    source: Path | str | Sequence[Path | str], series_uid: str | None = None
) -> tuple[str, SeriesInfo]:
    """Find the one usable series under ``source`` (or the one with ``series_uid``).

    Raises:
        DataError: No DICOM, no usable series, ``series_uid`` not found or unusable, or several
            usable series and no ``series_uid``.
    """
    name, groups, skipped = scan_dicom(source)
    if not groups:
        reasons = sorted({s.reason.split(" (")[0] for s in skipped})
        raise DataError(f"{name}: no DICOM image files among {len(skipped)} files ({'; '.join(reasons)})")
    usable = [g for g in groups if g.usable]
    if series_uid is not None:
        matching = [g for g in groups if g.series_uid == series_uid]
        if not matching:
            raise DataError(f"{name}: no series {series_uid!r}; found {describe_groups(groups)}")
        usable = [g for g in matching if g.usable]
        if not usable:
            raise DataError(f"{name}: series {series_uid!r} is not a readable volume: {matching[0].reason}")
    if not usable:
        raise DataError(f"{name}: no series forms a 3D volume; found {describe_groups(groups)}")
    if len(usable) > 1:
        raise DataError(
            f"{name}: {len(usable)} volume series found, pass series_uid= to choose one: {describe_groups(usable)}"
        )
    return name, usable[0]


def read_dicom_series(
    folder_or_files: Path | str | Sequence[Path | str],
    series_uid: str | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    workers: int | None = None,
) -> Volume:
    """Read one DICOM series (folder searched recursively, or a list of files) as a volume.

    Args:
        folder_or_files: Folder or files of the series.
        series_uid: Required when several volume series are present.
        max_bytes: Refuse a series whose voxel array would be larger.
        workers: Processes that decode compressed pixel data (default: CPU count, at most 8; 1 = in-process).

    Returns:
        Volume with ``array[i, j, k]`` (i along the row direction, k along the slice normal), RAS affine,
        and meta ``path, format, series_uid, modality, description, study_uid, frame_of_reference_uid,
        sop_instance_uids, files, rescaled``.

    Raises:
        DataError: See :func:`select_series`; also undecodable pixel data or an absurd size.
    """
    name, info = select_series(folder_or_files, series_uid)
    first = info.headers[0].dataset
    check_volume_size(name, info.size, 4, max_bytes)
    stack = _read_pixels(name, info.headers, workers)
    array, rescaled = _rescale(name, stack, info.headers)
    geo = info.geometry
    affine = affine_from_lps(geo["origin"], geo["spacing"], geo["direction"])
    meta = {
        "path": str(folder_or_files) if isinstance(folder_or_files, (str, Path)) else name,
        "format": "dicom",
        "series_uid": info.series_uid,
        "modality": info.modality,
        "description": info.description,
        "study_uid": str(first.get("StudyInstanceUID", "")),
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
        "sop_instance_uids": [h.sop_uid for h in info.headers],
        "files": [str(h.path) for h in info.headers],
        "rescaled": rescaled,
        "photometric": str(first.get("PhotometricInterpretation", "")),
    }
    # stack is [k, row, col]; Volume is [i = col, j = row, k]
    return Volume(array.transpose(2, 1, 0), affine, meta)


def _read_pixels(name: str, headers: list[DicomHeader], workers: int | None) -> np.ndarray:
    syntaxes = {str(h.dataset.file_meta.get("TransferSyntaxUID", "")) for h in headers}
    n = len(headers)
    if workers is None:
        workers = min(8, os.cpu_count() or 1, n // 4)
    paths = [str(h.path) for h in headers]
    if syntaxes <= _UNCOMPRESSED or workers <= 1 or n < _PARALLEL_MIN_SLICES or os.name != "posix":
        slices = [_decode_file(p) for p in paths]
    else:
        import multiprocessing as mp

        chunk = -(-n // workers)
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as pool:
            slices = [s for part in pool.map(_decode_files, [paths[i : i + chunk] for i in range(0, n, chunk)]) for s in part]
    first = headers[0]
    out = np.empty((n, first.rows, first.cols), dtype=slices[0][1].dtype if not isinstance(slices[0], str) else np.int16)
    for k, item in enumerate(slices):
        if isinstance(item, str):
            raise DataError(f"{name}: cannot decode pixel data of {headers[k].path.name} ({item})")
        _, pix = item
        if pix.shape != out.shape[1:] or pix.dtype != out.dtype:
            raise DataError(
                f"{name}: {headers[k].path.name} has pixels {pix.shape} {pix.dtype}; "
                f"allowed {out.shape[1:]} {out.dtype} like the other slices"
            )
        out[k] = pix
    return out


def _decode_files(paths: list[str]) -> list[tuple[str, np.ndarray] | str]:
    return [_decode_file(p) for p in paths]


def _decode_file(path: str) -> tuple[str, np.ndarray] | str:
    """Stored pixel values of one single-frame file, or an error string (picklable for workers)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=False)
        return path, ds.pixel_array
    except Exception as err:  # decoder plug-ins raise anything; reported with the file name
        return f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"


def _rescale(name: str, stack: np.ndarray, headers: list[DicomHeader]) -> tuple[np.ndarray, bool]:
    slopes = np.array([float(h.dataset.get("RescaleSlope", 1) or 1) for h in headers])
    inters = np.array([float(h.dataset.get("RescaleIntercept", 0) or 0) for h in headers])
    if np.all(slopes == 1) and np.all(inters == 0):
        return stack, False
    shape = (-1, 1, 1)
    if np.all(slopes == np.round(slopes)) and np.all(inters == np.round(inters)):
        wide = stack.astype(np.int64) * slopes.astype(np.int64).reshape(shape) + inters.astype(np.int64).reshape(shape)
        low, high = int(wide.min()), int(wide.max())
        for dtype in (np.int16, np.int32):
            if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
                return wide.astype(dtype), True
        logger.debug("%s: rescaled values %d..%d exceed int32, using float32", name, low, high)
    out = stack.astype(np.float32) * slopes.astype(np.float32).reshape(shape) + inters.astype(np.float32).reshape(shape)
    return out, True
