"""Claims on a shared output folder: exclusive, taken over when stale, sharded deterministically.

The multi-process tests run tests/prediction/claim_worker.py (run_cases over six stand-in cases, no model), so
each process starts in well under a second.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medseg.errors import ConfigError
from medseg.prediction.cases import Case, run_cases
from medseg.prediction.claims import CLAIMS_FOLDER, ClaimFolder, ClaimOwner, Sharing, parse_shard, shard_indices

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("claim_worker.py")
NAMES = [f"case{i}" for i in range(6)]


def _start(**opts: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(WORKER), json.dumps(opts, default=str)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str]) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def _computed(log: Path) -> list[str]:
    return sorted(line.split()[0] for line in log.read_text().splitlines())


def _write_claim(folder: ClaimFolder, name: str, *, host: str, pid: int, start: str | None = None,
                 age_s: float = 0.0, generation: int = 0) -> Path:
    folder.folder.mkdir(parents=True, exist_ok=True)
    path = folder.path(name, generation)
    path.write_text(json.dumps({"case": name, "host": host, "pid": pid, "process_start": start}))
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------------------------------- claim files
def test_claim_is_exclusive_and_released(tmp_path):
    folder = ClaimFolder(tmp_path)
    claim = folder.acquire("a")
    assert claim is not None and claim.path == tmp_path / CLAIMS_FOLDER / "a@0.claim"
    owner = folder.owner(claim.path)
    assert (owner.host, owner.pid) == (socket.gethostname(), os.getpid())
    assert folder.acquire("a") is None  # held by a live process (this one)
    assert folder.acquire("a@0") is not None  # a case whose name looks like a claim generation is another case
    claim.release()
    assert not claim.path.exists()
    again = folder.acquire("a")
    assert again is not None and again.path.name == "a@0.claim"
    again.release()


def test_claim_of_a_dead_pid_on_this_host_is_taken_over(tmp_path, caplog):
    folder = ClaimFolder(tmp_path)
    pid = _dead_pid()
    stale = _write_claim(folder, "a", host=socket.gethostname(), pid=pid)
    with caplog.at_level(logging.WARNING, logger="medseg.prediction.claims"):
        claim = folder.acquire("a")
    assert claim is not None and claim.path.name == "a@1.claim"
    assert f"taking over the stale claim of pid {pid} on {socket.gethostname()}" in caplog.text
    assert folder.acquire("a") is None  # the new claim is live: a second taker loses
    claim.release()
    assert not stale.exists() and not claim.path.exists()


def test_claim_of_a_reused_pid_is_taken_over(tmp_path):
    folder = ClaimFolder(tmp_path)
    me = ClaimOwner.this_process()
    if me.process_start is None:
        pytest.skip("no /proc here: pid start times cannot be read")
    _write_claim(folder, "a", host=me.host, pid=me.pid, start=str(int(me.process_start) - 1))
    assert folder.acquire("a") is not None
    _write_claim(folder, "b", host=me.host, pid=me.pid, start=me.process_start)
    assert folder.acquire("b") is None


def test_claim_from_another_host_is_stale_only_after_the_timeout(tmp_path):
    folder = ClaimFolder(tmp_path, timeout_s=600)
    _write_claim(folder, "fresh", host="elsewhere.invalid", pid=1, age_s=590)
    _write_claim(folder, "old", host="elsewhere.invalid", pid=1, age_s=610)
    _write_claim(folder, "garbled", host="x", pid=1, age_s=0)
    folder.path("garbled", 0).write_text("{not json")  # owner died while writing it: the heartbeat decides
    assert folder.acquire("fresh") is None
    assert folder.acquire("garbled") is None
    claim = folder.acquire("old")
    assert claim is not None and claim.path.name == "old@1.claim"


def test_stale_claims_of_finished_cases_are_swept(tmp_path):
    folder = ClaimFolder(tmp_path)
    dead = _write_claim(folder, "done", host=socket.gethostname(), pid=_dead_pid())
    live = _write_claim(folder, "done2", host=socket.gethostname(), pid=os.getpid())
    other = _write_claim(folder, "running", host=socket.gethostname(), pid=_dead_pid())
    folder.sweep({"done", "done2"})
    assert (dead.exists(), live.exists(), other.exists()) == (False, True, True)


def test_heartbeat_keeps_a_claim_fresh(tmp_path):
    holder = ClaimFolder(tmp_path, timeout_s=0.4)  # heartbeat every 0.1 s
    claim = holder.acquire("a")
    assert claim is not None
    time.sleep(0.8)
    assert time.time() - claim.path.stat().st_mtime < 0.4
    assert not ClaimFolder(tmp_path, timeout_s=0.4).is_stale(claim.path)
    claim.release()
    stale = _write_claim(holder, "b", host="elsewhere.invalid", pid=1)
    time.sleep(0.5)
    assert holder.is_stale(stale)


# ------------------------------------------------------------------------------------------- shards
def test_shards_partition_sorted_names_round_robin():
    names = ["d", "b", "e", "a", "c", "f", "g"]  # sorted: a b c d e f g
    shards = [shard_indices(names, (i, 3)) for i in range(3)]
    assert [[names[i] for i in s] for s in shards] == [["d", "a", "g"], ["b", "e"], ["c", "f"]]
    assert sorted(i for s in shards for i in s) == list(range(len(names)))
    assert shard_indices(names, None) == list(range(7))


@pytest.mark.parametrize("text", ["3/3", "0/0", "a/b", "-1/3", "1", "1/2/3", "", "1.0/2"])
def test_bad_shard_is_refused(text):
    with pytest.raises(ConfigError, match=r"--shard: got .*expected I/N with whole numbers 0 <= I < N"):
        parse_shard(text)


def test_sharing_refuses_bad_values():
    assert parse_shard(" 2/3 ") == (2, 3)
    with pytest.raises(ConfigError, match="claim_timeout_s: got 0"):
        Sharing(0)
    with pytest.raises(ConfigError, match=r"shard: got \(2, 2\)"):
        Sharing(shard=(2, 2))
    with pytest.raises(ConfigError, match="--claim-timeout: got -1"):
        Sharing.from_options(None, -1.0)


def test_a_shard_runs_only_its_cases(tmp_path):
    cases = [Case(n, tmp_path / n) for n in NAMES]
    seen: list[str] = []

    def run(case: Case, todo: set[Path]) -> list[Path]:  # todo: the outputs missing (here the one .txt)
        seen.append(case.name)
        (tmp_path / f"{case.name}.txt").write_text("x")
        return [tmp_path / f"{case.name}.txt"]

    report = run_cases(cases, lambda c: tmp_path / f"{c.name}.txt", run, overwrite=False, progress=False,
                       sharing=Sharing(shard=(1, 4)))
    assert seen == report.predicted == ["case1", "case5"]
    assert not (tmp_path / CLAIMS_FOLDER).exists()


def test_an_error_that_stops_the_run_leaves_no_claims_folder(tmp_path):
    """An error a case lets through (no MedsegError: not recorded as the case's failure) ends the loop; its claim
    is released and the claims folder, left empty, is removed."""
    cases = [Case(n, tmp_path / n) for n in NAMES]

    def run(case: Case, todo: set[Path]) -> list[Path]:
        assert (tmp_path / CLAIMS_FOLDER / f"{case.name}@0.claim").is_file()  # claimed while it runs
        raise NotADirectoryError(20, "Not a directory", str(tmp_path / "x"))

    with pytest.raises(NotADirectoryError):
        run_cases(cases, lambda c: tmp_path / f"{c.name}.txt", run, overwrite=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- processes
@pytest.mark.slow
def test_two_processes_started_together_never_compute_one_case_twice(tmp_path):
    out, log, go = tmp_path / "out", tmp_path / "log.txt", tmp_path / "go"
    procs = [_start(out=out, log=log, go=go, delay=0.2) for _ in range(2)]
    time.sleep(0.5)
    go.touch()
    a, b = (_finish(p) for p in procs)
    assert _computed(log) == NAMES  # every case computed, none twice
    assert sorted(a["predicted"] + b["predicted"]) == NAMES
    for r in (a, b):  # each process accounts for every case once
        assert sorted(r["predicted"] + [s[:-4] for s in r["skipped"]] + r["elsewhere"]) == NAMES
    assert sorted(p.name for p in out.iterdir()) == [f"{n}.txt" for n in NAMES]  # no claims folder, no temp file
    assert all((out / f"{n}.txt").read_text() == f"{n}\n" for n in NAMES)


@pytest.mark.slow
def test_a_killed_process_leaves_no_partial_output_and_a_rerun_finishes(tmp_path, caplog):
    out, log = tmp_path / "out", tmp_path / "log.txt"
    proc = _start(out=out, log=log, delay=60)
    claim = out / CLAIMS_FOLDER / "case0@0.claim"
    deadline = time.time() + 60
    while not (log.exists() and claim.exists()) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # inside the atomic write of case0
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert claim.exists() and not (out / "case0.txt").exists()
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == []
    cases = [Case(n, tmp_path / n) for n in NAMES]

    def run(case: Case, todo: set[Path]) -> list[Path]:  # todo: the outputs missing (here the one .txt)
        (out / f"{case.name}.txt").write_text(f"{case.name}\n")
        return [out / f"{case.name}.txt"]

    with caplog.at_level(logging.WARNING, logger="medseg.prediction.claims"):
        report = run_cases(cases, lambda c: out / f"{c.name}.txt", run, overwrite=False, progress=False,
                           sharing=Sharing(600))
    assert report.predicted == NAMES
    assert f"case0: taking over the stale claim of pid {proc.pid}" in caplog.text
    assert not (out / CLAIMS_FOLDER).exists()


@pytest.mark.slow
def test_workers_of_one_run_try_each_case_once_even_with_overwrite_or_failure(tmp_path):
    out, log, go = tmp_path / "out", tmp_path / "log.txt", tmp_path / "go"
    out.mkdir()
    for n in NAMES:
        (out / f"{n}.txt").write_text("old\n")
    common = {"out": out, "log": log, "go": go, "delay": 0.1, "overwrite": True, "run_id": "r1", "fail": ["case3"]}
    procs = [_start(**common) for _ in range(2)]
    time.sleep(0.5)
    go.touch()
    a, b = (_finish(p) for p in procs)
    assert _computed(log) == NAMES  # case3 failed once and was not tried again by the other worker
    assert sorted(a["predicted"] + b["predicted"]) == [n for n in NAMES if n != "case3"]
    assert a["failed"] + b["failed"] == ["in3"]
    assert [(out / f"{n}.txt").read_text() for n in NAMES] == [f"{n}\n" if n != "case3" else "old\n" for n in NAMES]
