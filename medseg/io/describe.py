"""``medseg inspect``: what a volume file or a folder of DICOM series holds, in a few readable lines."""

from __future__ import annotations

from pathlib import Path

from medseg.io.dicom import list_series, list_skipped
from medseg.io.volume_io import read_volume

__all__ = ["describe_path"]


def describe_path(path: str | Path, *, irregular: str = "refuse") -> str:
    """Human-readable description of a volume file or of the DICOM series in a folder.

    Args:
        path: A volume file, or a folder of DICOM series (each listed; irregular ones say why and how to read them).
        irregular: For a volume file: ``"refuse"`` (default) a sheared affine, or ``"resample"`` it and describe
            the regular grid (see :func:`~medseg.io.volume_io.read_volume`).
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
    return text


def _series_table(folder: Path, irregular: str) -> str:
    series = list_series(folder)
    lines = [f"{folder}: {len(series)} series ({sum(s.usable for s in series)} usable as volumes)"]
    for s in series:
        size = "x".join(str(n) for n in s.size) if s.size else "?"
        spacing = "x".join(f"{v:.4g}" for v in s.spacing) if s.spacing else "?"
        state = "volume" if s.usable else f"skipped: {s.reason}"
        if s.usable and s.irregular:
            how = "read resampled" if irregular == "resample" else "refused unless --irregular resample"
            state = f"irregular volume, {how}: {s.irregular}"
        lines.append(
            f"  {s.modality or '?':<4} {s.n_files:>4} files  {size:<13} {spacing:<18} mm  {s.orientation or '?':<4}"
            f"  {s.description or '(no description)'!s:<28} uid={s.series_uid or '(empty)'}  [{state}]"
        )
    in_series = {f for s in series for f in s.files}
    by_reason: dict[str, list[str]] = {}
    for k in list_skipped(folder):
        if k.path not in in_series:
            by_reason.setdefault(k.reason, []).append(k.path.name)
    for reason, names in sorted(by_reason.items()):
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        lines.append(f"  skipped {len(names)} file(s) ({reason}): {shown}")
    return "\n".join(lines)
