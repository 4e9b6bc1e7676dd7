"""Resuming a training run: the check of the config against the one in ``last.pt``, the resume state a
checkpoint carries beside the model (optimizer, schedule, scaler, counters, random states) and its restoration.

Order and augmentation of every epoch depend only on ``(train.seed, epoch)``, so restoring this state at an
epoch end repeats exactly what an uninterrupted run would have done from there (on CPU).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.checkpoint import load_checkpoint
from medseg.config.loading import config_to_dict, validate_config
from medseg.config.schema import ExperimentConfig
from medseg.errors import ConfigError, MedsegError
from medseg.training.run_folder import read_log
from medseg.training.run_setup import Run

log = logging.getLogger("medseg.training.loop")  # the training loop's messages, under one logger name

# Keys a resumed run may change without --force (prefixes: train.tensorboard covers tensorboard_images_every).
# train.grad_accumulation and the number of processes change how a step's batch is cut, not the step itself.
RESUMABLE_CHANGES = ("train.max_epochs", "train.early_stopping", "data.num_workers", "train.tensorboard",
                     "train.grad_accumulation", "train.distributed_timeout_s")


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


def resume_checkpoint(cfg: ExperimentConfig, run_dir: Path, *, force: bool) -> dict[str, Any]:
    """``last.pt`` of the run, refused when the config changed beyond :data:`RESUMABLE_CHANGES` (unless forced)."""
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    changed = [
        d for d in config_differences(_with_defaults(ckpt["config"]), config_to_dict(cfg))
        if not d.startswith(RESUMABLE_CHANGES)
    ]
    if changed and not force:
        raise MedsegError(
            f"{run_dir}: the config differs from the one this run was started with ({'; '.join(changed)}); "
            "resume with the same config (only train.max_epochs may change) or pass --force"
        )
    return ckpt


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A run's saved config with the keys added to medseg since then at their defaults, so that a run started by an
    older version resumes (a new key left at its default is no change); as saved if it no longer validates."""
    try:
        return config_to_dict(validate_config(saved))
    except (ConfigError, ValueError, TypeError):
        return saved


def train_state(run: Run, epoch: int) -> dict[str, Any]:
    """The resume state ``last.pt`` carries at the end of ``epoch``: optimizer, schedule, scaler, best score,
    early-stopping count, random states, number of processes (and the trained weights beside an EMA)."""
    state = {
        "epoch": epoch, "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.use_amp else None, "best": run.best, "best_epoch": run.best_epoch,
        "bad_validations": run.bad, "rng": _rng_state(), "world_size": run.dist.world_size,
    }
    if run.ema is not None:
        state.update(model=run.model.state_dict(), ema_steps=run.ema.steps)
    return state


def restore_run(run: Run, state: dict[str, Any]) -> None:
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
