"""The preprocessed volume cache: each case resampled and normalised once, kept on disk, memory-mapped by training.

Layout under the cache folder (:func:`cache_dir_for`)::

    v1-<settings hash>/              one folder per preprocessing setting
      settings.json                  what its entries were made with (for people; never read back)
      <case>-<case hash>/            one entry per case and version of its files
        image.npy                    (C, X, Y, Z) float16 (CT windows) or float32 (z-score)
        label.npy                    (X, Y, Z) uint8 class indices
        foreground.npz               class index -> flat voxel positions (foreground sampling)
        case.json                    case name, source files, the GridRecord

The settings hash covers the format version, :attr:`VolumePreprocessor.settings` (less the keys that do not
change a prepared volume: kind, patch_size, slice_axis), the label map and the label tolerance; the case hash adds
the path, size and modification time (ns) of every file of :meth:`Pair.files`. A changed file or setting gives a
new entry; old entries stay until the folder is deleted (``rm -rf`` of the folder ``medseg preprocess`` prints is
always safe: the next run builds again).

An entry is written into a hidden temporary folder beside it (``.<entry>@<host>@<pid>@<random>.tmp``) and
renamed into place only when complete, so a killed build leaves nothing a later run trusts; the next run deletes
such folders once their process is gone (or after a day, for other hosts). Two processes building the same entry
both compute it and the first rename wins; the other discards its copy. Readers only see complete entries.

Training opens ``image.npy`` and ``label.npy`` with ``np.load(mmap_mode="c")``: the operating system shares the
pages among DataLoader workers and distributed ranks and reads only what the patches touch; copy-on-write keeps
an accidental in-place change private (``"r"`` would hand torch a read-only buffer it cannot protect). Pickled
cases (spawned DataLoader workers) carry the folder, not the voxels, and map the files again.

The entries themselves (keys, reading, writing, cleaning) are :mod:`medseg.data.cache_entries`; this module finds
the cache folder and fills it for a set of cases, in worker processes when asked.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.config.kinds import DataKind
from medseg.config.schema import DataConfig
from medseg.data.cache_entries import CACHE_FORMAT_VERSION, CachedCase, PreprocessedCache
from medseg.data.label_discovery import discover_label_map
from medseg.data.label_sources import label_map_from_config
from medseg.data.labels import LabelMap
from medseg.data.pairing import Pair, find_pairs_from_config
from medseg.data.volume_dataset import PreparedCase
from medseg.data.volume_preprocessing import VolumePreprocessor
from medseg.errors import ConfigError, MedsegError
from medseg.io.volume_io import read_volume
from medseg.processes import exit_with_parent
from medseg.progress import progress_bar

__all__ = [
    "CACHE_DIR_ENV",
    "CACHE_FORMAT_VERSION",
    "CacheReport",
    "CachedCase",
    "PreprocessedCache",
    "cache_dir_for",
    "cached_cases",
    "default_cache_dir",
    "preprocess_dataset",
]

log = logging.getLogger(__name__)

#: Environment variable naming the cache folder when ``data.cache_dir`` is left out.
CACHE_DIR_ENV = "MEDSEG_CACHE_DIR"
#: How worker processes start: a forked copy of a process that already ran torch's thread pools can hang.
_START_METHOD = "spawn"


def default_cache_dir() -> Path:
    """``$MEDSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/medseg/preprocessed``, else ``~/.cache/medseg/preprocessed``.

    A user cache folder rather than one inside the data set: medseg never writes into its inputs, which may be
    read-only, shared or under version control, and the cache can be deleted without a second thought.
    """
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "medseg" / "preprocessed"


def cache_dir_for(data: DataConfig) -> Path | None:
    """The cache folder of a ``data`` section (``data.cache_dir`` or :func:`default_cache_dir`), None when
    ``data.cache`` is false or the data are 2D images (cached in memory, see ``image_dataset.py``).

    Example:
        >>> cache_dir_for(DataConfig(kind="volumes3d", root=Path("ct"), cache_dir=Path("/tmp/c"))).as_posix()
        '/tmp/c'
        >>> cache_dir_for(DataConfig(kind="volumes3d", root=Path("ct"), cache=False)) is None
        True
    """
    if not data.cache or DataKind(data.kind) is DataKind.IMAGES2D:
        return None
    return Path(data.cache_dir) if data.cache_dir is not None else default_cache_dir()


@dataclass(frozen=True)
class CacheReport:
    """What a pass over the cache did.

    Attributes:
        folder: The settings folder holding the entries.
        built: Case names preprocessed now.
        reused: Case names found complete in the cache.
    """

    folder: Path
    built: tuple[str, ...]
    reused: tuple[str, ...]

    def summary(self) -> str:
        """One line, e.g. ``built 2 cases, reused 3 from /cache/v1-...``."""
        return f"built {len(self.built)} cases, reused {len(self.reused)} from {self.folder}"


def _allow_open_files(maps: int) -> None:
    """Raise the soft limit of open files towards the hard one when ``maps`` memory maps need it (each holds a
    file descriptor; a common soft limit is 1024). Child processes inherit the limit."""
    try:
        import resource
    except ImportError:  # Windows: no such limit on mapped files
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = maps + 1024
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    target = need if hard == resource.RLIM_INFINITY else min(hard, need)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("raised the open-file limit from %d to %d for %d memory-mapped arrays", soft, target, maps)
        except (ValueError, OSError):
            pass


def _build_in_worker(cache: PreprocessedCache, pair: Pair, threads: int) -> bool:
    torch.set_num_threads(threads)
    return cache.build(pair)


def _naming(err: MedsegError, pair: Pair) -> MedsegError:
    """The error as one line that names the case's image file."""
    text = " ".join(str(err).split())
    if str(pair.image) not in text and str(pair.mask) not in text:
        text = f"{pair.image}: {text}"
    return type(err)(text)


def _build_missing(cache: PreprocessedCache, missing: Sequence[Pair], *, workers: int, progress: bool) -> set[str]:
    """Build the entries of ``missing``; returns the case names this process preprocessed (a concurrent process
    may have finished some first)."""
    built: set[str] = set()
    with progress_bar("preprocessing", total=len(missing), enabled=progress and bool(missing)) as advance:
        if workers <= 1 or len(missing) <= 1:
            for pair in missing:
                try:
                    if cache.build(pair):
                        built.add(pair.case_id)
                except MedsegError as err:
                    raise _naming(err, pair) from None
                advance(case=pair.case_id)
            return built
        n = min(workers, len(missing))
        threads = max(1, (os.cpu_count() or 1) // n)
        with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context(_START_METHOD),
                                 initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
            futures: dict[Future[bool], Pair] = {pool.submit(_build_in_worker, cache, p, threads): p for p in missing}
            try:
                for future in as_completed(futures):
                    pair = futures[future]
                    try:
                        if future.result():
                            built.add(pair.case_id)
                    except MedsegError as err:
                        raise _naming(err, pair) from None
                    except OSError as err:
                        raise MedsegError(f"{pair.image}: {err.strerror or err}") from None
                    advance(case=pair.case_id)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    return built


def _ensure(cache: PreprocessedCache, pairs: Sequence[Pair], *, workers: int, progress: bool,
            share: tuple[int, int] = (0, 1)) -> tuple[list[CachedCase | None], CacheReport]:
    cache.clean_temporary()
    found = [cache.load(pair) for pair in pairs]
    missing = [pair for pair, case in zip(pairs, found, strict=True) if case is None]
    rank, world = share
    # this process's share first: while it works on it, the others build theirs, found complete later
    missing = [missing[i] for i in sorted(range(len(missing)), key=lambda i: (i % world != rank, i))]
    built = _build_missing(cache, missing, workers=workers, progress=progress)
    return found, CacheReport(cache.folder, tuple(p.case_id for p in pairs if p.case_id in built),
                              tuple(p.case_id for p in pairs if p.case_id not in built))


def cached_cases(
    pairs: Sequence[Pair], pre: VolumePreprocessor, labels: LabelMap, *, root: Path, tolerance: int = 0,
    workers: int = 1, progress: bool = False, share: tuple[int, int] = (0, 1),
) -> tuple[list[PreparedCase], CacheReport]:
    """The prepared cases of ``pairs`` from the cache under ``root``, building the entries that are missing.

    The same cases :func:`~medseg.data.volume_dataset.prepare_cases` makes, with the image and label memory-mapped.

    Args:
        pairs: The cases.
        pre: The preprocessor.
        labels: The label map.
        root: The cache folder.
        tolerance: Label tolerance.
        workers: Processes that build missing entries.
        progress: Show a progress bar while building.
        share: ``(rank, world size)`` of distributed training: each rank starts with every ``world``-th missing
            case from its rank on, then takes the others (built by then, or built again: the first rename wins).

    Returns:
        The cases in the order of ``pairs``, and what was built and reused.

    Raises:
        DataError: A case that cannot be read or preprocessed (one line naming its file).
        MedsegError: The cache cannot be written.
    """
    cache = PreprocessedCache(root, pre, labels, tolerance=tolerance)
    _allow_open_files(2 * len(pairs))
    found, report = _ensure(cache, pairs, workers=workers, progress=progress, share=share)
    cases: list[PreparedCase] = []
    for pair, case in zip(pairs, found, strict=True):
        case = case or cache.load(pair)
        if case is None:
            raise MedsegError(f"{pair.image}: its preprocessed cache entry vanished from {cache.folder} while in use")
        cases.append(case)
    return cases, report


def _read_label_array(path: Any) -> np.ndarray:
    return read_volume(path).array


def preprocess_dataset(data: DataConfig, *, workers: int = 1, progress: bool = False) -> CacheReport:
    """Build the preprocessed cache of every case of a volume data set (``medseg preprocess``): all folds and
    both splits, with the label map training would use (``data.labels.classes`` or discovered from the masks).

    Args:
        data: The ``data`` section (kind volumes3d or slices2d, ``data.cache`` on).
        workers: Processes that preprocess cases at once (1 or more).
        progress: Show a progress bar.

    Returns:
        The cases built and reused, and the folder.

    Raises:
        ConfigError: 2D images, ``data.cache: false``, or ``workers`` below 1.
        DataError: Missing or unreadable cases (one line naming the file).
    """
    if DataKind(data.kind) is DataKind.IMAGES2D:
        raise ConfigError("data.kind: preprocess prepares volumes (volumes3d, slices2d); got images2d, whose "
                          "samples are cached in memory during training")
    root = cache_dir_for(data)
    if root is None:
        raise ConfigError("data.cache: false turns the preprocessed cache off; set data.cache: true to build it")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers: got {workers!r}; need a whole number of processes, 1 or more")
    pairs = find_pairs_from_config(data)
    labels = label_map_from_config(data.labels) or discover_label_map(
        [p.mask for p in pairs], tolerance=0, read=_read_label_array)
    pre = VolumePreprocessor.from_config(data)
    cache = PreprocessedCache(root, pre, labels, tolerance=data.labels.tolerance)
    return _ensure(cache, pairs, workers=workers, progress=progress)[1]
