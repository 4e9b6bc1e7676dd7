"""An epoch's record beyond the training steps, and what the run writes of it: the validation keys (merged
across processes), the confusion matrices (``confusion/epoch_NNNN.json``), the curves and best confusion matrix
(PNG), TensorBoard and the log line."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.atomic import write_json_atomic
from medseg.data.labels import LabelMap
from medseg.errors import MedsegError
from medseg.metrics.confusion import EpochMetrics
from medseg.training.plots import plot_confusion, plot_curves
from medseg.training.run_setup import Run

#: During training, the curves and the best epoch's confusion matrix are drawn at most this often (seconds);
#: they are always drawn when training ends.
PLOT_INTERVAL_S = 30.0
#: Keys of an epoch's record that go to ``RUN_DIR/confusion/epoch_NNNN.json`` rather than ``log.json``.
CONFUSION_KEYS = ("train_confusion", "val_confusion")


def merge_validation(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One validation result from the shares of several processes (cases back in order, losses weighted).

    Example:
        >>> merge_validation([{"val_loss": 1.0, "weight": 2, "cases": ["a", "c"], "case_index": [0, 2]},
        ...                   {"val_loss": 4.0, "weight": 1, "cases": ["b"], "case_index": [1]}])
        {'val_loss': 2.0, 'weight': 3, 'cases': ['a', 'b', 'c'], 'case_index': [0, 1, 2]}
    """
    parts = [p for p in parts if p]
    if not parts:
        return {}
    weight = sum(p["weight"] for p in parts)
    order = sorted((i, n, j) for n, p in enumerate(parts) for j, i in enumerate(p["case_index"]))
    merged = {"val_loss": sum(p["val_loss"] * p["weight"] for p in parts) / max(1, weight), "weight": weight,
              "cases": [parts[n]["cases"][j] for _, n, j in order], "case_index": [i for i, _, _ in order]}
    if all("confusions" in p for p in parts):
        merged["confusions"] = [parts[n]["confusions"][j] for _, n, j in order]
    example = next((p["example"] for p in parts if p.get("example")), None)
    if example is not None:
        merged["example"] = example
    return merged


def val_record(val: dict[str, Any], labels: LabelMap) -> dict[str, Any]:
    """The validation keys of an epoch's record, computed as the training keys are (plus HD95 per class)."""
    if not val:
        return {}
    metrics = EpochMetrics(labels.names)
    for case, cm in zip(val["cases"], val["confusions"], strict=True):
        metrics.add_case(cm, extra=case)
    return {"val_loss": val["val_loss"], **metrics.record("val"), "val_confusion": metrics.confusion.tolist()}


def write_confusion(run_dir: Path, epoch: int, class_names: Sequence[str], confusion: dict[str, Any]) -> None:
    """``confusion/epoch_NNNN.json``: the epoch's matrices (the :data:`CONFUSION_KEYS` taken out of its record)."""
    write_json_atomic(run_dir / "confusion" / f"epoch_{epoch + 1:04d}.json",
                      {"epoch": epoch + 1, "class_names": list(class_names), "rows": "truth",
                       "columns": "prediction", **{k.removesuffix("_confusion"): v for k, v in confusion.items()}})


def draw_plots(run: Run, *, final: bool) -> None:
    """Draw ``curves.png`` and ``confusion_best.png`` at the end of training, and during it at most once every
    :data:`PLOT_INTERVAL_S` seconds (a 3x3 panel figure takes about a second: on short epochs, drawing it each
    epoch would cost more than the epoch)."""
    if not final and time.monotonic() - run.plotted_at < PLOT_INTERVAL_S:
        return
    if run.records:
        plot_curves(run.records, run.run_dir / "curves.png")
    if run.best_confusion is not None:
        matrix, title = run.best_confusion
        plot_confusion(matrix, run.labels.names, run.run_dir / "confusion_best.png", title=title)
        run.best_confusion = None
    run.plotted_at = time.monotonic()


def open_tensorboard(run_dir: Path) -> Any:
    """A TensorBoard writer into ``run_dir/tensorboard``."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MedsegError("train.tensorboard is on but the tensorboard package is not installed") from None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def tensorboard_epoch(writer: Any, run: Run, rec: dict[str, Any], epoch: int) -> None:
    """Scalars of the record (per-class ones as ``val_per_class/<class>/<metric>``), and every
    ``train.tensorboard_images_every`` epochs the first validation image, its truth and its prediction."""
    for key, value in rec.items():
        if isinstance(value, int | float) and key != "epoch":
            writer.add_scalar(key, value, epoch)
        elif isinstance(value, dict):
            for name, metrics in value.items():
                for metric, v in metrics.items():
                    writer.add_scalar(f"{key}/{name}/{metric}", v, epoch)
    every = run.cfg.train.tensorboard_images_every
    if every and run.example and (epoch + 1) % every == 0:
        k = max(1, run.labels.num_classes - 1)
        image = run.example["image"]
        writer.add_image("val/input", image, epoch, dataformats="HWC" if image.ndim == 3 else "HW")
        for name in ("truth", "pred"):
            scaled = (np.asarray(run.example[name], dtype=np.float32) / k * 255).round().astype(np.uint8)
            writer.add_image(f"val/{name}", scaled, epoch, dataformats="HW")


def epoch_line(rec: dict[str, Any], max_epochs: int) -> str:
    """The log line of an epoch, e.g. ``epoch 3/50  loss 0.4210  val_loss 0.3900  val_dice 0.7100  lr 1.00e-03
    12.5s``."""
    parts = [f"epoch {rec['epoch']}/{max_epochs}", f"loss {rec['train_loss']:.4f}"]
    for key in ("val_loss", "val_dice", "val_iou"):
        if key in rec:
            parts.append(f"{key} {rec[key]:.4f}")
    parts.append(f"lr {rec['lr']:.2e}")
    parts.append(f"{rec['epoch_time_s']:.1f}s")
    return "  ".join(parts)
