"""Atomic file writes: a temporary file beside the target, flushed to disk, then renamed onto it.

A process killed at any moment leaves either the previous file or the complete new one under the final
name, never a truncated file. Temporary files are hidden (``.NAME.XXXX.tmp``) and removed on failure.
Every medseg writer of outputs, checkpoints, logs and configs goes through :func:`atomic_path`.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError


@contextmanager
def atomic_path(path: str | Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, fsync it and rename it onto ``path``.

    Args:
        path: The final file.
        suffix: Suffix of the temporary file (writers that choose the format from the name, such as
            nibabel's ``.nii.gz``, need the real one).

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "out.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    except OSError as err:
        _raise_if_disk_full(err, path)
        raise
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        _raise_if_disk_full(err, path)
        raise


def _raise_if_disk_full(err: BaseException, path: Path) -> None:
    """A full disk or quota becomes one line naming the file; writers such as pydicom re-raise the ``OSError``
    with their whole traceback as its message and no errno, so the chain of causes is searched too.

    Raises:
        MedsegError: ``no space left on device writing PATH``.
    """
    seen: BaseException | None = err
    for _ in range(20):
        if seen is None:
            return
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            what = "disk quota exceeded" if seen.errno == errno.EDQUOT else "no space left on device"
            raise MedsegError(f"{what} writing {path}; free some space or choose another output folder") from None
        seen = seen.__cause__ or seen.__context__


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write UTF-8 text through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
    return Path(path)


def folder_mode() -> int:
    """The mode a plain ``mkdir`` would give: 0o777 less the umask (``tempfile.mkdtemp``'s folders are 0o700)."""
    return 0o777 & ~_umask()


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give: 0o666 less the umask (mkstemp's files are 0o600)."""
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (setting it is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> Path:
    """JSON through :func:`write_text_atomic`."""
    return write_text_atomic(path, json.dumps(data, indent=2, allow_nan=True) + "\n")
