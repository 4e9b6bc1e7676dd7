"""One epoch of training: the loader's batches, batch augmentation, optimizer steps and the running metrics.

:func:`medseg.training.loop.train` runs the epochs, validation and checkpoints around it.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from medseg.config.schema import ExperimentConfig
from medseg.errors import MedsegError
from medseg.progress import progress_bar
from medseg.training.speed import TrainingSpeed
from medseg.training.task import Task

__all__ = ["run_epoch"]


def run_epoch(
    model: torch.nn.Module, task: Task, loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler, device: torch.device, cfg: ExperimentConfig, epoch: int, progress: bool,
    *, speed: TrainingSpeed | None = None,
) -> dict[str, Any]:
    """Train ``model`` for one epoch of ``task``'s loader; returns the epoch's log record (loss, Dice, IoU, times).

    ``speed`` sets autocast dtype and batch layout (default: fp16 autocast when the scaler is on, else fp32).

    Raises:
        MedsegError: The loss became NaN or infinite (naming the epoch and step).
    """
    if speed is None:
        speed = TrainingSpeed(amp_dtype=torch.float16 if scaler.is_enabled() else None, scale_loss=scaler.is_enabled())
    model.train()
    loader = task.train_loader(epoch)
    steps = len(loader) if cfg.train.steps_per_epoch is None else min(len(loader), cfg.train.steps_per_epoch)
    k = task.labels.num_classes
    tp, fp, fn = (torch.zeros(k, dtype=torch.float64) for _ in range(3))
    total_loss, n_items, t_data, t_compute = 0.0, 0, 0.0, 0.0
    t_start = time.perf_counter()
    t_mark = t_start
    with progress_bar(f"epoch {epoch + 1}/{cfg.train.max_epochs}", steps, enabled=progress) as advance:
        for step, batch in enumerate(loader):
            if step >= steps:
                break
            image = batch["image"].to(device, non_blocking=True)
            label = batch["label"].to(device, non_blocking=True)
            image, label = task.augment_batch(image, label, epoch, step)
            image = speed.batch(image)
            t_ready = time.perf_counter()
            t_data += t_ready - t_mark
            loss_value, logits = _train_step(model, loss_fn, optimizer, scaler, image, label, cfg.train.grad_clip,
                                             speed.amp_dtype)
            if not math.isfinite(loss_value):
                raise MedsegError(
                    f"training diverged at epoch {epoch + 1}, step {step + 1}: loss is {loss_value}; "
                    "lower train.lr or enable train.grad_clip"
                )
            with torch.no_grad():
                pred = logits.argmax(1).flatten().cpu()
                truth = label.flatten().cpu()
                _confusion(pred, truth, k, tp, fp, fn)
            total_loss += loss_value * image.shape[0]
            n_items += image.shape[0]
            t_mark = time.perf_counter()
            t_compute += t_mark - t_ready
            advance(loss=loss_value)
    fg = slice(1, None)
    dice = (2 * tp / (2 * tp + fp + fn).clamp(min=1))[fg]
    iou = (tp / (tp + fp + fn).clamp(min=1))[fg]
    return {
        "epoch": epoch + 1,
        "train_loss": total_loss / max(1, n_items),
        "train_dice": float(dice.mean()),
        "train_iou": float(iou.mean()),
        "steps": min(steps, len(loader)),
        "epoch_time_s": time.perf_counter() - t_start,
        "data_time_s": t_data,
        "compute_time_s": t_compute,
    }


def _train_step(
    model: torch.nn.Module, loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
    image: torch.Tensor, label: torch.Tensor, grad_clip: float | None, amp_dtype: torch.dtype | None,
) -> tuple[float, torch.Tensor]:
    """One optimizer step (autocast in ``amp_dtype``; loss scaling when the scaler is on); returns (loss, logits).

    A non-finite loss is returned before any gradient is applied, so the caller can stop with a clear message.
    """
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(image.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        logits = model(image)
        loss = loss_fn(logits.float(), label)
    loss_value = loss.detach().item()
    if not math.isfinite(loss_value):
        return loss_value, logits
    scaler.scale(loss).backward()
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss_value, logits


def _confusion(pred: torch.Tensor, truth: torch.Tensor, k: int, tp: torch.Tensor, fp: torch.Tensor,
               fn: torch.Tensor) -> None:
    cm = torch.bincount(truth * k + pred, minlength=k * k).reshape(k, k).double()
    diag = cm.diagonal()
    tp += diag
    fp += cm.sum(0) - diag
    fn += cm.sum(1) - diag
