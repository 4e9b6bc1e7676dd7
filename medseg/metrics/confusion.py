"""Segmentation metrics from confusion matrices, and the per-epoch accumulator training uses for train and val.

A confusion matrix ``cm`` of K classes is a (K, K) integer array: ``cm[t, p]`` counts pixels of true class ``t``
predicted as class ``p`` (rows truth, columns prediction). For class c: ``TP = cm[c, c]``,
``FP = cm[:, c].sum() - TP``, ``FN = cm[c, :].sum() - TP``, and the per-class metrics follow the empty policy of
:mod:`medseg.metrics.case_metrics` (never NaN): a class absent from truth and prediction scores 1 everywhere; absent
from the truth but predicted scores Dice/IoU/precision 0, recall 1.

Two ways of averaging, both computed the same way for training and validation (a "case" is one validation image or
volume, or one training sample: an augmented image or patch as the network saw it):

- **per-case means** (``dice``, ``iou``, ``per_class``): each case's metrics from its own confusion matrix, then the
  mean over cases. A case's ``dice``/``iou`` is the mean over the foreground classes present in its truth or its
  prediction (as in :func:`~medseg.metrics.case_metrics.compute_case_metrics`).
- **pooled** (``pixel_accuracy``, ``miou_with_background``, ``miou_without_background``, ``pooled_per_class``, the
  confusion matrix): one confusion matrix summed over all pixels of all cases. The mIoUs average the pooled IoU over
  the classes present in the pooled truth or prediction, with background (class 0) or without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from medseg.metrics.case_metrics import OVERALL, summarize

__all__ = ["CONFUSION_METRICS", "EpochMetrics", "case_scores", "class_scores", "confusion_matrices",
           "confusion_matrix", "pooled_scores"]

#: Per-class metrics that a confusion matrix gives (HD95 needs the masks themselves).
CONFUSION_METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall", "f1")


def confusion_matrices(pred: torch.Tensor, truth: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One confusion matrix per sample of a batch.

    Args:
        pred: Predicted class indices, (B, *spatial) integers.
        truth: True class indices, the same shape, or (B, 1, *spatial).
        num_classes: K, the number of classes including background.

    Returns:
        (B, K, K) int64 tensor on the CPU; ``[b, t, p]`` counts pixels of sample b with truth t predicted p.

    Raises:
        ValueError: Shapes that differ, or class indices outside 0..K-1.

    Example:
        >>> pred = torch.tensor([[[0, 1], [1, 1]]])
        >>> truth = torch.tensor([[[0, 1], [0, 1]]])
        >>> confusion_matrices(pred, truth, 2)[0].tolist()
        [[1, 1], [0, 2]]
    """
    p, t = torch.as_tensor(pred), torch.as_tensor(truth)
    if t.ndim == p.ndim + 1 and t.shape[1] == 1:
        t = t[:, 0]
    if p.shape != t.shape:
        raise ValueError(f"pred shape {tuple(p.shape)} != truth shape {tuple(t.shape)}")
    k = int(num_classes)
    p, t = p.reshape(p.shape[0], -1).long().cpu(), t.reshape(t.shape[0], -1).long().cpu()
    for name, x in (("pred", p), ("truth", t)):
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= k):
            raise ValueError(f"{name} holds class indices outside 0..{k - 1}")
    offsets = torch.arange(p.shape[0]).unsqueeze(1) * (k * k)
    flat = (offsets + t * k + p).flatten()
    return torch.bincount(flat, minlength=p.shape[0] * k * k).reshape(p.shape[0], k, k)


def confusion_matrix(pred: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor, num_classes: int
                     ) -> np.ndarray:
    """The (K, K) confusion matrix of one case (rows truth, columns prediction), int64.

    Example:
        >>> confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3).tolist()
        [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    """
    p = torch.as_tensor(np.asarray(pred) if not isinstance(pred, torch.Tensor) else pred)
    t = torch.as_tensor(np.asarray(truth) if not isinstance(truth, torch.Tensor) else truth)
    return confusion_matrices(p.reshape(1, -1), t.reshape(1, -1), num_classes)[0].numpy()


def class_scores(cm: np.ndarray) -> list[dict[str, float]]:
    """Dice, IoU, precision, recall and F1 of each class of one confusion matrix (the empty policy above).

    Example:
        >>> cm = np.array([[5, 1], [2, 2]])  # 2 foreground pixels found, 1 false positive, 2 missed
        >>> {k: round(v, 4) for k, v in class_scores(cm)[1].items()}
        {'dice': 0.5714, 'iou': 0.4, 'precision': 0.6667, 'recall': 0.5, 'f1': 0.5714}
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm)
    n_pred, n_truth = cm.sum(0), cm.sum(1)
    out = []
    for c in range(cm.shape[0]):
        t, npred, ntruth = tp[c], n_pred[c], n_truth[c]
        if npred == 0 and ntruth == 0:
            out.append(dict.fromkeys(CONFUSION_METRICS, 1.0))
            continue
        fp, fn = npred - t, ntruth - t
        dice = float(2 * t / (2 * t + fp + fn))
        out.append({"dice": dice, "iou": float(t / (t + fp + fn)),
                    "precision": float(t / npred) if npred else 0.0,
                    "recall": float(t / ntruth) if ntruth else 1.0, "f1": dice})
    return out


def case_scores(cm: np.ndarray, class_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """One case's metrics from its confusion matrix, in the layout of
    :func:`~medseg.metrics.case_metrics.compute_case_metrics` (foreground classes, ``"overall"``), without HD95.

    Example:
        >>> m = case_scores(np.array([[2, 0], [1, 1]]), ["bg", "fg"])
        >>> round(m["fg"]["dice"], 4), m["fg"]["recall"], m["overall"]["pixel_accuracy"]
        (0.6667, 0.5, 0.75)
    """
    cm = np.asarray(cm)
    scores = class_scores(cm)
    present = (cm.sum(0) + cm.sum(1)) > 0
    result = {class_names[c]: scores[c] for c in range(1, len(scores))}
    total = cm.sum()
    overall = {"pixel_accuracy": float(np.trace(cm) / total) if total else 1.0}
    fg = [scores[c] for c in range(1, len(scores)) if present[c]]
    for key in CONFUSION_METRICS:
        overall[key] = float(np.mean([s[key] for s in fg])) if fg else 1.0
    result[OVERALL] = overall
    return result


def pooled_scores(cm: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Metrics of a confusion matrix summed over many cases.

    Returns:
        ``{"pixel_accuracy", "miou_with_background", "miou_without_background", "per_class": {name: {metric}}}``;
        the mIoUs average over the classes present in the truth or the prediction (1.0 when none is).

    Example:
        >>> s = pooled_scores(np.array([[6, 2], [0, 2]]), ["bg", "fg"])
        >>> s["pixel_accuracy"], s["miou_with_background"], s["miou_without_background"]
        (0.8, 0.625, 0.5)
    """
    cm = np.asarray(cm)
    scores = class_scores(cm)
    present = (cm.sum(0) + cm.sum(1)) > 0
    total = cm.sum()

    def miou(classes: range) -> float:
        values = [scores[c]["iou"] for c in classes if present[c]]
        return float(np.mean(values)) if values else 1.0

    return {
        "pixel_accuracy": float(np.trace(cm) / total) if total else 1.0,
        "miou_with_background": miou(range(len(scores))),
        "miou_without_background": miou(range(1, len(scores))),
        "per_class": {name: scores[c] for c, name in enumerate(class_names)},
    }


class EpochMetrics:
    """Per-case and pooled metrics of one split (train or val) over one epoch.

    Training adds batches (:meth:`add_batch`), validation adds whole cases (:meth:`add_case`, which may bring extra
    per-case metrics such as HD95); :meth:`record` gives the same keys for both.

    Args:
        class_names: The K class names in index order (background first).

    Example:
        >>> m = EpochMetrics(["bg", "fg"])
        >>> m.add_batch(torch.tensor([[0, 1, 1, 0]]), torch.tensor([[0, 1, 0, 0]]))
        >>> r = m.record("train")
        >>> round(r["train_dice"], 4), r["train_pixel_accuracy"], r["train_miou_without_background"]
        (0.6667, 0.75, 0.5)
    """

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = list(class_names)
        k = len(self.class_names)
        self.confusion = np.zeros((k, k), dtype=np.int64)
        self.cases: list[Mapping[str, Mapping[str, float]]] = []

    def add_batch(self, pred: torch.Tensor, truth: torch.Tensor) -> None:
        """Add every sample of a batch as a case: ``pred`` and ``truth`` (B, *spatial) class indices."""
        cms = confusion_matrices(pred, truth, len(self.class_names)).numpy()
        self.confusion += cms.sum(0)
        self.cases += [case_scores(cm, self.class_names) for cm in cms]

    def add_case(self, cm: np.ndarray, extra: Mapping[str, Mapping[str, float]] | None = None) -> None:
        """Add one case by its confusion matrix; ``extra`` (``{class or "overall": {metric: value}}``) adds
        metrics a confusion matrix cannot give (HD95)."""
        scores = case_scores(cm, self.class_names)
        for name, values in (extra or {}).items():
            scores[name] = {**scores.get(name, {}), **values}
        self.confusion += np.asarray(cm, dtype=np.int64)
        self.cases.append(scores)

    @property
    def running_dice(self) -> float:
        """Mean of the per-case Dice so far (the progress bar shows it); NaN before any case."""
        if not self.cases:
            return float("nan")
        return float(np.mean([c[OVERALL]["dice"] for c in self.cases]))

    def record(self, split: str) -> dict[str, Any]:
        """The log entries of this split: ``{split}_dice``, ``_iou`` (per-case means of foreground means),
        ``_per_class`` (per-case means), ``_pixel_accuracy``, ``_miou_with_background``,
        ``_miou_without_background``, ``_pooled_per_class`` (pooled); empty without cases."""
        if not self.cases:
            return {}
        summary = summarize(self.cases)
        pooled = pooled_scores(self.confusion, self.class_names)
        return {
            f"{split}_dice": summary[OVERALL]["dice"]["mean"],
            f"{split}_iou": summary[OVERALL]["iou"]["mean"],
            f"{split}_per_class": {name: {m: v["mean"] for m, v in summary[name].items()}
                                   for name in self.class_names[1:] if name in summary},
            f"{split}_pixel_accuracy": pooled["pixel_accuracy"],
            f"{split}_miou_with_background": pooled["miou_with_background"],
            f"{split}_miou_without_background": pooled["miou_without_background"],
            f"{split}_pooled_per_class": pooled["per_class"],
        }

