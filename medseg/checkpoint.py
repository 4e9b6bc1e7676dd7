"""Self-describing checkpoints, written atomically and loaded without unpickling code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts::

    {"format": "medseg-checkpoint", "format_version": 1, "medseg_version": "...",
     "config": <resolved config dict>, "labels": <LabelMap dict>, "preprocessing": {...},
     "in_channels": int, "out_channels": int, "state_dict": {...}, "train_state": {...} | None}

It loads with ``torch.load(weights_only=True)``, so a file carrying a pickled Python object is refused.
"""

from __future__ import annotations

import pickle
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
        CheckpointError: Missing, truncated, not a medseg checkpoint, a newer format, or carrying
            pickled objects that a weights-only load refuses.
    """
    path = Path(path)
    if path.is_dir():
        for name in ("checkpoints/best.pt", "checkpoints/last.pt", "best.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(f"{path}: folder holds no checkpoints/best.pt or checkpoints/last.pt")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    _check_crc(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unsupported object"
        raise CheckpointError(
            f"{path}: refused: the file carries pickled Python objects that a weights-only load does not "
            f"allow ({first[:200]}); medseg checkpoints hold tensors and plain values only"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:200]
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {reason}") from None
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


def _check_crc(path: Path) -> None:
    """torch.load does not check the zip CRCs, so a flipped bit in the weights would load silently."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return  # not a zip (or unreadable): torch.load reports it
    if bad is not None:
        raise CheckpointError(f"{path}: checkpoint is corrupt (CRC mismatch in {bad}); restore it from a copy")


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
