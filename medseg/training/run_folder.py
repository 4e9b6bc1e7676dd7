"""The run folder: its layout, the per-epoch JSON log, atomic text writes and a single-writer lock.

Layout::

    RUN_DIR/config.yaml        resolved config (every default filled in)
    RUN_DIR/labels.json        gray value <-> class mapping and class names
    RUN_DIR/splits/train.txt   case ids, one per line (and val.txt)
    RUN_DIR/log.json           one record per epoch: loss, lr, per-class metrics, epoch time
    RUN_DIR/confusion/epoch_NNNN.json  the epoch's pooled confusion matrices (train, and val when validated)
    RUN_DIR/checkpoints/last.pt, best.pt
    RUN_DIR/curves.png, preview.png, confusion_best.png, tensorboard/ (optional)
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError, MedsegError, OutputExistsError

log = logging.getLogger(__name__)


class RunLockedError(MedsegError):
    """Another training process is writing into this run folder."""


#: Hidden file in a run folder from its creation until its first ``checkpoints/last.pt``: a folder holding it is
#: a run that stopped (failed, or was killed) before its first checkpoint, which a new run may take over.
NO_CHECKPOINT_YET = ".no-checkpoint-yet"


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """The refusals of :func:`prepare_run_dir`, reading only: a refused folder is left exactly as it was.

    Called before the run lock is taken (so that a refusal writes no ``.lock``), again under it by
    :func:`prepare_run_dir`, and by ``medseg train --nproc N`` before it starts any process.

    Raises:
        ConfigError: The path, or a folder above it, is a file.
        OutputExistsError: The folder exists with content and neither ``resume`` nor ``overwrite`` is set.
        MedsegError: Resuming a folder that holds no checkpoint.
    """
    run_dir = Path(run_dir)
    _refuse_a_file(run_dir, resume=resume)
    unstarted = (run_dir / NO_CHECKPOINT_YET).is_file() and not (run_dir / "checkpoints" / "last.pt").is_file()
    if resume:
        if unstarted:
            raise MedsegError(f"{run_dir}: cannot resume: this run stopped before its first checkpoint; start it "
                              "again without --resume (the folder is reused)")
        if not (run_dir / "checkpoints" / "last.pt").is_file():
            raise MedsegError(f"{run_dir}: cannot resume: no checkpoints/last.pt in this folder")
        return
    if not unstarted and not overwrite and run_dir.exists() and any(p.name != ".lock" for p in run_dir.iterdir()):
        raise OutputExistsError(
            f"{run_dir}: run folder exists and is not empty; use --resume {run_dir} to continue it, "
            "--overwrite to replace it, or another --run-dir"
        )


def _refuse_a_file(run_dir: Path, *, resume: bool) -> None:
    """A run folder path that is a file, or lies under one, is a usage error (not the OS's "File exists")."""
    for path in (run_dir, *run_dir.parents):
        if path.is_dir():
            return
        if not path.exists():
            continue
        what = f"{run_dir}: is a file" if path == run_dir else f"{run_dir}: {path} is a file"
        option = "--resume expects the folder of a run" if resume else "--run-dir expects a run folder (new or empty)"
        raise ConfigError(f"{what}; {option}")


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> Path:
    """Create (or check, when resuming) a run folder. Call it while holding :class:`RunLock`.

    A folder left by a run that stopped before its first checkpoint (it holds :data:`NO_CHECKPOINT_YET` and no
    ``checkpoints/last.pt``) is taken over by a new run without ``overwrite``: there is nothing in it to keep.

    Raises:
        ConfigError: The path, or a folder above it, is a file.
        OutputExistsError: The folder exists with content and neither ``resume`` nor ``overwrite`` is set.
        MedsegError: Resuming a folder that holds no checkpoint.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)  # every refusal comes before anything is changed
    if resume:
        return run_dir
    if (run_dir / NO_CHECKPOINT_YET).is_file() and not (run_dir / "checkpoints" / "last.pt").is_file():
        log.info("%s: reusing the folder of a run that stopped before its first checkpoint", run_dir)
        _clear_run_dir(run_dir)
    elif run_dir.exists() and any(p.name != ".lock" for p in run_dir.iterdir()):
        _clear_run_dir(run_dir)  # overwrite; the caller holds the run lock, so no other training is writing here
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "splits").mkdir(exist_ok=True)
    (run_dir / NO_CHECKPOINT_YET).touch()
    return run_dir


def mark_checkpointed(run_dir: Path) -> None:
    """The run wrote its first ``checkpoints/last.pt``: from now on it is resumed, not taken over."""
    (Path(run_dir) / NO_CHECKPOINT_YET).unlink(missing_ok=True)


def remove_unstarted_run(run_dir: Path) -> bool:
    """Remove a run folder this process created, when the run stopped before its first checkpoint.

    Returns:
        Whether the folder was removed (False when it holds a checkpoint or was not a fresh run).
    """
    run_dir = Path(run_dir)
    if not (run_dir / NO_CHECKPOINT_YET).is_file() or (run_dir / "checkpoints" / "last.pt").exists():
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return not run_dir.exists()


def _clear_run_dir(run_dir: Path) -> None:
    known = ("config.yaml", "labels.json", "log.json", "curves.png", "preview.png", "summary.json",
             "confusion_best.png")
    for name in known:
        (run_dir / name).unlink(missing_ok=True)
    for sub in ("checkpoints", "splits", "confusion"):
        for f in (run_dir / sub).glob("*") if (run_dir / sub).is_dir() else ():
            if f.is_file():
                f.unlink()
    shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)


class RunLock:
    """An exclusive lock file (``RUN_DIR/.lock``) held while a training writes into the folder.

    Uses ``fcntl.flock``, which the kernel releases when the process dies, so a killed run never
    leaves a stale lock behind. Taking the lock changes nothing in the file; with ``announce`` (the default) the
    holder then writes its pid into it, named in the refusal another training meets. Without, the holder calls
    :meth:`announce` once its checks passed, so that a run it refuses leaves the file as it was.
    """

    def __init__(self, run_dir: Path, *, announce: bool = True) -> None:
        self.path = Path(run_dir) / ".lock"
        self._announce = announce
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                pid = self.path.read_text().strip()  # empty while the holder checks the folder
                holder = f"another training (pid {pid})" if pid else "another training"
                raise RunLockedError(
                    f"{self.path.parent}: {holder} is writing into this run folder; "
                    "wait for it or choose another --run-dir"
                ) from None
            raise
        self._fd = fd
        if self._announce:
            self.announce()
        return self

    def announce(self) -> None:
        """Write this process's pid into the held lock file."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run (empty when none were written)."""
    path = Path(run_dir) / "log.json"
    if not path.is_file():
        return []
    return list(json.loads(path.read_text(encoding="utf-8")))
