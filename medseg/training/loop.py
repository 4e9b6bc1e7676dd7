"""The training loop: epochs, validation, best/last checkpoints, per-epoch log, resume.

Order and augmentation of every epoch depend only on ``(train.seed, epoch)``, and checkpoints are
written at epoch ends, so a run resumed from ``checkpoints/last.pt`` repeats exactly what an
uninterrupted run would have done from there (on CPU).

Under torchrun every process runs :func:`train`; rank 0 alone locks and writes the run folder, the others
train their share of each step (:mod:`medseg.training.distributed`) and validate their share of the cases.
"""

from __future__ import annotations

import logging
import math
import random
import time
from contextlib import ExitStack
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
from medseg.errors import ConfigError, MedsegError
from medseg.losses.factory import build_loss
from medseg.metrics.confusion import EpochMetrics
from medseg.models.factory import build_model, encoder_parameters
from medseg.models.pretrained import load_pretrained
from medseg.seeds import epoch_seed, seed_everything
from medseg.training.distributed import Dist, micro_batch_size, start_distributed, stop_distributed, wrap_model
from medseg.training.ema import ModelEma, ema_decay
from medseg.training.epoch import run_epoch
from medseg.training.optim import EpochScheduler, build_optimizer
from medseg.training.plots import plot_confusion, plot_curves, plot_preview
from medseg.training.run_folder import (
    RunLock,
    mark_checkpointed,
    prepare_run_dir,
    read_log,
    remove_unstarted_run,
)
from medseg.training.speed import TrainingSpeed, resolve_training_speed, to_memory_format
from medseg.training.task import Task, build_task

#: During training, the curves and the best epoch's confusion matrix are drawn at most this often (seconds);
#: they are always drawn when training ends.
PLOT_INTERVAL_S = 30.0

log = logging.getLogger(__name__)

# Keys a resumed run may change without --force (prefixes: train.tensorboard covers tensorboard_images_every).
# train.grad_accumulation and the number of processes change how a step's batch is cut, not the step itself.
RESUMABLE_CHANGES = ("train.max_epochs", "train.early_stopping", "data.num_workers", "train.tensorboard",
                     "train.grad_accumulation", "train.distributed_timeout_s")
#: Keys of an epoch's record that go to ``RUN_DIR/confusion/epoch_NNNN.json`` rather than ``log.json``.
CONFUSION_KEYS = ("train_confusion", "val_confusion")


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
    rank: int = 0


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

    A run that stops before its first checkpoint (bad data, an interrupt) removes the folder it created; a folder
    that existed before is left for the next run to take over without ``overwrite``. After a checkpoint, ``resume``
    continues it.

    Returns:
        A :class:`TrainResult`.

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this; rank 0 locks, checks and writes the run
    folder, and every process returns the same result (with its ``rank``).

    Raises:
        OutputExistsError: ``run_dir`` exists and neither ``resume`` nor ``overwrite`` is set.
        MedsegError: Bad data, a locked run folder, or a resume with a changed config.
        PeerLostError: Another training process died or stopped answering (see ``train.distributed_timeout_s``).
    """
    dist, device = start_distributed(cfg.train.device, cfg.train.distributed_timeout_s)
    try:
        folder = dist.broadcast_object(str(run_dir if run_dir is not None else default_run_dir(None, cfg)))
        if not dist.is_main:
            progress = False
            logging.getLogger("medseg").setLevel(max(logging.WARNING, logging.getLogger("medseg").level))
        created = False
        try:
            with ExitStack() as lock:
                problem = None
                if dist.is_main:
                    try:
                        created = _prepare(Path(folder), lock, resume=resume, overwrite=overwrite)
                    except MedsegError as err:
                        problem = err
                _raise_everywhere(dist, problem)
                result = _train_locked(cfg, Path(folder), dist, device, resume=resume, force=force,
                                       progress=progress)
                dist.barrier("finishing")  # rank 0 has written the last files
                return result
        except BaseException:
            if created and remove_unstarted_run(Path(folder)):  # failed before its first checkpoint: leave nothing
                log.info("%s: removed; the run stopped before its first checkpoint", folder)
            raise
    finally:
        stop_distributed()


def _prepare(run_dir: Path, lock: ExitStack, *, resume: bool, overwrite: bool) -> bool:
    """Create or check the run folder, holding its lock (in ``lock``) from before anything is checked or cleared;
    True when this call created the folder."""
    if resume and not run_dir.is_dir():
        prepare_run_dir(run_dir, resume=True, overwrite=False)  # raises: nothing to resume
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock.enter_context(RunLock(run_dir))  # taken before anything in the folder is checked, cleared or written
    prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    return created


def _raise_everywhere(dist: Dist, problem: MedsegError | None) -> None:
    """Raise rank 0's ``problem`` on every process (the others would otherwise wait for it until the timeout)."""
    shared = dist.broadcast_object(None if problem is None else (isinstance(problem, ConfigError), str(problem)))
    if problem is not None:
        raise problem
    if shared is not None:
        is_config, text = shared
        raise (ConfigError if is_config else MedsegError)(f"rank 0 stopped: {text}")


@dataclass
class _Run:
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


def _train_locked(cfg: ExperimentConfig, run_dir: Path, dist: Dist, device: torch.device, *, resume: bool,
                  force: bool, progress: bool) -> TrainResult:
    state = _resume_checkpoint(cfg, run_dir, force=force) if resume else None
    run = _build_run(cfg, run_dir, dist, device, labels=labels_from_checkpoint(state) if state else None,
                     resume=resume)
    if state is not None:
        _restore(run, state)
    elif dist.is_main:
        _start_fresh(run)
    writer = _tensorboard(run_dir) if cfg.train.tensorboard and dist.is_main else None
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
        if dist.is_main:
            _draw(run, final=True)
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
        rank=dist.rank,
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


def _build_run(cfg: ExperimentConfig, run_dir: Path, dist: Dist, device: torch.device, *, labels: LabelMap | None,
               resume: bool) -> _Run:
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
    return _Run(cfg, run_dir, dist, device, task, model, net, loss_fn, optimizer, scheduler, scaler, speed.scale_loss,
                speed=speed, step_model=step_model, ema=ema)


def _log_batch(cfg: ExperimentConfig, dist: Dist, micro: int) -> None:
    t = cfg.train
    log.info(
        "effective batch: %d samples per optimizer step = %d process(es) x %d accumulation step(s) x %d samples; "
        "train.lr %g is for this batch, which does not change with the number of processes (raising "
        "train.batch_size k times: scale train.lr by k for sgd, by sqrt(k) for adam/adamw, and check)",
        t.batch_size, dist.world_size, t.grad_accumulation, micro, t.lr)


def _restore(run: _Run, state: dict[str, Any]) -> None:
    """Model (and its EMA), optimizer, schedule, scaler, counters, random states and log of an interrupted run."""
    ts = state["train_state"]
    run.model.load_state_dict(ts.get("model", state["state_dict"]))  # "model": the trained weights beside an EMA
    if run.ema is not None:
        if "ema_steps" in ts:
            run.ema.load(state["state_dict"], ts["ema_steps"])
        else:
            log.info("train.ema: this run had no EMA; the average starts at epoch %d", ts["epoch"] + 2)
            run.ema.load(run.model.state_dict(), 0)
    run.optimizer.load_state_dict(ts["optimizer"])
    run.scheduler.load_state_dict(ts["scheduler"])
    if ts.get("scaler"):
        run.scaler.load_state_dict(ts["scaler"])
    run.start_epoch, run.best, run.best_epoch, run.bad = (
        ts["epoch"] + 1, ts["best"], ts["best_epoch"], ts["bad_validations"])
    _restore_rng(ts["rng"])
    run.records = [r for r in read_log(run.run_dir) if r["epoch"] <= run.start_epoch]
    before = ts.get("world_size", 1)
    log.info("resuming %s at epoch %d: a run trained with %d process(es) on %d", run.run_dir, run.start_epoch + 1,
             before, run.dist.world_size)


def _start_fresh(run: _Run) -> None:
    """The files a new run writes before its first epoch: config, labels and the preview of training samples."""
    save_config(run.cfg, run.run_dir / "config.yaml")
    write_json_atomic(run.run_dir / "labels.json", run.labels.to_dict())
    if run.cfg.train.preview_samples:
        imgs, masks = run.task.preview(run.cfg.train.preview_samples)
        plot_preview(imgs, masks, run.run_dir / "preview.png", title="training samples (augmented) with masks")


def _freeze_encoder(run: _Run, epoch: int) -> None:
    """Encoder weights fixed during the first ``model.freeze_encoder_epochs`` epochs, trainable after.

    Frozen parameters get no gradient, so the optimizer leaves them (and their weight decay) alone; batch-norm
    statistics of the encoder still follow the new data.
    """
    n = run.cfg.model.freeze_encoder_epochs
    if not n:
        return
    for p in encoder_parameters(run.model, run.cfg.model.name):
        p.requires_grad_(epoch >= n)
    if epoch == n:
        log.info("encoder unfrozen at epoch %d (model.freeze_encoder_epochs)", epoch + 1)


def _train_and_validate(run: _Run, epoch: int, progress: bool) -> dict[str, Any]:
    """One epoch of training, then validation when it is due; keeps ``best.pt`` up to date."""
    cfg = run.cfg
    seed_everything(epoch_seed(cfg.train.seed, epoch))
    lr = run.scheduler.start_epoch(epoch)
    _freeze_encoder(run, epoch)
    steps = run.net if run.step_model is None else run.step_model  # not `or`: a compiled module has no truth value
    rec = run_epoch(steps, run.task, run.loss_fn, run.optimizer, run.scaler, run.device, cfg, epoch, progress,
                    run.dist, speed=run.speed, ema=run.ema)
    rec["lr"] = lr
    if run.ema is not None and run.ema.steps > 1:
        rec["ema_decay"] = ema_decay(run.ema.decay, run.ema.steps - 1)  # that of the epoch's last step
    if (epoch + 1) % cfg.train.val_every == 0 or epoch == cfg.train.max_epochs - 1:
        t0 = time.perf_counter()
        val = run.task.validate(run.evaluated, run.loss_fn, run.device, rank=run.dist.rank,
                                world_size=run.dist.world_size)
        if run.dist.enabled:
            val = merge_validation(run.dist.gather_objects(val, what="gathering validation results"))
        rec.update(_val_record(val, run.labels))
        run.example = val.get("example") or None
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
        if run.dist.is_main:
            save_checkpoint(run.payload(epoch, rec, None), run.run_dir / "checkpoints" / "best.pt")
            if "val_confusion" in rec:
                run.best_confusion = (np.asarray(rec["val_confusion"]),
                                      f"validation, best epoch {epoch + 1}\n(rows: truth, columns: prediction)")


def _draw(run: _Run, *, final: bool) -> None:
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


def _end_epoch(run: _Run, rec: dict[str, Any], epoch: int, writer: Any) -> None:
    """``last.pt`` with the resume state, the log, the epoch's confusion matrices, the curves and TensorBoard."""
    confusion = {key: rec.pop(key) for key in CONFUSION_KEYS if key in rec}
    run.records.append(rec)
    if not run.dist.is_main:
        return
    write_json_atomic(run.run_dir / "confusion" / f"epoch_{epoch + 1:04d}.json",
                      {"epoch": epoch + 1, "class_names": list(run.labels.names), "rows": "truth",
                       "columns": "prediction", **{k.removesuffix("_confusion"): v for k, v in confusion.items()}})
    train_state = {
        "epoch": epoch, "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.use_amp else None, "best": run.best, "best_epoch": run.best_epoch,
        "bad_validations": run.bad, "rng": _rng_state(), "world_size": run.dist.world_size,
    }
    if run.ema is not None:
        train_state.update(model=run.model.state_dict(), ema_steps=run.ema.steps)
    save_checkpoint(run.payload(epoch, rec, train_state), run.run_dir / "checkpoints" / "last.pt")
    mark_checkpointed(run.run_dir)
    write_json_atomic(run.run_dir / "log.json", run.records)
    _draw(run, final=False)
    if writer is not None:
        _tensorboard_epoch(writer, run, rec, epoch)
    log.info(_epoch_line(rec, run.cfg.train.max_epochs))


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


def _val_record(val: dict[str, Any], labels: LabelMap) -> dict[str, Any]:
    """The validation keys of an epoch's record, computed as the training keys are (plus HD95 per class)."""
    if not val:
        return {}
    metrics = EpochMetrics(labels.names)
    for case, cm in zip(val["cases"], val["confusions"], strict=True):
        metrics.add_case(cm, extra=case)
    return {"val_loss": val["val_loss"], **metrics.record("val"), "val_confusion": metrics.confusion.tolist()}


def _tensorboard_epoch(writer: Any, run: _Run, rec: dict[str, Any], epoch: int) -> None:
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
