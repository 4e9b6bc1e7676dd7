"""Prediction on several processes: ``workers`` processes started here, or the ranks torchrun started.

Every process runs the same claim loop over all the cases (:mod:`medseg.prediction.claims`): a process takes
the next case nobody has claimed, so faster processes take more cases (work stealing, no static split), a
process killed mid-case leaves a claim that the others take over, and each case is computed once. The workers
of one run share a run id, so a failing case is tried once per run and ``overwrite`` recomputes each case once.

* ``workers=N``: N processes (``multiprocessing`` spawn), each loading the model from its file. On the CPU each
  gets ``cores // N`` torch threads; with ``device`` ``cuda`` (or ``auto`` on a CUDA machine) and several GPUs
  worker k runs on ``cuda:k % GPUs``. Each worker hands its report back through a file; the reports are merged.
* torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` set): each rank is one worker, on ``cuda:LOCAL_RANK`` when
  the model is on CUDA; a gloo process group carries the run id and gathers the reports, so every rank returns
  the merged report (the CLI prints it on rank 0).

The merged :class:`~medseg.prediction.cases.BatchReport` counts each case once: computed (``predicted``),
skipped (finished before), failed, or finished by a process outside the run (``elsewhere``).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import pickle
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from medseg.atomic import atomic_path
from medseg.errors import ConfigError, MedsegError
from medseg.prediction.cases import BatchReport
from medseg.prediction.claims import CLAIMS_FOLDER, ClaimFolder, Sharing
from medseg.prediction.ensemble import Ensemble
from medseg.prediction.loaded import LoadedModel

__all__ = ["Sources", "check_parallel", "load_sources", "merge_reports", "model_sources", "predict_parallel",
           "torchrun_rank", "worker_device"]

log = logging.getLogger(__name__)

#: What :func:`predict_parallel` runs in each worker: ``predict_paths`` (passed in, so this module does not
#: import the batch module that calls it).
PredictFn = Callable[..., BatchReport]
T = TypeVar("T")


def torchrun_rank() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` when this process was started by torchrun, else None.

    Raises:
        ConfigError: ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set but not whole numbers with rank < world size.
    """
    env = {key: os.environ.get(key) for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    if env["RANK"] is None or env["WORLD_SIZE"] is None:
        return None
    try:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"] or 0)
    except ValueError:
        raise ConfigError(f"torchrun: environment RANK={env['RANK']!r} WORLD_SIZE={env['WORLD_SIZE']!r} "
                          f"LOCAL_RANK={env['LOCAL_RANK']!r}; expected whole numbers") from None
    if not 0 <= rank < world:
        raise ConfigError(f"torchrun: environment RANK={rank} WORLD_SIZE={world}; expected 0 <= RANK < WORLD_SIZE")
    return rank, world, local


def check_parallel(workers: Any, sharing: Sharing | None, torchrun: bool,
                   spell: Callable[[str], str] = lambda name: name) -> None:
    """Refuse combinations that cannot work: workers < 1, workers with a shard, workers or a shard under torchrun.

    Args:
        workers: Processes to start.
        sharing: The shard asked for, if any.
        torchrun: Whether this process is a torchrun rank.
        spell: How an option is named in messages (the CLI passes ``--workers`` style names).

    Example:
        >>> check_parallel(0, None, False)
        Traceback (most recent call last):
        ...
        medseg.errors.ConfigError: workers: got 0; allowed: a whole number >= 1

    Raises:
        ConfigError: Naming the options involved.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"{spell('workers')}: got {workers!r}; allowed: a whole number >= 1")
    shard = sharing.shard if sharing is not None else None
    if workers > 1 and shard is not None:
        raise ConfigError(f"{spell('workers')} {workers} with {spell('shard')} {shard[0]}/{shard[1]}: give one "
                          f"({spell('shard')} splits the cases between separate jobs, {spell('workers')} starts "
                          "processes that share all cases)")
    if torchrun and (workers > 1 or shard is not None):
        what = f"{spell('workers')} {workers}" if workers > 1 else f"{spell('shard')}"
        raise ConfigError(f"{what} under torchrun: torchrun already starts one process per rank and the ranks "
                          "share the cases; drop the option (or run without torchrun)")


def worker_device(device: torch.device, index: int) -> torch.device:
    """The device of worker ``index``: ``cuda:index % GPUs`` for an unnumbered CUDA device, else ``device``.

    Example:
        >>> worker_device(torch.device("cpu"), 3)
        device(type='cpu')
    """
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 0:
        return torch.device(f"cuda:{index % torch.cuda.device_count()}")
    return device


#: What a worker needs to load a model again: each member's file and inference settings.
Sources = tuple[tuple[str, Any], ...]


def model_sources(loaded: LoadedModel) -> Sources:
    """Each member's file and inference settings (one pair for one model), what :func:`load_sources` takes.

    Raises:
        ConfigError: A member that was not loaded from a file.
    """
    for member in loaded.members:
        if not member.source or not Path(member.source).is_file():
            raise ConfigError(f"workers: each worker loads the model from its file, but this model has none "
                              f"(source {member.source!r}); load it with Predictor.from_checkpoint")
    return tuple((m.source, m.infer) for m in loaded.members)


def load_sources(sources: Sources, device: torch.device, postprocessing: Any = None,
                 postprocessing_file: str | None = None) -> LoadedModel:
    """The model (or ensemble) loaded again from its files on ``device``, each member with its inference settings,
    and the main process's postprocessing rules (the run's ``postprocessing.json`` is not looked up again)."""
    fresh = [dataclasses.replace(LoadedModel.from_checkpoint(source, device=str(device), postprocessing=False),
                                 infer=infer)
             for source, infer in sources]
    model = fresh[0] if len(fresh) == 1 else Ensemble.of(fresh)
    return dataclasses.replace(model, postprocessing=postprocessing, postprocessing_file=postprocessing_file)


def _unique(items: Iterable[T]) -> list[T]:
    return list(dict.fromkeys(items))


def merge_reports(reports: Sequence[BatchReport]) -> BatchReport:
    """One report over the workers of a run, each case counted once.

    A case one worker computed and another found finished counts as computed; outputs written by several
    workers (``statistics.csv``) are listed once.

    Example:
        >>> a = BatchReport(written=[Path("x.png")], predicted=["x"], skipped=[Path("y.png")])
        >>> b = BatchReport(written=[Path("y.png")], predicted=["y"], skipped=[Path("x.png")], elsewhere=["z"])
        >>> m = merge_reports([a, b])
        >>> m.predicted, m.skipped, m.elsewhere, m.workers
        (['x', 'y'], [], ['z'], 2)
    """
    written = _unique(p for r in reports for p in r.written)
    done, predicted = set(written), [n for r in reports for n in r.predicted]
    return BatchReport(
        written=written,
        skipped=_unique(p for r in reports for p in r.skipped if p not in done),
        failed=[f for r in reports for f in r.failed],
        seconds=max((r.seconds for r in reports), default=0.0),
        predicted=predicted,
        elsewhere=_unique(n for r in reports for n in r.elsewhere if n not in set(predicted)),
        workers=len(reports),
    )


def predict_parallel(
    predict: PredictFn,
    loaded: LoadedModel,
    inputs: Sequence[Path],
    out_dir: Path,
    *,
    workers: int,
    torchrun: bool,
    sharing: Sharing | None,
    options: dict[str, Any],
) -> BatchReport:
    """Run ``predict`` (``predict_paths``) in ``workers`` processes, or as this torchrun rank, and merge.

    Args:
        predict: ``predict_paths``; each worker calls it with ``sharing`` (the run id) and ``options``.
        loaded: The model; workers load it again from its file (each member's, for an ensemble) on their device.
        inputs: As for ``predict_paths``.
        out_dir: The shared output folder.
        workers: Processes to start (1 under torchrun).
        torchrun: This process is one torchrun rank.
        sharing: The claim timeout to use (no shard).
        options: The other ``predict_paths`` keywords (overwrite, overlay, dicom_seg, statistics, progress).

    Returns:
        The merged report (:func:`merge_reports`), ``seconds`` the wall time of the whole run.

    Raises:
        ConfigError: Bad ``workers`` or combination (:func:`check_parallel`), a model without a file, or not
            under torchrun when ``torchrun``.
        MedsegError: What a worker raised before its loop (the first one), e.g. inputs that do not exist.
    """
    check_parallel(workers, sharing, torchrun)
    timeout = (sharing or Sharing()).claim_timeout_s
    t0 = time.perf_counter()
    if torchrun:
        report = _as_torchrun_rank(predict, loaded, inputs, out_dir, timeout, options)
    else:
        report = _in_workers(predict, loaded, inputs, out_dir, workers, timeout, options)
    report.seconds = time.perf_counter() - t0
    return report


def _cleanup(out_dir: Path, run_id: str) -> None:
    shutil.rmtree(Path(out_dir) / CLAIMS_FOLDER / f"run-{run_id}", ignore_errors=True)
    ClaimFolder(out_dir).remove_if_empty()


def _raise_first(outcomes: Sequence[BatchReport | MedsegError]) -> list[BatchReport]:
    errors = [o for o in outcomes if isinstance(o, MedsegError)]
    if errors:
        raise errors[0]
    return [o for o in outcomes if isinstance(o, BatchReport)]


# ------------------------------------------------------------------------------------------- spawned workers
@dataclass(frozen=True)
class _Job:
    predict: PredictFn
    sources: Sources
    postprocessing: Any
    device: str
    threads: int
    inputs: tuple[Path, ...]
    out_dir: Path
    sharing: Sharing
    options: dict[str, Any]
    result: Path
    index: int
    log_level: int


def _worker_main(job: _Job) -> None:
    """Entry point of one spawned worker: load the model, run the claim loop, leave the report in a file."""
    logging.basicConfig(level=job.log_level, format=f"%(levelname)s worker {job.index} %(name)s: %(message)s",
                        stream=sys.stderr, force=True)
    torch.set_num_threads(job.threads)
    outcome: BatchReport | MedsegError
    try:
        loaded = load_sources(job.sources, torch.device(job.device), *job.postprocessing)
        outcome = job.predict(loaded, list(job.inputs), job.out_dir, sharing=job.sharing, **job.options)
    except MedsegError as err:
        outcome = err
    with atomic_path(job.result) as tmp:
        tmp.write_bytes(pickle.dumps(outcome))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _in_workers(predict: PredictFn, loaded: LoadedModel, inputs: Sequence[Path], out_dir: Path, workers: int,
                timeout: float, options: dict[str, Any]) -> BatchReport:
    sources = model_sources(loaded)
    run_id = uuid.uuid4().hex[:12]
    sharing = Sharing(timeout, run_id=run_id)
    ctx = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    with tempfile.TemporaryDirectory(prefix="medseg-workers-") as tmp:
        rules = (loaded.postprocessing, loaded.postprocessing_file)
        jobs = [_Job(predict, sources, rules, str(worker_device(loaded.device, k)),
                     max(1, _cores() // workers), tuple(inputs), Path(out_dir), sharing,
                     {**options, "progress": False}, Path(tmp) / f"worker-{k}.pickle", k, level)
                for k in range(workers)]
        procs = [ctx.Process(target=_worker_main, args=(job,), name=f"medseg-worker-{job.index}") for job in jobs]
        log.info("starting %d workers (%s)", workers, ", ".join(f"worker {j.index} on {j.device}" for j in jobs))
        try:
            for proc in procs:
                proc.start()
            for proc in procs:
                proc.join()
        except BaseException:
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
            raise
        outcomes: list[BatchReport | MedsegError] = []
        lost: list[tuple[str, str]] = []
        for job, proc in zip(jobs, procs, strict=True):
            if job.result.exists():
                outcomes.append(pickle.loads(job.result.read_bytes()))
            else:
                lost.append((f"worker {job.index}", f"ended with exit code {proc.exitcode} before it finished; the "
                             "cases it held were taken over by the other workers, or are redone by a rerun"))
    _cleanup(out_dir, run_id)
    report = merge_reports(_raise_first(outcomes))
    report.failed += lost
    report.workers = workers
    return report


# ------------------------------------------------------------------------------------------- torchrun ranks
def _as_torchrun_rank(predict: PredictFn, loaded: LoadedModel, inputs: Sequence[Path], out_dir: Path,
                      timeout: float, options: dict[str, Any]) -> BatchReport:
    import torch.distributed as dist

    where = torchrun_rank()
    if where is None:
        raise ConfigError("torchrun: RANK and WORLD_SIZE are not set; start the command with torchrun, or run it "
                          "without torchrun=True")
    rank, world, local = where
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("gloo")
    try:
        box: list[Any] = [uuid.uuid4().hex[:12] if rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        device = worker_device(loaded.device, local)
        outcome: BatchReport | MedsegError
        try:
            model = loaded if device == loaded.device else load_sources(model_sources(loaded), device,
                                                                            loaded.postprocessing,
                                                                            loaded.postprocessing_file)
            outcome = predict(model, list(inputs), out_dir, sharing=Sharing(timeout, run_id=box[0]),
                              **{**options, "progress": bool(options.get("progress", True)) and rank == 0})
        except MedsegError as err:
            outcome = err
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, outcome)
        if rank == 0:
            _cleanup(out_dir, box[0])
    finally:
        if own_group:
            dist.destroy_process_group()
    return merge_reports(_raise_first(gathered))
