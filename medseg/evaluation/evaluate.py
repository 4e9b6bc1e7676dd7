"""Compare a folder of predictions with a folder of ground truth: per-case CSV and per-class summary.

Cases pair by file name without extension (``case.png`` <-> ``case.jpg``, ``a.nii.gz`` <-> ``a.nii``).
Both sides go through the same label mapping and snapping tolerance. A truth case without a
prediction is scored as an empty prediction (worst case) and flagged, never dropped; when no prediction pairs
with any truth file (names that differ, e.g. ``case_0000`` against ``case``), nothing is scored: an error.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.atomic import write_json_atomic, write_text_atomic
from medseg.data.label_discovery import discover_label_map
from medseg.data.label_sources import labels_from_checkpoint
from medseg.data.labels import LabelMap, mask_to_single_channel
from medseg.errors import ConfigError, DataError, OutputExistsError
from medseg.io.images import IMAGE_SUFFIXES, read_mask
from medseg.metrics.case_metrics import CLASS_METRICS, compute_case_metrics, summarize

log = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
#: Largest affine difference (mm, or direction cosine) accepted between prediction and truth.
GEOMETRY_TOLERANCE = 1e-3


@dataclass(frozen=True)
class EvaluationResult:
    """Per-case metrics, their summary and where they were written."""

    cases: list[dict[str, Any]]
    summary: dict[str, dict[str, dict[str, float]]]
    csv_path: Path | None
    summary_path: Path | None
    missing_predictions: list[str]

    def table(self) -> str:
        """A plain-text per-class table (mean +- std) for the terminal."""
        lines = [f"{'class':<20} {'n':>4} " + " ".join(f"{m:>14}" for m in (*CLASS_METRICS, "pixel_acc"))]
        for name, stats in self.summary.items():
            cells = []
            for m in (*CLASS_METRICS, "pixel_accuracy"):
                s = stats.get(m)
                cells.append(f"{s['mean']:>7.4f}+-{s['std']:<5.3f}" if s else f"{'':>14}")
            n = int(next(iter(stats.values()))["n"])
            lines.append(f"{name:<20} {n:>4} " + " ".join(cells))
        return "\n".join(lines)


def case_name(path: Path) -> str:
    """File name without its (double) extension."""
    name = path.name
    for suffix in VOLUME_SUFFIXES + IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def label_files(folder: Path, what: str) -> dict[str, Path]:
    """The masks or label volumes in a folder by case name (overlays and hidden files left out).

    Args:
        folder: The folder.
        what: What the folder holds, for messages (``prediction``, ``truth``).

    Returns:
        Case name (see :func:`case_name`) -> file, sorted by file name.

    Raises:
        DataError: The folder does not exist or holds no image or volume file.
    """
    if not folder.is_dir():
        raise DataError(f"{what} folder {folder} does not exist")
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        if p.name.lower().endswith(VOLUME_SUFFIXES + IMAGE_SUFFIXES) and not p.name.endswith(".json"):
            if p.stem.endswith("_overlay"):
                continue
            out[case_name(p)] = p
    if not out:
        raise DataError(f"{what} folder {folder} holds no image or volume files")
    return out


def read_label_values(path: Path) -> tuple[np.ndarray, Any]:
    """A mask or label volume's gray values (one channel, integers) and, for volumes, the volume.

    Args:
        path: A 2D mask (PNG, JPG ...) or a label volume (NIfTI, MHA, NRRD).

    Returns:
        The gray values, and the :class:`~medseg.io.volume_io.Volume` (geometry, spacing) or None for 2D masks.

    Raises:
        DataError: The file cannot be read, or a 2D mask's channels disagree.
    """
    if path.name.lower().endswith(VOLUME_SUFFIXES):
        from medseg.io.volume_io import read_volume

        vol = read_volume(path)
        arr = vol.array
        if arr.dtype.kind == "f":
            arr = np.rint(arr).astype(np.int64)
        return arr, vol
    return mask_to_single_channel(read_mask(path), source=str(path)), None


def _check_geometry(pred: Path, truth: Path, pv: Any, tv: Any, p_arr: np.ndarray, t_arr: np.ndarray) -> None:
    if p_arr.shape != t_arr.shape:
        raise DataError(f"{pred}: shape {p_arr.shape} differs from truth {truth.name} shape {t_arr.shape}")
    if pv is not None and tv is not None:
        diff = float(np.abs(np.asarray(pv.affine) - np.asarray(tv.affine)).max())
        if diff > GEOMETRY_TOLERANCE:
            raise DataError(
                f"{pred}: geometry differs from truth {truth.name} (largest affine difference {diff:.4g}, "
                f"tolerance {GEOMETRY_TOLERANCE}); the prediction is not on the truth's grid"
            )


def evaluate(
    pred_dir: str | Path,
    truth_dir: str | Path | Mapping[str, Path],
    *,
    labels: LabelMap | None = None,
    tolerance: int = 0,
    output: str | Path | None = None,
    overwrite: bool = False,
) -> EvaluationResult:
    """Score predicted label maps against ground truth, case by case and class by class.

    Args:
        pred_dir: Folder of predicted masks (PNG/JPG) or label volumes (NIfTI, MHA, NRRD).
        truth_dir: Folder of ground-truth files with the same case names, or a mapping of case name (the
            prediction's file name without suffix) to truth file.
        labels: Gray value -> class mapping (e.g. from a checkpoint); discovered from the truth when None.
        tolerance: Gray levels within which values snap to a mapped value (JPEG masks).
        output: CSV path for per-case rows (a ``.summary.json`` is written beside it); nothing is written when None.
        overwrite: Replace existing output files.

    Returns:
        An :class:`EvaluationResult` (HD95 in mm for volumes, in pixels for 2D images).

    Raises:
        DataError: Missing folders, unreadable files, no prediction named like any truth file, values outside the
            mapping, shape or geometry mismatch.
        ConfigError: ``tolerance`` outside 0..127, or ``output`` (or the summary beside it) is a folder.
        OutputExistsError: ``output`` or the summary beside it exists and ``overwrite`` is False (checked before
            anything is read or written).
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, np.integer)) or not 0 <= tolerance <= 127:
        raise ConfigError(f"--tolerance: got {tolerance!r}; allowed an integer 0..127 (gray levels)")
    pred_dir = Path(pred_dir)
    out_path = Path(output) if output is not None else None
    if out_path is not None:
        _refuse_folders(out_path)  # no --overwrite replaces a folder: said before anything is read
        if not overwrite:
            _refuse_existing(out_path)
    preds = label_files(pred_dir, "prediction")
    truths = dict(truth_dir) if isinstance(truth_dir, Mapping) else label_files(Path(truth_dir), "truth")
    if not set(preds) & set(truths):
        where = truth_dir if not isinstance(truth_dir, Mapping) else "the truth files given"
        raise DataError(
            f"no prediction in {pred_dir} pairs with a truth file in {where}: predictions are named like "
            f"{min(preds)!r}, truths like {min(truths, default='(none)')!r}; cases pair by file name without "
            "extension")
    if labels is None:
        labels = discover_label_map(list(truths.values()), read=lambda p: read_label_values(p)[0],
                                    tolerance=tolerance,
                                    min_classes=1)
    extra = sorted(set(preds) - set(truths))
    if extra:
        log.warning("%d predictions have no truth and are ignored: %s", len(extra), ", ".join(extra[:10]))
    missing = sorted(set(truths) - set(preds))
    if missing:
        log.warning("%d truth cases have no prediction and score as empty: %s", len(missing), ", ".join(missing[:10]))
    cases: list[dict[str, Any]] = []
    results = []
    for name, truth_path in truths.items():
        t_arr, tv = read_label_values(truth_path)
        t_cls, _ = labels.to_class(t_arr, tolerance=tolerance, source=str(truth_path))
        if name in preds:
            p_arr, pv = read_label_values(preds[name])
            _check_geometry(preds[name], truth_path, pv, tv, p_arr, t_arr)
            p_cls, _ = labels.to_class(p_arr, tolerance=tolerance, source=str(preds[name]))
        else:
            p_cls = np.zeros_like(t_cls)
        spacing = tv.spacing if tv is not None else None
        metrics = compute_case_metrics(
            p_cls, t_cls, labels.num_classes, spacing=spacing, class_names=list(labels.names)
        )
        results.append(metrics)
        for cls_name, values in metrics.items():
            cases.append({"case": name, "class": cls_name, "missing_prediction": name not in preds, **values})
    summary = summarize(results)
    csv_path = summary_path = None
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        csv_path = write_text_atomic(out_path, _to_csv(cases))
        summary_path = write_json_atomic(
            _summary_path(out_path),
            {"labels": labels.to_dict(), "n_cases": len(truths), "missing_predictions": missing, "summary": summary},
        )
    return EvaluationResult(cases, summary, csv_path, summary_path, missing)


def _summary_path(output: Path) -> Path:
    """The ``.summary.json`` beside the per-case CSV ``output`` (``metrics.csv`` -> ``metrics.summary.json``)."""
    return output.with_suffix(".summary.json")


def _refuse_folders(output: Path) -> None:
    """Refuse a folder where the CSV or the summary beside it goes (a usage error: ``--overwrite`` cannot help)."""
    if output.is_dir():
        raise ConfigError(f"{output}: is a folder; -o is the per-case CSV file to write, e.g. {output / 'metrics.csv'}")
    summary = _summary_path(output)
    if summary.is_dir():
        raise ConfigError(f"{summary}: is a folder where the summary beside {output.name} goes; remove it or choose "
                          "another -o")


def _refuse_existing(output: Path) -> None:
    """Refuse before anything is read or written if the CSV or the summary beside it exists."""
    if output.exists() or output.is_symlink():
        raise OutputExistsError(f"{output}: exists; pass --overwrite to replace it")
    summary = _summary_path(output)
    if summary.exists() or summary.is_symlink():
        raise OutputExistsError(f"{summary}: exists (the summary written beside {output.name}); pass --overwrite "
                                "to replace it")


def _to_csv(rows: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) and not math.isnan(v) else v) for k, v in row.items()})
    return buf.getvalue()


def label_map_from_options(checkpoint: str | Path | None, text: str | None) -> LabelMap | None:
    """The label mapping for ``evaluate``: from a checkpoint, from ``"0=background,255=polyp"``, or None.

    Raises:
        ConfigError: Both given, or ``text`` is not ``VALUE=NAME`` items.

    Example:
        >>> label_map_from_options(None, "0=background,255=polyp").names
        ['background', 'polyp']
        >>> label_map_from_options(None, "0,255").output_values
        [0, 255]
    """
    if checkpoint is not None and text is not None:
        raise ConfigError("give --checkpoint or --labels, not both")
    if checkpoint is not None:
        from medseg.checkpoint import load_checkpoint

        return labels_from_checkpoint(load_checkpoint(checkpoint))
    if text is None:
        return None
    mapping: dict[int, str] = {}
    for item in text.split(","):
        value, sep, name = item.partition("=")
        try:
            gray = int(value)
        except ValueError:
            raise ConfigError(f"--labels: {item!r} is not VALUE=NAME (e.g. '0=background,255=polyp')") from None
        name = name.strip() if sep else f"class_{gray}"
        if not name:
            raise ConfigError(f"--labels: {item!r} has an empty class name; give VALUE=NAME, e.g. '255=polyp'")
        if gray < 0:
            raise ConfigError(f"--labels: {item!r}: gray value {gray} is negative; mask values are 0 or more")
        if gray in mapping:
            raise ConfigError(f"--labels: gray value {gray} is given twice ({mapping[gray]!r} and {name!r}); "
                              "each value names one class")
        if name in mapping.values():
            raise ConfigError(f"--labels: class name {name!r} is given twice; each class needs its own name")
        mapping[gray] = name
    return LabelMap.from_mapping(mapping)
