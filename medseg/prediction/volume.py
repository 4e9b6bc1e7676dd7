"""Volume models (3D, and 2D slice-wise) onto the input's exact grid, one case or many.

One case: read -> :class:`~medseg.data.volume_preprocessing.VolumePreprocessor` with the checkpoint's settings ->
sliding window (``loaded.infer``: roi, overlap, blend, precision, flip TTA) -> class probabilities
resampled back to the original grid (trilinear, argmax there) and reoriented -> optional largest component
per class -> original label values (``LabelMap.to_values``).

Many cases (:func:`predict_volumes`): ``OUT/<case>.nii.gz`` label maps, ``OUT/<case>.json`` sidecars and,
for DICOM inputs on request, ``OUT/<case>.seg.dcm``; on request ``OUT/<case>_probabilities.nii.gz``
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import medseg
from medseg.atomic import write_json_atomic
from medseg.data.volume_preprocessing import VolumePreprocessor
from medseg.errors import CheckpointError, ConfigError, DataError
from medseg.io.dicom import SeriesInfo, check_irregular, list_series
from medseg.io.images import IMAGE_SUFFIXES
from medseg.io.volume import VOLUME_SUFFIXES, Volume, split_channel, volume_case_name
from medseg.io.volume_io import read_volume, write_label_map, write_probability_map
from medseg.prediction.cases import BatchReport, Case, check_output_dir, check_unique_names, run_cases
from medseg.prediction.claims import Sharing
from medseg.prediction.loaded import LoadedModel, mean_probabilities
from medseg.prediction.network import infer_prepared
from medseg.prediction.postprocess import apply_postprocessing, keep_largest_component
from medseg.prediction.run_settings import SETTINGS_KEY, check_recorded_settings, label_settings, precision_used
from medseg.prediction.statistics import VOLUME_COLUMNS, statistics_section, structure_statistics, voxel_volume_mm3
from medseg.prediction.statistics_table import write_statistics_table

__all__ = ["VolumeCase", "find_channel_cases", "find_volume_cases", "one_channel_case_name", "predict_outputs",
           "predict_volume", "predict_volumes", "read_input_volume"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class VolumeCase(Case):
    """A volume case: a file, or a DICOM folder with the series to read from it, or (a multi-channel model) the
    case's channel files in channel order (``source`` is the first)."""

    series_uid: str | None = None
    channels: tuple[Path, ...] = ()


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
        if path.is_dir() and _volume_files(path) and not any(s.usable for s in list_series(path)):
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
def _is_dicom_candidate(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and not name.startswith(".") and not name.endswith(
        VOLUME_SUFFIXES + IMAGE_SUFFIXES + (".json", ".txt", ".md", ".csv", ".gif"))


def _volume_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if not p.name.startswith(".") and p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES))


def _dicom_series(folder: Path) -> list[SeriesInfo] | None:
    """The DICOM image series among the folder's own files (usable first); None when no file could be DICOM."""
    candidates = [p for p in sorted(folder.iterdir()) if _is_dicom_candidate(p)]
    return list_series(candidates) if candidates else None


def _dicom_cases(folder: Path, series: list[SeriesInfo]) -> list[VolumeCase]:
    """One case per usable series: named after the folder, or ``<folder>_01``, ``_02`` ... for several."""
    usable = [s for s in series if s.usable]
    if len(usable) == 1:
        return [VolumeCase(folder.name, folder, usable[0].series_uid)]
    return [VolumeCase(f"{folder.name}_{i + 1:02d}", folder, s.series_uid) for i, s in enumerate(usable)]


def one_channel_case_name(path: str | Path) -> str:
    """The case name of a volume file for a one-channel model: the name without its suffix, and without nnU-Net's
    channel suffix ``_0000`` (the only channel), as training pairs ``imagesTr/case_0000.nii.gz`` with case ``case``.
    Other 4-digit suffixes are kept (``_0001`` is no first channel).

    Example:
        >>> one_channel_case_name("imagesTs/la_003_0000.nii.gz"), one_channel_case_name("ct_0001.mha")
        ('la_003', 'ct_0001')
    """
    case, index = split_channel(path)
    return case if index == 0 else volume_case_name(path)


def find_volume_cases(inputs: Sequence[Path]) -> list[VolumeCase]:
    """Cases among the inputs: volume files, and what each folder holds.

    A folder's cases are all of these, in this order:

    * the usable DICOM series among its own files: one case named after the folder, or ``<folder>_01``,
      ``<folder>_02`` ... for several (in the order :func:`~medseg.io.dicom.list_series` gives);
    * each volume file in it (``.nii.gz`` ...), named after the file (less a ``_0000`` channel suffix, see
      :func:`one_channel_case_name`);
    * the usable DICOM series among the files of each sub-folder, named after the sub-folder as above.

    A folder counts as a DICOM series folder only through the usable series its files hold, so one stray file
    (a ``LICENSE``, a DICOM-SEG or report beside a series sub-folder) neither hides the volume files and series
    sub-folders beside it nor makes a case. DICOM images that form no usable volume (a single slice, a gap) are
    skipped with a warning, or refused (naming the folder) when the input yields no case at all. Two cases with
    one name (``ct.nii.gz`` beside a sub-folder ``ct``, or ``ct.nii.gz`` beside ``ct_0000.nii.gz``) are refused, as
    each would write ``<name>.nii.gz``.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> for name in ("a.nii.gz", "b_0000.mha", "LICENSE"):
        ...     _ = (Path(tmp.name) / name).write_bytes(b"")
        >>> [(c.name, c.source.name) for c in find_volume_cases([Path(tmp.name)])]
        [('a', 'a.nii.gz'), ('b', 'b_0000.mha')]
        >>> tmp.cleanup()

    Raises:
        DataError: A missing input, a folder with nothing to segment (DICOM files there but no usable series
            is said so), or two cases with one output name.
    """
    cases: list[VolumeCase] = []
    for src in (Path(p) for p in inputs):
        if src.is_file():
            cases.append(VolumeCase(one_channel_case_name(src), src))
        elif src.is_dir():
            cases += _folder_cases(src)
        else:
            raise DataError(f"{src}: input does not exist")
    check_unique_names(cases)
    return cases


def find_channel_cases(inputs: Sequence[Path], loaded: LoadedModel) -> list[VolumeCase]:
    """The cases of a multi-channel model: volume files given, or found in the folders given, grouped by case name
    (``case_0000.nii.gz``, ``case_0001.nii.gz`` ... -> case ``case``, files sorted by channel index).

    Raises:
        DataError: A missing input, a file without a channel suffix or with a channel the model does not take, a
            channel given twice, or a case missing a channel (each one line naming the file or case and the naming
            the model wants).
    """
    pre = VolumePreprocessor(loaded.preprocessing)
    count, naming = pre.files_per_case, pre.channel_naming()
    files: list[Path] = []
    for src in (Path(p) for p in inputs):
        if src.is_file():
            files.append(src)
        elif src.is_dir():
            found = _volume_files(src)
            if not found:
                raise DataError(f"{src}: no {', '.join(VOLUME_SUFFIXES)} files; the model {loaded.source} takes "
                                f"{count} channel files per case ({naming})")
            files += found
        else:
            raise DataError(f"{src}: input does not exist")
    groups: dict[str, dict[int, Path]] = {}
    for path in files:
        case, index = split_channel(path)
        if index is None or index >= count or not path.name.lower().endswith(VOLUME_SUFFIXES):
            found_as = "has no channel suffix" if index is None else f"is channel {index}"
            raise DataError(
                f"{path}: {found_as}, but the model {loaded.source} takes {count} channel files per case ({naming}); "
                f"name them <case>_0000.nii.gz to <case>_{count - 1:04d}.nii.gz")
        if index in groups.setdefault(case, {}):
            raise DataError(f"inputs {groups[case][index]} and {path} are both channel {index} of case {case!r}; "
                            "give each case's files once")
        groups[case][index] = path
    cases: list[VolumeCase] = []
    for case, channels in sorted(groups.items()):
        missing = [i for i in range(count) if i not in channels]
        if missing:
            suffix = next(iter(channels.values())).name[len(case) + 5:]
            raise DataError(f"case {case}: channel file(s) {', '.join(f'{case}_{i:04d}{suffix}' for i in missing)} "
                            f"missing; the model {loaded.source} takes {count} per case ({naming})")
        ordered = tuple(channels[i] for i in range(count))
        cases.append(VolumeCase(case, ordered[0], channels=ordered))
    return cases


def _folder_cases(folder: Path) -> list[VolumeCase]:
    cases: list[VolumeCase] = []
    no_volume: list[Path] = []  # DICOM images there, but they form no usable volume series
    own_dicom = False  # files in the folder itself that could be DICOM (perhaps only stray files)
    for where in [folder, *sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))]:
        series = _dicom_series(where)
        if where == folder:
            own_dicom = series is not None
        if series and any(s.usable for s in series):
            cases += _dicom_cases(where, series)
        elif series:
            no_volume.append(where)
        if where == folder:
            cases += [VolumeCase(one_channel_case_name(p), p) for p in _volume_files(folder)]
    if not cases and (no_volume or own_dicom):
        where = no_volume[0] if no_volume else folder
        raise DataError(f"{where}: no usable DICOM volume series (see `medseg inspect {where}`)")
    if not cases:
        raise DataError(f"{folder}: nothing to segment (no {', '.join(VOLUME_SUFFIXES)} files, DICOM files "
                        "or DICOM series sub-folders)")
    for where in no_volume:
        log.warning("%s: DICOM images that form no usable volume series, skipped (see `medseg inspect %s`)",
                    where, where)
    return cases


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
        A :class:`~medseg.prediction.cases.BatchReport`; failing cases are listed there and the others still run.

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
    refused: dict[str, str] = {}  # the cases whose sidecar cannot be read: they fail alone
    if not overwrite:
        sidecars = check_recorded_settings([out / f"{c.name}.json" for c in cases], settings, out)
        refused = {path.name[:-len(".json")]: message for path, message in sidecars.items()}
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
