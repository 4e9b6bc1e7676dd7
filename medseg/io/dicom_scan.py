"""Find DICOM series in a folder: read headers, group by series and file kind, say why a group is no volume.

Only headers are read here (large values such as uncompressed pixel data are deferred, i.e. left on disk until
touched); :mod:`medseg.io.dicom` reads the pixels. pydicom's warnings meanwhile go to the debug log (``-v``): the
reason a file is skipped says what matters.
"""

from __future__ import annotations

import logging
import os
import stat
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import DataError

__all__ = ["SeriesInfo", "SkippedFile", "list_series", "list_skipped", "scan_dicom"]

logger = logging.getLogger(__name__)

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
_TOL_DIR = 1e-4  # direction cosines / spacing that differ less than this are "the same"
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


@dataclass
class SeriesInfo:
    """One group of files that would form a volume (a series, or part of a split series).

    ``size`` is (cols, rows, slices) like SimpleITK, ``spacing`` (mm) and ``orientation`` (nibabel axis
    codes such as ``"LPS"``: the world direction in which i, j, k grow) describe the volume axes.
    ``usable`` is False when the group cannot be read as one volume; ``reason`` then says why.
    ``reason`` is also set on the usable part of a split series (``"split (mixed image/localizer): part 2 of 2"``):
    a series is split only by file kind (images, localizers, mosaics); images that disagree in orientation, size or
    pixel spacing are refused together, as one part naming what differs. ``irregular`` is set on a usable
    series whose slices lie on no regular grid (uneven gaps, gantry tilt, a slice shifted in-plane): it says why,
    naming the slice, and such a series is read only when resampled (``irregular="resample"``).
    """

    series_uid: str
    description: str
    modality: str
    n_files: int
    size: tuple[int, int, int]
    spacing: tuple[float, float, float] | None
    orientation: str | None
    files: list[Path]
    usable: bool
    reason: str | None = None
    irregular: str | None = None
    headers: list[DicomHeader] = field(default_factory=list, repr=False)
    geometry: dict[str, Any] = field(default_factory=dict, repr=False)

    def summary(self) -> str:
        size = "x".join(str(n) for n in self.size)
        state = "usable" if self.usable else f"skipped: {self.reason}"
        if self.usable and self.irregular:
            state = f"irregular: {self.irregular}"
        uid = self.series_uid or "(no SeriesInstanceUID)"
        return f"{uid} {self.description!r} {self.modality} {self.n_files} files {size} ({state})"


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


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
        why = "no DICM prefix" if "'DICM' prefix" in str(err) else f"InvalidDicomError: {_shortened(str(err))}"
        return SkippedFile(path, f"not a DICOM file ({why})")
    except (EOFError, OSError, ValueError, KeyError, TypeError) as err:
        return SkippedFile(path, f"not a DICOM file ({type(err).__name__}: {_shortened(str(err))})")
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


def _shortened(text: str, limit: int = 80) -> str:
    """The first line of ``text``, cut at a word boundary with ``...`` when longer than ``limit``.

    Example:
        >>> _shortened("File is missing DICOM File Meta Information header or the prefix is missing", 40)
        'File is missing DICOM File Meta...'
    """
    line = text.splitlines()[0] if text else ""
    if len(line) <= limit:
        return line
    return line[:limit - 2].rsplit(" ", 1)[0].rstrip(" ,;:.") + "..."


@contextmanager
def _pydicom_warnings_to_debug() -> Iterator[None]:
    """While headers are read, pydicom's warnings (its log records and Python warnings, e.g. "Expected implicit VR,
    but found explicit VR") go to this module's debug log, each message once: what matters about a file is in the
    reason it is skipped, and ``-v`` shows the rest."""
    heard: dict[str, None] = {}  # insertion-ordered set

    class _Hold(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.levelno < logging.WARNING:
                return True
            heard.setdefault(record.getMessage())
            return False

    hold, pydicom_log = _Hold(), logging.getLogger("pydicom")
    pydicom_log.addFilter(hold)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for warning in caught:
            heard.setdefault(str(warning.message))
    finally:
        pydicom_log.removeFilter(hold)
    for message in heard:
        logger.debug("pydicom, while reading DICOM headers: %s", message)


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


def _files_in(source: Path | str | Sequence[Path | str]) -> tuple[str, list[Path]]:
    if isinstance(source, (str, Path)):
        folder = Path(source)
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder; allowed a folder of DICOM files")
        files = sorted(Path(root) / name for root, _, names in os.walk(folder) for name in names)
        if not files:
            raise DataError(f"{folder}: folder is empty; allowed a folder holding one DICOM series")
        return str(folder), files
    files = [Path(p) for p in source]
    if not files:
        raise DataError("no DICOM files given; allowed a folder or a non-empty list of files")
    return f"{files[0].parent} ({len(files)} files)", files


def scan_dicom(source: Path | str | Sequence[Path | str]) -> tuple[str, list[SeriesInfo], list[SkippedFile]]:
    """Read all headers under ``source`` (folder, recursive, or list of files) and group them.

    Returns:
        (name of the source for messages, series groups, skipped files).
    """
    name, files = _files_in(source)
    with _pydicom_warnings_to_debug():
        headers = _read_all(files)
    skipped = [h for h in headers if isinstance(h, SkippedFile)]
    images = [h for h in headers if isinstance(h, DicomHeader)]
    by_series: dict[tuple[str, ...], list[DicomHeader]] = defaultdict(list)
    for h in images:
        by_series[_series_key(h)].append(h)
    groups: list[SeriesInfo] = []
    for key, members in by_series.items():
        groups.extend(_split_series(key[0], members))
    groups.sort(key=lambda g: (not g.usable, g.series_uid))
    return name, groups, skipped


def _read_all(files: list[Path]) -> list[DicomHeader | SkippedFile]:
    if len(files) < 64:
        read = [_read_header(f) for f in files]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            read = list(pool.map(_read_header, files))
    return [h for item in read for h in (item if isinstance(item, list) else [item])]


def _series_key(h: DicomHeader) -> tuple[str, ...]:
    """SeriesInstanceUID; anonymised files without one are grouped by series number/description/frame."""
    if h.series_uid:
        return (h.series_uid,)
    ds = h.dataset
    fields = ("StudyInstanceUID", "SeriesNumber", "FrameOfReferenceUID", "Modality", "SeriesDescription")
    return ("", *(str(ds.get(f, "") or "") for f in fields))


def _split_series(uid: str, members: list[DicomHeader]) -> list[SeriesInfo]:
    """Split one SeriesInstanceUID by file kind (images, localizers, mosaics), then judge each part.

    The images of one series form one volume or none: images that disagree in orientation, rows/columns or pixel
    spacing are refused together (one part, naming what differs), never split into stacks, as a stack of every
    second slice would pass for a whole volume at twice the spacing.
    """
    parts: dict[tuple[Any, ...], list[DicomHeader]] = defaultdict(list)
    seen: list[tuple[float, ...]] = []  # the orientations and pixel spacings found (_seen_as)
    for h in members:
        parts[_kind_key(h, seen)].append(h)
    images = {kind: hs for kind, hs in parts.items() if kind[0] == "image"}
    groups = [_judge(uid, hs, kind) for kind, hs in parts.items() if kind[0] != "image" or len(images) == 1]
    if len(images) > 1:
        groups.insert(0, _disagreeing(uid, images))
    if len(groups) > 1:
        what = _split_cause(list(parts))
        for i, g in enumerate(groups, 1):
            note = f"split ({what}): part {i} of {len(groups)}"
            g.reason = f"{note}; {g.reason}" if g.reason else note
    return groups


def _kind_key(h: DicomHeader, seen: list[tuple[float, ...]]) -> tuple[Any, ...]:
    """What a file is (image, localizer, mosaic) and, for images, its geometry: orientation and pixel spacing (each
    the first of ``seen`` within ``_TOL_DIR``, else added to it: header rounding is no other geometry), rows,
    columns."""
    if "LOCALIZER" in h.image_type:
        return ("localizer",)
    if "MOSAIC" in h.image_type:
        return ("mosaic",)
    return ("image", _seen_as(h.orientation, seen), h.rows, h.cols, _seen_as(h.pixel_spacing, seen))


def _seen_as(values: tuple[float, ...] | None, seen: list[tuple[float, ...]]) -> tuple[float, ...] | None:
    """``values``, or the first of ``seen`` (of the same length) within ``_TOL_DIR`` of it (else added to ``seen``).

    Example:
        >>> seen = [(1.0, 0.0)]
        >>> _seen_as((1.00004, 0.0), seen), _seen_as((0.5, 0.5), seen), seen
        ((1.0, 0.0), (0.5, 0.5), [(1.0, 0.0), (0.5, 0.5)])
    """
    if values is None:
        return None
    for known in seen:
        if len(known) == len(values) and max(abs(a - b) for a, b in zip(known, values, strict=True)) <= _TOL_DIR:
            return known
    seen.append(values)
    return values


def _disagreeing(uid: str, images: dict[tuple[Any, ...], list[DicomHeader]]) -> SeriesInfo:
    """The images of one series whose geometry differs from slice to slice: no volume, the reason naming what
    differs (the orientations, sizes or pixel spacings found, with their slice counts)."""
    hs = [h for part in images.values() for h in part]
    first = hs[0]
    keys = sorted(images, key=lambda k: -len(images[k]))  # the most slices first
    if len({k[1] for k in keys}) > 1:
        what, shown = "orientations", [_orientation_name(k[1]) for k in keys]
    elif len({(k[2], k[3]) for k in keys}) > 1:
        what, shown = "sizes", [f"{k[3]}x{k[2]}" for k in keys]
    else:
        what, shown = "pixel spacings", ["x".join(f"{v:g}" for v in k[4]) + " mm" if k[4] else "none" for k in keys]
    listed = ", ".join(f"{name} ({len(images[k])} slice{'s' if len(images[k]) > 1 else ''})"
                       for name, k in zip(shown[:3], keys[:3], strict=True))
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    reason = (f"slices in {len(keys)} {what}: {listed}{more}; a volume's slices share one orientation, size and "
              "pixel spacing")
    return SeriesInfo(series_uid=uid, description=first.description, modality=first.modality,
                      n_files=len({h.path for h in hs}), size=(first.cols, first.rows, len(hs)), spacing=None,
                      orientation=None, files=[h.path for h in hs], usable=False, reason=reason, headers=hs)


def _orientation_name(iop: tuple[float, ...] | None) -> str:
    """An ImageOrientationPatient as messages show it: ``"sagittal [0, 1, 0, 0, 0, -1]"`` (or ``"oblique ..."``)."""
    if iop is None:
        return "no ImageOrientationPatient"
    normal = np.cross(np.array(iop[:3], dtype=float), np.array(iop[3:], dtype=float))
    main = int(np.argmax(np.abs(normal)))
    plane = ("sagittal", "coronal", "axial")[main] if abs(normal[main]) > 0.9 else "oblique"
    return f"{plane} [{', '.join(f'{v:g}' for v in iop)}]"


def _split_cause(keys: list[tuple[Any, ...]]) -> str:
    kinds = {k[0] for k in keys}
    if len(kinds) > 1:
        return "mixed " + "/".join(sorted(kinds))
    if len({k[1] for k in keys}) > 1:
        return "inconsistent orientation"
    if len({(k[2], k[3]) for k in keys}) > 1:
        return "inconsistent rows/cols"
    return "inconsistent pixel spacing"


def _judge(uid: str, hs: list[DicomHeader], kind: tuple[Any, ...]) -> SeriesInfo:
    first = hs[0]
    info = SeriesInfo(
        series_uid=uid, description=first.description, modality=first.modality, n_files=len({h.path for h in hs}),
        size=(first.cols, first.rows, len(hs)), spacing=None, orientation=None,
        files=[h.path for h in hs], usable=False, headers=hs,
    )  # fmt: skip
    ds = first.dataset
    if kind[0] != "image":
        info.reason = kind[0]
    elif first.rows == 0 or first.cols == 0:
        what = f"non-image SOP class {first.sop_class}" if first.sop_class else "no SOP class"
        info.reason = f"{what} (no Rows/Columns)"
    elif int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        info.reason = f"color image (SamplesPerPixel {ds.SamplesPerPixel}); allowed grayscale"
    elif any(h.frames > 1 for h in hs):
        info.reason = (f"multi-frame files ({first.frames} frames) without per-frame functional groups; allowed "
                       "enhanced multi-frame images or single-frame slices")
    elif first.orientation is None or first.pixel_spacing is None or any(h.position is None for h in hs):
        info.reason = "missing ImagePositionPatient/ImageOrientationPatient/PixelSpacing"
    elif len(hs) == 1:
        info.reason = "single frame of one file; a volume needs >= 2 slices"
    else:
        info.reason = _judge_geometry(info, hs)
    info.usable = info.reason is None
    return info


def _judge_geometry(info: SeriesInfo, hs: list[DicomHeader]) -> str | None:
    """Sort slices along the normal; fill ``info.geometry``; return why it is not a volume, or None.

    Every slice's position is checked against the stack, not only the first and last: a series whose slices are
    unevenly spaced, tilted (positions drifting off the slice normal) or shifted in-plane one by one is still a
    volume, but an irregular one (``info.irregular`` says why, naming the slice): it is read only when resampled.
    """
    row, col = np.array(hs[0].orientation[:3]), np.array(hs[0].orientation[3:])  # type: ignore[index]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        return f"invalid ImageOrientationPatient {hs[0].orientation}"
    normal = np.cross(row, col)
    positions = np.array([h.position for h in hs])
    dist = positions @ normal
    order = np.argsort(dist, kind="stable")
    hs[:] = [hs[i] for i in order]
    info.files = [h.path for h in hs]
    positions, dist = positions[order], dist[order]
    steps = np.diff(dist)
    if np.any(steps < 1e-3):
        n_same = int(np.sum(steps < 1e-3)) + 1
        return f"{n_same} files share a slice position (mosaic, echoes, phases or time points?); not one volume"
    spacing = (dist[-1] - dist[0]) / (len(hs) - 1)
    ps = hs[0].pixel_spacing
    direction = np.column_stack([row, col, normal])
    info.spacing = (float(ps[1]), float(ps[0]), float(spacing))  # type: ignore[index]
    info.orientation = _axcodes(direction)
    info.geometry = {"origin": positions[0], "direction": direction, "spacing": info.spacing, "positions": positions,
                     "pixel_spacing": (float(ps[0]), float(ps[1]))}  # type: ignore[index]
    info.irregular = _irregularity(hs, positions, dist, normal)
    return None


def _slice_name(h: DicomHeader) -> str:
    """``"CT.123 (instance 7)"`` (or ``"enhanced.dcm frame 3"``): a slice as messages name it."""
    if h.frame is not None:
        return f"{h.path.name} frame {h.frame + 1}"
    number = h.dataset.get("InstanceNumber")
    return f"{h.path.name} (instance {number})" if number not in (None, "") else h.path.name


def _irregularity(hs: list[DicomHeader], positions: np.ndarray, dist: np.ndarray, normal: np.ndarray) -> str | None:
    """Why slices sorted along ``normal`` do not lie on one regular grid, naming the slice; None when they do.

    Checked for every slice: the gaps along the normal (uneven spacing, a missing slice), and each slice's position
    against the line from the first slice to the last (a slice shifted in-plane or out of line), then that line
    against the normal (gantry tilt, a sheared stack).
    """
    steps = np.diff(dist)
    typical = float(np.sort(steps)[(len(steps) - 1) // 2])  # the lower median: of two gaps, the smaller
    deviation = np.abs(steps - typical)
    if deviation.max() > max(0.01 * typical, 1e-3):
        k = int(np.argmax(deviation))
        return (
            f"non-uniform slice spacing: {steps[k]:.3f} mm between slices {k} and {k + 1} "
            f"({_slice_name(hs[k])}, {_slice_name(hs[k + 1])}), expected {typical:.3f} mm (missing slice?)"
        )
    span = dist[-1] - dist[0]
    along = (dist - dist[0]) / span
    line = positions[0] + along[:, None] * (positions[-1] - positions[0])
    off_line = np.linalg.norm(positions - line, axis=1)
    tolerance = max(1e-3 * typical, 1e-3)
    if off_line.max() > tolerance:
        k = int(np.argmax(off_line))
        return (f"slice {k} ({_slice_name(hs[k])}) lies {off_line[k]:.3f} mm off the line through the first and "
                "last slices (shifted in-plane or out of line)")
    offaxis = positions[-1] - positions[0] - span * normal
    if np.linalg.norm(offaxis) > max(1e-3 * abs(span), 1e-3):
        tilt = np.degrees(np.arctan2(np.linalg.norm(offaxis), abs(span)))
        return f"gantry tilt / sheared stack: slices move {tilt:.2f} deg off the slice normal"
    return None


def _axcodes(direction_lps: np.ndarray) -> str:
    ras = np.diag([-1.0, -1.0, 1.0]) @ direction_lps
    letters = (("L", "R"), ("P", "A"), ("I", "S"))
    out = []
    for axis in range(3):
        world = int(np.argmax(np.abs(ras[:, axis])))
        out.append(letters[world][int(ras[world, axis] > 0)])
    return "".join(out)


def list_series(folder: Path | str | Sequence[Path | str]) -> list[SeriesInfo]:
    """Every candidate series under ``folder`` (recursive), usable volumes first.

    Example:
        A folder with one CT slice (pydicom's test file) and a text file: the slice is listed, as no volume.

        >>> import shutil, tempfile
        >>> from pydicom.data import get_testdata_file
        >>> tmp = tempfile.TemporaryDirectory()
        >>> _ = shutil.copy(get_testdata_file("CT_small.dcm"), tmp.name)
        >>> _ = (Path(tmp.name) / "notes.txt").write_text("not DICOM")
        >>> [(s.modality, s.n_files, s.size, s.usable, s.reason) for s in list_series(tmp.name)]
        [('CT', 1, (128, 128, 1), False, 'single frame of one file; a volume needs >= 2 slices')]
        >>> tmp.cleanup()
    """
    return scan_dicom(folder)[1]


def list_skipped(folder: Path | str | Sequence[Path | str]) -> list[SkippedFile]:
    """Files under ``folder`` that belong to no volume, each with the reason.

    Covers non-DICOM files, non-image SOP classes and every file of an unusable series.
    """
    _, groups, skipped = scan_dicom(folder)
    out = list(skipped)
    for g in groups:
        if not g.usable:
            out.extend(SkippedFile(p, g.reason or "not a volume") for p in g.files)
    return sorted(out, key=lambda s: s.path)


def describe_groups(groups: Iterable[SeriesInfo]) -> str:
    return "; ".join(g.summary() for g in groups)
