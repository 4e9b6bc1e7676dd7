"""``medseg inspect``: what a volume file or a folder of DICOM series holds, in a few readable lines."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medseg.io.dicom_scan import SeriesInfo, scan_dicom
from medseg.io.volume_io import read_volume

__all__ = ["Description", "describe", "describe_path"]

#: Reasons for skipping a file that show it is DICOM (as opposed to a text file or a FIFO next to the series).
_DICOM_SKIPS = ("malformed DICOM header", "non-image SOP class")


@dataclass(frozen=True)
class Description:
    """What :func:`describe` found.

    Attributes:
        text: The description (a volume's header, or the table of a folder's series and skipped files).
        problem: Why medseg reads no volume from a folder that holds DICOM files (every series skipped, or
            irregular and refused); None when it reads one (or the folder holds no DICOM at all).
    """

    text: str
    problem: str | None = None


def describe(path: str | Path, *, irregular: str = "refuse") -> Description:
    """Describe a volume file or the DICOM series in a folder, and say why no volume can be read from it.

    Args:
        path: A volume file, or a folder of DICOM series (each listed; irregular ones say why and how to read them).
        irregular: ``"refuse"`` (default) a sheared affine or an irregular series, or ``"resample"`` it (a volume
            file is described on the regular grid; see :func:`~medseg.io.volume_io.read_volume`).

    Raises:
        DataError: A volume file that cannot be read (a folder's problems are in ``problem``).
    """
    path = Path(path)
    if path.is_dir():
        return _series_table(path, irregular)
    vol = read_volume(path, irregular=irregular)
    sp = ", ".join(f"{s:.4g}" for s in vol.spacing)
    text = (f"{path}: {vol.meta.get('format')} volume, shape {vol.shape}, spacing ({sp}) mm, dtype {vol.array.dtype}, "
            f"range {vol.array.min():.6g}..{vol.array.max():.6g}")
    if "resampled" in vol.meta:
        text += f" (resampled: {vol.meta['resampled']['reason']})"
    return Description(text)


def describe_path(path: str | Path, *, irregular: str = "refuse") -> str:
    """Human-readable description of a volume file or of the DICOM series in a folder (:func:`describe`'s text)."""
    return describe(path, irregular=irregular).text


def _readable(s: SeriesInfo, irregular: str) -> bool:
    return s.usable and (not s.irregular or irregular == "resample")


def _series_table(folder: Path, irregular: str) -> Description:
    _, series, not_images = scan_dicom(folder)
    lines = [f"{folder}: {len(series)} series ({sum(_readable(s, irregular) for s in series)} usable as volumes)"]
    for s in series:
        size = "x".join(str(n) for n in s.size) if s.size else "?"
        spacing = "x".join(f"{v:.4g}" for v in s.spacing) if s.spacing else "?"
        state = ("volume" + (f"; {s.reason}" if s.reason else "")  # a part of a series: "split (...): part 1 of 2"
                 if s.usable else f"skipped: {s.reason}")
        if s.usable and s.irregular:
            how = "read resampled" if irregular == "resample" else "refused unless --irregular resample"
            state = f"irregular volume, {how}: {s.irregular}"
        lines.append(
            f"  {s.modality or '?':<4} {s.n_files:>4} files  {size:<13} {spacing:<18} mm  {s.orientation or '?':<4}"
            f"  {s.description or '(no description)'!s:<28} uid={s.series_uid or '(empty)'}  [{state}]"
        )
    in_series = {f for s in series for f in s.files}
    by_reason: dict[str, list[str]] = {}
    for k in sorted(not_images, key=lambda k: k.path):
        if k.path not in in_series:
            by_reason.setdefault(k.reason, []).append(k.path.name)
    for reason, names in sorted(by_reason.items()):
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        lines.append(f"  skipped {len(names)} file(s) ({reason}): {shown}")
    return Description("\n".join(lines), _problem(folder, series, by_reason, irregular))


def _problem(folder: Path, series: list[SeriesInfo], skipped: dict[str, list[str]], irregular: str) -> str | None:
    """Why no volume can be read from a folder with DICOM files in it (None: one can, or there is no DICOM)."""
    if any(_readable(s, irregular) for s in series):
        return None
    if not series:
        dicom = {reason: names for reason, names in skipped.items() if reason.startswith(_DICOM_SKIPS)}
        if not dicom:
            return None
        reason, names = next(iter(dicom.items()))
        return f"{folder}: no DICOM image series to read as a volume; {names[0]}: {reason}"
    first = series[0]
    why = (f"{first.irregular}; --irregular resample reads it resampled onto a regular grid" if first.usable
           else first.reason or "not a volume")
    which = f"series {first.series_uid!r}" if first.series_uid else "a series without a UID"
    more = f" (and {len(series) - 1} more series, listed above)" if len(series) > 1 else ""
    return f"{folder}: no series can be read as a volume: {which}: {why}{more}"
