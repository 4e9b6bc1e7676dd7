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
        return predict_images(predictor, paths, out, overwrite=overwrite, overlay=overlay, progress=progress)
    from medseg.engine.volume_predict import predict_volumes

    return predict_volumes(predictor, paths, out, overwrite=overwrite, dicom_seg=dicom_seg, progress=progress)


def describe_path(path: str | Path) -> str:
    """Human-readable description of a volume file or of the DICOM series in a folder."""
    from medseg.io.volumes import read_volume

    path = Path(path)
    if path.is_dir():
        from medseg.io.dicom import format_series_table, list_series

        return format_series_table(list_series(path))
    vol = read_volume(path)
    sp = ", ".join(f"{s:.4g}" for s in vol.spacing)
    return (f"{path}: {vol.meta.get('format')} volume, shape {vol.shape}, spacing ({sp}) mm, dtype {vol.array.dtype}, "
            f"range {vol.array.min():.6g}..{vol.array.max():.6g}")
