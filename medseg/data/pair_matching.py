"""Match image files to mask files by case name, nnU-Net channel files (``case_0000``, ``case_0001`` ...) included.

:func:`index_by_case` indexes a folder's files by case name, :func:`match_pairs` pairs the two indexes and names
what is left over on either side, and the cases whose channel files differ from the others'.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from medseg.data.pair_types import Pair
from medseg.errors import DataError

__all__ = ["index_by_case", "match_pairs"]

logger = logging.getLogger(__name__)

_MAX_LISTED = 10
_CHANNEL = re.compile(r"_\d{4}$")


def _names(items: Sequence[str], sep: str = ", ") -> str:
    """``a, b, c`` with at most ``_MAX_LISTED`` names, then ``and N more``."""
    shown = sep.join(items[:_MAX_LISTED])
    extra = len(items) - _MAX_LISTED
    return f"{shown} and {extra} more" if extra > 0 else shown


def index_by_case(files: Iterable[Path], folder: Path, case_name: Callable[[Path], str]) -> dict[str, Path]:
    """Index files by case name; two files with one name (``x.jpg``, ``x.png``) are an error.

    Args:
        files: The files of one folder.
        folder: That folder (for the message).
        case_name: File path -> case name (:attr:`~medseg.data.pair_types.FileKind.case_name`).

    Raises:
        DataError: Naming the case names used by several files.

    Example:
        >>> index_by_case([Path("m/a.png"), Path("m/b.gif")], Path("m"), lambda p: p.stem)
        {'a': PosixPath('m/a.png'), 'b': PosixPath('m/b.gif')}
    """
    index: dict[str, Path] = {}
    duplicates: dict[str, list[str]] = {}
    for path in files:
        stem = case_name(path)
        if stem in index:
            duplicates.setdefault(stem, [index[stem].name]).append(path.name)
        else:
            index[stem] = path
    if duplicates:
        groups = [f"{stem} ({', '.join(names)})" for stem, names in sorted(duplicates.items())]
        raise DataError(
            f"{folder}: {len(groups)} stem(s) used by several files: {_names(groups)}; "
            "keep one file per case"
        )
    return index


def match_pairs(
    images: dict[str, Path],
    masks: dict[str, Path],
    mask_stem: Callable[[str], str],
    *,
    images_path: Path,
    masks_path: Path,
    strict: bool,
    channel_suffix: bool,
    channels: int | None = None,
) -> list[Pair]:
    """Pair each image stem with ``masks[mask_stem(stem)]``; report leftovers on both sides.

    With ``channel_suffix``, ``case_0000``, ``case_0001`` ... also match the mask of ``case`` (the case is named
    ``case``): they are its input channels, in channel order, and every case must have the same channels:
    ``channels`` of them when given, else those most cases have (only the odd cases are named).

    Args:
        images: Case name -> image file (:func:`index_by_case`).
        masks: Case name -> mask file.
        mask_stem: Image case name -> the mask's case name (the pairing rule).
        images_path: Image folder (for messages).
        masks_path: Mask folder (for messages).
        strict: Raise on leftovers and odd channel files; if False they are skipped with a logged warning.
        channel_suffix: Image names may carry nnU-Net's channel suffix ``_0000``.
        channels: Image files per case (``data.channels``), when known.

    Returns:
        The pairs, in the order of their masks' case names.

    Raises:
        DataError: A mask matching a plain image and channel files, or (``strict``) any leftover or odd case.
    """
    groups: dict[str, list[tuple[int | None, Path]]] = {}
    case_of: dict[str, str] = {}
    no_mask: list[str] = []
    for stem, image in sorted(images.items()):
        candidates: list[tuple[str, str, int | None]] = [(stem, mask_stem(stem), None)]
        if channel_suffix and _CHANNEL.search(stem):
            case = _CHANNEL.sub("", stem)
            candidates.append((case, mask_stem(case), int(stem[-4:])))
        found = next(((case, wanted, index) for case, wanted, index in candidates if wanted in masks), None)
        if found is None:
            no_mask.append(image.name)
            continue
        case, wanted, index = found
        groups.setdefault(wanted, []).append((index, image))
        case_of[wanted] = case
    present_of = {wanted: {0 if index is None else index: path for index, path in files}
                  for wanted, files in groups.items()}
    for wanted, files in groups.items():
        if len(files) > 1 and any(index is None for index, _ in files):
            names = sorted(p.name for _, p in files)
            raise DataError(f"{masks[wanted]}: mask matches images {', '.join(names)}; name every channel file "
                            "<case>_0000, <case>_0001 ... (nnU-Net) or keep one image per case")
    expected, basis = _expected_channels([set(p) for p in present_of.values()], channels)
    pairs: list[Pair] = []
    problems: list[str] = []
    gaps = [i for i in range(max(expected, default=-1) + 1) if i not in expected]
    if gaps and groups:
        problems.append(f"the cases in {images_path} have channel files {_channel_list(expected)}; number them "
                        f"from _0000 without gaps (no _{gaps[0]:04d})")
    for wanted in sorted(groups):
        case, present = case_of[wanted], present_of[wanted]
        if set(present) != expected:
            problems.append(_channel_problem(case, present, expected, basis))
            continue
        if gaps:
            continue
        channels_ = tuple(present[i] for i in sorted(present))
        pairs.append(Pair(case_id=case, image=channels_[0], mask=masks[wanted], channels=channels_))
    no_image = sorted(masks[stem].name for stem in masks.keys() - groups.keys())
    if no_mask:
        problems.append(f"{len(no_mask)} image(s) without mask in {masks_path}: {_names(no_mask)}")
    if no_image:
        problems.append(
            f"{len(no_image)} mask(s) without image in {images_path}: {_names(no_image)}"
        )
    if problems and strict:
        raise DataError("; ".join(problems) + "; fix the file names or set data.strict: false")
    for problem in problems:
        logger.warning("skipping %s", problem)
    return pairs


def _expected_channels(found: list[set[int]], channels: int | None) -> tuple[set[int], str]:
    """The channel indices every case should have, and where that comes from (for messages).

    From ``channels`` (``data.channels``) when set and some case has them (else
    :func:`~medseg.data.pairing.check_channel_count` reports the setting), otherwise the set most cases have
    (ties: a gapless one, then the larger one).

    Example:
        >>> _expected_channels([{0, 1}, {0, 2}, {0, 1}], None)
        ({0, 1}, 'other cases have')
        >>> _expected_channels([{0, 1}, {0, 1, 2}, {0, 1}], 3)
        ({0, 1, 2}, 'data.channels lists')
    """
    if channels is not None and set(range(channels)) in found:
        return set(range(channels)), "data.channels lists"
    counts = Counter(frozenset(s) for s in found)
    if not counts:
        return set(), "other cases have"
    best = max(counts, key=lambda s: (counts[s], s == frozenset(range(len(s))), len(s)))
    return set(best), "other cases have"


def _channel_list(indices: Iterable[int]) -> str:
    return ", ".join(f"_{i:04d}" for i in sorted(indices))


def _channel_problem(case: str, present: dict[int, Path], expected: set[int], basis: str) -> str:
    """``case X: has _0000, _0002; other cases have _0000, _0001 (missing X_0001.nii.gz, unexpected X_0002.nii.gz)``."""
    suffix = _suffix_of(next(iter(present.values())), case, present)
    missing = [f"{case}_{i:04d}{suffix}" for i in sorted(expected - set(present))]
    extra = [present[i].name for i in sorted(set(present) - expected)]
    details = ([f"missing {', '.join(missing)}"] if missing else []) + (
        [f"unexpected {', '.join(extra)}"] if extra else [])
    return f"case {case}: has {_channel_list(present)}; {basis} {_channel_list(expected)} ({', '.join(details)})"


def _suffix_of(path: Path, case: str, present: dict[int, Path]) -> str:
    """The file suffix of a channel file (``.nii.gz``), for naming a missing one."""
    name = path.name
    for index in present:
        prefix = f"{case}_{index:04d}"
        if name.startswith(prefix):
            return name[len(prefix):]
    return name[len(case):]
