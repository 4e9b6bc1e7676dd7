"""Read the headers of DICOM files: what each file is, or why it is skipped.

Only headers are read here (large values such as uncompressed pixel data are deferred, i.e. left on disk until
touched); an enhanced multi-frame file gives one header per frame. :mod:`medseg.io.dicom_grouping` groups the
headers into series.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import shortened

__all__ = ["DicomHeader", "SkippedFile", "read_headers"]

#: Non-image (or not-a-volume) SOP classes, by UID prefix -> short name used in reasons.
_NON_IMAGE_SOP = {
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",
    "1.2.840.10008.5.1.4.1.1.481.3": "RTSTRUCT",
    "1.2.840.10008.5.1.4.1.1.481.5": "RTPLAN",
    "1.2.840.10008.5.1.4.1.1.481.2": "RTDOSE",
    "1.2.840.10008.5.1.4.1.1.88.59": "KO",
    "1.2.840.10008.5.1.4.1.1.88.": "SR",
    "1.2.840.10008.5.1.4.1.1.11.": "PR",
    "1.2.840.10008.5.1.4.1.1.104.": "encapsulated document",
    "1.2.840.10008.5.1.4.1.1.66": "registration/spatial object",
    "1.2.840.10008.5.1.4.1.1.7": "secondary capture",
    "1.2.840.10008.1.3.10": "DICOMDIR",
}
_TAGS = (
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "Modality",
    "SeriesDescription", "ImageType", "Rows", "Columns", "PixelSpacing", "ImagePositionPatient",
    "ImageOrientationPatient", "NumberOfFrames", "InstanceNumber", "RescaleSlope", "RescaleIntercept",
    "SamplesPerPixel", "BitsAllocated", "PixelRepresentation", "PhotometricInterpretation", "PatientID",
    "SeriesNumber",
)  # fmt: skip


@dataclass(frozen=True)
class DicomHeader:
    """The header fields of one file that series handling needs."""

    path: Path
    series_uid: str
    sop_class: str
    sop_uid: str
    modality: str
    description: str
    image_type: tuple[str, ...]
    rows: int
    cols: int
    pixel_spacing: tuple[float, float] | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    frames: int
    dataset: Any = field(repr=False, compare=False)
    #: enhanced multi-frame files: the frame (0-based) this header describes, with its own rescale
    frame: int | None = None
    rescale: tuple[float, float] | None = None


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


def read_headers(files: list[Path]) -> list[DicomHeader | SkippedFile]:
    """The header of each file (one per frame of an enhanced multi-frame file), or why it is skipped; in threads
    from 64 files on."""
    if len(files) < 64:
        read = [_read_header(f) for f in files]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            read = list(pool.map(_read_header, files))
    return [h for item in read for h in (item if isinstance(item, list) else [item])]


def _read_header(path: Path) -> DicomHeader | SkippedFile | list[DicomHeader]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        return SkippedFile(path, f"unreadable ({err.strerror or type(err).__name__})")
    if not stat.S_ISREG(mode):
        return SkippedFile(path, "not a regular file (FIFO, socket or device)")
    try:
        # defer_size: large values (pixel data, vendor blobs) are not read now; touching them later reads
        # them from the file, so uncompressed pixels are read once and headers are parsed once.
        ds = pydicom.dcmread(path, defer_size=1024, force=False)
        if "PixelData" not in ds:
            # a file that ends inside its encapsulated pixel data comes back empty (pydicom only warns): its header
            # alone still says what it is, and reading its pixels then fails naming the file, not a missing slice
            header = pydicom.dcmread(path, stop_before_pixels=True, force=False)
            ds = header if len(header) > len(ds) else ds
    except InvalidDicomError as err:
        why = "no DICM prefix" if "'DICM' prefix" in str(err) else f"InvalidDicomError: {shortened(str(err))}"
        return SkippedFile(path, f"not a DICOM file ({why})")
    except (EOFError, OSError, ValueError, KeyError, TypeError) as err:
        return SkippedFile(path, f"not a DICOM file ({type(err).__name__}: {shortened(str(err))})")
    sop_class = str(ds.get("SOPClassUID", "") or getattr(ds.file_meta, "MediaStorageSOPClassUID", ""))
    if not sop_class and "PixelData" not in ds and not ds.get("Rows") and not ds.get("Columns"):
        return SkippedFile(path, "malformed DICOM header (a DICM prefix, but no SOP class, Rows or Columns)")
    for prefix, name in _NON_IMAGE_SOP.items():
        if sop_class.startswith(prefix) and not (name == "secondary capture" and "ImagePositionPatient" in ds):
            return SkippedFile(path, f"non-image SOP class {name}")
    try:
        info = DicomHeader(
            path=path,
            series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
            sop_class=sop_class,
            sop_uid=str(ds.get("SOPInstanceUID", "") or getattr(ds.file_meta, "MediaStorageSOPInstanceUID", "")),
            modality=str(ds.get("Modality", "") or ""),
            description=str(ds.get("SeriesDescription", "") or ""),
            image_type=tuple(str(v).upper() for v in (ds.get("ImageType") or ())),
            rows=int(ds.get("Rows", 0) or 0),
            cols=int(ds.get("Columns", 0) or 0),
            pixel_spacing=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
            position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
            orientation=_floats(ds.get("ImageOrientationPatient"), 6),
            frames=int(ds.get("NumberOfFrames", 1) or 1),
            dataset=ds,
        )
        if info.frames > 1 and "PerFrameFunctionalGroupsSequence" in ds:
            return _frame_headers(info)
    except (ValueError, TypeError, AttributeError, IndexError) as err:
        return SkippedFile(path, f"malformed DICOM header ({err})")
    return info


def _frame_headers(header: DicomHeader) -> list[DicomHeader]:
    """One header per frame of an enhanced (or legacy-converted enhanced) multi-frame image.

    Each frame's position, orientation, pixel spacing and rescale come from its per-frame functional groups, or
    from the shared ones; a frame then sorts and is judged like a single-frame slice.
    """
    ds = header.dataset
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared_item = shared[0] if shared else None
    per_frame = ds.PerFrameFunctionalGroupsSequence
    if len(per_frame) != header.frames:
        raise ValueError(f"{len(per_frame)} per-frame functional groups for {header.frames} frames")

    def group(item: Any, sequence: str) -> Any:
        for where in (item, shared_item):
            if where is not None and sequence in where and len(where[sequence].value):
                return where[sequence].value[0]
        return None

    out = []
    for f, item in enumerate(per_frame):
        position, plane, measures = (group(item, s) for s in ("PlanePositionSequence", "PlaneOrientationSequence",
                                                               "PixelMeasuresSequence"))
        transform = group(item, "PixelValueTransformationSequence")
        rescale = None
        if transform is not None:
            rescale = (float(transform.get("RescaleSlope", 1) or 1), float(transform.get("RescaleIntercept", 0) or 0))
        out.append(replace(
            header,
            position=_floats(position.get("ImagePositionPatient") if position else None, 3),  # type: ignore[arg-type]
            orientation=_floats(plane.get("ImageOrientationPatient") if plane else None, 6),
            pixel_spacing=_floats(measures.get("PixelSpacing") if measures else None, 2),  # type: ignore[arg-type]
            frames=1, frame=f, rescale=rescale,
        ))
    return out


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None
