"""The training loop: epochs, validation, best/last checkpoints, per-epoch log, resume.

Order and augmentation of every epoch depend only on ``(train.seed, epoch)``, and checkpoints are
written at epoch ends, so a run resumed from ``checkpoints/last.pt`` repeats exactly what an
uninterrupted run would have done from there (on CPU).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

import medseg
from medseg.atomic import write_json_atomic
from medseg.checkpoint import load_checkpoint, save_checkpoint
from medseg.config.loading import config_to_dict, save_config
from medseg.config.schema import ExperimentConfig
from medseg.data.label_sources import labels_from_checkpoint
from medseg.data.labels import LabelMap
from medseg.device import resolve_device
from medseg.errors import MedsegError
from medseg.losses.factory import build_loss
from medseg.metrics.case_metrics import summarize
from medseg.models.factory import build_model
from medseg.seeds import epoch_seed, seed_everything
from medseg.training.epoch import run_epoch
from medseg.training.optim import EpochScheduler, build_optimizer
from medseg.training.plots import plot_curves, plot_preview
from medseg.training.run_folder import RunLock, prepare_run_dir, read_log
from medseg.training.speed import TrainingSpeed, resolve_training_speed
from medseg.training.task import Task, build_task

log = logging.getLogger(__name__)

# Keys a resumed run may change without --force.
RESUMABLE_CHANGES = ("train.max_epochs", "train.early_stopping", "data.num_workers", "train.tensorboard")


@dataclass(frozen=True)
class TrainResult:
    """Where a training run left its outputs and how it ended."""

    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path
    best_metric: float | None
    best_epoch: int | None
    epochs_run: int
    stopped_early: bool


def default_run_dir(config_path: Path | None, cfg: ExperimentConfig) -> Path:
    """``runs/<config name>-<YYYYmmdd-HHMMSS>`` in the current folder."""
    stem = config_path.stem if config_path else f"{cfg.data.kind}"
    return Path("runs") / f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts, as ``key: old -> new``."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, path + ".")
        elif a != b:
            out.append(f"{path}: {a!r} -> {b!r}")
    return out


def train(
    cfg: ExperimentConfig,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    force: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train a model as the config says, writing everything into a run folder.

    Args:
        cfg: The experiment.
        run_dir: Output folder (default ``runs/<kind>-<timestamp>``); with ``resume``, the run to continue.
        resume: Continue from ``run_dir/checkpoints/last.pt`` (model, optimizer, schedule, epoch, RNG, best metric).
            ``train.max_epochs`` may be raised to train a finished run longer.
        overwrite: Replace an existing, non-empty run folder.
        force: Resume even though the config differs from the saved one in more than ``train.max_epochs``.
        progress: Show a progress bar on stderr.

    Returns:
        A :class:`TrainResult`.

    Raises:
        OutputExistsError: ``run_dir`` exists and neither ``resume`` nor ``overwrite`` is set.
        MedsegError: Bad data, a locked run folder, or a resume with a changed config.
    """
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(None, cfg)
    if resume and not run_dir.is_dir():
        prepare_run_dir(run_dir, resume=True, overwrite=False)  # raises: nothing to resume
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir):  # taken before anything in the folder is checked, cleared or written
        prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
        return _train_locked(cfg, run_dir, resume=resume, force=force, progress=progress)


@dataclass
class _Run:
    """A training run in progress: what was built for it and the state that moves from epoch to epoch."""

    cfg: ExperimentConfig
    run_dir: Path
    device: torch.device
    task: Task
    model: torch.nn.Module
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
    speed: TrainingSpeed = field(default_factory=TrainingSpeed)
    step_model: torch.nn.Module | None = None  # what the training steps call (the model, or torch.compile of it)

    @property
    def labels(self) -> LabelMap:
        return self.task.labels

    def payload(self, epoch: int, rec: dict[str, Any], train_state: dict[str, Any] | None) -> dict[str, Any]:
        """A checkpoint: everything prediction needs, plus the resume state for ``last.pt``."""
        return {
            "medseg_version": medseg.__version__,
            "config": config_to_dict(self.cfg),
            "labels": self.labels.to_dict(),
            "preprocessing": self.task.preprocessing,
            "in_channels": self.task.in_channels,
            "out_channels": self.labels.num_classes,
            "state_dict": self.model.state_dict(),
            "epoch": epoch,
            "metrics": rec,
            "train_state": train_state,
        }


def _train_locked(cfg: ExperimentConfig, run_dir: Path, *, resume: bool, force: bool, progress: bool) -> TrainResult:
    state = _resume_checkpoint(cfg, run_dir, force=force) if resume else None
    run = _build_run(cfg, run_dir, labels=labels_from_checkpoint(state) if state else None, resume=resume)
    if state is not None:
        _restore(run, state)
    else:
        _start_fresh(run)
    writer = _tensorboard(run_dir) if cfg.train.tensorboard else None
    stopped_early = False
    epoch = run.start_epoch - 1
    try:
        for epoch in range(run.start_epoch, cfg.train.max_epochs):
            rec = _train_and_validate(run, epoch, progress)
            _end_epoch(run, rec, epoch, writer)
            patience = cfg.train.early_stopping_patience
            if patience is not None and run.bad >= patience:
                log.info("early stopping: no improvement of val_%s in %d validations", cfg.train.best_metric, run.bad)
                stopped_early = True
                break
    finally:
        if writer is not None:
            writer.close()
    best_path = run_dir / "checkpoints" / "best.pt"
    return TrainResult(
        run_dir=run_dir,
        best_checkpoint=best_path if best_path.is_file() else None,
        last_checkpoint=run_dir / "checkpoints" / "last.pt",
        best_metric=run.best,
        best_epoch=None if run.best_epoch is None else run.best_epoch + 1,
        epochs_run=epoch + 1,
        stopped_early=stopped_early,
    )


def _resume_checkpoint(cfg: ExperimentConfig, run_dir: Path, *, force: bool) -> dict[str, Any]:
    """``last.pt`` of the run, refused when the config changed beyond :data:`RESUMABLE_CHANGES` (unless forced)."""
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    changed = [
        d for d in config_differences(ckpt["config"], config_to_dict(cfg)) if not d.startswith(RESUMABLE_CHANGES)
    ]
    if changed and not force:
        raise MedsegError(
            f"{run_dir}: the config differs from the one this run was started with ({'; '.join(changed)}); "
            "resume with the same config (only train.max_epochs may change) or pass --force"
        )
    return ckpt


def _build_run(cfg: ExperimentConfig, run_dir: Path, *, labels: LabelMap | None, resume: bool) -> _Run:
    """Seed, then data, model, loss, optimizer, schedule and scaler, in this order (it fixes the random draws)."""
    seed_everything(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    task = build_task(cfg, run_dir, labels=labels, resume=resume)
    k = task.labels.num_classes
    model = build_model(cfg.model, in_channels=task.in_channels, out_channels=k).to(device)
    loss_fn = build_loss(cfg.loss, k).to(device)
    optimizer = build_optimizer(cfg.train, model.parameters())
    scheduler = EpochScheduler(cfg.train, optimizer)
    if cfg.train.deterministic:
        torch.backends.cudnn.benchmark = False
    speed = resolve_training_speed(cfg.train, device, cfg.model.spatial_dims)
    step_model = speed.model(model)
    log.info("training steps: %s", speed.describe())
    scaler = torch.amp.GradScaler("cuda", enabled=speed.scale_loss)
    return _Run(cfg, run_dir, device, task, model, loss_fn, optimizer, scheduler, scaler, speed.scale_loss,
                speed=speed, step_model=step_model)


def _restore(run: _Run, state: dict[str, Any]) -> None:
    """Model, optimizer, schedule, scaler, counters, random states and log of an interrupted run."""
    ts = state["train_state"]
    run.model.load_state_dict(state["state_dict"])
    run.optimizer.load_state_dict(ts["optimizer"])
    run.scheduler.load_state_dict(ts["scheduler"])
    if ts.get("scaler"):
        run.scaler.load_state_dict(ts["scaler"])
    run.start_epoch, run.best, run.best_epoch, run.bad = (
        ts["epoch"] + 1, ts["best"], ts["best_epoch"], ts["bad_validations"])
    _restore_rng(ts["rng"])
    run.records = [r for r in read_log(run.run_dir) if r["epoch"] <= run.start_epoch]
    log.info("resuming %s at epoch %d", run.run_dir, run.start_epoch + 1)


def _start_fresh(run: _Run) -> None:
    """The files a new run writes before its first epoch: config, labels and the preview of training samples."""
    save_config(run.cfg, run.run_dir / "config.yaml")
    write_json_atomic(run.run_dir / "labels.json", run.labels.to_dict())
    if run.cfg.train.preview_samples:
        imgs, masks = run.task.preview(run.cfg.train.preview_samples)
        plot_preview(imgs, masks, run.run_dir / "preview.png", title="training samples (augmented) with masks")


def _train_and_validate(run: _Run, epoch: int, progress: bool) -> dict[str, Any]:
    """One epoch of training, then validation when it is due; keeps ``best.pt`` up to date."""
    cfg = run.cfg
    seed_everything(epoch_seed(cfg.train.seed, epoch))
    lr = run.scheduler.start_epoch(epoch)
    rec = run_epoch(run.step_model or run.model, run.task, run.loss_fn, run.optimizer, run.scaler, run.device, cfg,
                    epoch, progress, speed=run.speed)
    rec["lr"] = lr
    if (epoch + 1) % cfg.train.val_every == 0 or epoch == cfg.train.max_epochs - 1:
        t0 = time.perf_counter()
        val = run.task.validate(run.model, run.loss_fn, run.device)
        rec.update(_val_record(val, run.labels))
        rec["val_time_s"] = time.perf_counter() - t0
        run.scheduler.observe(rec.get("val_loss", rec["train_loss"]))
        _keep_best(run, rec, epoch)
    return rec


def _keep_best(run: _Run, rec: dict[str, Any], epoch: int) -> None:
    """Update the best score and the early-stopping count; write ``best.pt`` when the score improved."""
    train = run.cfg.train
    score = rec.get(f"val_{train.best_metric}")
    if score is None or math.isnan(score):
        return
    higher_better = train.best_metric != "loss"
    best, margin = run.best, train.early_stopping_min_delta
    improved = best is None or (score > best if higher_better else score < best)
    clearly = best is None or (score > best + margin if higher_better else score < best - margin)
    run.bad = 0 if clearly else run.bad + 1
    if improved:
        run.best, run.best_epoch = score, epoch
        save_checkpoint(run.payload(epoch, rec, None), run.run_dir / "checkpoints" / "best.pt")


def _end_epoch(run: _Run, rec: dict[str, Any], epoch: int, writer: Any) -> None:
    """``last.pt`` with the resume state, the log, the curves and TensorBoard scalars."""
    run.records.append(rec)
    train_state = {
        "epoch": epoch, "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.use_amp else None, "best": run.best, "best_epoch": run.best_epoch,
        "bad_validations": run.bad, "rng": _rng_state(),
    }
    save_checkpoint(run.payload(epoch, rec, train_state), run.run_dir / "checkpoints" / "last.pt")
    write_json_atomic(run.run_dir / "log.json", run.records)
    plot_curves(run.records, run.run_dir / "curves.png")
    if writer is not None:
        for key, value in rec.items():
            if isinstance(value, int | float) and key != "epoch":
                writer.add_scalar(key, value, epoch)
    log.info(_epoch_line(rec, run.cfg.train.max_epochs))


def _val_record(val: dict[str, Any], labels: LabelMap) -> dict[str, Any]:
    if not val:
        return {}
    summary = summarize(val["cases"])
    rec: dict[str, Any] = {"val_loss": val["val_loss"]}
    for metric in ("dice", "iou"):
        rec[f"val_{metric}"] = summary["overall"][metric]["mean"]
    rec["val_per_class"] = {
        name: {m: v["mean"] for m, v in stats.items()} for name, stats in summary.items() if name in labels.names
    }
    return rec


def _epoch_line(rec: dict[str, Any], max_epochs: int) -> str:
    parts = [f"epoch {rec['epoch']}/{max_epochs}", f"loss {rec['train_loss']:.4f}"]
    for key in ("val_loss", "val_dice", "val_iou"):
        if key in rec:
            parts.append(f"{key} {rec[key]:.4f}")
    parts.append(f"lr {rec['lr']:.2e}")
    parts.append(f"{rec['epoch_time_s']:.1f}s")
    return "  ".join(parts)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=True)
    if not isinstance(np_state, tuple):  # legacy=True always gives the tuple form
        raise TypeError(f"unexpected numpy random state {type(np_state).__name__}")
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": _python_state(),
    }


def _python_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MedsegError("train.tensorboard is on but the tensorboard package is not installed") from None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
