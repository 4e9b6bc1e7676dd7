"""Self-describing checkpoints, written atomically and loaded without unpickling code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts::

    {"format": "medseg-checkpoint", "format_version": 1, "medseg_version": "...",
     "config": <resolved config dict>, "labels": <LabelMap dict>, "preprocessing": {...},
     "in_channels": int, "out_channels": int, "state_dict": {...}, "train_state": {...} | None}

It loads with ``torch.load(weights_only=True)``, so a file carrying a pickled Python object is refused.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from medseg.atomic import atomic_path
from medseg.errors import CheckpointError

FORMAT = "medseg-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write a checkpoint dict atomically: temporary file in the same folder, fsync, rename.

    A crash at any moment leaves either the previous file or the new one, never a truncated one.
    """
    path = Path(path)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a medseg checkpoint (``weights_only=True``; nothing is executed).

    Raises:
        CheckpointError: Missing, empty, no torch.save file at all (text, an image ...), truncated, not a
            medseg checkpoint, a newer format, or carrying pickled objects that a weights-only load refuses. The
            message is one line: PyTorch's own text is cut to its first sentence, without colour codes and
            without its advice to load with ``weights_only=False``.
    """
    path = Path(path)
    if path.is_dir():
        in_folder = checkpoint_in_folder(path)
        if in_folder is None:
            folds = fold_folders(path)
            if folds:
                raise CheckpointError(f"{path}: a folder of {len(folds)} fold runs ({folds[0].name} ...), not one run; "
                                      f"give one fold ({folds[0]}) or predict with all of them as an ensemble "
                                      f"(medseg predict {path} INPUT..., or medseg.Ensemble.from_checkpoint)")
            raise CheckpointError(f"{path}: folder holds no checkpoints/best.pt or checkpoints/last.pt")
        path = in_folder
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    _check_container(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused: the file carries pickled Python objects that a weights-only load does not "
            f"allow ({_unpickler_reason(err)}); medseg checkpoints hold tensors and plain values only"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {_first_sentence(err)}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path}: not a medseg checkpoint (format field {found!r}; expected {FORMAT!r}); "
            "train with 'medseg train' to make one"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format_version {version!r} is newer than this medseg reads ({FORMAT_VERSION}); "
            "upgrade medseg"
        )
    for key in ("config", "labels", "state_dict", "in_channels", "out_channels"):
        if key not in payload:
            raise CheckpointError(f"{path}: medseg checkpoint lacks the {key!r} entry (damaged file?)")
    _check_entries(path, payload)
    payload["path"] = str(path)
    return payload


#: Where a run folder keeps its checkpoint, in the order they are looked for.
RUN_CHECKPOINTS = ("checkpoints/best.pt", "checkpoints/last.pt", "best.pt", "last.pt")


def checkpoint_in_folder(folder: str | Path) -> Path | None:
    """The checkpoint a run folder stands for (the first of :data:`RUN_CHECKPOINTS` there), or None."""
    for name in RUN_CHECKPOINTS:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def fold_folders(folder: str | Path) -> list[Path]:
    """The ``fold_K`` run folders of a cross-validation run folder (``medseg train --fold``), by fold number.

    Only sub-folders named ``fold_`` and a number count, whether or not their checkpoint exists yet.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> for name in ("fold_10", "fold_2", "fold_x", "cv_predictions"):
        ...     (Path(tmp.name) / name).mkdir()
        >>> [p.name for p in fold_folders(tmp.name)]
        ['fold_2', 'fold_10']
        >>> tmp.cleanup()
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    folds = [p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"fold_\d+", p.name)]
    return sorted(folds, key=lambda p: int(p.name[len("fold_"):]))


#: What a legacy (PyTorch < 1.6, ``_use_new_zipfile_serialization=False``) torch.save file starts with: its
#: magic number pickled with protocol 2 (``torch.serialization.MAGIC_NUMBER``).
_LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
_ZIP_LOCAL_HEADER = b"PK\x03\x04"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _check_container(path: Path) -> None:
    """Refuse what is no torch.save file at all before torch.load misreads it, and check the zip CRCs.

    torch.save writes a zip archive (a legacy pickle before PyTorch 1.6); torch.load reports any other file as a
    pickle it refuses to unpickle, which sends the reader looking for the wrong problem. A file that starts like
    a zip archive but is damaged (truncated) is left to torch.load, which says so.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(16)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the checkpoint file ({err.strerror or err})") from None
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes); not a checkpoint")
    if head.startswith(_LEGACY_MAGIC):
        return  # a legacy torch.save file: torch.load reads it with weights_only too
    if not zipfile.is_zipfile(path):
        if head.startswith(_ZIP_LOCAL_HEADER):
            return  # a damaged zip archive: torch.load reports it
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (a .pt file saved by torch.save is a zip archive; this file starts "
            f"with {head!r})"
        )
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            bad = zf.testzip()  # torch.load does not check the CRCs, so a flipped bit would load silently
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError):
        return  # unreadable as a zip after all: torch.load reports it
    if any(name.endswith("/constants.pkl") for name in names):
        raise CheckpointError(f"{path}: is an exported TorchScript model; give a run folder, a .pt checkpoint saved "
                              "by medseg train, or an exported .onnx")
    if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (a zip archive without the data.pkl entry that "
                              f"torch.save writes; it holds {len(names)} entries)")
    if bad is not None:
        raise CheckpointError(f"{path}: checkpoint is corrupt (CRC mismatch in {bad}); restore it from a copy")


def _clean(text: str) -> str:
    """One line of ``text``, without ANSI colour codes."""
    return " ".join(_ANSI.sub("", text).split())


def _first_sentence(err: BaseException) -> str:
    """The first sentence of an exception's message (torch appends paragraphs of advice), at most 200 chars."""
    text = _clean(str(err)) or type(err).__name__
    return text.split(". ")[0].rstrip(".")[:200]


def _unpickler_reason(err: BaseException) -> str:
    """What the weights-only unpickler refused, without PyTorch's advice to load with weights_only=False."""
    text = _clean(str(err))
    _, found, reason = text.partition("WeightsUnpickler error:")
    reason = reason.strip().split(". ")[0].rstrip(".") if found else ""
    return reason[:200] or "an object other than tensors and plain values"


def _check_entries(path: Path, payload: dict[str, Any]) -> None:
    """Refuse malformed entries here, with the file name, rather than failing later deep in the engine."""
    for key in ("in_channels", "out_channels"):
        value = payload[key]
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 4096:
            raise CheckpointError(f"{path}: checkpoint entry {key!r} is {value!r}; expected a channel count 1..4096")
    for key in ("config", "state_dict"):
        if not isinstance(payload[key], dict):
            raise CheckpointError(
                f"{path}: checkpoint entry {key!r} is a {type(payload[key]).__name__}; expected a dict (damaged file?)"
            )
    if not isinstance(payload.get("preprocessing", {}), dict):
        raise CheckpointError(f"{path}: checkpoint entry 'preprocessing' is not a dict (damaged file?)")
    if not isinstance(payload["labels"], dict):
        raise CheckpointError(f"{path}: checkpoint entry 'labels' is not a dict (damaged file?)")
    classes = payload["labels"].get("classes")
    if classes is None:
        return  # the entries themselves are checked by medseg.data.labels.labels_from_checkpoint
    if not isinstance(classes, list):
        raise CheckpointError(f"{path}: checkpoint entry 'labels' is malformed: 'classes' is a "
                              f"{type(classes).__name__}, expected a list (damaged file?)")
    if len(classes) != payload["out_channels"]:
        raise CheckpointError(
            f"{path}: checkpoint labels define {len(classes)} classes but out_channels is "
            f"{payload['out_channels']} (damaged file?)"
        )
