"""Read one DICOM series as a :class:`~medseg.io.volume_io.Volume`.

Policy (see :mod:`medseg.io.dicom_scan` for how series are found and judged):

* slices are sorted by their position projected on the slice normal (row x col of
  ImageOrientationPatient), never by InstanceNumber; the k axis points along that normal;
* the slice spacing comes from the positions, not SliceThickness/SpacingBetweenSlices;
* every slice's position is checked against the stack: a gap (missing slice, non-uniform spacing), gantry tilt
  and a slice shifted in-plane or out of line are refused with a :class:`DataError` naming the slice and the
  option, unless ``irregular="resample"`` asks for a regular grid (:mod:`medseg.io.resample`, stated in
  ``meta["resampled"]``); nothing is resampled silently;
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
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import ConfigError, DataError, shortened
from medseg.io.decoders import (
    JPEG_SYNTAXES,
    imagecodecs_decoder,
    jpeg2k_decoder,
    jpeg_decoder,
    pydicom_decoders,
    syntax_support,
)
from medseg.io.dicom_scan import (
    DicomHeader,
    SeriesInfo,
    SkippedFile,
    describe_groups,
    list_series,
    list_skipped,
    scan_dicom,
)
from medseg.io.resample import IRREGULAR_CHOICES, resample_slices
from medseg.io.volume import DEFAULT_MAX_BYTES, Volume, affine_from_lps, check_volume_size

__all__ = [
    "SeriesInfo", "SkippedFile", "check_irregular", "list_series", "list_skipped", "read_dicom_series", "select_series",
]

logger = logging.getLogger(__name__)

_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
#: Compressed series with at least this many slices are decoded in worker processes.
_PARALLEL_MIN_SLICES = 8


def select_series(source: Path | str | Sequence[Path | str], series_uid: str | None = None) -> tuple[str, SeriesInfo]:
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
            raise DataError(f"{name}: series is not a readable volume: {describe_groups(matching)}")
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
    irregular: str = "refuse",
) -> Volume:
    """Read one DICOM series (folder searched recursively, or a list of files) as a volume.

    Args:
        folder_or_files: Folder or files of the series.
        series_uid: Required when several volume series are present.
        max_bytes: Refuse a series whose voxel array would be larger.
        workers: Decoders working at once on compressed pixel data: threads for JPEG 2000 and JPEG (imagecodecs
            releases the GIL; default: the CPUs, at most 8), forked processes for other compressed syntaxes
            (default: idle CPUs, at most 8 and one per 4 slices); 1 = in this thread. Only speed depends on it,
            never the result.
        irregular: ``"refuse"`` (default) a series whose slices lie on no regular grid (uneven gaps, gantry tilt,
            a slice shifted in-plane), naming the slice; ``"resample"`` it onto a regular grid
            (:func:`~medseg.io.resample.resample_slices`).

    Returns:
        Volume with ``array[i, j, k]`` (i along the row direction, k along the slice normal), RAS affine,
        and meta ``path, format, series_uid, modality, description, study_uid, frame_of_reference_uid,
        sop_instance_uids, files, rescaled``; a resampled series adds ``resampled`` (the grid chosen, and why)
        and ``slice_geometry`` (the original slices' positions, so a DICOM-SEG can be written on them).

    Raises:
        DataError: See :func:`select_series`; also undecodable pixel data, an absurd size, or an irregular series
            with ``irregular="refuse"``.
        ConfigError: ``irregular`` is not one of ``"refuse"``, ``"resample"``.
    """
    check_irregular(irregular)
    name, info = select_series(folder_or_files, series_uid)
    if info.irregular and irregular == "refuse":
        raise DataError(f"{name}: series {info.series_uid or info.description!r}: {info.irregular}; "
                        "irregular='resample' (--irregular resample) resamples it onto a regular grid")
    first = info.headers[0].dataset
    check_volume_size(name, info.size, 4, max_bytes)
    stack = _read_pixels(name, info.headers, workers)
    array, rescaled = _rescale(name, stack, info.headers)
    geo = info.geometry
    extra: dict[str, object] = {}
    if info.irregular:
        grid, affine, report = resample_slices(array, geo["positions"], geo["direction"], geo["pixel_spacing"])
        check_volume_size(name, grid.shape, grid.dtype.itemsize, max_bytes)
        logger.warning("%s: %s; resampled onto a regular grid of %s voxels, spacing %s mm", name, info.irregular,
                       "x".join(map(str, grid.shape)), "x".join(f"{v:.4g}" for v in report["spacing_mm"]))
        extra = {"resampled": {"reason": info.irregular, **report}, "slice_geometry": {
            "positions_lps": np.asarray(geo["positions"]).tolist(), "direction_lps": geo["direction"].tolist(),
            "pixel_spacing": list(geo["pixel_spacing"]), "size": [info.size[1], info.size[0]]}}
    else:
        grid = array.transpose(2, 1, 0)
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
        **({"frames": [h.frame for h in info.headers]} if info.headers[0].frame is not None else {}),
        "rescaled": rescaled,
        "photometric": str(first.get("PhotometricInterpretation", "")),
        **extra,
    }
    # stack is [k, row, col]; Volume is [i = col, j = row, k]
    return Volume(grid, affine, meta)


def check_irregular(irregular: object, name: str = "irregular") -> None:
    """Refuse an ``irregular`` choice other than ``"refuse"`` and ``"resample"`` (ConfigError, one line).

    Example:
        >>> check_irregular("resample")
        >>> check_irregular("fix", "--irregular")
        Traceback (most recent call last):
        ...
        medseg.errors.ConfigError: --irregular: got 'fix'; allowed 'refuse', 'resample'
    """
    if irregular not in IRREGULAR_CHOICES:
        raise ConfigError(f"{name}: got {irregular!r}; allowed {', '.join(map(repr, IRREGULAR_CHOICES))}")


def _read_pixels(name: str, headers: list[DicomHeader], workers: int | None) -> np.ndarray:
    """Stored pixel values, shape (slices, rows, cols), each file read once."""
    slices = _decode_slices(headers, workers)
    n = len(headers)
    first = headers[0]
    out: np.ndarray | None = None
    for k, pix in enumerate(slices):
        if isinstance(pix, str):
            row = syntax_support(_syntax(headers[k].dataset))
            hint = f"; no decoder for {row.name} is installed: {row.hint()}" if row.hint() else ""
            raise DataError(f"{name}: cannot decode pixel data of {headers[k].path.name} ({row.name}: {pix}){hint}")
        if out is None:
            out = np.empty((n, first.rows, first.cols), dtype=pix.dtype)
        if pix.shape != out.shape[1:] or pix.dtype != out.dtype:
            raise DataError(
                f"{name}: {headers[k].path.name} has pixels {pix.shape} {pix.dtype}; "
                f"allowed {out.shape[1:]} {out.dtype} like the other slices"
            )
        out[k] = pix
    if out is None:  # unreachable: select_series only passes series of >= 2 slices
        raise DataError(f"{name}: series has no slices")
    return out


def _syntax(ds: Any) -> str:
    return str(ds.file_meta.get("TransferSyntaxUID", ""))


def _decode_slices(headers: list[DicomHeader], workers: int | None) -> list[np.ndarray | str]:
    """Each slice's stored values (or an error string), decoded in threads or worker processes where that pays."""
    if any(h.frame is not None for h in headers):
        return _frame_pixels(headers)
    syntaxes = {_syntax(h.dataset) for h in headers}
    n = len(headers)
    if all(imagecodecs_decoder(uid) is not None for uid in syntaxes):
        # threads, not processes: imagecodecs releases the GIL; a slice it cannot vouch for goes to pydicom
        threads = min(8, _cpus(), n) if workers is None else max(1, workers)
        if threads == 1:
            return [_imagecodecs_pixels(h.dataset) for h in headers]
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(_imagecodecs_pixels, [h.dataset for h in headers]))
    if workers is None:
        workers = min(8, _idle_cpus(), n // 4)
    compressed = not syntaxes <= _UNCOMPRESSED
    if not (compressed and workers > 1 and n >= _PARALLEL_MIN_SLICES and os.name == "posix"):
        return [_stored_pixels(h.dataset) for h in headers]
    import multiprocessing as mp

    # this process decodes the first chunk while workers decode the rest (these decoders hold the GIL)
    step = -(-n // workers)
    paths = [str(h.path) for h in headers]
    chunks = [paths[i : i + step] for i in range(step, n, step)]
    with ProcessPoolExecutor(max_workers=len(chunks), mp_context=mp.get_context("fork")) as pool:
        futures = [pool.submit(_decode_files, chunk) for chunk in chunks]
        slices = [_stored_pixels(h.dataset) for h in headers[:step]]
        for future in futures:
            slices.extend(future.result())
    return slices


def _frame_pixels(headers: list[DicomHeader]) -> list[np.ndarray | str]:
    """Stored values of frames of enhanced multi-frame files (each file decoded once, by pydicom)."""
    decoded: dict[Path, np.ndarray | str] = {}
    out: list[np.ndarray | str] = []
    for h in headers:
        if h.path not in decoded:
            try:
                pixels = np.asarray(h.dataset.pixel_array)
                decoded[h.path] = pixels.reshape(int(h.dataset.NumberOfFrames), h.rows, h.cols)
            except Exception as err:  # noqa: BLE001 (decoder plug-ins raise anything; reported with the file name)
                decoded[h.path] = f"{type(err).__name__}: {_message(err)}"
        stored = decoded[h.path]
        out.append(stored if isinstance(stored, str) else stored[h.frame or 0])
    return out


def _cpus() -> int:
    """CPUs this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _idle_cpus() -> int:
    """CPUs this process may use minus the 1-minute load: extra processes only help on idle cores."""
    cpus = _cpus()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, int(cpus - load + 0.5))


def _decode_files(paths: list[str]) -> list[np.ndarray | str]:
    """Worker: stored pixels of several files (errors as strings, so they pickle)."""
    import pydicom

    out: list[np.ndarray | str] = []
    for path in paths:
        try:
            out.append(_stored_pixels(pydicom.dcmread(path, force=False)))
        except Exception as err:  # noqa: BLE001 (reported with the file name by the caller)
            out.append(f"{type(err).__name__}: {_message(err)}")
    return out


def _imagecodecs_pixels(ds: Any) -> np.ndarray | str:
    """Stored values of a JPEG 2000 or JPEG slice (imagecodecs, or pydicom for what imagecodecs leaves)."""
    return _jpeg_pixels(ds) if _syntax(ds) in JPEG_SYNTAXES else _jpeg2k_pixels(ds)


def _jpeg_pixels(ds: Any) -> np.ndarray | str:
    """Stored values of a single-frame grayscale JPEG slice (baseline, extended, lossless), or an error string.

    libjpeg-turbo returns the frame's samples unsigned, with the frame's precision. As for uncompressed data (and
    as GDCM does), bits above BitsStored are dropped and signed values, two's complement in BitsStored bits, are
    sign-extended; so a frame of precision 16 holding 12-bit signed values already sign-extended reads the same as
    one of precision 12. Colour and multi-frame files go to pydicom. A frame without its end-of-image marker is
    refused: libjpeg-turbo would only warn and fill the missing rows.
    """
    try:
        rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
        stored, signed = int(ds.get("BitsStored", bits)), int(ds.get("PixelRepresentation", 0)) == 1
        single = int(ds.get("SamplesPerPixel", 1)) == 1 and int(ds.get("NumberOfFrames", 1) or 1) == 1
    except (AttributeError, TypeError, ValueError):  # pydicom reports what is missing or malformed
        return _stored_pixels(ds)
    if not single or bits not in (8, 16) or not 0 < stored <= bits:
        return _stored_pixels(ds)
    if "PixelData" not in ds:
        return _NO_PIXEL_DATA
    try:
        from pydicom.encaps import generate_frames

        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception as err:  # noqa: BLE001 (malformed encapsulation; reported with the file name by the caller)
        return f"encapsulated pixel data unreadable: {_message(err)}"
    if not frame.rstrip(b"\0").endswith(b"\xff\xd9"):
        return f"the JPEG frame ({len(frame)} bytes) ends without its end-of-image marker: truncated data"
    try:
        arr: np.ndarray = jpeg_decoder()(frame)
    except Exception as err:  # noqa: BLE001 (a pydicom plug-in may know better; else imagecodecs' word)
        if pydicom_decoders(_syntax(ds)):
            return _stored_pixels(ds)
        return f"{type(err).__name__}: {_message(err)}"
    if arr.shape != (rows, cols) or arr.dtype.itemsize > bits // 8:
        return f"the JPEG frame holds {arr.shape} samples of {arr.dtype}; the header says {rows}x{cols}, {bits} bits"
    arr = arr.astype(np.uint16 if bits == 16 else np.uint8, copy=False)
    if signed:
        shift = bits - stored
        values: np.ndarray = arr.view(np.int16 if bits == 16 else np.int8)
        return (values << shift) >> shift if shift else values
    if stored < bits:
        arr &= (1 << stored) - 1
    return arr


def _jpeg2k_pixels(ds: Any) -> np.ndarray | str:
    """Stored values of a single-frame grayscale JPEG 2000 slice.

    The result is used only when it has the shape, signedness and bit depth the header promises; anything
    else (colour, several frames, a codestream whose sign or precision disagrees with the header, which
    pydicom knows how to correct) is decoded by pydicom instead, so both paths give the same values.
    """
    try:
        from pydicom.encaps import generate_frames

        rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
        if int(ds.get("SamplesPerPixel", 1)) != 1 or int(ds.get("NumberOfFrames", 1) or 1) != 1 or bits > 16:
            return _stored_pixels(ds)
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        arr: np.ndarray = jpeg2k_decoder()(frame, numthreads=1)
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        expected = np.dtype(f"{'i' if signed else 'u'}{max(1, bits // 8)}")
        if arr.shape != (rows, cols) or arr.dtype != expected:
            return _stored_pixels(ds)
        stored = int(ds.get("BitsStored", bits))
        if stored < bits:
            # values beyond BitsStored mean the codestream's precision disagrees with the header: let pydicom judge
            low, high = (-(1 << (stored - 1)), (1 << (stored - 1)) - 1) if signed else (0, (1 << stored) - 1)
            if arr.min() < low or arr.max() > high:
                return _stored_pixels(ds)
        return arr
    except Exception:  # noqa: BLE001 (pydicom decodes it again and reports its own error with the file name)
        return _stored_pixels(ds)


def _stored_pixels(ds: Any) -> np.ndarray | str:
    """Stored values of a single-frame grayscale slice, or an error string."""
    if "PixelData" not in ds:
        return _NO_PIXEL_DATA
    try:
        syntax = _syntax(ds)
        bits, stored = int(ds.BitsAllocated), int(ds.get("BitsStored", ds.BitsAllocated))
        if syntax not in _UNCOMPRESSED or bits not in (8, 16, 32):
            return np.asarray(ds.pixel_array)
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        count = int(ds.Rows) * int(ds.Columns)
        data = ds.PixelData
        if len(data) < count * bits // 8:
            return f"PixelData has {len(data)} bytes, expected {count * bits // 8} (truncated file)"
        arr = np.frombuffer(data, dtype=f"<{'i' if signed else 'u'}{bits // 8}", count=count)
        arr = arr.reshape(int(ds.Rows), int(ds.Columns))
        if stored < bits:  # drop bits above BitsStored, sign-extend signed values (as pydicom/GDCM do)
            shift = bits - stored
            arr = (arr << shift) >> shift if signed else arr & ((1 << stored) - 1)
        return arr
    except Exception as err:  # noqa: BLE001 (decoder plug-ins raise anything; reported with the file name)
        return f"{type(err).__name__}: {_message(err)}"


#: a file that ends inside its encapsulated pixel data is read without them (see medseg.io.dicom_scan)
_NO_PIXEL_DATA = "no PixelData element could be read (truncated file?)"


def _message(err: Exception) -> str:
    """The first line of an exception's message, cut at a word boundary (``...``) past 200 characters."""
    return shortened(str(err), 200)


def _rescale(name: str, stack: np.ndarray, headers: list[DicomHeader]) -> tuple[np.ndarray, bool]:
    """Apply RescaleSlope/Intercept per slice: int16 or int32 when both are integral and the values fit, else
    float32. Integer results are exact (the range is worked out from each slice's stored minimum and maximum
    before choosing the narrowest dtype that holds every intermediate value)."""
    pairs = [getattr(h, "rescale", None) or (float(h.dataset.get("RescaleSlope", 1) or 1),
                                             float(h.dataset.get("RescaleIntercept", 0) or 0)) for h in headers]
    slopes = np.array([slope for slope, _ in pairs])
    inters = np.array([inter for _, inter in pairs])
    if np.all(slopes == 1) and np.all(inters == 0):
        return stack, False
    shape = (-1, 1, 1)
    if np.all(slopes == np.round(slopes)) and np.all(inters == np.round(inters)):
        lows, highs = stack.min(axis=(1, 2)).tolist(), stack.max(axis=(1, 2)).tolist()
        ends = [v * int(m) for lo, hi, m in zip(lows, highs, slopes, strict=True) for v in (lo, hi)]
        finals = [e + int(b) for e, b in zip(ends, np.repeat(inters, 2), strict=True)]
        low, high = min(finals), max(finals)
        span = min(ends + finals + lows), max(ends + finals + highs)
        for dtype in (np.int16, np.int32):
            if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
                work = np.int32 if np.iinfo(np.int32).min <= span[0] and span[1] <= np.iinfo(np.int32).max else np.int64
                wide: np.ndarray = stack.astype(work)
                if len(set(slopes.tolist())) == 1 and len(set(inters.tolist())) == 1:
                    if slopes[0] != 1:
                        wide *= work(slopes[0])
                    wide += work(inters[0])
                else:
                    wide *= slopes.astype(work).reshape(shape)
                    wide += inters.astype(work).reshape(shape)
                return wide.astype(dtype, copy=False), True
        logger.debug("%s: rescaled values %d..%d exceed int32, using float32", name, low, high)
    out = stack.astype(np.float32) * slopes.astype(np.float32).reshape(shape) + inters.astype(np.float32).reshape(shape)
    return out, True
