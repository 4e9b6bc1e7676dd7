"""Claims: processes that share one output folder never compute a case twice and never lose one.

Before a process computes a case it claims it: it creates ``OUT/.medseg-claims/<case>@<n>.claim`` with
``os.open(O_CREAT | O_EXCL)``, which exactly one process can do. The file holds the owner (host, pid, the
pid's start time, when the claim began) and its modification time is the heartbeat: a thread touches it every
quarter of the claim timeout while the case runs. The claim is removed once the case's outputs are written
(atomically, under their final names) or the case failed.

A claim is **stale** when its owner is known dead (same host, and the pid is gone, a zombie, or now another
process) or when its heartbeat is older than the timeout (owner on another host that died, or a lost node).
A stale claim ``<case>@<n>.claim`` is taken over by creating ``<case>@<n+1>.claim``, again with ``O_EXCL``, so
of several processes that find it stale at once only one wins; the winner removes the older files when it
releases. After every claim the process looks again whether the case is finished, so a case finished by
another process between the first look and the claim is not computed again.

A process that finds a case claimed by a live owner moves on, and comes back to it after the other cases of
its share: the case is either finished by then (counted as done elsewhere), released unfinished (claimed and
computed here) or stale (taken over). So a process returns only when every case of its share is finished or
failed.

Workers of one run (``--workers``, torchrun ranks) share a run id: a worker that has tried a case leaves
``.medseg-claims/run-<id>/<case>.tried`` before releasing its claim, so no other worker of the run tries it
again (a failing case is tried once per run; ``--overwrite`` recomputes each case once per run).

Shared filesystems must make ``O_EXCL`` creation atomic across hosts (local disks, NFSv3 and later, Lustre,
GPFS, CephFS do) and hosts' clocks must agree to well within the timeout (NTP).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import ConfigError

__all__ = ["CLAIMS_FOLDER", "DEFAULT_CLAIM_TIMEOUT_S", "Claim", "ClaimFolder", "ClaimOwner", "ClaimedRun",
           "Sharing", "parse_shard", "run_claimed", "shard_indices"]

log = logging.getLogger(__name__)

#: Folder of claim files inside the output folder.
CLAIMS_FOLDER = ".medseg-claims"
#: Seconds without a heartbeat after which a claim whose owner cannot be checked (another host) is stale.
DEFAULT_CLAIM_TIMEOUT_S = 600.0
_HOST = socket.gethostname()


# ------------------------------------------------------------------------------------------- settings
def parse_shard(text: str, option: str = "--shard") -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)``: shard I (0-based) of N.

    Example:
        >>> parse_shard("1/3")
        (1, 3)
        >>> parse_shard("3/3")
        Traceback (most recent call last):
        ...
        medseg.errors.ConfigError: --shard: got '3/3'; expected I/N with whole numbers 0 <= I < N (shards count \
from 0, e.g. 0/3 1/3 2/3 for three jobs)

    Raises:
        ConfigError: Not two whole numbers, or not ``0 <= I < N``.
    """
    parts = str(text).strip().split("/")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        index, count = int(parts[0]), int(parts[1])
        if 0 <= index < count:
            return index, count
    raise ConfigError(f"{option}: got {text!r}; expected I/N with whole numbers 0 <= I < N (shards count from 0, "
                      "e.g. 0/3 1/3 2/3 for three jobs)")


def shard_indices(names: Sequence[str], shard: tuple[int, int] | None) -> list[int]:
    """Indices (in input order) of the cases that shard ``(i, n)`` takes: with the case names sorted, every
    n-th from the i-th (so the split does not depend on the order the inputs were given in).

    Example:
        >>> shard_indices(["c", "a", "d", "b", "e"], (0, 2))  # sorted: a b c d e -> a c e
        [0, 1, 4]
        >>> shard_indices(["c", "a", "d", "b", "e"], (1, 2))
        [2, 3]
    """
    if shard is None:
        return list(range(len(names)))
    index, count = shard
    order = sorted(range(len(names)), key=lambda i: names[i])
    return sorted(order[index::count])


@dataclass(frozen=True)
class Sharing:
    """How one process shares an output folder with other processes.

    Attributes:
        claim_timeout_s: Seconds without a heartbeat after which another process takes a claim over.
        shard: ``(i, n)``: take only shard i (0-based) of n (:func:`shard_indices`); None: every case.
        run_id: Id shared by the workers of one run (set by ``predict_paths(workers=...)`` and under torchrun):
            no worker of the run tries a case another one has tried.

    Raises:
        ConfigError: A timeout that is not a positive finite number, or a shard outside ``0 <= i < n``.
    """

    claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S
    shard: tuple[int, int] | None = None
    run_id: str | None = None

    @classmethod
    def from_options(cls, shard: str | None, claim_timeout_s: float) -> Sharing:
        """From the command line's ``--shard I/N`` and ``--claim-timeout SECONDS`` (errors name those options).

        Raises:
            ConfigError: A bad shard (:func:`parse_shard`) or a timeout that is not a positive number.
        """
        if not math.isfinite(claim_timeout_s) or claim_timeout_s <= 0:
            raise ConfigError(f"--claim-timeout: got {claim_timeout_s:g}; allowed: seconds > 0 (default "
                              f"{DEFAULT_CLAIM_TIMEOUT_S:g})")
        return cls(claim_timeout_s, None if shard is None else parse_shard(shard))

    def __post_init__(self) -> None:
        t = self.claim_timeout_s
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ConfigError(f"claim_timeout_s: got {t!r}; allowed: seconds > 0 (default "
                              f"{DEFAULT_CLAIM_TIMEOUT_S:g})")
        s = self.shard
        if s is not None and not (isinstance(s, tuple) and len(s) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) for v in s) and 0 <= s[0] < s[1]):
            raise ConfigError(f"shard: got {s!r}; allowed: (i, n) with whole numbers 0 <= i < n")


# ------------------------------------------------------------------------------------------- claim files
@dataclass(frozen=True)
class ClaimOwner:
    """Who holds a claim, as written in its file."""

    host: str
    pid: int
    process_start: str | None = None
    started: str = ""

    @classmethod
    def this_process(cls) -> ClaimOwner:
        """The owner record of the calling process."""
        return cls(_HOST, os.getpid(), _process_stat(os.getpid())[1],
                   time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def is_dead(self) -> bool:
        """True when the owner is known dead: on this host, and its pid is gone, a zombie or another process."""
        if self.host != _HOST:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            pass
        state, start = _process_stat(self.pid)
        return state == "Z" or (start is not None and self.process_start is not None and start != self.process_start)


def _process_stat(pid: int) -> tuple[str | None, str | None]:
    """State letter and start time (clock ticks since boot) of a pid, from /proc on Linux; Nones elsewhere."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None, None
    fields = text[text.rfind(")") + 2:].split()  # after "pid (comm) ": state is field 3, starttime field 22
    return (fields[0], fields[19]) if len(fields) > 19 else (None, None)


class Claim:
    """A claim this process holds; a thread refreshes its heartbeat until :meth:`release`."""

    def __init__(self, path: Path, older: Sequence[Path], heartbeat_s: float) -> None:
        self.path = path
        self._older = list(older)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), name="medseg-claim-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                os.utime(self.path)
            except OSError as err:
                log.warning("%s: cannot refresh this claim (%s); another process may take the case over",
                            self.path, err.strerror or err)

    def release(self) -> None:
        """Stop the heartbeat and remove the claim (and the stale claims it replaced)."""
        self._stop.set()
        self._thread.join()
        for path in [*self._older, self.path]:
            path.unlink(missing_ok=True)


class ClaimFolder:
    """The claims of one output folder, as seen by one process.

    Args:
        out_dir: The output folder; claims live in ``out_dir/.medseg-claims``.
        timeout_s: Seconds without a heartbeat after which a claim is stale.
    """

    def __init__(self, out_dir: Path, timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S) -> None:
        self.folder = Path(out_dir) / CLAIMS_FOLDER
        self.timeout_s = float(timeout_s)
        self.heartbeat_s = max(0.05, min(self.timeout_s / 4, 60.0))

    def _generations(self, name: str) -> list[int]:
        prefix, gens = f"{name}@", []
        try:
            entries = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        for entry in entries:
            middle = entry[len(prefix):-len(".claim")]
            if entry.startswith(prefix) and entry.endswith(".claim") and middle.isdigit():
                gens.append(int(middle))
        return sorted(gens)

    def path(self, name: str, generation: int) -> Path:
        """The claim file of generation ``generation`` of case ``name``."""
        return self.folder / f"{name}@{generation}.claim"

    def owner(self, path: Path) -> ClaimOwner | None:
        """The owner written in a claim file; None when unreadable (being written, or cut short)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return ClaimOwner(str(data["host"]), int(data["pid"]), data.get("process_start"),
                              str(data.get("started", "")))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def is_stale(self, path: Path) -> bool:
        """True when the claim's owner is known dead or its heartbeat is older than the timeout.

        A claim that vanished meanwhile counts as not stale (the case is being released).
        """
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return False
        owner = self.owner(path)
        return age > self.timeout_s or (owner is not None and owner.is_dead())

    def acquire(self, name: str) -> Claim | None:
        """Claim case ``name``; None when a live process holds it (or won the race for it).

        A stale claim is taken over (logged as a warning naming the previous owner).
        """
        gens = self._generations(name)
        if gens and not self.is_stale(self.path(name, gens[-1])):
            return None
        generation = gens[-1] + 1 if gens else 0
        path = self.path(name, generation)
        owner = ClaimOwner.this_process()
        data = json.dumps({"case": name, "host": owner.host, "pid": owner.pid,
                           "process_start": owner.process_start, "started": owner.started}).encode()
        for _ in range(2):  # a process that found the folder empty may have removed it meanwhile
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                return None
            except FileNotFoundError:
                self.folder.mkdir(parents=True, exist_ok=True)
        else:
            return None
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        if gens:
            previous = self.owner(self.path(name, gens[-1]))
            who = f"pid {previous.pid} on {previous.host}" if previous else "an unknown process"
            log.warning("%s: taking over the stale claim of %s", name, who)
        return Claim(path, [self.path(name, g) for g in gens], self.heartbeat_s)

    def sweep(self, finished: set[str]) -> None:
        """Remove the stale claims of finished cases (an owner killed after its outputs were written, before it
        released its claim); a live claim is never removed."""
        try:
            entries = os.listdir(self.folder)
        except FileNotFoundError:
            return
        for entry in entries:
            name, _, generation = entry[:-len(".claim")].rpartition("@")
            if entry.endswith(".claim") and generation.isdigit() and name in finished \
                    and self.is_stale(self.folder / entry):
                (self.folder / entry).unlink(missing_ok=True)

    def remove_if_empty(self) -> None:
        """Remove the claims folder when no claim is left in it (another process may still be using it)."""
        try:
            self.folder.rmdir()
        except OSError:
            pass


# ------------------------------------------------------------------------------------------- the loop
@dataclass
class ClaimedRun:
    """What :func:`run_claimed` found, by case index (the cases it computed are the caller's to record)."""

    skipped: list[int] = field(default_factory=list)
    elsewhere: list[int] = field(default_factory=list)


def run_claimed(
    names: Sequence[str],
    out_dir: Path,
    *,
    finished: Callable[[int], bool],
    work: Callable[[int], None],
    overwrite: bool,
    sharing: Sharing,
    advance: Callable[[int], None] = lambda i: None,
) -> ClaimedRun:
    """Run ``work(i)`` for each case of this process's share that is not finished, each under a claim.

    Args:
        names: Case names (the claim files are named after them).
        out_dir: The output folder shared with other processes.
        finished: Whether case ``i``'s outputs exist.
        work: Compute case ``i`` (it records its own outputs and failures; an exception it lets through
            releases the claim and stops the loop).
        overwrite: Compute cases even when finished (still once per run, and never two processes at once).
        sharing: Claim timeout, shard, and the run id of a group of workers.
        advance: Called once per case of the share when it is dealt with.

    Returns:
        The cases skipped (finished at the first look) and those finished by another process meanwhile.
    """
    claims = ClaimFolder(out_dir, sharing.claim_timeout_s)
    tried = claims.folder / f"run-{sharing.run_id}" if sharing.run_id else None
    result = ClaimedRun()
    held: list[int] = []

    def attempt(i: int) -> bool:
        """Deal with case i if it can be claimed; False when a live process holds it."""
        claim = claims.acquire(names[i])
        if claim is None:
            return False
        try:
            marker = tried / f"{names[i]}.tried" if tried else None
            if marker is not None and marker.exists():
                pass  # another worker of this run tried it (and counts it)
            elif not overwrite and finished(i):
                result.elsewhere.append(i)
            else:
                work(i)
                if marker is not None:
                    marker.parent.mkdir(parents=True, exist_ok=True)
                    marker.touch()
        finally:
            claim.release()
        advance(i)
        return True

    try:
        for i in shard_indices(names, sharing.shard):
            if not overwrite and finished(i):
                result.skipped.append(i)
                advance(i)
            elif not attempt(i):
                held.append(i)
        if held:
            log.info("%d case(s) are being computed by other processes; waiting for them (claims older than %gs "
                     "are taken over)", len(held), claims.timeout_s)
        while held:
            time.sleep(min(1.0, claims.heartbeat_s))
            still = []
            for i in held:
                if not overwrite and finished(i):
                    result.elsewhere.append(i)
                    advance(i)
                elif not attempt(i):
                    still.append(i)
            held = still
        if not overwrite and claims.folder.is_dir():
            claims.sweep({names[i] for i in result.skipped})
    finally:  # also when work() let an error through: no empty claims folder is left behind
        if tried is None:
            claims.remove_if_empty()
    return result
