"""The forward-backend probe's results file: read and written only when it is a medseg backend cache.

The file is a JSON object: probe key -> ``{"backend": ..., "seconds": ..., "agreement": ...}``, plus the marker
``"medseg_forward_backends": 1`` that tells it from other JSON (files written before the marker existed are
recognised by their entries). The path may come from a user's environment variable, so:

* Reading opens only a regular file of at most :data:`MAX_CACHE_BYTES` (checked before opening, opened
  non-blocking and checked again on the open file, read no further than the cap): a FIFO, a device, a folder,
  a larger file or one that is not a cache is ignored (one debug line) and the probe runs as if there were none.
* Writing happens only when the file does not exist or is a backend cache; anything else (a device, a FIFO,
  a text file, other JSON) is left as it is, with one warning per file and process, and the probe's choice still
  holds for the run. Writes are atomic (a temporary file beside the file, renamed onto it).
* A symlink is followed: its target is read and written, and the link stays.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.atomic import write_json_atomic
from medseg.errors import MedsegError

__all__ = ["CACHE_FILE_ENV", "MARKER", "MAX_CACHE_BYTES", "ProbeCache", "default_cache_file", "read_probe_cache",
           "write_probe_cache"]

#: Environment variable naming the probe results file in place of ``~/.cache/medseg/forward_backends.json``.
CACHE_FILE_ENV = "MEDSEG_BACKEND_CACHE_FILE"
#: Key (and format version) that marks a JSON object as a medseg forward-backend cache.
MARKER = "medseg_forward_backends"
#: Larger files are not read (a cache holds a few hundred bytes per network, device and window shape).
MAX_CACHE_BYTES = 1 << 20

log = logging.getLogger(__name__)
_refused: set[Path] = set()  # files warned about once in this process


@dataclass
class ProbeCache:
    """What a cache file holds: its entries, and why it is not a backend cache (``problem``: "is a FIFO, not a
    regular file", say), None when it is one or is not there."""

    entries: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None


def default_cache_file() -> Path:
    """Where probe results are kept between processes: ``$MEDSEG_BACKEND_CACHE_FILE`` (surrounding whitespace
    stripped; empty or whitespace-only counts as unset), else ``~/.cache/medseg/forward_backends.json``.
    """
    env = os.environ.get(CACHE_FILE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "medseg" / "forward_backends.json"


def read_probe_cache(path: Path) -> ProbeCache:
    """The entries of the cache file at ``path`` (a symlink: its target); none, with ``problem`` set, when it is
    not a regular file of at most :data:`MAX_CACHE_BYTES` holding a medseg backend cache."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return ProbeCache()
    except OSError as err:
        return ProbeCache(problem=f"cannot be inspected ({err.strerror or err})")
    problem = _not_regular(info.st_mode, info.st_size)
    if problem:
        return ProbeCache(problem=problem)
    try:
        raw = _read_capped(path)
    except FileNotFoundError:
        return ProbeCache()
    except OSError as err:
        return ProbeCache(problem=f"cannot be read ({err.strerror or err})")
    except _NotRegular as err:
        return ProbeCache(problem=str(err))
    try:
        data = json.loads(raw)
    except ValueError:  # UnicodeDecodeError included
        return ProbeCache(problem="is not JSON")
    problem = _not_a_cache(data)
    if problem:
        return ProbeCache(problem=problem)
    return ProbeCache(entries={k: v for k, v in data.items() if k != MARKER})


def write_probe_cache(path: Path, entry_key: str, entry: dict[str, Any]) -> bool:
    """Add ``entry`` under ``entry_key`` to the cache file at ``path`` (re-read first: another process may have
    written meanwhile), atomically; following a symlink to its target.

    Returns:
        True when written. False when the file is not a medseg backend cache (left unchanged, one warning) or
        could not be written (an info line: a read-only home, say).
    """
    target = Path(os.path.realpath(path))
    if target in _refused:
        return False
    stored = read_probe_cache(target)
    if stored.problem is not None:
        _refused.add(target)
        shown = f"{path} (-> {target})" if target != Path(os.path.abspath(path)) else str(path)
        log.warning("forward backend probe: not caching the result in %s: it %s; it is left unchanged (set %s to "
                    "another file)", shown, stored.problem, CACHE_FILE_ENV)
        return False
    data = {MARKER: 1, **stored.entries, entry_key: entry}
    try:
        write_json_atomic(target, data)
    except (OSError, MedsegError) as err:  # a read-only home, a full disk: the choice still holds for the run
        log.info("forward backend probe: could not cache the result in %s (%s)", path, err)
        return False
    return True


class _NotRegular(Exception):
    """The open file is not what the path's stat said."""


def _not_regular(mode: int, size: int) -> str | None:
    """Why a file of this ``mode`` and ``size`` is not read, or None."""
    if not stat.S_ISREG(mode):
        kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                 (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
        kind = next((name for test, name in kinds if test(mode)), "not a regular file")
        return f"is {kind}, not a regular file"
    if size > MAX_CACHE_BYTES:
        return f"is larger ({size} bytes) than a backend cache can be ({MAX_CACHE_BYTES} bytes)"
    return None


def _read_capped(path: Path) -> bytes:
    """The file's bytes, opened non-blocking (a FIFO swapped in after the stat does not hang the open) and
    checked again once open; read no further than the cap.

    Raises:
        _NotRegular: The open file is not a regular file, or grew past the cap.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        problem = _not_regular(info.st_mode, info.st_size)
        if problem:
            raise _NotRegular(problem)
        raw = fh.read(MAX_CACHE_BYTES + 1)
    if len(raw) > MAX_CACHE_BYTES:
        raise _NotRegular(f"is larger than a backend cache can be ({MAX_CACHE_BYTES} bytes)")
    return raw


def _not_a_cache(data: object) -> str | None:
    """Why parsed JSON is not a medseg backend cache, or None: it is one when it carries :data:`MARKER`, or
    (written before the marker) is a non-empty object whose every value is an entry with a ``"backend"``."""
    if not isinstance(data, dict):
        kinds = {list: "an array", str: "a string", bool: "true or false", type(None): "null"}
        kind = kinds.get(type(data), "a number")
        return f"is JSON holding {kind}, not a backend cache"
    if MARKER in data:
        return None
    entries = list(data.values())
    if entries and all(isinstance(e, dict) and isinstance(e.get("backend"), str) for e in entries):
        return None
    return f"is JSON without the {MARKER!r} marker, not a backend cache"
