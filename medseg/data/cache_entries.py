"""The entries of the preprocessed volume cache, one preprocessing setting at a time: their keys, reading them
(memory-mapped), writing them (atomically) and cleaning up after killed builds.

The layout of the cache and the rules its entries follow are described in :mod:`medseg.data.preprocessed_cache`,
which finds the cache folder and fills it for a set of cases.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.atomic import folder_mode, write_json_atomic
from medseg.data.labels import LabelMap
from medseg.data.pairing import Pair
from medseg.data.volume_dataset import PreparedCase, prepared_case
from medseg.data.volume_preprocessing import GridRecord, VolumePreprocessor
from medseg.errors import DataError, MedsegError

log = logging.getLogger("medseg.data.preprocessed_cache")  # the cache's messages, under one logger name

#: Raise when the files of an entry change meaning; old entries are then ignored (a new settings folder).
CACHE_FORMAT_VERSION = 1
#: Preprocessing settings that do not change a prepared volume (a new patch size reuses the cache).
_NOT_PREPROCESSING = ("kind", "patch_size", "slice_axis")
#: Temporary folders of other hosts (whose processes cannot be asked) are deleted after this long.
_STALE_TEMP_S = 24 * 3600
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


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
