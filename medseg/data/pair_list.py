"""The ``list`` pairing rule: a text/CSV file with one ``image,mask`` line per case."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

from medseg.data.pair_types import FileKind, Pair
from medseg.errors import DataError

__all__ = ["read_pair_list"]

logger = logging.getLogger(__name__)

_MAX_LISTED = 10


def _names(items: Sequence[str], sep: str = ", ") -> str:
    """``a, b, c`` with at most ``_MAX_LISTED`` names, then ``and N more``."""
    shown = sep.join(items[:_MAX_LISTED])
    extra = len(items) - _MAX_LISTED
    return f"{shown} and {extra} more" if extra > 0 else shown


def _has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    return path.name.lower().endswith(suffixes)


def read_pair_list(root: Path, list_file: Path, *, strict: bool, kind: FileKind) -> list[Pair]:
    """Read ``image,mask`` lines (``#`` comments, optional header) into pairs.

    Args:
        root: Dataset folder; the paths in the file are relative to it (or absolute).
        list_file: The list file, relative to ``root`` or absolute.
        strict: Raise on bad lines; if False they are skipped with a logged warning.
        kind: What image and mask files look like (suffixes, case names).

    Returns:
        Pairs sorted by ``case_id``.

    Raises:
        DataError: A missing or unreadable file, no pair in it, or (``strict``) a bad line.
    """
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
            and not any(_has_suffix(Path(f), kind.mask_suffixes) for f in fields)
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
        if not _has_suffix(image, kind.image_suffixes):
            missing.append(f"image suffix {image.suffix!r} not in {', '.join(kind.image_suffixes)}")
        if missing:
            problems.append(f"line {number}: {' and '.join(missing)}")
            continue
        case = kind.case_name(image)
        if case in seen:
            problems.append(f"line {number}: case {case!r} already on line {seen[case]}")
            continue
        seen[case] = number
        pairs.append(Pair(case_id=case, image=image, mask=mask))
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
