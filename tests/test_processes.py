"""Pool workers end with their parent: ``medseg preprocess --workers N`` killed with SIGKILL leaves no worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from medseg.data import preprocessed_cache

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")

PARENT = textwrap.dedent('''
    import os, time
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context
    from medseg.processes import exit_with_parent

    def work(folder):
        open(os.path.join(folder, f"started-{os.getpid()}"), "w").close()  # the initializer has run
        time.sleep(60)  # far longer than the test: a live worker would still be here

    if __name__ == "__main__":
        print(os.getpid(), flush=True)
        with ProcessPoolExecutor(2, mp_context=get_context("spawn"), initializer=exit_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            list(pool.map(work, [os.getcwd()] * 4))
''')


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by init, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.slow
def test_pool_workers_exit_within_seconds_of_their_parent_being_killed(tmp_path):
    (tmp_path / "parent.py").write_text(PARENT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, "parent.py"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        pid = int(parent.stdout.readline())
        deadline = time.monotonic() + 20
        while len(workers) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            workers = [int(p.name.split("-")[1]) for p in tmp_path.glob("started-*")]
        assert len(workers) == 2 and all(_parent_of(w) == pid for w in workers), "the pool's 2 workers did not start"
        os.kill(pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 4  # they look once a second
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)], "workers outlived their killed parent"
    finally:
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()


def test_preprocess_pool_workers_end_with_their_parent(monkeypatch):
    seen = {}

    class Pool:
        def __init__(self, n, **kwargs):
            seen.update(kwargs)
            raise RuntimeError("stop here")

    monkeypatch.setattr(preprocessed_cache, "ProcessPoolExecutor", Pool)
    pairs = [type("P", (), {"case_id": f"c{i}"})() for i in range(2)]
    with pytest.raises(RuntimeError, match="stop here"):
        preprocessed_cache._build_missing(object(), pairs, workers=2, progress=False)  # type: ignore[arg-type]
    assert seen["initializer"].__name__ == "exit_with_parent" and seen["initargs"] == (os.getpid(),)
