"""``medseg train --nproc N``: what can be refused before any process starts, and the launcher that runs the N
processes through ``torch.distributed.run`` and turns their failure (or a signal) into one line."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from medseg.device import resolve_device
from medseg.errors import ConfigError, MedsegError
from medseg.training.rank_errors import RANK_ERRORS_ENV, first_failure_line, printed_already, recorded_lines
from medseg.training.run_folder import check_run_dir

__all__ = ["launch_local", "preflight"]

log = logging.getLogger(__name__)


def preflight(train: Any, nproc: int, *, run_dir: Path | None = None, resume: bool = False,
              overwrite: bool = False) -> None:
    """What ``medseg train --nproc N`` can refuse before it starts any process (each would refuse it alike, and a
    refusal is then one line, as on one process).

    Raises:
        ConfigError: ``train.sync_batchnorm`` on CPU processes, CUDA asked for where there is none or fewer
            devices than processes, a run folder path that is a file.
        OutputExistsError: ``run_dir`` exists with content, without ``resume`` or ``overwrite``.
        MedsegError: ``resume`` of a folder without ``checkpoints/last.pt``.
    """
    device = resolve_device(train.device)
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ConfigError(f"--nproc {nproc}: this machine has {torch.cuda.device_count()} CUDA device(s) and each "
                          "process needs its own; use fewer processes or train.device=cpu")
    if train.sync_batchnorm and device.type != "cuda":
        raise ConfigError("train.sync_batchnorm: PyTorch synchronises batch norm on CUDA devices only; "
                          "set it to false for CPU processes (or use model.norm: instance)")
    if run_dir is not None:
        check_run_dir(Path(run_dir), resume=resume, overwrite=overwrite)  # rank 0 checks again, under the lock


def launch_local(nproc: int, module_args: Sequence[str], *, run_dir: Path | None = None) -> int:
    """Run ``python -m medseg MODULE_ARGS`` as ``nproc`` processes on this node through ``torch.distributed.run``.

    Args:
        nproc: Number of processes (at least 1).
        module_args: The medseg command line for each process (e.g. ``["train", "cfg.yaml", "--run-dir", "r"]``).

    Returns:
        0 when every process finished; the exit code of the process that failed first when its error is printed
        already (rank 0 printed it: the error every process met, a refused run folder), with nothing to add.

    An error all processes meet is printed once, by rank 0; the others hand their lines to the launcher, which
    adds the first failure's line to its own when nobody printed it (:mod:`medseg.training.rank_errors`). The
    launcher's own log lines (torch's ``W``/``E`` lines: processes stopped, a process failed) go to medseg's
    debug log (``-v``): the failure they report is told in medseg's line.

    Raises:
        ConfigError: ``nproc`` below 1.
        MedsegError: A process failed or was killed, with an error nobody printed (naming its rank and exit code
            or signal); the others were stopped. A process that exited 2 (a config error) makes this a
            :class:`ConfigError`.
    """
    if nproc < 1:
        raise ConfigError(f"--nproc: got {nproc}; allowed: 1 or more processes")
    import tempfile

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(["--standalone", f"--nproc_per_node={nproc}", "--module", "medseg", *module_args])
    with tempfile.TemporaryDirectory(prefix="medseg-rank-errors-") as errors, _launcher_logs_to_debug():
        before = os.environ.get(RANK_ERRORS_ENV)
        os.environ[RANK_ERRORS_ENV] = errors  # the processes' error lines: rank 0 alone prints its own
        try:
            run(args)
        except SignalException as err:  # the launcher stopped its processes on a signal it got (Ctrl-C, kill)
            raise _signal_stop(err.sigval, nproc, run_dir) from None
        except ChildFailedError as err:
            lines = recorded_lines(Path(errors))
            rank, failure = err.get_first_failure()
            if failure.exitcode > 0 and printed_already(lines, rank):
                return int(failure.exitcode)
            raise _child_failure(err, nproc, run_dir, lines) from None
        finally:
            if before is None:
                os.environ.pop(RANK_ERRORS_ENV, None)
            else:
                os.environ[RANK_ERRORS_ENV] = before
    return 0


def _signal_stop(sigval: Any, nproc: int, run_dir: Path | None) -> BaseException:
    """Ctrl-C (SIGINT) is the user's interrupt, told as one process's is; another signal is one error line."""
    if sigval == signal.SIGINT:
        return KeyboardInterrupt()
    keep = (f"; the run folder keeps the last finished epoch: continue with --resume {run_dir}"
            if run_dir is not None else "")
    return MedsegError(f"training on {nproc} processes stopped: the launcher got {signal.Signals(sigval).name} "
                       f"and stopped the processes{keep}")


class _ToDebug(logging.Handler):
    """Hands torch's launcher log records to medseg's debug log."""

    def emit(self, record: logging.LogRecord) -> None:
        log.debug("%s: %s", record.name, record.getMessage().strip())


@contextmanager
def _launcher_logs_to_debug() -> Iterator[None]:
    """While the launcher runs, ``torch.distributed``'s log records (it prints them on stderr with a handler of
    its own) go to medseg's debug log instead."""
    torch_log = logging.getLogger("torch.distributed")
    saved = torch_log.handlers[:], torch_log.propagate
    torch_log.handlers, torch_log.propagate = [_ToDebug()], False
    try:
        yield
    finally:
        torch_log.handlers, torch_log.propagate = saved


def _child_failure(err: Any, nproc: int, run_dir: Path | None = None,
                   lines: dict[int, str] | None = None) -> MedsegError:
    """One line for the first process that failed (the launcher then stops the others, which fail after it),
    with that process's error when no process printed it (:func:`~medseg.training.rank_errors.first_failure_line`)."""
    rank, failure = err.get_first_failure()
    code = failure.exitcode
    if code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        unprinted = first_failure_line(lines or {}, rank)
        how = f"exited with code {code}: {unprinted}" if unprinted else f"exited with code {code} (its error is above)"
    text = f"training on {nproc} processes failed: rank {rank} {how}; the launcher stopped the others"
    if run_dir is not None and (Path(run_dir) / "checkpoints" / "last.pt").is_file():
        text += f". The run folder keeps the last finished epoch: continue with --resume {run_dir}"
    return ConfigError(text) if code == 2 else MedsegError(text)
