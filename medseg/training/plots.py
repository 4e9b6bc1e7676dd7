"""Training curves, several runs overlaid, confusion matrices and sample previews as PNG files (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.atomic import atomic_path
from medseg.io.images import blend_overlay


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def series(records: Sequence[dict[str, Any]], key: str, *path: str) -> list[tuple[int, float]]:
    """``(epoch, value)`` of ``record[key][path[0]][path[1]]...`` for the records that hold it.

    Example:
        >>> series([{"epoch": 1, "val_per_class": {"a": {"dice": 0.5}}}, {"epoch": 2}], "val_per_class", "a", "dice")
        [(1, 0.5)]
    """
    out = []
    for r in records:
        value: Any = r.get(key)
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.append((int(r["epoch"]), float(value)))
    return out


def _class_names(records: Sequence[dict[str, Any]], key: str) -> list[str]:
    names: dict[str, None] = {}
    for r in records:
        names.update(dict.fromkeys(r.get(key) or {}))
    return list(names)


def _draw(ax: Any, lines: Sequence[tuple[str, list[tuple[int, float]], str]], title: str,
          colors: Mapping[str, str] | None = None) -> None:
    """Plot ``(label, points, line style)``; ``colors`` maps a label's first word (a run) to its color."""
    for label, pts, style in lines:
        if pts:
            color = (colors or {}).get(label.split(" ")[0])
            ax.plot(*zip(*pts, strict=True), style, marker="o", markersize=3, label=label, color=color)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("epoch")
    if title == "learning rate" and any(pts for _, pts, _ in lines):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if any(pts for _, pts, _ in lines):
        ax.legend(fontsize=7, loc="upper right")  # not "best": it searches the placement, slow on every epoch


def _per_class_lines(records: Sequence[dict[str, Any]], metric: str, splits: Sequence[str] = ("val", "train")
                     ) -> list[tuple[str, list[tuple[int, float]], str]]:
    lines = []
    for split, style in zip(splits, ("-", "--"), strict=False):
        for name in _class_names(records, f"{split}_per_class"):
            lines.append((f"{split} {name}", series(records, f"{split}_per_class", name, metric), style))
    return lines


def plot_curves(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """The training log as a 3x3 figure, train and val per epoch: loss, Dice, IoU, learning rate, per-class Dice,
    per-class precision and recall (val), pixel accuracy, mIoU with and without background, per-class IoU."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, 3, figsize=(15, 11))
    both = ("train", "val")
    panels: list[tuple[str, list[tuple[str, list[tuple[int, float]], str]]]] = [
        ("loss", [(f"{s}_loss", series(records, f"{s}_loss"), "-") for s in both]),
        ("Dice (per-case mean)", [(f"{s}_dice", series(records, f"{s}_dice"), "-") for s in both]),
        ("IoU (per-case mean)", [(f"{s}_iou", series(records, f"{s}_iou"), "-") for s in both]),
        ("learning rate", [("lr", series(records, "lr"), "-")]),
        ("per-class Dice (val solid, train dashed)", _per_class_lines(records, "dice")),
        ("per-class precision (solid) and recall (dashed), val",
         [(f"precision {n}", series(records, "val_per_class", n, "precision"), "-")
          for n in _class_names(records, "val_per_class")]
         + [(f"recall {n}", series(records, "val_per_class", n, "recall"), "--")
            for n in _class_names(records, "val_per_class")]),
        ("pixel accuracy (pooled)", [(f"{s}_pixel_accuracy", series(records, f"{s}_pixel_accuracy"), "-")
                                     for s in both]),
        ("mIoU (pooled)", [(f"{s}_miou_{b}_background", series(records, f"{s}_miou_{b}_background"),
                            "-" if b == "with" else "--") for s in both for b in ("with", "without")]),
        ("per-class IoU (val solid, train dashed)", _per_class_lines(records, "iou")),
    ]
    for ax, (title, lines) in zip(axes.flat, panels, strict=True):
        _draw(ax, lines, title)
    # fixed margins: tight_layout would draw the 9 panels once more (it doubled the time of every epoch's plot)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.05, top=0.96, wspace=0.25, hspace=0.35)
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_runs(runs: Mapping[str, Sequence[dict[str, Any]]], path: Path) -> Path:
    """Several runs' logs overlaid, one color per run: loss, Dice, IoU, learning rate and per-class Dice (val solid,
    train dashed). Run names must not contain spaces (the first word of a line's label names its run)."""
    plt = _pyplot()
    classes = list(dict.fromkeys(n for recs in runs.values() for n in _class_names(recs, "val_per_class")))
    cols = 2 + max(1, -(-len(classes) // 2))  # loss, Dice, IoU, lr in two columns, then the classes two per column
    fig, axes = plt.subplots(2, cols, figsize=(5 * cols, 8), squeeze=False)
    panels: list[tuple[str, list[tuple[str, list[tuple[int, float]], str]]]] = [
        ("loss", []), ("Dice (per-case mean)", []), ("IoU (per-case mean)", []), ("learning rate", [])]
    keys = ("loss", "dice", "iou")
    for run, recs in runs.items():
        for (_, lines), key in zip(panels, keys, strict=False):
            lines.append((f"{run} val", series(recs, f"val_{key}"), "-"))
            lines.append((f"{run} train", series(recs, f"train_{key}"), "--"))
        panels[3][1].append((run, series(recs, "lr"), "-"))
    for name in classes:
        panels.append((f"Dice of {name}", [
            line for run, recs in runs.items()
            for line in ((f"{run} val", series(recs, "val_per_class", name, "dice"), "-"),
                         (f"{run} train", series(recs, "train_per_class", name, "dice"), "--"))]))
    for ax in axes.flat[len(panels):]:
        ax.set_axis_off()
    colors = {run: f"C{i % 10}" for i, run in enumerate(runs)}
    for ax, (title, lines) in zip(axes.flat, panels, strict=False):
        _draw(ax, lines, title, colors)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: Path, title: str = "") -> Path:
    """A confusion matrix (rows truth, columns prediction) shaded by row fraction, each cell with its count."""
    plt = _pyplot()
    cm = np.asarray(cm, dtype=np.int64)
    k = cm.shape[0]
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(3 + 0.9 * k, 2 + 0.9 * k))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for t in range(k):
        for p in range(k):
            ax.text(p, t, f"{cm[t, p]}\n{rows[t, p]:.1%}", ha="center", va="center", fontsize=7,
                    color="white" if rows[t, p] > 0.5 else "black")
    ax.set_xticks(range(k), list(class_names), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), list(class_names), fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_preview(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], path: Path, title: str = "") -> Path:
    """A row of training samples (uint8 RGB or gray) with their class masks overlaid."""
    plt = _pyplot()
    n = max(1, len(images))
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3.2), squeeze=False)
    for ax, img, msk in zip(axes[0], images, masks, strict=False):
        ax.imshow(blend_overlay(np.asarray(img, dtype=np.uint8), np.asarray(msk)))
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out
