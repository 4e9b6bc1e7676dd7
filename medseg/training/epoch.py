"""One epoch of training: the loader's batches, batch augmentation, optimizer steps and the running metrics.

:func:`medseg.training.loop.train` runs the epochs, validation and checkpoints around it.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import torch

from medseg.config.schema import ExperimentConfig
from medseg.errors import ConfigError, MedsegError
from medseg.metrics.confusion import EpochMetrics
from medseg.models.outputs import main_output, weighted_loss
from medseg.progress import progress_bar
from medseg.training.distributed import Dist, Share, is_peer_failure
from medseg.training.ema import ModelEma
from medseg.training.speed import TrainingSpeed
from medseg.training.task import Task

__all__ = ["run_epoch"]


def run_epoch(
    model: torch.nn.Module, task: Task, loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler, device: torch.device, cfg: ExperimentConfig, epoch: int, progress: bool,
    dist: Dist | None = None, *, speed: TrainingSpeed | None = None, ema: ModelEma | None = None,
) -> dict[str, Any]:
    """Train ``model`` for one epoch of ``task``'s loader; returns the epoch's log record (loss, times and the
    metrics of :meth:`~medseg.metrics.confusion.EpochMetrics.record`, with ``train_confusion``: the pooled
    confusion matrix as nested lists).

    With several processes ``model`` is the DistributedDataParallel wrapper and ``dist`` says which share of each
    step this process trains on; the loss is summed and the per-sample metrics gathered over the processes, so
    every process returns the same record. Each optimizer step accumulates ``train.grad_accumulation``
    micro-batches (each loss divided by their number, so the gradient is the mean over the step's samples).

    ``speed`` sets autocast dtype and batch layout (default: fp16 autocast when the scaler is on, else fp32).
    ``ema`` (``train.ema``), when given, is updated after every optimizer step (not after one that fp16 loss
    scaling skipped).

    Raises:
        MedsegError: The loss became NaN or infinite (naming the epoch and step).
        PeerLostError: Another process died or did not answer within ``train.distributed_timeout_s``.
    """
    dist = dist or Dist()
    accum = cfg.train.grad_accumulation
    if speed is None:
        speed = TrainingSpeed(amp_dtype=torch.float16 if scaler.is_enabled() else None, scale_loss=scaler.is_enabled())
    model.train()
    loader = task.train_loader(epoch, Share(dist.rank, dist.world_size, accum))
    steps = len(loader) // accum
    if cfg.train.steps_per_epoch is not None:
        steps = min(steps, cfg.train.steps_per_epoch)
    metrics = EpochMetrics(task.labels.names)
    totals = torch.zeros(2, dtype=torch.float64)  # loss x samples, samples: summed over processes
    t_data, t_compute = 0.0, 0.0
    t_start = time.perf_counter()
    t_mark = t_start
    batches = iter(loader)
    with progress_bar(f"epoch {epoch + 1}/{cfg.train.max_epochs}", steps, enabled=progress) as advance:
        for step in range(steps):
            micro = []
            for _ in range(accum):
                batch = next(batches)
                image = batch["image"].to(device, non_blocking=True)
                label = batch["label"].to(device, non_blocking=True)
                indices = batch["index"] if "index" in batch else torch.arange(image.shape[0])
                image, label = task.augment_batch(image, label, epoch, indices)
                micro.append((speed.batch(image), label))
            t_ready = time.perf_counter()
            t_data += t_ready - t_mark
            scale = scaler.get_scale() if ema is not None and scaler.is_enabled() else None
            try:
                step_totals = _train_step(model, loss_fn, optimizer, scaler, micro, cfg.train.grad_clip, metrics,
                                          dist, speed.amp_dtype)
            except RuntimeError as err:  # DistributedDataParallel's gradient exchange failed
                if dist.enabled and is_peer_failure(err):
                    raise dist.lost(f"training step {step + 1} of epoch {epoch + 1}", err) from None
                raise
            totals += step_totals
            loss_value = float(step_totals[0] / step_totals[1])
            if not math.isfinite(loss_value):
                raise MedsegError(
                    f"training diverged at epoch {epoch + 1}, step {step + 1}: loss is {loss_value}; "
                    "lower train.lr or enable train.grad_clip"
                )
            if ema is not None and (scale is None or scaler.get_scale() >= scale):
                ema.update()  # not after a step the loss scaler skipped (inf gradients: it lowers the scale)
            t_mark = time.perf_counter()
            t_compute += t_mark - t_ready
            advance(loss=loss_value, dice=metrics.running_dice)
    if dist.enabled:  # every process scores the samples of all processes, in rank order
        parts = dist.gather_objects((metrics.confusion, metrics.cases), what="gathering the training metrics")
        metrics = EpochMetrics(task.labels.names)
        for confusion, cases in parts:
            metrics.confusion += confusion
            metrics.cases += cases
    return {
        "epoch": epoch + 1,
        "train_loss": float(totals[0] / max(1.0, float(totals[1]))),
        **metrics.record("train"),
        "train_confusion": metrics.confusion.tolist(),
        "steps": steps,
        "epoch_time_s": time.perf_counter() - t_start,
        "data_time_s": t_data,
        "compute_time_s": t_compute,
    }


def _forward(model: torch.nn.Module, image: torch.Tensor) -> Any:
    """``model(image)``, with batch norm's refusal of a one-value batch (a batch of one sample whose deepest
    feature map is one voxel) turned into one line saying what to change.

    Raises:
        ConfigError: The network's batch norm saw one value per channel.
    """
    try:
        return model(image)
    except ValueError as exc:
        if "Expected more than 1 value per channel" not in str(exc):
            raise
        size = list(image.shape[2:])
        raise ConfigError(
            f"model: batch norm saw one value per channel (a batch of {image.shape[0]} sample(s) of size {size} is "
            "one voxel at the network's deepest level); use a larger data.patch_size / data.image_size, or at least "
            "2 samples per forward pass (train.batch_size / train.grad_accumulation / processes)"
        ) from None


def _train_step(
    model: torch.nn.Module, loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
    micro: list[tuple[torch.Tensor, torch.Tensor]], grad_clip: float | None, metrics: EpochMetrics, dist: Dist,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """One optimizer step over the micro-batches (autocast in ``amp_dtype``; loss scaling when the scaler is on).

    A network with several outputs (deep supervision, an auxiliary head) has the loss of each, weighted
    (:func:`~medseg.models.outputs.weighted_loss`); the main output's classes go into ``metrics``.
    Returns the step's ``[loss x samples, samples]`` summed over the processes. A non-finite loss (on any
    process) returns before the gradient is applied, so the caller can stop with a clear message.
    """
    optimizer.zero_grad(set_to_none=True)
    totals = torch.zeros(2, dtype=torch.float64)
    for i, (image, label) in enumerate(micro):
        last = i == len(micro) - 1
        sync = model.no_sync() if dist.enabled and not last else contextlib.nullcontext()  # type: ignore[operator]
        with sync:
            with torch.autocast(image.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                output = _forward(model, image)
                loss = weighted_loss(loss_fn, output, label)
            scaler.scale(loss / len(micro)).backward()
        n = image.shape[0]
        totals[0] += loss.detach().double().cpu() * n
        totals[1] += n
        with torch.no_grad():
            metrics.add_batch(main_output(output).argmax(1).cpu(), label.cpu())
    dist.all_reduce_sum(totals, what="summing the training loss")
    if not math.isfinite(float(totals[0])):
        return totals
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return totals
