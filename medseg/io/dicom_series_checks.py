"""Judge one group of DICOM headers: is it one volume, on which grid, and is that grid regular.

A group is no volume when its files are not grayscale images with positions, or when they share slice positions;
a volume whose slices are unevenly spaced, tilted or shifted in-plane is irregular (read only when resampled).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.io.dicom_headers import DicomHeader

__all__ = ["SeriesInfo", "judge_group"]


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


def judge_group(uid: str, hs: list[DicomHeader], kind: tuple[Any, ...]) -> SeriesInfo:
    """One part of a series (``kind`` from the grouping: ``("image", ...)``, ``("localizer",)`` or
    ``("mosaic",)``) as a :class:`SeriesInfo`: usable, with its grid, or the reason it is no volume."""
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
