"""Pair 2D image files with their mask files, and split the pairs into train and validation.

Four naming rules cover the common public datasets:

- ``same_stem``: ``images/x.jpg`` + ``masks/x.<any ext>`` (Kvasir-SEG).
- ``suffix``: ``train/x.jpg`` + ``train_masks/x_mask.gif`` (Carvana); both may be one folder.
- ``replace``: the mask name is the image name with a token replaced
  (``Slice`` -> ``Labels_slice``).
- ``list``: a text/CSV file with ``image,mask`` per line, paths relative to the dataset root.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np

from medseg.atomic import write_text_atomic
from medseg.errors import ConfigError, DataError
from medseg.io.images import IMAGE_SUFFIXES, MASK_SUFFIXES

__all__ = [
    "PAIRING_RULES",
    "Pair",
    "find_pairs",
    "read_split_file",
    "split_pairs",
    "write_split_file",
]

logger = logging.getLogger(__name__)

PAIRING_RULES = ("same_stem", "suffix", "replace", "list")
_MAX_LISTED = 10
T = TypeVar("T")


@dataclass(frozen=True)
class Pair:
    """One training case: an image file and its mask file.

    Attributes:
        case_id: Case name, the image file's stem (``"cju0qkwl35piu0993l0dewei2"``).
        image: Path of the image file.
        mask: Path of the mask file.
    """

    case_id: str
    image: Path
    mask: Path


def _names(items: Sequence[str], sep: str = ", ") -> str:
    """``a, b, c`` with at most ``_MAX_LISTED`` names, then ``and N more``."""
    shown = sep.join(items[:_MAX_LISTED])
    extra = len(items) - _MAX_LISTED
    return f"{shown} and {extra} more" if extra > 0 else shown


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _list_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Visible files in ``folder`` (not recursive) with one of ``suffixes``, sorted by name."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not _is_hidden(p) and p.suffix.lower() in suffixes
    )


def _by_stem(files: Iterable[Path], folder: Path) -> dict[str, Path]:
    """Index files by stem; two files with one stem (``x.jpg``, ``x.png``) are an error."""
    index: dict[str, Path] = {}
    duplicates: dict[str, list[str]] = {}
    for path in files:
        if path.stem in index:
            duplicates.setdefault(path.stem, [index[path.stem].name]).append(path.name)
        else:
            index[path.stem] = path
    if duplicates:
        groups = [f"{stem} ({', '.join(names)})" for stem, names in sorted(duplicates.items())]
        raise DataError(
            f"{folder}: {len(groups)} stem(s) used by several files: {_names(groups)}; "
            "keep one file per case"
        )
    return index


def _check_folder(root: Path, name: str, key: str) -> Path:
    folder = root / name
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir() and not _is_hidden(p))
        raise DataError(
            f"{key}: folder {folder} does not exist; folders in {root}: {present or 'none'}"
        )
    return folder


def _match(
    images: dict[str, Path],
    masks: dict[str, Path],
    mask_stem: Callable[[str], str],
    *,
    images_path: Path,
    masks_path: Path,
    strict: bool,
) -> list[Pair]:
    """Pair each image stem with ``masks[mask_stem(stem)]``; report leftovers on both sides."""
    pairs: list[Pair] = []
    no_mask: list[str] = []
    used: set[str] = set()
    for stem, image in sorted(images.items()):
        wanted = mask_stem(stem)
        if wanted in masks:
            pairs.append(Pair(case_id=stem, image=image, mask=masks[wanted]))
            used.add(wanted)
        else:
            no_mask.append(image.name)
    no_image = sorted(masks[stem].name for stem in masks.keys() - used)
    problems = []
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


def _naming(
    rule: str, *, mask_suffix: str, replace: tuple[str, str]
) -> tuple[Callable[[str], str], Callable[[str], bool]]:
    """Return (image stem -> mask stem, "is this stem a mask?") for a folder-based rule."""
    if rule == "same_stem":
        return (lambda stem: stem), (lambda stem: True)
    if rule == "suffix":
        if not mask_suffix:
            raise ConfigError("data.mask_suffix: must not be empty for rule 'suffix'")
        return (lambda stem: stem + mask_suffix), (lambda stem: stem.endswith(mask_suffix))
    old, new = replace
    if not old or not new or old == new:
        raise ConfigError(
            f"data.replace: need two different non-empty tokens (old, new), got {replace!r}"
        )
    return (lambda stem: stem.replace(old, new)), (lambda stem: new in stem)


def _read_list(root: Path, list_file: Path, *, strict: bool) -> list[Pair]:
    """Read ``image,mask`` lines (``#`` comments, optional header) into pairs."""
    if not list_file.is_absolute():
        list_file = root / list_file
    if not list_file.is_file():
        raise DataError(f"data.pair_list: file {list_file} does not exist")
    try:
        text = list_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{list_file}: cannot read list file: {err}") from err
    pairs: list[Pair] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    first = True
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in next(csv.reader([line]))]
        if (
            first
            and len(fields) == 2
            and not any(Path(f).suffix.lower() in MASK_SUFFIXES for f in fields)
        ):
            first = False
            continue  # header such as "image,mask"
        first = False
        if len(fields) != 2 or not all(fields):
            problems.append(f"line {number}: expected 'image,mask', got {line.strip()!r}")
            continue
        image, mask = root / fields[0], root / fields[1]
        missing = [
            f"{kind} {name!r} does not exist"
            for kind, name, path in (("image", fields[0], image), ("mask", fields[1], mask))
            if not path.is_file()
        ]
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            missing.append(f"image suffix {image.suffix!r} not in {', '.join(IMAGE_SUFFIXES)}")
        if missing:
            problems.append(f"line {number}: {' and '.join(missing)}")
            continue
        if image.stem in seen:
            problems.append(
                f"line {number}: case {image.stem!r} already on line {seen[image.stem]}"
            )
            continue
        seen[image.stem] = number
        pairs.append(Pair(case_id=image.stem, image=image, mask=mask))
    if problems and strict:
        raise DataError(
            f"{list_file}: {len(problems)} bad line(s) (paths are relative to {root}): "
            f"{_names(problems, sep='; ')}"
        )
    for problem in problems:
        logger.warning("%s: skipping %s", list_file, problem)
    if not pairs:
        raise DataError(f"{list_file}: no 'image,mask' lines found")
    return sorted(pairs, key=lambda p: p.case_id)


def find_pairs(
    root: Path,
    *,
    images_dir: str = "images",
    masks_dir: str = "masks",
    rule: Literal["same_stem", "suffix", "replace", "list"] = "same_stem",
    mask_suffix: str = "_mask",
    replace: tuple[str, str] = ("Slice", "Labels_slice"),
    list_file: Path | None = None,
    strict: bool = True,
) -> list[Pair]:
    """Find image/mask pairs under a dataset folder.

    Hidden files (``.DS_Store``, ``._x.jpg``), sub-folders and files with other suffixes are
    ignored. Images have one of :data:`~medseg.io.images.IMAGE_SUFFIXES`, masks one of
    :data:`~medseg.io.images.MASK_SUFFIXES` (GIF too).

    Args:
        root: Dataset folder.
        images_dir: Image folder, relative to ``root``.
        masks_dir: Mask folder, relative to ``root``. May equal ``images_dir`` for the
            ``suffix`` and ``replace`` rules; files with the suffix or token are then masks.
        rule: How a mask name follows from an image name (see the module docstring).
        mask_suffix: ``suffix`` rule: mask stem = image stem + ``mask_suffix``.
        replace: ``replace`` rule: ``(old, new)``; mask stem = image stem with every ``old``
            replaced by ``new``. The mask may have any mask suffix.
        list_file: ``list`` rule: text/CSV file, relative to ``root`` or absolute.
        strict: Raise on images without mask, masks without image and bad list lines.
            If False they are skipped with a logged warning.

    Returns:
        Pairs sorted by ``case_id`` (the image stem).

    Raises:
        ConfigError: If ``rule`` is unknown or its settings are inconsistent.
        DataError: If folders or files are missing, no image is found, stems are duplicated,
            or (``strict``) some files have no partner.
    """
    if rule not in PAIRING_RULES:
        raise ConfigError(f"data.pairing: unknown {rule!r}; choose from {list(PAIRING_RULES)}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root: folder {root} does not exist")
    if rule == "list":
        if list_file is None:
            raise ConfigError("data.pair_list: required when data.pairing is 'list'")
        return _read_list(root, Path(list_file), strict=strict)

    images_path = _check_folder(root, images_dir, "data.images_dir")
    masks_path = _check_folder(root, masks_dir, "data.masks_dir")
    same_folder = images_path.resolve() == masks_path.resolve()
    image_files = _list_files(images_path, IMAGE_SUFFIXES)
    mask_files = _list_files(masks_path, MASK_SUFFIXES)

    if rule == "same_stem" and same_folder:
        raise ConfigError(
            f"data.masks_dir: rule 'same_stem' needs separate image and mask folders, "
            f"both are {images_path}; use rule 'suffix' or 'replace'"
        )
    mask_stem, is_mask = _naming(rule, mask_suffix=mask_suffix, replace=replace)
    if same_folder:
        image_files = [p for p in image_files if not is_mask(p.stem)]
        mask_files = [p for p in mask_files if is_mask(p.stem)]
    if not image_files:
        raise DataError(
            f"{images_path}: no images found; allowed suffixes: {', '.join(IMAGE_SUFFIXES)}"
        )
    images = _by_stem(image_files, images_path)
    masks = _by_stem(mask_files, masks_path)
    return _match(
        images, masks, mask_stem, images_path=images_path, masks_path=masks_path, strict=strict
    )


def split_pairs(pairs: Sequence[T], *, val_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Split cases into train and validation sets, reproducibly.

    A seeded ``numpy.random.Generator`` permutation picks ``round(n * val_fraction)`` cases,
    at least 1 when ``val_fraction > 0``, at most ``n - 1``. Both lists keep the input order.

    Args:
        pairs: Cases to split (``Pair`` objects, case ids, ...).
        val_fraction: Share of cases for validation, in ``[0, 1)``.
        seed: Random seed.

    Returns:
        ``(train, val)``.

    Raises:
        ValueError: If ``val_fraction`` is outside ``[0, 1)``.
        DataError: If ``val_fraction > 0`` and there are fewer than 2 cases.

    Example:
        >>> train, val = split_pairs(["a", "b", "c", "d"], val_fraction=0.25, seed=0)
        >>> len(train), len(val)
        (3, 1)
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(pairs)
    if val_fraction == 0.0:
        return list(pairs), []
    if n < 2:
        raise DataError(
            f"cannot split {n} case(s) into train and validation; need at least 2 "
            "or set val_fraction to 0"
        )
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    chosen = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    train = [item for i, item in enumerate(pairs) if i not in chosen]
    val = [item for i, item in enumerate(pairs) if i in chosen]
    return train, val


def read_split_file(path: Path) -> list[str]:
    """Read case ids, one per line; blank lines and ``#`` comments are skipped.

    Args:
        path: Text file written by :func:`write_split_file` or by hand.

    Returns:
        Case ids in file order.

    Raises:
        DataError: If the file is missing or unreadable, or lists a case twice.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as err:
        raise DataError(f"{path}: split file does not exist") from err
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read split file: {err}") from err
    ids: list[str] = []
    first_line: dict[str, int] = {}
    duplicates: list[str] = []
    for number, line in enumerate(lines, start=1):
        case_id = line.strip()
        if not case_id or case_id.startswith("#"):
            continue
        if case_id in first_line:
            duplicates.append(f"{case_id} (lines {first_line[case_id]} and {number})")
            continue
        first_line[case_id] = number
        ids.append(case_id)
    if duplicates:
        raise DataError(f"{path}: case id(s) listed twice: {_names(duplicates)}; list each once")
    return ids


def write_split_file(path: Path, case_ids: Iterable[str]) -> Path:
    """Write case ids, one per line, atomically (temp file in the same folder + rename).

    Args:
        path: Output text file; parent folders are created. An existing file is replaced.
        case_ids: Case ids; none may be empty, contain a line break or start with ``#``.

    Returns:
        ``path``.

    Raises:
        ValueError: If a case id cannot be stored on one line.
    """
    path = Path(path)
    ids = list(case_ids)
    for case_id in ids:
        if (
            not case_id.strip()
            or case_id != case_id.strip()
            or "\n" in case_id
            or "\r" in case_id
            or case_id.startswith("#")
        ):
            raise ValueError(f"case id {case_id!r} cannot be written to a split file")
    return write_text_atomic(path, "".join(f"{case_id}\n" for case_id in ids))
