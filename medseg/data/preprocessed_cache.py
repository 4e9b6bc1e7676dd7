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
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.atomic import folder_mode, write_json_atomic
from medseg.config.kinds import DataKind
from medseg.config.schema import DataConfig
from medseg.data.label_discovery import discover_label_map
from medseg.data.label_sources import label_map_from_config
from medseg.data.labels import LabelMap
from medseg.data.pairing import Pair, find_pairs_from_config
from medseg.data.volume_dataset import PreparedCase, prepared_case
from medseg.data.volume_preprocessing import GridRecord, VolumePreprocessor
from medseg.errors import ConfigError, DataError, MedsegError
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

#: Raise when the files of an entry change meaning; old entries are then ignored (a new settings folder).
CACHE_FORMAT_VERSION = 1
#: Environment variable naming the cache folder when ``data.cache_dir`` is left out.
CACHE_DIR_ENV = "MEDSEG_CACHE_DIR"
#: Preprocessing settings that do not change a prepared volume (a new patch size reuses the cache).
_NOT_PREPROCESSING = ("kind", "patch_size", "slice_axis")
#: Temporary folders of other hosts (whose processes cannot be asked) are deleted after this long.
_STALE_TEMP_S = 24 * 3600
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
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


@dataclass
class CachedCase(PreparedCase):
    """A :class:`PreparedCase` whose image and label are memory-mapped from the cache entry ``folder``.

    Pickling keeps the folder and the small parts only; unpickling maps the arrays again (no voxel is copied
    into a spawned worker).
    """

    folder: Path = field(default_factory=Path)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["image"], state["label"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.image, self.label = _map_arrays(self.folder)


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


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _grid_to_json(grid: GridRecord) -> dict[str, Any]:
    return {f.name: np.asarray(getattr(grid, f.name)).tolist() for f in fields(grid)}


def _grid_from_json(data: dict[str, Any]) -> GridRecord:
    return GridRecord(
        shape=tuple(int(n) for n in data["shape"]),  # type: ignore[arg-type]
        affine=np.asarray(data["affine"], dtype=np.float64),
        transform=np.asarray(data["transform"], dtype=np.float64),
        inverse=np.asarray(data["inverse"], dtype=np.float64),
        oriented_shape=tuple(int(n) for n in data["oriented_shape"]),  # type: ignore[arg-type]
        oriented_affine=np.asarray(data["oriented_affine"], dtype=np.float64),
        shape_out=tuple(int(n) for n in data["shape_out"]),  # type: ignore[arg-type]
        spacing_out=tuple(float(s) for s in data["spacing_out"]),  # type: ignore[arg-type]
        affine_out=np.asarray(data["affine_out"], dtype=np.float64),
    )


def _map_arrays(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``image.npy`` and ``label.npy`` of an entry as tensors over copy-on-write memory maps."""
    image = np.load(folder / "image.npy", mmap_mode="c")
    label = np.load(folder / "label.npy", mmap_mode="c")
    return torch.from_numpy(image), torch.from_numpy(label)


def _fsync_tree(folder: Path) -> None:
    for path in [*folder.iterdir(), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError:  # folders cannot be synced on every platform
            pass
        finally:
            os.close(fd)


def _host() -> str:
    return _UNSAFE.sub("_", socket.gethostname().replace("@", "_"))[:64] or "host"


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would end the process there; rely on age alone
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


class PreprocessedCache:
    """Cache entries of one preprocessing setting under ``root``.

    Args:
        root: The cache folder (settings folders are made inside it).
        pre: The preprocessor (its settings are part of the key).
        labels: The label map (part of the key).
        tolerance: Label tolerance (part of the key).

    Example:
        >>> import tempfile
        >>> pre = VolumePreprocessor({"windows": [[40, 400]], "spacing_mm": [2.0, 2.0, 2.0]})
        >>> labels = LabelMap.from_mapping({0: "background", 1: "bone"})
        >>> a = PreprocessedCache(Path(tempfile.mkdtemp()), pre, labels)
        >>> b = PreprocessedCache(a.root, VolumePreprocessor({**pre.settings, "patch_size": [32, 32, 32]}), labels)
        >>> a.folder == b.folder, a.folder.name.startswith("v1-")
        (True, True)
    """

    def __init__(self, root: Path, pre: VolumePreprocessor, labels: LabelMap, *, tolerance: int = 0) -> None:
        self.root = Path(root)
        self.pre = pre
        self.labels = labels
        self.tolerance = int(tolerance)
        preprocessing = {k: v for k, v in pre.settings.items() if k not in _NOT_PREPROCESSING}
        self.settings = {"format": CACHE_FORMAT_VERSION, "preprocessing": preprocessing,
                         "labels": labels.to_dict(), "tolerance": self.tolerance}
        self.key = _digest(self.settings)
        self.folder = self.root / f"v{CACHE_FORMAT_VERSION}-{self.key[:16]}"

    # ------------------------------------------------------------------------------------------ keys
    def sources(self, pair: Pair) -> list[dict[str, Any]]:
        """Path, size and modification time of every file of the case (taken before it is read).

        Raises:
            DataError: A file that cannot be found or read.
        """
        out = []
        for path in pair.files():
            try:
                st = os.stat(path)
            except OSError as err:
                raise DataError(f"{path}: {err.strerror or err}") from None
            out.append({"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        return out

    def entry(self, pair: Pair, sources: list[dict[str, Any]] | None = None) -> Path:
        """The entry folder of a case in its files' current state."""
        sources = self.sources(pair) if sources is None else sources
        digest = _digest({"settings": self.key, "case": pair.case_id, "files": sources})
        name = _UNSAFE.sub("_", pair.case_id)[:80] or "case"
        return self.folder / f"{name}-{digest[:16]}"

    # ------------------------------------------------------------------------------------------ reading
    def load(self, pair: Pair) -> CachedCase | None:
        """The case from a complete entry (arrays memory-mapped), or None when there is none (or it is damaged:
        then it is logged and removed)."""
        folder = self.entry(pair)
        if not folder.is_dir():
            return None
        try:
            return self._read(folder, pair.case_id)
        except OSError as err:
            if err.errno in (errno.EMFILE, errno.ENFILE):  # the process's limit, not a damaged entry
                raise MedsegError(f"too many open files mapping {folder}: each cached case holds two; raise the "
                                  "limit (ulimit -n) or set data.cache: false") from None
            log.warning("preprocessed cache entry %s is damaged (%s); building it again", folder, err)
            self._discard(folder)
            return None
        except (ValueError, KeyError, TypeError) as err:
            log.warning("preprocessed cache entry %s is damaged (%s); building it again", folder, err)
            self._discard(folder)
            return None

    def _read(self, folder: Path, case_id: str) -> CachedCase:
        meta = json.loads((folder / "case.json").read_text(encoding="utf-8"))
        if meta.get("format") != CACHE_FORMAT_VERSION or meta.get("case_id") != case_id:
            raise ValueError(f"case.json is for {meta.get('case_id')!r}, format {meta.get('format')!r}")
        image, label = _map_arrays(folder)
        grid = _grid_from_json(meta["grid"])
        if tuple(image.shape[1:]) != grid.shape_out or tuple(label.shape) != grid.shape_out:
            raise ValueError(f"arrays {tuple(image.shape)} and {tuple(label.shape)} do not fit grid {grid.shape_out}")
        with np.load(folder / "foreground.npz") as npz:
            foreground = {int(k.removeprefix("class_")): np.asarray(npz[k]) for k in npz.files}
        return CachedCase(case_id, image, label, grid, foreground, folder)

    # ------------------------------------------------------------------------------------------ writing
    def build(self, pair: Pair) -> bool:
        """Make the case's entry unless a complete one exists; True when this call preprocessed it.

        Raises:
            DataError: The case cannot be read or preprocessed (the message names its file).
            MedsegError: The entry cannot be written (full disk, no permission).
        """
        sources = self.sources(pair)
        final = self.entry(pair, sources)
        if final.is_dir():
            if self.load(pair) is not None:
                return False
        image, label, grid = self.pre.prepare_pair(pair.channels, pair.mask, self.labels, tolerance=self.tolerance)
        case = prepared_case(pair.case_id, image, label, grid, self.pre)
        meta = {"format": CACHE_FORMAT_VERSION, "case_id": pair.case_id, "files": sources,
                "grid": _grid_to_json(grid), "image": {"shape": list(case.image.shape), "dtype": str(case.image.dtype)},
                "label": {"shape": list(case.label.shape), "dtype": str(case.label.dtype)}}
        try:
            self._write_settings()
            tmp = Path(tempfile.mkdtemp(dir=self.folder, prefix=f".{final.name}@{_host()}@{os.getpid()}@",
                                        suffix=".tmp"))
        except OSError as err:
            raise MedsegError(f"cannot write the preprocessed cache in {self.folder}: {err.strerror or err}; set "
                              "data.cache_dir (or $MEDSEG_CACHE_DIR) to a writable folder, or data.cache: false"
                              ) from None
        try:
            np.save(tmp / "image.npy", case.image.numpy())
            np.save(tmp / "label.npy", case.label.numpy())
            positions: dict[str, Any] = {f"class_{c}": pos for c, pos in case.foreground.items()}
            np.savez(tmp / "foreground.npz", **positions)
            (tmp / "case.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
            _fsync_tree(tmp)
            os.chmod(tmp, folder_mode())
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise MedsegError(f"cannot write the preprocessed cache entry {final}: {err.strerror or err}; free some "
                              "space, set data.cache_dir to another folder, or data.cache: false") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._publish(tmp, final)
        log.debug("cached %s in %s", pair.case_id, final)
        return True

    def _publish(self, tmp: Path, final: Path) -> None:
        """Rename the complete temporary folder onto ``final``; when another process got there first, keep its
        entry and drop this one."""
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # the same content, written by a concurrent build
            return
        try:
            _fsync_tree(self.folder)
        except OSError:
            pass

    def _write_settings(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "settings.json"
        if not path.exists():
            write_json_atomic(path, self.settings)

    def _discard(self, folder: Path) -> None:
        """Move a damaged entry out of the way (atomically), then delete it."""
        trash = folder.with_name(f".{folder.name}@{_host()}@{os.getpid()}@damaged.tmp")
        try:
            os.rename(folder, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def clean_temporary(self) -> list[Path]:
        """Delete temporary folders left by killed builds (their process is gone, or a day old for other hosts);
        returns those deleted. Folders of builds still running are kept."""
        if not self.folder.is_dir():
            return []
        removed = []
        host, now = _host(), time.time()
        for path in self.folder.glob(".*.tmp"):
            parts = path.name[1:-4].rsplit("@", 3)
            if not path.is_dir() or len(parts) != 4:
                continue
            try:
                pid, age = int(parts[2]), now - path.stat().st_mtime
            except (ValueError, OSError):
                continue
            mine = parts[1] == host
            if (mine and pid != os.getpid() and not _pid_alive(pid)) or age > _STALE_TEMP_S:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        if removed:
            log.info("removed %d unfinished preprocessed cache entries in %s", len(removed), self.folder)
        return removed


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
