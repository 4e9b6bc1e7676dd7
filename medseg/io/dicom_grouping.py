"""Group DICOM headers into series: by SeriesInstanceUID, then by file kind (images, localizers, mosaics).

The images of one series whose orientation, size or pixel spacing differ from slice to slice are refused
together, as one group naming what differs; each other group is judged by :mod:`medseg.io.dicom_series_checks`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from medseg.io.dicom_headers import DicomHeader
from medseg.io.dicom_series_checks import SeriesInfo, judge_group

__all__ = ["group_series"]

_TOL_DIR = 1e-4  # direction cosines / spacing that differ less than this are "the same"


def group_series(images: list[DicomHeader]) -> list[SeriesInfo]:
    """The series groups of ``images``, usable volumes first (then by SeriesInstanceUID)."""
    by_series: dict[tuple[str, ...], list[DicomHeader]] = defaultdict(list)
    for h in images:
        by_series[_series_key(h)].append(h)
    groups: list[SeriesInfo] = []
    for key, members in by_series.items():
        groups.extend(_split_series(key[0], members))
    groups.sort(key=lambda g: (not g.usable, g.series_uid))
    return groups


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
    groups = [judge_group(uid, hs, kind) for kind, hs in parts.items() if kind[0] != "image" or len(images) == 1]
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
