"""The volume cases of a prediction run: volume files, DICOM series (a folder's own files, each sub-folder's), and
the channel files of a multi-channel model grouped by case (:func:`find_volume_cases`, :func:`find_channel_cases`).

A folder whose DICOM images were meant as a volume but form none (slices in several orientations, sizes or pixel
spacings, several at one position, no position) is a case of its own that fails with the reason, among the
others: a study refused is reported, not skipped in silence.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medseg.data.volume_preprocessing import VolumePreprocessor
from medseg.errors import DataError
from medseg.io.dicom import SeriesInfo, list_series
from medseg.io.images import IMAGE_SUFFIXES
from medseg.io.volume import VOLUME_SUFFIXES, split_channel, volume_case_name
from medseg.prediction.cases import Case, check_unique_names
from medseg.prediction.loaded import LoadedModel

__all__ = ["VolumeCase", "find_channel_cases", "find_volume_cases", "one_channel_case_name", "volume_files"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class VolumeCase(Case):
    """A volume case: a file, or a DICOM folder with the series to read from it, or (a multi-channel model) the
    case's channel files in channel order (``source`` is the first). ``refused`` says why a DICOM folder's images
    form no volume: such a case fails with that message, never read."""

    series_uid: str | None = None
    channels: tuple[Path, ...] = ()
    refused: str | None = None


def _is_dicom_candidate(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and not name.startswith(".") and not name.endswith(
        VOLUME_SUFFIXES + IMAGE_SUFFIXES + (".json", ".txt", ".md", ".csv", ".gif"))


def volume_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if not p.name.startswith(".") and p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES))


def _dicom_series(folder: Path) -> list[SeriesInfo] | None:
    """The DICOM image series among the folder's own files (usable first); None when no file could be DICOM."""
    candidates = [p for p in sorted(folder.iterdir()) if _is_dicom_candidate(p)]
    return list_series(candidates) if candidates else None


def _dicom_cases(folder: Path, series: list[SeriesInfo]) -> list[VolumeCase]:
    """One case per usable series, and one failing case per series meant as a volume that is refused (so a broken
    series beside a good one is reported, not dropped): named after the folder, or ``<folder>_01``, ``_02`` ... for
    several."""
    volumes = [s for s in series if s.usable or _meant_as_volume(s)]
    names = [folder.name] if len(volumes) == 1 else [f"{folder.name}_{i + 1:02d}" for i in range(len(volumes))]
    return [VolumeCase(name, folder, s.series_uid) if s.usable else
            VolumeCase(name, folder, refused=f"{folder}: {_series_name(s)}: {s.reason or 'not a volume'} "
                       f"(see `medseg inspect {folder}`)")
            for name, s in zip(names, volumes, strict=True)]


def _series_name(series: SeriesInfo) -> str:
    return f"series {series.series_uid!r}" if series.series_uid else "a series without a UID"


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
    sub-folders beside it nor makes a case. A folder whose DICOM images were meant as a volume but form none
    (several slices, no localizer or mosaic, refused: slices in two orientations, several at one position ...) is a
    case named after the folder that fails with the reason (``VolumeCase.refused``), the others still run; a folder
    holding only a lone slice, a scout or a mosaic is skipped with a warning. Either is refused (naming the folder)
    when the inputs yield no case to run at all. Two cases with
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
            is said so), inputs whose only cases are refused ones, or two cases with one output name.
    """
    cases: list[VolumeCase] = []
    for src in (Path(p) for p in inputs):
        if src.is_file():
            cases.append(VolumeCase(one_channel_case_name(src), src))
        elif src.is_dir():
            cases += _folder_cases(src)
        else:
            raise DataError(f"{src}: input does not exist")
    if cases and all(c.refused for c in cases):
        raise DataError(str(cases[0].refused))  # names the folder, the series and why
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
            found = volume_files(src)
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
        elif series and any(_meant_as_volume(s) for s in series):
            cases.append(_refused_case(where, series))
        elif series:
            no_volume.append(where)
        if where == folder:
            cases += [VolumeCase(one_channel_case_name(p), p) for p in volume_files(folder)]
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


def _meant_as_volume(series: SeriesInfo) -> bool:
    """Whether an unusable series was meant as a volume: several slices (or frames), none a localizer or mosaic.
    A lone slice, a scout or a mosaic is no study to segment: its folder is skipped with a warning."""
    kinds = {word for h in series.headers for word in h.image_type}
    several = len(series.headers) > 1 or any(h.frames > 1 for h in series.headers)
    return several and not kinds & {"LOCALIZER", "MOSAIC"}


def _refused_case(folder: Path, series: list[SeriesInfo]) -> VolumeCase:
    """The failing case of a folder whose DICOM images were meant as a volume but form none: named after the
    folder, its message naming the first such series and why it is refused."""
    first = next(s for s in series if _meant_as_volume(s))
    which = _series_name(first)
    more = f" (and {len(series) - 1} more series)" if len(series) > 1 else ""
    return VolumeCase(folder.name, folder, refused=f"{folder}: no usable DICOM volume series: {which}: "
                      f"{first.reason or 'not a volume'}{more} (see `medseg inspect {folder}`)")
