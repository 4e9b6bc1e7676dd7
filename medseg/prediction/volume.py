"""Volume models (3D, and 2D slice-wise) onto the input's exact grid, one case or many.

One case: read -> :class:`~medseg.data.volume_preprocessing.VolumePreprocessor` with the checkpoint's settings ->
sliding window (``loaded.infer``: roi, overlap, blend, precision, flip TTA) -> class probabilities
resampled back to the original grid (trilinear, argmax there) and reoriented -> optional largest component
per class -> original label values (``LabelMap.to_values``).

Many cases (:func:`predict_volumes`, the cases found by :mod:`medseg.prediction.volume_cases`; a DICOM folder
whose images form no volume fails alone with the reason): ``OUT/<case>.nii.gz`` label maps, ``OUT/<case>.json``
sidecars and, for DICOM inputs on request, ``OUT/<case>.seg.dcm``; on request ``OUT/<case>_probabilities.nii.gz``
(float16 class probabilities, 4D with the class last); on request per-structure statistics in each sidecar and
``OUT/statistics.csv`` over all cases (:mod:`medseg.prediction.statistics`, ``statistics_table``). Outputs are
written atomically; a case whose outputs all exist is skipped unless ``overwrite``, and a case with some missing
(an interrupted run, or ``dicom_seg`` first asked for on a rerun) is run again to write only those. Each sidecar
records the settings that shaped the labels, and a rerun with other ones is refused unless ``overwrite``
(:mod:`medseg.prediction.run_settings`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import medseg
from medseg.atomic import write_json_atomic
from medseg.data.volume_preprocessing import VolumePreprocessor
from medseg.errors import CheckpointError, ConfigError, DataError
from medseg.io.dicom import check_irregular, list_series
from medseg.io.images import IMAGE_SUFFIXES
from medseg.io.volume import VOLUME_SUFFIXES, Volume
from medseg.io.volume_io import read_volume, write_label_map, write_probability_map
from medseg.prediction.cases import BatchReport, Case, check_output_dir, run_cases
from medseg.prediction.claims import Sharing
from medseg.prediction.loaded import LoadedModel, mean_probabilities
from medseg.prediction.network import infer_prepared
from medseg.prediction.postprocess import apply_postprocessing, keep_largest_component
from medseg.prediction.run_settings import SETTINGS_KEY, check_recorded_settings, label_settings, precision_used
from medseg.prediction.statistics import VOLUME_COLUMNS, statistics_section, structure_statistics, voxel_volume_mm3
from medseg.prediction.statistics_table import write_statistics_table
from medseg.prediction.volume_cases import (
    VolumeCase,
    find_channel_cases,
    find_volume_cases,
    one_channel_case_name,
    volume_files,
)

__all__ = ["VolumeCase", "find_channel_cases", "find_volume_cases", "one_channel_case_name", "predict_outputs",
           "predict_volume", "predict_volumes", "read_input_volume"]

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------- one case
def _check_volume_model(loaded: LoadedModel, what: str) -> None:
    if not loaded.kind.segments_volumes:
        raise DataError(
            f"{what}: checkpoint {loaded.source} is a {loaded.kind.value!r} model (2D images such as PNG/JPEG) and "
            "cannot segment a volume; use a checkpoint trained with data.kind volumes3d or slices2d"
        )


def read_input_volume(path: str | Path, *, series_uid: str | None = None, irregular: str = "refuse") -> Volume:
    """Read a volume input, refusing 2D image files and folders of volume files with a clear message.

    ``irregular`` is :func:`~medseg.io.volume_io.read_volume`'s: refuse (default) or resample a tilted, unevenly
    spaced or sheared input.

    Raises:
        DataError: A 2D image file, a folder of volume files (cases for :func:`predict_volumes`, not one
            volume), or anything :func:`~medseg.io.volume_io.read_volume` refuses.
        ConfigError: ``series_uid`` given with a file.
    """
    path = Path(path)
    if series_uid is not None and path.is_file():
        raise ConfigError(f"series_uid: got {series_uid!r} but {path} is a file; series_uid chooses a series of a "
                          "DICOM folder (allowed with a folder only)")
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES + (".gif",):
        raise DataError(
            f"{path}: is a 2D image but this checkpoint segments 3D volumes (NIfTI/MHA/NRRD files or DICOM "
            "series folders); use a checkpoint trained with data.kind images2d for 2D images"
        )
    try:
        return read_volume(path, series_uid=series_uid, irregular=irregular)
    except DataError:
        if path.is_dir() and volume_files(path) and not any(s.usable for s in list_series(path)):
            raise DataError(
                f"{path}: a folder of volume files, not one DICOM series; give one file, or use predict_paths / "
                "`medseg predict` for a folder of cases"
            ) from None
        raise


def predict_classes(loaded: LoadedModel, volume: Volume) -> np.ndarray:
    """Class indices (uint8) on ``volume``'s grid."""
    return predict_outputs(loaded, volume, probabilities=False)[0]


def predict_outputs(loaded: LoadedModel, volume: Volume | Sequence[Volume], *, probabilities: bool
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """Class indices (uint8) on ``volume``'s grid (the first channel's for a multi-channel model, given one volume
    per channel) and, when asked, the class probabilities there: float16
    ``(K, *volume.shape)``, class first, each class resampled back like the labels (trilinear), so their argmax is
    the labels except at ties and where postprocessing removed a region.

    The labels are the most probable class, or with ``infer.threshold`` (two classes) class 1 wherever its
    probability is ``>= threshold``.
    """
    settings = loaded.preprocessing
    pre = VolumePreprocessor(settings)
    if pre.in_channels != loaded.in_channels:
        raise CheckpointError(
            f"{loaded.source}: preprocessing gives {pre.in_channels} channels but the model takes "
            f"{loaded.in_channels}; the checkpoint is inconsistent"
        )
    image, grid = pre.prepare_image(volume)
    probs = mean_probabilities(loaded, lambda member: _member_probabilities(member, image))
    classes = pre.invert_probabilities(probs, grid, threshold=loaded.infer.threshold)
    if loaded.infer.largest_component:
        classes = keep_largest_component(classes, loaded.labels.num_classes)
    if loaded.postprocessing:
        classes = apply_postprocessing(classes, loaded.postprocessing)
    maps = pre.invert_probability_maps(probs, grid) if probabilities else None
    return classes, maps


def _member_probabilities(member: LoadedModel, image: torch.Tensor) -> torch.Tensor:
    """One model's class probabilities over the prepared image, with its own window size, overlap and TTA."""
    # member.tiling "auto": the engine falls back to roi windows for instance/group norm
    return infer_prepared(member.model, image, member.preprocessing, member.infer, member.device,
                          tiling=member.tiling, divisor=member.divisor)


def predict_volume(loaded: LoadedModel, source: str | Path | Volume | Sequence[str | Path | Volume], *,
                   series_uid: str | None = None, probabilities: bool = False, irregular: str = "refuse") -> Volume:
    """Segment one volume; the result lies on the input's exact grid (shape and affine) in original label values.

    Args:
        loaded: A volumes3d or slices2d loaded.
        source: A NIfTI/MHA/NRRD file, a DICOM series folder, or a :class:`~medseg.io.volume_io.Volume`; for a
            multi-channel model (``data.channels``) a list of them, one per channel in channel order, all on one
            grid (the result lies on the first one's).
        series_uid: For a DICOM folder holding several series, the one to read.
        probabilities: Also put the class probabilities on the input grid in ``meta["probabilities"]`` (float16
            ``(K, *shape)``, class first; see :func:`predict_outputs`).
        irregular: ``"refuse"`` (default) or ``"resample"`` a tilted, unevenly spaced or sheared input (see
            :func:`~medseg.io.volume_io.read_volume`); a resampled input's labels lie on the regular grid.

    Returns:
        A :class:`~medseg.io.volume_io.Volume` of label values (``meta["classes"]``: class indices array).

    Raises:
        DataError: A 2D-image checkpoint, a 2D image input, a folder of volume files, or an unreadable volume.
        ConfigError: ``series_uid`` given with a file or a ``Volume``.
    """
    sources: list[str | Path | Volume] = [source] if isinstance(source, (str, Path, Volume)) else list(source)
    if not sources:
        raise DataError(f"{loaded.source}: no input volume given")
    what = ", ".join(str(s.meta.get("path", "<volume>")) if isinstance(s, Volume) else str(s) for s in sources)
    _check_volume_model(loaded, what)
    if any(isinstance(s, Volume) for s in sources) and series_uid is not None:
        raise ConfigError(f"series_uid: got {series_uid!r} with a Volume; it chooses a series of a DICOM folder "
                          "(allowed with a folder only)")
    volumes = [s if isinstance(s, Volume) else read_input_volume(s, series_uid=series_uid, irregular=irregular)
               for s in sources]
    volume = volumes[0]
    classes, maps = predict_outputs(loaded, volumes, probabilities=probabilities)
    values = np.asarray(loaded.labels.to_values(classes))
    meta = {**volume.meta, "classes": classes, "checkpoint": loaded.source}
    if maps is not None:
        meta["probabilities"] = maps
    return Volume(values, volume.affine.copy(), meta)


# ------------------------------------------------------------------------------------------- many cases

#: what a sidecar says about the outputs of a resampled input
_RESAMPLED_OUTPUT = ("the label map (NIfTI) and the statistics lie on the regular grid of input_geometry; a DICOM-SEG "
                     "lies on the original slices (each pixel takes the label of the nearest grid node)")


def describe_result(loaded: LoadedModel, volume: Volume, result: Volume, case: Case, seconds: float, *,
                    settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON sidecar of one predicted case; ``settings`` are :func:`~medseg.prediction.run_settings.
    label_settings` (computed when not given). Its ``infer.precision`` is the precision that ran (``auto``
    resolved)."""
    classes = result.meta["classes"]
    voxel_mm3 = voxel_volume_mm3(volume.affine)
    counts = np.bincount(classes.ravel(), minlength=loaded.labels.num_classes)
    return {
        "case": case.name,
        "input": str(case.source),
        **({"channels": [str(f) for f in getattr(case, "channels", ())]} if getattr(case, "channels", ()) else {}),
        "series_uid": getattr(case, "series_uid", None),
        "input_geometry": {
            "shape": list(volume.shape),
            "spacing_mm": list(volume.spacing),
            "origin_lps": list(volume.origin_lps),
            "direction_lps": np.asarray(volume.direction_lps).round(8).tolist(),
            "affine_ras": np.asarray(volume.affine).tolist(),
        },
        **({"resampled": {**volume.meta["resampled"], "output": _RESAMPLED_OUTPUT}} if "resampled" in volume.meta
           else {}),
        "voxel_volume_mm3": voxel_mm3,
        "classes": [
            {"index": i, "name": c.name, "value": c.values[0], "source_values": list(c.values),
             "voxels": int(counts[i]), "volume_mm3": float(counts[i]) * voxel_mm3}
            for i, c in enumerate(loaded.labels.classes)
        ],
        "runtime_s": round(seconds, 3),
        "medseg_version": medseg.__version__,
        "checkpoint": loaded.source,
        "preprocessing": loaded.preprocessing,
        "infer": _infer_record(loaded),
        **({"postprocessing": loaded.postprocessing_record()} if loaded.postprocessing else {}),
        **({"ensemble": [{"checkpoint": m.source, "patch_size": m.preprocessing.get("patch_size"),
                          "infer": _infer_record(m)} for m in loaded.members]}
           if len(loaded.members) > 1 else {}),
        SETTINGS_KEY: label_settings(loaded) if settings is None else settings,
    }


def _infer_record(loaded: LoadedModel) -> dict[str, Any]:
    """A model's inference settings for a sidecar, with the precision that ran."""
    return {**loaded.infer.model_dump(mode="json"), "precision": precision_used(loaded)}


def predict_volumes(
    loaded: LoadedModel,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    dicom_seg: bool = False,
    statistics: bool = False,
    probabilities: bool = False,
    progress: bool = True,
    sharing: Sharing | None = None,
    irregular: str = "refuse",
) -> BatchReport:
    """Segment every volume case found in ``inputs`` into ``out_dir`` (see the module docstring).

    Args:
        loaded: A volumes3d or slices2d loaded.
        inputs: Volume files, DICOM series folders, or folders of either.
        out_dir: Output folder (created); must not lie inside an input folder.
        overwrite: Redo cases whose outputs exist (otherwise finished cases are skipped and the missing outputs
            of unfinished ones written, the existing ones kept).
        dicom_seg: For DICOM inputs also write ``<case>.seg.dcm`` referencing the series.
        statistics: Add per-structure statistics (:func:`~medseg.prediction.statistics.structure_statistics`
            over the input volume) to each sidecar, and write ``statistics.csv`` over all finished cases, skipped
            ones included (their sidecars are read; one without statistics gets them from its label map).
        probabilities: Also write ``<case>_probabilities.nii.gz``: 4D (X, Y, Z, K), class last, on the input's
            grid (:func:`~medseg.io.volume_io.write_probability_map`); a case is skipped only when every output
            asked for exists.
        progress: Progress bar on stderr.
        sharing: How this process shares ``out_dir`` with others (claim timeout, shard, run id); each case is
            claimed before it is computed (:mod:`medseg.prediction.claims`).
        irregular: ``"refuse"`` (default: such a case fails, naming the option) or ``"resample"`` tilted, unevenly
            spaced or sheared inputs onto a regular grid; the sidecar's ``resampled`` says what was done.

    Returns:
        A :class:`~medseg.prediction.cases.BatchReport`; failing cases are listed there and the others still run
        (a DICOM folder whose images form no volume is such a case, see
        :func:`~medseg.prediction.volume_cases.find_volume_cases`).

    Raises:
        DataError: A 2D image checkpoint, missing inputs, or clashing case names (a sidecar that cannot be read
            fails its case alone).
        ConfigError: ``out_dir`` inside an input folder, or (without ``overwrite``) a sidecar there made with other
            label-shaping settings (:func:`~medseg.prediction.run_settings.check_recorded_settings`).
    """
    paths, out = [Path(p) for p in inputs], Path(out_dir)
    check_irregular(irregular)
    _check_volume_model(loaded, ", ".join(map(str, paths)))
    check_output_dir(out, paths)
    files_per_case = VolumePreprocessor(loaded.preprocessing).files_per_case
    cases = find_volume_cases(paths) if files_per_case == 1 else find_channel_cases(paths, loaded)
    settings = label_settings(loaded)
    # the cases that fail alone: DICOM images that form no volume, a sidecar that cannot be read
    refused = {c.name: c.refused for c in cases if c.refused}
    if not overwrite:
        sidecars = check_recorded_settings([out / f"{c.name}.json" for c in cases if c.name not in refused],
                                           settings, out)
        refused |= {path.name[:-len(".json")]: message for path, message in sidecars.items()}
    out.mkdir(parents=True, exist_ok=True)

    def read_case(case: Case) -> list[Volume]:
        files = getattr(case, "channels", ()) or (case.source,)
        return [read_input_volume(f, series_uid=getattr(case, "series_uid", None), irregular=irregular)
                for f in files]

    def outputs_of(case: Case) -> list[Path]:
        is_dicom = getattr(case, "series_uid", None) is not None or not case.source.name.lower().endswith(
            VOLUME_SUFFIXES)
        return [out / f"{case.name}.nii.gz", out / f"{case.name}.json",
                *([out / f"{case.name}_probabilities.nii.gz"] if probabilities else []),
                *([out / f"{case.name}.seg.dcm"] if dicom_seg and is_dicom else [])]

    def run(case: Case, todo: set[Path]) -> list[Path]:
        t0 = time.perf_counter()
        volumes = read_case(case)
        volume = volumes[0]
        result = predict_volume(loaded, volumes, probabilities=probabilities)
        written = []
        probs = result.meta.pop("probabilities", None)
        if probabilities and out / f"{case.name}_probabilities.nii.gz" in todo:
            written.append(write_probability_map(out / f"{case.name}_probabilities.nii.gz", probs, volume))
        if dicom_seg and volume.meta.get("format") == "dicom" and out / f"{case.name}.seg.dcm" in todo:
            from medseg.io.dicom_seg import write_dicom_seg

            names = {c.values[0]: c.name for c in loaded.labels.classes[1:]}
            written.append(write_dicom_seg(out / f"{case.name}.seg.dcm", result.array, volume, names))
        elif dicom_seg and volume.meta.get("format") != "dicom":
            log.info("%s: not a DICOM input, no DICOM-SEG written", case.source)
        if out / f"{case.name}.json" in todo:
            sidecar = describe_result(loaded, volume, result, case, time.perf_counter() - t0, settings=settings)
            if out / f"{case.name}.nii.gz" not in todo:  # a label map kept from a run whose settings are lost
                sidecar[SETTINGS_KEY] = None
            if statistics:
                sidecar["statistics"] = statistics_section(structure_statistics(volume, result, loaded.labels))
            written.append(write_json_atomic(out / f"{case.name}.json", sidecar))
        if out / f"{case.name}.nii.gz" in todo:
            written.append(write_label_map(out / f"{case.name}.nii.gz", result.array, volume))
        return written[::-1]

    report = run_cases(cases, outputs_of, run, overwrite=overwrite, progress=progress, sharing=sharing,
                       refused=refused)
    if statistics:
        def from_disk(case: Case) -> dict[str, Any]:
            volume = read_case(case)[0]
            labels = read_volume(out / f"{case.name}.nii.gz")
            return statistics_section(structure_statistics(volume, labels, loaded.labels))

        write_statistics_table(out, [c for c in cases if c.name not in refused], VOLUME_COLUMNS,
                               is_done=lambda c: (out / f"{c.name}.nii.gz").exists(),
                               compute=from_disk, report=report)
    return report
