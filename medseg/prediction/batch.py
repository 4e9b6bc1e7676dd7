"""``medseg predict`` over paths: the image or the volume batch, by the model's kind."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medseg.errors import ConfigError, DataError
from medseg.io.images import IMAGE_SUFFIXES
from medseg.io.volume import VOLUME_SUFFIXES
from medseg.prediction.case_records import check_records_folder
from medseg.prediction.cases import BatchReport
from medseg.prediction.claims import Sharing
from medseg.prediction.ensemble import is_model_path
from medseg.prediction.image import predict_images
from medseg.prediction.loaded import LoadedModel
from medseg.prediction.volume import predict_volumes
from medseg.prediction.workers import check_parallel, predict_parallel

__all__ = ["predict_paths"]


def predict_paths(
    loaded: LoadedModel,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    overlay: bool = False,
    dicom_seg: bool = False,
    statistics: bool = False,
    probabilities: bool = False,
    progress: bool = True,
    sharing: Sharing | None = None,
    workers: int = 1,
    torchrun: bool = False,
    irregular: str = "refuse",
) -> BatchReport:
    """Predict every case found in ``inputs`` into ``out_dir``.

    Image models: see :func:`~medseg.prediction.image.predict_images`; volume models:
    :func:`~medseg.prediction.volume.predict_volumes`. ``statistics=True`` adds per-structure statistics to each
    case's ``<case>.json`` sidecar and writes ``statistics.csv`` over all cases (see
    :mod:`medseg.prediction.statistics`). ``probabilities=True`` also writes each case's class probabilities:
    ``<name>_probabilities.npz`` for images, ``<case>_probabilities.nii.gz`` (4D, class last) for volumes.

    Several processes may share ``out_dir`` (on shared storage too): each case is claimed before it is computed
    (:mod:`medseg.prediction.claims`), so no case is computed twice and a case whose process died is taken over.
    ``sharing=Sharing(shard=(i, n))`` runs shard i of n (a SLURM job array); ``workers=N`` starts N processes
    here, and ``torchrun=True`` makes this process one torchrun rank; both return the report merged over all
    processes (:mod:`medseg.prediction.workers`). ``irregular="resample"`` resamples tilted, unevenly spaced or
    sheared volumes onto a regular grid (refused by default); see :func:`~medseg.prediction.volume.predict_volumes`.

    An output folder this call created is removed again when nothing was written to it (every case failed).

    Raises:
        DataError: A volume given to an image model, a 2D image file given to a volume model (and everything
            the two batch functions refuse).
        ConfigError: ``out_dir`` inside an input folder, or an output this kind of model cannot write
            (``overlay`` for a volume model, ``dicom_seg`` for an image model), ``workers`` below 1, or
            ``workers`` with a shard, or either under torchrun; an input that is a model (models come first);
            without ``overwrite``, a case's sidecar in ``out_dir`` or (image models) its record
            ``.medseg-predict/<name>.json`` made with other label-shaping settings
            (:mod:`medseg.prediction.run_settings`, :mod:`medseg.prediction.case_records`).
    """
    paths = [Path(p) for p in inputs]
    out = Path(out_dir)
    model = next((p for p in paths if is_model_path(p)), None)
    if model is not None:
        raise ConfigError(f"{model} is a model; models come before the inputs (medseg predict MODEL... INPUT...)")
    created = [] if torchrun else _missing_folders(out)
    try:
        return _predict(loaded, paths, out, overwrite=overwrite, overlay=overlay, dicom_seg=dicom_seg,
                        statistics=statistics, probabilities=probabilities, progress=progress, sharing=sharing,
                        workers=workers, torchrun=torchrun, irregular=irregular)
    finally:
        for folder in created:  # deepest first; a folder something was written to stays
            try:
                folder.rmdir()
            except OSError:
                break


def _missing_folders(out: Path) -> list[Path]:
    """``out`` and those of its parents that do not exist yet, deepest first."""
    missing: list[Path] = []
    folder = out
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _predict(loaded: LoadedModel, paths: list[Path], out: Path, *, overwrite: bool, overlay: bool, dicom_seg: bool,
             statistics: bool, probabilities: bool, progress: bool, sharing: Sharing | None, workers: int,
             torchrun: bool, irregular: str) -> BatchReport:
    if overlay and loaded.kind.segments_volumes:
        raise ConfigError(f"--overlay: {loaded.source} is a {loaded.kind.value} model; overlays are drawn for 2D "
                          "image models only (volume models write label maps and JSON sidecars)")
    if dicom_seg and not loaded.kind.segments_volumes:
        raise ConfigError(f"--dicom-seg: {loaded.source} is a 2D image model; DICOM-SEG is written for volume "
                          "models given DICOM series")
    if irregular != "refuse" and not loaded.kind.segments_volumes:
        raise ConfigError(f"--irregular: {loaded.source} is a 2D image model; irregular volumes are resampled for "
                          "volume models only")
    check_parallel(workers, sharing, torchrun)
    if not loaded.kind.segments_volumes:
        check_records_folder(out)  # before the workers start (and claim cases)
    if workers != 1 or torchrun:
        options = {"overwrite": overwrite, "overlay": overlay, "dicom_seg": dicom_seg, "statistics": statistics,
                   "probabilities": probabilities, "progress": progress, "irregular": irregular}
        return predict_parallel(predict_paths, loaded, paths, out, workers=workers, torchrun=torchrun,
                                sharing=sharing, options=options)
    if not loaded.kind.segments_volumes:
        volumes = [p for p in paths if p.name.lower().endswith(VOLUME_SUFFIXES)]
        if volumes:
            raise DataError(f"{volumes[0]}: is a volume but checkpoint {loaded.source} is a 2D image model "
                            "(images2d); use a checkpoint trained with data.kind volumes3d or slices2d")
        return predict_images(loaded, paths, out, overwrite=overwrite, overlay=overlay, statistics=statistics,
                              probabilities=probabilities, progress=progress, sharing=sharing)
    images = [p for p in paths if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if images:
        raise DataError(f"{images[0]}: is a 2D image but checkpoint {loaded.source} segments volumes "
                        f"({loaded.kind.value}); use a checkpoint trained with data.kind images2d for 2D images")
    return predict_volumes(loaded, paths, out, overwrite=overwrite, dicom_seg=dicom_seg, statistics=statistics,
                           probabilities=probabilities, progress=progress, sharing=sharing, irregular=irregular)
