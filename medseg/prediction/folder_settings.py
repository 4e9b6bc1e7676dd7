"""The folder record ``OUT/.medseg-predict``: the label-shaping settings of the runs that wrote an image folder.

A 2D image case writes a JSON sidecar only with ``statistics``, so without one a rerun with another threshold,
TTA or checkpoint would find no settings to compare and keep the old masks. The folder record closes that gap
without changing which outputs make a case finished: it holds :func:`~medseg.prediction.run_settings.
label_settings` (``{"medseg_version": ..., "settings": {...}}``) and

- :func:`check_folder_settings`, before anything is written and unless ``overwrite``, refuses a run whose
  settings differ from the record's (one line naming the record, as for a sidecar);
- :func:`claim_folder_settings`, when the run starts predicting, creates the record if it is absent. It is written
  beside the target and linked under its name, which only one process can do, so of several processes sharing the
  folder (``--workers``, shards, torchrun ranks) one writes it and the others compare their settings with it.

A folder that already holds outputs but no record was written by an older medseg (or the record was deleted):
nothing is compared and no record is created, so its reruns skip finished cases as before. With ``overwrite``
the record takes this run's settings when every output in the folder belongs to this run's cases; when the
folder also holds other cases' outputs that this run leaves as they are, a record with other settings is
removed, as the folder then mixes settings no single record describes.
"""

from __future__ import annotations

import errno
import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import medseg
from medseg.atomic import write_json_atomic, write_text_atomic
from medseg.prediction.run_settings import SETTINGS_KEY, check_recorded_settings

__all__ = ["FOLDER_RECORD", "check_folder_settings", "claim_folder_settings", "folder_outputs", "remove_lone_record"]

#: The record's name in the output folder: a JSON object, hidden, and without the ``.json`` ending so that
#: ``Path.glob("*.json")``, which also yields hidden files, collects the cases' sidecars only.
FOLDER_RECORD = ".medseg-predict"
#: Endings of the files a prediction writes into the folder (masks, overlays, sidecars, probabilities).
_OUTPUT_SUFFIXES = (".png", ".json", ".npz")


def check_folder_settings(out_dir: Path, settings: dict[str, Any], *, overwrite: bool) -> None:
    """Refuse, unless ``overwrite``, a run whose settings differ from those ``out_dir``'s record holds.

    Raises:
        ConfigError: The record differs (the setting, the value it was made with, this run's value).
        DataError: The record is no readable JSON object.
    """
    if not overwrite:
        check_recorded_settings([out_dir / FOLDER_RECORD], settings, out_dir)


def claim_folder_settings(out_dir: Path, settings: dict[str, Any], case_outputs: Iterable[str], *,
                          overwrite: bool) -> None:
    """Create ``out_dir``'s record when this run starts predicting (see the module docstring).

    Args:
        out_dir: The existing output folder.
        settings: This run's label settings.
        case_outputs: Names of the outputs this run's cases can write (those found with ``overwrite`` do not
            stop the record from taking this run's settings).
        overwrite: The run redoes its cases.

    Raises:
        ConfigError: Another process created the record with other settings meanwhile.
    """
    record = out_dir / FOLDER_RECORD
    content = {"medseg_version": medseg.__version__, SETTINGS_KEY: settings}
    if overwrite:
        others = folder_outputs(out_dir) - set(case_outputs)
        if not others:
            write_json_atomic(record, content)
        elif record.exists() and _recorded_settings(record) != settings:  # other settings, or unreadable
            record.unlink(missing_ok=True)
        return
    if folder_outputs(out_dir):  # an older medseg's folder, or one whose record a process created meanwhile
        check_recorded_settings([record], settings, out_dir)
        return
    if not _create_exclusive(record, json.dumps(content, indent=2) + "\n"):
        check_recorded_settings([record], settings, out_dir)


def folder_outputs(out_dir: Path) -> set[str]:
    """Names of the visible prediction outputs (masks, overlays, sidecars, probabilities) in ``out_dir``."""
    try:
        entries = list(out_dir.iterdir())
    except FileNotFoundError:
        return set()
    return {p.name for p in entries
            if not p.name.startswith(".") and p.name.lower().endswith(_OUTPUT_SUFFIXES) and p.is_file()}


def _recorded_settings(record: Path) -> dict[str, Any] | None:
    """The record's settings; None when it is absent or unreadable (it is then replaced or removed)."""
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    settings = data.get(SETTINGS_KEY) if isinstance(data, dict) else None
    return settings if isinstance(settings, dict) else None


def _create_exclusive(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` unless it exists: complete under a staging name (atomically), then hard-linked
    under its own, which fails when the name exists. False when another process created it first.

    Where the filesystem has no hard links, the name is created with ``O_EXCL`` and written (a reader may then
    briefly find it empty: :func:`~medseg.prediction.run_settings.check_recorded_settings` reports that).
    """
    staging = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.new")
    write_text_atomic(staging, text)
    try:
        try:
            os.link(staging, path)
            return True
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        return True
    finally:
        staging.unlink(missing_ok=True)


def remove_lone_record(out_dir: Path) -> None:
    """Remove ``out_dir``'s record when it is all the folder holds (a run that wrote no case), so that a folder
    the run created can be removed again."""
    try:
        names = [p.name for p in out_dir.iterdir()]
    except OSError:
        return
    if names == [FOLDER_RECORD]:
        (out_dir / FOLDER_RECORD).unlink(missing_ok=True)
