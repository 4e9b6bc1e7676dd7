"""The training loop: epochs, validation, best/last checkpoints, per-epoch log, resume.

Order and augmentation of every epoch depend only on ``(train.seed, epoch)``, and checkpoints are
written at epoch ends, so a run resumed from ``checkpoints/last.pt`` repeats exactly what an
uninterrupted run would have done from there (on CPU).

Under torchrun every process runs :func:`train`; rank 0 alone locks and writes the run folder, the others
train their share of each step (:mod:`medseg.training.distributed`) and validate their share of the cases.

Building a run is :mod:`medseg.training.run_setup`, its resume state :mod:`medseg.training.resume`, and an
epoch's record with the files written of it :mod:`medseg.training.epoch_record`.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.atomic import write_json_atomic
from medseg.checkpoint import save_checkpoint
from medseg.config.schema import ExperimentConfig
from medseg.data.label_sources import labels_from_checkpoint
from medseg.errors import ConfigError, MedsegError
from medseg.models.factory import encoder_parameters
from medseg.seeds import epoch_seed, seed_everything
from medseg.training.distributed import Dist, PeerLostError, start_distributed, stop_distributed
from medseg.training.ema import ema_decay
from medseg.training.epoch import run_epoch
from medseg.training.epoch_record import (
    CONFUSION_KEYS,
    PLOT_INTERVAL_S,
    draw_plots,
    epoch_line,
    merge_validation,
    open_tensorboard,
    tensorboard_epoch,
    val_record,
    write_confusion,
)
from medseg.training.resume import RESUMABLE_CHANGES, config_differences, restore_run, resume_checkpoint, train_state
from medseg.training.run_folder import (
    RunLock,
    check_run_dir,
    mark_checkpointed,
    prepare_run_dir,
    remove_unstarted_run,
)
from medseg.training.run_setup import Run, build_run, start_fresh

#: Names that moved out of this module, still importable from here.
__all__ = ["CONFUSION_KEYS", "PLOT_INTERVAL_S", "RESUMABLE_CHANGES", "TrainResult", "config_differences",
           "default_run_dir", "merge_validation", "train"]

log = logging.getLogger(__name__)


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
                problem, held = None, None
                if dist.is_main:
                    try:
                        created, held = _prepare(Path(folder), lock, resume=resume, overwrite=overwrite)
                    except MedsegError as err:
                        problem = err
                _raise_everywhere(dist, problem)
                state = resume_checkpoint(cfg, Path(folder), force=force) if resume else None  # may refuse
                if held is not None:
                    held.announce()  # every check passed: the lock names this process
                result = _train_locked(cfg, Path(folder), dist, device, state, progress=progress)
                dist.barrier("finishing")  # rank 0 has written the last files
                return result
        except BaseException as err:
            if created and remove_unstarted_run(Path(folder)):  # failed before its first checkpoint: leave nothing
                log.info("%s: removed; the run stopped before its first checkpoint", folder)
            elif isinstance(err, PeerLostError):  # its line ends "continue with --resume": name the folder
                raise PeerLostError(f"{err} {folder}") from None
            raise
    finally:
        stop_distributed()


def _prepare(run_dir: Path, lock: ExitStack, *, resume: bool, overwrite: bool) -> tuple[bool, RunLock]:
    """Create or check the run folder, holding its lock (in ``lock``) from before anything is cleared or written;
    ``(created, lock)``, created when this call created the folder.

    A refused folder is left as it was: the checks run before the lock is taken (no ``.lock`` written), and again
    under it (another training may have started here meanwhile); the caller announces the lock once it trains."""
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    held = lock.enter_context(RunLock(run_dir, announce=False))  # before anything in the folder is cleared
    prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    return created, held


def _raise_everywhere(dist: Dist, problem: MedsegError | None) -> None:
    """Raise rank 0's ``problem`` on every process (the others would otherwise wait for it until the timeout)."""
    shared = dist.broadcast_object(None if problem is None else (isinstance(problem, ConfigError), str(problem)))
    if problem is not None:
        raise problem
    if shared is not None:
        is_config, text = shared
        raise (ConfigError if is_config else MedsegError)(f"rank 0 stopped: {text}")


def _train_locked(cfg: ExperimentConfig, run_dir: Path, dist: Dist, device: torch.device,
                  state: dict[str, Any] | None, *, progress: bool) -> TrainResult:
    """Train, from scratch or from the resume ``state`` (``last.pt``)."""
    run = build_run(cfg, run_dir, dist, device, labels=labels_from_checkpoint(state) if state else None,
                    resume=state is not None)
    if state is not None:
        restore_run(run, state)
    elif dist.is_main:
        start_fresh(run)
    writer = open_tensorboard(run_dir) if cfg.train.tensorboard and dist.is_main else None
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
            draw_plots(run, final=True)
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


def _freeze_encoder(run: Run, epoch: int) -> None:
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


def _train_and_validate(run: Run, epoch: int, progress: bool) -> dict[str, Any]:
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
        rec.update(val_record(val, run.labels))
        run.example = val.get("example") or None
        rec["val_time_s"] = time.perf_counter() - t0
        run.scheduler.observe(rec.get("val_loss", rec["train_loss"]))
        _keep_best(run, rec, epoch)
    return rec


def _keep_best(run: Run, rec: dict[str, Any], epoch: int) -> None:
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


def _end_epoch(run: Run, rec: dict[str, Any], epoch: int, writer: Any) -> None:
    """``last.pt`` with the resume state, the log, the epoch's confusion matrices, the curves and TensorBoard."""
    confusion = {key: rec.pop(key) for key in CONFUSION_KEYS if key in rec}
    run.records.append(rec)
    if not run.dist.is_main:
        return
    write_confusion(run.run_dir, epoch, run.labels.names, confusion)
    save_checkpoint(run.payload(epoch, rec, train_state(run, epoch)), run.run_dir / "checkpoints" / "last.pt")
    mark_checkpointed(run.run_dir)
    write_json_atomic(run.run_dir / "log.json", run.records)
    draw_plots(run, final=False)
    if writer is not None:
        tensorboard_epoch(writer, run, rec, epoch)
    log.info(epoch_line(rec, run.cfg.train.max_epochs))
