"""Per-case records ``OUT/.medseg-predict/<name>.json``: the label-shaping settings of each image case's mask.

A 2D image case writes a JSON sidecar only with ``statistics``, so without one a rerun with another threshold,
TTA or checkpoint would find no settings to compare and keep the old masks. Each image case whose mask a run
writes therefore also gets a small record in the hidden folder ``OUT/.medseg-predict`` holding
:func:`~medseg.prediction.run_settings.label_settings` (``{"medseg_version": ..., "settings": {...}}``):

- :func:`check_case_records`, before anything is written and unless ``overwrite``, refuses a run when the record
  of one of its cases whose mask exists (a case it would skip, or complete keeping the mask) holds other
  settings: one line naming the record, as for a sidecar. Other cases in the folder (another image set, another
  fold's checkpoint) are not compared, so one folder can hold masks made by several models. A record that
  cannot be read (no JSON object, a folder) does not stop the run: its case fails alone (one line naming the
  record: delete it and the case's outputs, or ``--overwrite``), the other cases are predicted;
- :func:`write_case_record` is called by the process that writes the case's mask (so processes sharing a folder
  never write the same record): the old record is removed before the mask is written and the new one written
  atomically after it, so an interrupted case never keeps a record describing another mask. A folder where the
  record belongs is never removed: that case fails, naming it.

Records are no case's outputs (they never make a case finished) and, inside a hidden folder, are not seen by
``Path.glob("*.json")``, statistics tables or evaluate. A case without a record (an older medseg's folder, or one
with only a sidecar) is not compared: it is skipped as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import medseg
from medseg.atomic import write_json_atomic
from medseg.errors import DataError
from medseg.prediction.run_settings import SETTINGS_KEY, check_recorded_settings, refuse_folder

__all__ = ["RECORDS_FOLDER", "case_record", "check_case_records", "check_records_folder", "remove_case_record",
           "write_case_record"]

#: The hidden folder of the records in the output folder.
RECORDS_FOLDER = ".medseg-predict"


def case_record(out_dir: Path, name: str) -> Path:
    """The record of case ``name`` in ``out_dir``."""
    return out_dir / RECORDS_FOLDER / f"{name}.json"


def check_records_folder(out_dir: Path) -> None:
    """Refuse an output folder where the records' folder is taken by something else (a file, a broken link).

    Called before anything is written, so such a folder is refused with nothing left behind.

    Raises:
        DataError: ``out_dir/.medseg-predict`` exists and is not a folder.
    """
    folder = Path(out_dir) / RECORDS_FOLDER
    if (folder.exists() or folder.is_symlink()) and not folder.is_dir():
        what = "a broken link" if not folder.exists() else "a file"
        raise DataError(f"{folder}: is {what}; expected a folder, where medseg predict writes the settings record "
                        "of each image case; remove or rename it, or choose another -o")


def check_case_records(out_dir: Path, names: Iterable[str], settings: dict[str, Any]) -> dict[str, str]:
    """Refuse a run whose settings differ from those the record of one of the cases ``names`` holds; return the
    cases whose record cannot be read.

    Returns:
        Case name -> one-line message (naming the record and what to do) for each record that is no readable JSON
        object or is a folder: these cases fail alone.

    Raises:
        ConfigError: The first record that differs (the setting, the value it was made with, this run's value).
    """
    records = {case_record(out_dir, n): n for n in names}
    return {records[r]: message for r, message in check_recorded_settings(records, settings, out_dir).items()}


def remove_case_record(out_dir: Path, name: str) -> None:
    """Remove case ``name``'s record (before its mask is rewritten).

    Raises:
        DataError: A folder is where the record belongs (never removed), or the record cannot be removed.
    """
    record = case_record(out_dir, name)
    refuse_folder(record)
    try:
        record.unlink(missing_ok=True)
    except OSError as err:
        raise DataError(f"{record}: cannot remove this case's old settings record ({err.strerror or err})") from None


def write_case_record(out_dir: Path, name: str, settings: dict[str, Any]) -> Path:
    """Write case ``name``'s record (atomically; the hidden folder is created when missing)."""
    return write_json_atomic(case_record(out_dir, name), {"medseg_version": medseg.__version__,
                                                          SETTINGS_KEY: settings})
