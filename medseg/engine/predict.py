"""``medseg predict`` and ``medseg inspect`` over paths: dispatch to the 2D or the volume path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medseg.engine.batch import BatchReport, predict_images
from medseg.engine.inference import Predictor


def predict_paths(
    predictor: Predictor,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    overlay: bool = False,
    dicom_seg: bool = False,
    progress: bool = True,
) -> BatchReport:
    """Predict every case found in ``inputs`` into ``out_dir`` (see :func:`predict_images` and
    :func:`medseg.engine.volume_predict.predict_volumes`)."""
    paths = [Path(p) for p in inputs]
    out = Path(out_dir)
    if predictor.preprocessing.get("kind") == "images2d":
        from medseg.data.volume_dataset import VOLUME_SUFFIXES
        from medseg.errors import DataError

        volumes = [p for p in paths if p.name.lower().endswith(VOLUME_SUFFIXES)]
        if volumes:
            raise DataError(f"{volumes[0]}: is a volume but checkpoint {predictor.source} is a 2D image model "
                            "(images2d); use a checkpoint trained with data.kind volumes3d or slices2d")
        return predict_images(predictor, paths, out, overwrite=overwrite, overlay=overlay, progress=progress)
    from medseg.engine.volume_predict import predict_volumes

    return predict_volumes(predictor, paths, out, overwrite=overwrite, dicom_seg=dicom_seg, progress=progress)


def describe_path(path: str | Path) -> str:
    """Human-readable description of a volume file or of the DICOM series in a folder."""
    from medseg.io.volumes import read_volume

    path = Path(path)
    if path.is_dir():
        return _series_table(path)
    vol = read_volume(path)
    sp = ", ".join(f"{s:.4g}" for s in vol.spacing)
    return (f"{path}: {vol.meta.get('format')} volume, shape {vol.shape}, spacing ({sp}) mm, dtype {vol.array.dtype}, "
            f"range {vol.array.min():.6g}..{vol.array.max():.6g}")


def _series_table(folder: Path) -> str:
    from medseg.io.dicom import list_series, list_skipped

    series = list_series(folder)
    lines = [f"{folder}: {len(series)} series ({sum(s.usable for s in series)} usable as volumes)"]
    for s in series:
        size = "x".join(str(n) for n in s.size) if s.size else "?"
        spacing = "x".join(f"{v:.4g}" for v in s.spacing) if s.spacing else "?"
        state = "volume" if s.usable else f"skipped: {s.reason}"
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
