"""Training curves and sample previews as PNG files (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.atomic import atomic_path
from medseg.io.images import blend_overlay


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    return path


def plot_curves(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Loss, Dice, IoU and lr per epoch for train and val in a 2x2 figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    panels = [("loss", ["train_loss", "val_loss"]), ("Dice", ["train_dice", "val_dice"]),
              ("IoU", ["train_iou", "val_iou"]), ("learning rate", ["lr"])]
    for ax, (title, keys) in zip(axes.flat, panels, strict=True):
        for key in keys:
            pts = [(e, r[key]) for e, r in zip(epochs, records, strict=True) if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if title == "learning rate":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_preview(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], path: Path, title: str = "") -> Path:
    """A row of training samples (uint8 RGB or gray) with their class masks overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
