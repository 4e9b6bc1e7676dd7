"""Train/validation splits: by fraction and seed, from list files, or saved in a run folder.

A run writes its split to ``RUN_DIR/splits/train.txt`` and ``val.txt`` (case ids, one per line), and a
resumed run reads it back, so the split never changes under a run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from medseg.atomic import write_text_atomic
from medseg.config.schema import DataConfig
from medseg.data.pairing import Pair
from medseg.errors import DataError

__all__ = ["fold_of_each", "read_split_file", "select_split", "split_for_run", "split_pairs", "write_split_file"]

T = TypeVar("T")
_MAX_LISTED = 10


def _names(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    extra = len(items) - _MAX_LISTED
    return f"{shown} and {extra} more" if extra > 0 else shown


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


def fold_of_each(n: int, *, folds: int, seed: int) -> list[int]:
    """The fold of each of ``n`` cases: a seeded permutation dealt round-robin, so fold sizes differ by at most one.

    Args:
        n: Number of cases (in their sorted order).
        folds: Number of folds, at least 2.
        seed: Random seed (``data.seed``).

    Raises:
        DataError: Fewer cases than folds.

    Example:
        >>> fold_of_each(5, folds=2, seed=0)
        [1, 0, 0, 0, 1]
        >>> sorted(fold_of_each(10, folds=5, seed=3)) == sorted([0, 1, 2, 3, 4] * 2)
        True
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if n < folds:
        raise DataError(f"data.folds: {folds} folds need at least {folds} cases, found {n}")
    out = [0] * n
    for rank, index in enumerate(np.random.default_rng(seed).permutation(n).tolist()):
        out[index] = rank % folds
    return out


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


def select_split(
    pairs: Sequence[Pair], data: DataConfig, saved: tuple[list[str], list[str]] | None = None
) -> tuple[list[Pair], list[Pair]]:
    """Train/val split: saved lists (resume), then ``data.train_list``/``data.val_list``, then fold ``data.fold`` of
    ``data.folds``, then fraction + seed.

    Raises:
        DataError: A list names a case that was not found.
    """
    by_id = {p.case_id: p for p in pairs}
    d = data
    if saved is None and d.train_list is not None:
        saved = (read_split_file(d.train_list), read_split_file(d.val_list) if d.val_list else [])
    if saved is not None:
        missing = [c for c in saved[0] + saved[1] if c not in by_id]
        if missing:
            raise DataError(f"split lists name cases not found under {d.root}: {_names(missing)}")
        return [by_id[c] for c in saved[0]], [by_id[c] for c in saved[1]]
    if d.folds is not None:
        if d.fold is None:
            raise DataError("data.folds is set but no fold is chosen; pass --fold K (or --fold all), or set data.fold")
        fold = fold_of_each(len(pairs), folds=d.folds, seed=d.seed)
        return ([p for p, f in zip(pairs, fold, strict=True) if f != d.fold],
                [p for p, f in zip(pairs, fold, strict=True) if f == d.fold])
    if d.val_list is not None:
        val_ids = set(read_split_file(d.val_list))
        return [p for p in pairs if p.case_id not in val_ids], [p for p in pairs if p.case_id in val_ids]
    return split_pairs(list(pairs), val_fraction=d.val_fraction, seed=d.seed)


def split_for_run(
    pairs: Sequence[Pair], data: DataConfig, run_dir: Path, *, resume: bool
) -> tuple[list[Pair], list[Pair]]:
    """The run's split: read back from ``run_dir/splits`` on resume, else chosen and written there.

    Raises:
        DataError: No training case is left, or a saved or listed case is missing.
    """
    folder = Path(run_dir) / "splits"
    saved = (read_split_file(folder / "train.txt"), read_split_file(folder / "val.txt")) if resume else None
    train, val = select_split(pairs, data, saved)
    if not train:
        raise DataError(f"{data.root}: no training cases left after the split ({len(pairs)} cases found)")
    if not resume:
        write_split_file(folder / "train.txt", [p.case_id for p in train])
        write_split_file(folder / "val.txt", [p.case_id for p in val])
    return train, val
