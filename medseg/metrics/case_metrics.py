"""Per-class segmentation metrics on integer label maps, with an explicit empty-mask policy.

Metrics per class c (one-vs-rest masks ``pred == c``, ``truth == c``; TP/FP/FN pixel counts):

- ``dice`` = 2 TP / (2 TP + FP + FN); ``iou`` = TP / (TP + FP + FN)
- ``precision`` = TP / (TP + FP); ``recall`` = TP / (TP + FN)
- ``f1`` = 2 P R / (P + R), which equals ``dice`` for binary masks; it is reported under both
  names for readers who expect either.
- ``hd95`` in mm (``spacing``): the larger of the two directed 95th-percentile surface
  distances, surfaces as in MONAI (mask XOR its erosion, 1-connectivity), matching
  ``monai.metrics.compute_hausdorff_distance(percentile=95)``.
- ``pixel_accuracy`` (case level, not per class): fraction of pixels with ``pred == truth``.

Empty policy (no metric is ever NaN, so a missed structure can't leave the mean -- MONAI #9095):

======================  ====  ===  =========  ======  ==================
case                    dice  iou  precision  recall  hd95
======================  ====  ===  =========  ======  ==================
both empty              1     1    1          1       0
truth empty, pred not   0     0    0          1       image diagonal mm
truth present, no pred  0     0    0          0       image diagonal mm
======================  ====  ===  =========  ======  ==================

Recall is 1 when the truth is empty because nothing was missed (false positives are what
precision measures). The case-level ``"overall"`` means (used for the training log and best-checkpoint
selection) leave out classes absent from both maps: a validation case that shows 3 of 8 vertebrae is scored on
those 3 and on any class falsely predicted, not inflated by 5 classes that were correctly "not found".

The worst-case HD95 is the diagonal of the image extent,
``sqrt(sum((shape_i * spacing_i) ** 2))``, larger than any distance between two voxels, so a
missed structure always scores worse than any prediction that finds it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

__all__ = ["CLASS_METRICS", "OVERALL", "compute_case_metrics", "hausdorff95", "summarize"]

#: Metric names reported per class.
CLASS_METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall", "f1", "hd95")
#: Key of the case-level entry: ``pixel_accuracy`` and the mean of each metric over foreground classes.
OVERALL = "overall"


def compute_case_metrics(
    pred: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    num_classes: int,
    *,
    spacing: Sequence[float] | None = None,
    include_background: bool = False,
    class_names: Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of one case for each class, plus a case-level ``"overall"`` entry.

    Args:
        pred: Predicted class indices, shape (H, W) or (H, W, D), no channel axis.
        truth: Ground-truth class indices, same shape as ``pred``.
        num_classes: Number of classes N including background (index 0), >= 2.
        spacing: Voxel size in mm per axis (len = ``pred.ndim``); default 1 mm.
        include_background: Also report class 0. The ``"overall"`` means always exclude it.
        class_names: N names in index order; default ``"class_0"``, ``"class_1"``, ...

    Returns:
        ``{class_name: {metric: value}}`` for the reported classes (metrics in
        :data:`CLASS_METRICS`), and ``{"overall": {"pixel_accuracy": ..., metric: mean over
        foreground classes present in the truth or the prediction}}``. All values are finite
        floats; see the module docstring for empty masks.

    Raises:
        ValueError: Shape mismatch, ``spacing`` of the wrong length or not > 0, bad
            ``num_classes``/``class_names``, or label values outside 0..N-1.

    Example:
        >>> truth = np.array([[0, 1, 1, 0]])
        >>> m = compute_case_metrics(np.array([[0, 1, 0, 0]]), truth, 2, class_names=["bg", "fg"])
        >>> round(m["fg"]["dice"], 4), m["fg"]["recall"], m["overall"]["pixel_accuracy"]
        (0.6667, 0.5, 0.75)
    """
    p, t = _as_labels(pred, "pred"), _as_labels(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} != truth shape {t.shape}")
    if p.ndim not in (2, 3):
        raise ValueError(f"label maps must be 2D (H, W) or 3D (H, W, D) without channel axis, got shape {p.shape}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2 (background + foreground), got {num_classes!r}")
    names = _class_names(class_names, num_classes)
    sp = _spacing(spacing, p.ndim)
    for label, arr in (("pred", p), ("truth", t)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            bad = int(arr.max()) if arr.max() >= num_classes else int(arr.min())
            raise ValueError(f"{label} holds label {bad}, outside 0..{num_classes - 1} (num_classes={num_classes})")
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(p.shape, sp, strict=True)))
    result: dict[str, dict[str, float]] = {}
    foreground: list[dict[str, float]] = []
    for c in range(num_classes):
        if c == 0 and not include_background:
            continue
        pm, tm = p == c, t == c
        metrics = _class_metrics(pm, tm, sp, diagonal)
        result[names[c]] = metrics
        if c > 0 and (pm.any() or tm.any()):
            foreground.append(metrics)
    overall = {"pixel_accuracy": float(np.mean(p == t)) if p.size else 1.0}
    for key in CLASS_METRICS:
        # classes absent from both maps say nothing about this case: they are left out of the case mean
        # (a case with no foreground at all in either map scores the both-empty values)
        values = [m[key] for m in foreground] or [1.0 if key != "hd95" else 0.0]
        overall[key] = float(np.mean(values))
    result[OVERALL] = overall
    return result


def hausdorff95(pred_mask: np.ndarray, truth_mask: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance between two non-empty boolean masks, in mm.

    Args:
        pred_mask: Boolean mask, any dimensionality.
        truth_mask: Boolean mask, same shape.
        spacing: Voxel size in mm per axis; default 1.

    Returns:
        ``max(p95(d(pred surface -> truth surface)), p95(d(truth surface -> pred surface)))``.

    Raises:
        ValueError: If a mask is empty (the policy for that lives in :func:`compute_case_metrics`).
    """
    p, t = np.asarray(pred_mask, dtype=bool), np.asarray(truth_mask, dtype=bool)
    if not p.any() or not t.any():
        raise ValueError("hausdorff95: both masks must be non-empty; see compute_case_metrics for empty masks")
    sp = _spacing(spacing, p.ndim)
    # Crop to the bounding box of both masks: exact, as every surface voxel lies inside it.
    box = ndimage.find_objects((p | t).astype(np.uint8))[0]
    p, t = p[box], t[box]
    p_edge = p ^ ndimage.binary_erosion(p)
    t_edge = t ^ ndimage.binary_erosion(t)
    d_pt = ndimage.distance_transform_edt(~t_edge, sampling=sp)[p_edge]
    d_tp = ndimage.distance_transform_edt(~p_edge, sampling=sp)[t_edge]
    return float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))


def summarize(
    cases: Sequence[Mapping[str, Mapping[str, float]]],
) -> dict[str, dict[str, dict[str, float]]]:
    """Mean, standard deviation and count of each metric over cases.

    Args:
        cases: Results of :func:`compute_case_metrics`, one per case.

    Returns:
        ``{class_name or "overall": {metric: {"mean": m, "std": s, "n": n}}}``. ``std`` is the
        sample standard deviation (ddof=1), 0.0 for n = 1. ``"overall"`` summarizes the per-case
        foreground means, so ``summary["overall"]["dice"]["mean"]`` is the mean Dice over
        foreground classes and cases. NaN values are not dropped: they propagate.

    Raises:
        ValueError: If ``cases`` is empty.
    """
    if not cases:
        raise ValueError("summarize: no cases")
    collected: dict[str, dict[str, list[float]]] = {}
    for case in cases:
        for name, metrics in case.items():
            for metric, value in metrics.items():
                collected.setdefault(name, {}).setdefault(metric, []).append(float(value))
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name, per_metric in collected.items():
        summary[name] = {}
        for metric, values in per_metric.items():
            arr = np.asarray(values, dtype=np.float64)
            std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
            summary[name][metric] = {"mean": float(arr.mean()), "std": std, "n": float(arr.size)}
    return summary


def _class_metrics(p: np.ndarray, t: np.ndarray, spacing: tuple[float, ...], diagonal: float) -> dict[str, float]:
    tp = int(np.count_nonzero(p & t))
    n_pred, n_truth = int(np.count_nonzero(p)), int(np.count_nonzero(t))
    fp, fn = n_pred - tp, n_truth - tp
    if n_truth == 0 and n_pred == 0:
        return {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "hd95": 0.0}
    dice = 2 * tp / (2 * tp + fp + fn)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_truth if n_truth else 1.0
    hd95 = hausdorff95(p, t, spacing) if n_pred and n_truth else diagonal
    return {
        "dice": dice,
        "iou": tp / (tp + fp + fn),
        "precision": precision,
        "recall": recall,
        "f1": dice,  # 2PR / (P + R) == 2TP / (2TP + FP + FN), also in the empty cases above
        "hd95": hd95,
    }


def _as_labels(array: Any, name: str) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray or torch.Tensor, got {type(array).__name__}")
    if array.dtype.kind not in "iub":
        if array.dtype.kind != "f" or not np.array_equal(array, np.round(array)):
            raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype} with fractions")
        array = array.astype(np.int64)
    return array


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be {ndim} finite values > 0 (mm per axis), got {tuple(spacing)}")
    return sp


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [f"class_{i}" for i in range(num_classes)]
    names = list(class_names)
    if len(names) != num_classes or len(set(names)) != num_classes or OVERALL in names:
        raise ValueError(f"class_names must be {num_classes} unique names other than {OVERALL!r}, got {names}")
    return names
