"""The settings that shape a prediction's labels: recorded in each case's JSON sidecar, checked on a rerun.

A rerun into an output folder skips the cases whose outputs all exist (and completes those with some missing).
Made with other settings than this run's (another checkpoint, threshold, TTA, window ...), such outputs would
stay in the folder while the user takes them for new ones. So, unless ``overwrite``, every existing sidecar's
``settings`` are compared with this run's before anything is predicted, and the first difference refuses the run
(:func:`check_recorded_settings`: one line naming the sidecar, the setting, the old and the new value, and
``--overwrite`` or another ``-o``). A sidecar without ``settings`` (written by an older medseg) is not compared:
its case is skipped as before. A sidecar that cannot be read (a folder, no JSON object) leaves its case's settings
unknown: that case fails alone, naming the file and what to do, and the others are predicted. Image cases,
whose sidecars are written only on request, also keep the settings in a record per case
(:mod:`medseg.prediction.case_records`), compared in the same way.

Recorded (:func:`label_settings`): per model, its file (its path, shown only, and the SHA-256 of its bytes,
compared: a moved, renamed or copied checkpoint counts as the same one, a retrained one as another), the
precision asked for (``auto``, ``fp32``
...) and the one that ran (``precision_used``, shown but not compared, so machines that resolve ``auto``
differently can share a folder), flip TTA and, for volume models, the window (``roi_size``, ``overlap``,
``blend``); for the prediction as a whole ``threshold``, ``largest_component`` and the ``postprocessing.json``
rules. Not recorded, as they leave the labels as they are: ``sw_batch_size``, ``backend``, the device, and the
extra outputs asked for (``--probabilities``, ``--statistics``, ``--overlay``, ``--dicom-seg``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError, DataError
from medseg.prediction.loaded import LoadedModel
from medseg.prediction.network import roi_for
from medseg.sliding_window.plan import precision_name

__all__ = ["SETTINGS_KEY", "check_recorded_settings", "checkpoint_sha256", "label_settings", "refuse_folder",
           "settings_differences"]

#: The sidecar entry holding the settings.
SETTINGS_KEY = "settings"
#: Entries of a model's record that are shown but not compared.
_SHOWN_ONLY = frozenset({"checkpoint", "precision_used"})


def label_settings(loaded: LoadedModel) -> dict[str, Any]:
    """This prediction's settings, as a sidecar records them (JSON values only).

    Example:
        >>> from medseg.config.kinds import DataKind
        >>> from medseg.config.schema import InferConfig
        >>> from medseg.data.labels import LabelMap
        >>> m = LoadedModel(None, None, LabelMap.from_mapping({0: "bg", 255: "polyp"}), {}, InferConfig(tta=True),
        ...                 "cpu", DataKind.IMAGES2D)  # type: ignore[arg-type]
        >>> label_settings(m)
        {'models': [{'checkpoint': None, 'checkpoint_sha256': None, 'precision': 'fp32', 'precision_used': 'fp32', \
'tta': True}], 'threshold': None, 'largest_component': False, 'postprocessing': None}
    """
    return {
        "models": [_model_settings(m) for m in loaded.members],
        "threshold": loaded.infer.threshold,
        "largest_component": loaded.infer.largest_component,
        "postprocessing": loaded.postprocessing_record()["classes"] if loaded.postprocessing else None,
    }


def precision_used(loaded: LoadedModel) -> str:
    """The precision ``loaded`` runs in: ``auto`` resolved on its device for the sliding window; fp32 for 2D
    image models (one plain forward pass, no autocast)."""
    if not loaded.kind.segments_volumes:
        return "fp32"
    return precision_name(loaded.infer.precision, loaded.device)


def _model_settings(model: LoadedModel) -> dict[str, Any]:
    digest = checkpoint_sha256(model.source)
    record: dict[str, Any] = {
        "checkpoint": str(Path(model.source).resolve()) if digest is not None else (model.source or None),
        "checkpoint_sha256": digest,
        "precision": model.infer.precision if model.kind.segments_volumes else "fp32",
        "precision_used": precision_used(model),
        "tta": model.infer.tta,
    }
    if model.kind.segments_volumes:
        record |= {"roi_size": list(roi_for(model.preprocessing, model.infer)), "overlap": model.infer.overlap,
                   "blend": model.infer.blend}
    return record


def checkpoint_sha256(source: str) -> str | None:
    """The SHA-256 (hex) of a model file's bytes; None without one (a model built in memory).

    Read once per file version: the digest is kept for the same path, size, modification time and inode.

    Raises:
        DataError: The file exists but cannot be read.
    """
    try:
        stat = Path(source).stat() if source else None
    except OSError:
        stat = None
    if stat is None or not Path(source).is_file():
        return None
    return _file_sha256(str(Path(source).resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)


@lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, modified_ns: int, inode: int) -> str:
    """SHA-256 of ``path``; the other arguments only key the cache."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise DataError(f"{path}: cannot read the checkpoint ({err.strerror or err})") from None
    return digest.hexdigest()


def settings_differences(old: dict[str, Any], new: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """``(setting, old value, new value)`` for each compared setting that differs, as shown in messages.

    Example:
        >>> a = {"models": [{"tta": False}], "threshold": None}
        >>> list(settings_differences(a, {"models": [{"tta": True}], "threshold": 0.3}))
        [('tta', 'false', 'true'), ('threshold', 'none', '0.3')]
    """
    old_models, new_models = old.get("models") or [], new.get("models") or []
    if len(old_models) != len(new_models):
        yield "models", _count(old_models), _count(new_models)
    else:
        several = len(new_models) > 1
        for i, (a, b) in enumerate(zip(old_models, new_models, strict=True)):
            prefix = f"model {i + 1} " if several else ""
            if a.get("checkpoint_sha256") != b.get("checkpoint_sha256"):
                yield prefix + "checkpoint", _model_file(a), _model_file(b)
            for key in sorted((set(a) | set(b)) - _SHOWN_ONLY - {"checkpoint_sha256"}):
                if a.get(key) != b.get(key):
                    yield prefix + key, _shown(a.get(key), a, key), _shown(b.get(key), b, key)
    for key in [k for k in new if k != "models"] + sorted(set(old) - set(new) - {"models"}):
        if old.get(key) != new.get(key):
            yield key, _shown(old.get(key)), _shown(new.get(key))


def check_recorded_settings(sidecars: Iterable[Path], settings: dict[str, Any], out_dir: Path) -> dict[Path, str]:
    """Refuse a rerun whose settings differ from those an existing sidecar recorded (see the module docstring), and
    return the sidecars that cannot be read.

    Sidecars that do not exist, or hold no ``settings`` (an older medseg), are passed over. One that cannot be read
    (a folder, no JSON, no JSON object) leaves the settings of its case's outputs unknown: it does not stop the
    run, its case fails alone with the message returned (what to do included), as a bad input does.

    Returns:
        Each unreadable sidecar with its one-line message (empty when all could be read).

    Raises:
        ConfigError: The first sidecar that differs: the setting, the value it was made with, this run's value,
            and what to do.
    """
    unreadable: dict[Path, str] = {}
    for sidecar in sidecars:
        try:
            recorded = _recorded(sidecar)
        except DataError as err:
            unreadable[sidecar] = str(err)
            continue
        if recorded is None:
            continue
        for name, old, new in settings_differences(recorded, settings):
            what = "" if name == "models" else f"{name} "  # "made with an ensemble of 2 models, this run has 1 model"
            raise ConfigError(
                f"{sidecar}: made with {what}{old}, this run has {what}{new}; the finished cases in {out_dir} "
                "would be kept as they are: rerun with --overwrite to redo them with this run's settings, or "
                "choose another -o")
    return unreadable


def refuse_folder(path: Path) -> None:
    """Refuse a folder where a case's settings record or sidecar belongs (medseg never deletes folders).

    Raises:
        DataError: ``path`` is a folder (a link to one included).
    """
    if path.is_dir():
        raise DataError(f"{path}: is a folder, where medseg predict keeps the settings that made this case's "
                        "outputs in a file; remove or rename the folder to predict this case (medseg does not "
                        "delete folders, not even with --overwrite)")


_MAX_RECORD_BYTES = 16 * 2**20  # a sidecar with statistics of many classes stays far below
#: what to do with a record whose settings cannot be read
_UNKNOWN = ("so the settings that made this case's outputs are unknown; delete it and the case's outputs to redo "
            "the case, or rerun with --overwrite")


def _recorded(sidecar: Path) -> dict[str, Any] | None:
    """The settings a sidecar recorded; None when it does not exist or holds none.

    Raises:
        DataError: A folder, an unreadable file, or no JSON object.
    """
    refuse_folder(sidecar)
    try:
        with sidecar.open("rb") as f:
            raw = f.read(_MAX_RECORD_BYTES + 1)  # bounded: a record is a few hundred bytes
    except FileNotFoundError:
        return None
    except OSError as err:
        raise DataError(f"{sidecar}: cannot read it ({err.strerror or err}), {_UNKNOWN}") from None
    if len(raw) > _MAX_RECORD_BYTES:
        raise DataError(f"{sidecar}: over {_MAX_RECORD_BYTES // 2**20} MB, no settings record, {_UNKNOWN}")
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError as err:  # UnicodeDecodeError included
        raise DataError(f"{sidecar}: not readable JSON ({err}), {_UNKNOWN}") from None
    if not isinstance(data, dict):
        raise DataError(f"{sidecar}: holds a JSON {type(data).__name__}, not an object, {_UNKNOWN}")
    settings = data.get(SETTINGS_KEY)
    return settings if isinstance(settings, dict) else None


def _count(models: list[Any]) -> str:
    return "1 model" if len(models) == 1 else f"an ensemble of {len(models)} models"


def _model_file(record: dict[str, Any]) -> str:
    """A checkpoint as a message shows it: its path and the start of its SHA-256."""
    digest = record.get("checkpoint_sha256")
    return f"{record.get('checkpoint')} (sha256 {digest[:12] if isinstance(digest, str) else 'unknown'})"


def _shown(value: Any, record: dict[str, Any] | None = None, key: str = "") -> str:
    """A value as the command line spells it: ``none``, ``true``, ``0.3``, ``[96, 96, 64]``."""
    text = "none" if value is None else value if isinstance(value, str) else json.dumps(value)
    if key == "precision" and record is not None and record.get("precision_used") not in (None, value):
        text += f" (ran as {record['precision_used']})"
    return text
