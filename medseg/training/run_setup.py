"""Building a training run: seed, data, model, loss, optimizer, schedule and scaler, in a fixed order, and the
files a new run writes before its first epoch.

:class:`Run` holds what was built and the state that moves from epoch to epoch; :mod:`medseg.training.loop`
runs the epochs over it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import medseg
from medseg.atomic import write_json_atomic
from medseg.config.loading import config_to_dict, save_config
from medseg.config.schema import ExperimentConfig
from medseg.data.labels import LabelMap
from medseg.errors import ConfigError
from medseg.losses.factory import build_loss
from medseg.models.factory import build_model
from medseg.models.pretrained import load_pretrained
from medseg.seeds import seed_everything
from medseg.training.distributed import Dist, micro_batch_size, wrap_model
from medseg.training.ema import ModelEma
from medseg.training.optim import EpochScheduler, build_optimizer
from medseg.training.plots import plot_preview
from medseg.training.speed import TrainingSpeed, resolve_training_speed, to_memory_format
from medseg.training.task import Task, build_task

log = logging.getLogger("medseg.training.loop")  # the training loop's messages, under one logger name


@dataclass
class Run:
    """A training run in progress: what was built for it and the state that moves from epoch to epoch."""

    cfg: ExperimentConfig
    run_dir: Path
    dist: Dist
    device: torch.device
    task: Task
    model: torch.nn.Module
    net: torch.nn.Module  # what trains: the model, or DistributedDataParallel around it
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: EpochScheduler
    scaler: torch.amp.GradScaler
    use_amp: bool
    records: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    best: float | None = None
    best_epoch: int | None = None
    bad: int = 0  # validations in a row without a clear improvement
    example: dict[str, np.ndarray] | None = None  # the last validation's first image, truth and prediction
    speed: TrainingSpeed = field(default_factory=TrainingSpeed)
    step_model: torch.nn.Module | None = None  # what the training steps call (net, or torch.compile of it)
    plotted_at: float = field(default_factory=time.monotonic)  # when the PNGs were last drawn (or the run began)
    best_confusion: tuple[np.ndarray, str] | None = None  # the best epoch's matrix and title, not yet drawn
    ema: ModelEma | None = None  # train.ema: the averaged weights, validated and saved as the model

    @property
    def evaluated(self) -> torch.nn.Module:
        """The weights validation scores and checkpoints carry: the EMA when ``train.ema`` is set."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def labels(self) -> LabelMap:
        return self.task.labels

    def payload(self, epoch: int, rec: dict[str, Any], train_state: dict[str, Any] | None) -> dict[str, Any]:
        """A checkpoint: everything prediction needs, plus the resume state for ``last.pt``.

        ``state_dict`` holds the EMA weights when ``train.ema`` is set (prediction and export use them); the
        trained weights then go into ``train_state["model"]``."""
        return {
            "medseg_version": medseg.__version__,
            "config": config_to_dict(self.cfg),
            "labels": self.labels.to_dict(),
            "preprocessing": self.task.preprocessing,
            "in_channels": self.task.in_channels,
            "out_channels": self.labels.num_classes,
            "state_dict": self.evaluated.state_dict(),
            "epoch": epoch,
            "metrics": rec,
            "train_state": train_state,
        }


def build_run(cfg: ExperimentConfig, run_dir: Path, dist: Dist, device: torch.device, *, labels: LabelMap | None,
              resume: bool) -> Run:
    """Seed, then data, model, loss, optimizer, schedule and scaler, in this order (it fixes the random draws)."""
    micro = micro_batch_size(cfg.train.batch_size, dist.world_size, cfg.train.grad_accumulation)
    seed_everything(cfg.train.seed)
    task = build_task(cfg, run_dir, labels=labels, resume=resume, write=dist.is_main)
    k = task.labels.num_classes
    model = build_model(cfg.model, in_channels=task.in_channels, out_channels=k)
    if not resume:
        with torch.random.fork_rng(devices=[]):  # loading weights draws no numbers from the run's stream
            load_pretrained(model, cfg.model)
    model = model.to(device)
    if dist.enabled and (getattr(cfg.model, "freeze_encoder_epochs", 0) or 0) > 0:
        raise ConfigError("model.freeze_encoder_epochs: freezing the encoder is supported in one process only "
                          f"(this run has {dist.world_size}); set it to 0 or train with one process")
    sample = cfg.data.image_size if cfg.data.kind == "images2d" else cfg.data.patch_size
    layout = resolve_training_speed(cfg.train, device, cfg.model.spatial_dims, sample).memory_format
    to_memory_format(model, layout)  # in place, before DDP registers the parameters
    model, net = wrap_model(model, dist, device, sync_batchnorm=cfg.train.sync_batchnorm)
    ema = None if cfg.train.ema is None else ModelEma(model, cfg.train.ema)  # the plain module, in its layout
    _log_batch(cfg, dist, micro)
    loss_fn = build_loss(cfg.loss, k).to(device)
    optimizer = build_optimizer(cfg.train, model.parameters())
    scheduler = EpochScheduler(cfg.train, optimizer)
    if cfg.train.deterministic:
        torch.backends.cudnn.benchmark = False
    speed = resolve_training_speed(cfg.train, device, cfg.model.spatial_dims, sample)
    step_model = speed.model(net)  # the layout was set before wrapping; compiles when train.compile
    log.info("training steps: %s", speed.describe())
    if ema is not None:
        log.info("train.ema %g: exponential moving average of the weights after every optimizer step (decay "
                 "min(%g, (1 + t) / (10 + t)) at step t); validation and checkpoints use the averaged weights",
                 ema.decay, ema.decay)
    scaler = torch.amp.GradScaler("cuda", enabled=speed.scale_loss)
    return Run(cfg, run_dir, dist, device, task, model, net, loss_fn, optimizer, scheduler, scaler, speed.scale_loss,
               speed=speed, step_model=step_model, ema=ema)


def _log_batch(cfg: ExperimentConfig, dist: Dist, micro: int) -> None:
    t = cfg.train
    log.info(
        "effective batch: %d samples per optimizer step = %d process(es) x %d accumulation step(s) x %d samples; "
        "train.lr %g is for this batch, which does not change with the number of processes (raising "
        "train.batch_size k times: scale train.lr by k for sgd, by sqrt(k) for adam/adamw, and check)",
        t.batch_size, dist.world_size, t.grad_accumulation, micro, t.lr)


def start_fresh(run: Run) -> None:
    """The files a new run writes before its first epoch: config, labels and the preview of training samples."""
    save_config(run.cfg, run.run_dir / "config.yaml")
    write_json_atomic(run.run_dir / "labels.json", run.labels.to_dict())
    if run.cfg.train.preview_samples:
        imgs, masks = run.task.preview(run.cfg.train.preview_samples)
        plot_preview(imgs, masks, run.run_dir / "preview.png", title="training samples (augmented) with masks")
