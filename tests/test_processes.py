"""Pool workers end with their parent: ``medseg preprocess --workers N`` killed with SIGKILL leaves no worker."""

from __future__ import annotations

import json
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


# --- huge pages for PyTorch's CPU allocations -------------------------------------------------------------------

_FAULTS = """
import json, os, resource, sys
from medseg.processes import prefer_huge_pages
asked = prefer_huge_pages()
import torch
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
before = faults()
for _ in range(3):
    block = torch.empty(2**24)  # 64 MiB: 16384 pages of 4 KiB, 32 of 2 MiB
    block.fill_(1.0)
    del block
print(json.dumps({"asked": asked, "faults": faults() - before, "env": os.environ.get("THP_MEM_ALLOC_ENABLE")}))
"""


def _run_faults(env_extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    env.update(env_extra)
    done = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="transparent huge pages are a Linux feature")
def test_huge_pages_cut_the_page_faults_of_big_blocks() -> None:
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    mode = thp.read_text() if thp.exists() else "[never]"
    if "[never]" in mode:
        pytest.skip("transparent huge pages are off on this machine")
    on = _run_faults({})
    off = _run_faults({"THP_MEM_ALLOC_ENABLE": "0"})
    assert on["asked"] is True and on["env"] == "1"
    assert off["asked"] is False and off["env"] == "0"  # the user's choice is kept
    assert on["faults"] < 3 * 16384 / 5  # 2 MiB pages: a few hundred faults, not 3 x 16384
    if "[madvise]" in mode:  # ("always" gives big blocks huge pages whether PyTorch asks or not)
        assert off["faults"] > 3 * 16384 * 0.9  # every 4 KiB page of every block faulted


def test_huge_pages_are_not_asked_for_once_torch_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch  # noqa: F401  (the test process has it already; this states the precondition)

    from medseg.processes import prefer_huge_pages

    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    assert prefer_huge_pages() is False
    assert "THP_MEM_ALLOC_ENABLE" not in os.environ


def test_the_medseg_command_asks_for_huge_pages_before_torch() -> None:
    code = (
        "import os, sys\n"
        "sys.argv = ['medseg', '--help']\n"
        "from medseg.cli.main import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('THP=' + os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = "THP=1" if sys.platform.startswith("linux") else "THP=unset"
    assert done.stdout.strip().splitlines()[-1] == expected
