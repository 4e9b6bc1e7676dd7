"""Heap reuse during CPU inference: freed feature maps are reused (no fresh pages), and given back afterwards.

Page faults are counted by the kernel (``ru_minflt``), so the checks do not depend on the machine's load. Each case
runs in a fresh interpreter: the heap of the test process holds whatever earlier tests left there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from medseg.sliding_window.heap import heap_reuse_available, reuse_freed_memory
from medseg.sliding_window.predict import sliding_window_predict

pytestmark = pytest.mark.skipif(not heap_reuse_available(), reason="needs glibc (Linux); elsewhere it does nothing")

#: Three passes of a small pointwise conv net over 128^3: feature maps of 64 MiB, each a fresh mmap without reuse.
PROBE = textwrap.dedent(
    """
    import json, resource
    import torch
    from medseg.sliding_window.heap import reuse_freed_memory

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 1), torch.nn.ReLU(), torch.nn.Conv3d(8, 8, 1),
                              torch.nn.ReLU(), torch.nn.Conv3d(8, 2, 1)).eval()
    x = torch.rand(1, 1, 128, 128, 128)

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def rss_mb():
        return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024

    def churn():
        before = faults()
        with torch.no_grad():
            for _ in range(3):
                y = net(x)
                del y
        return faults() - before

    churn()  # imports, kernels and first-touch costs out of the way
    out = {"plain": churn()}
    with reuse_freed_memory("cpu") as active:
        out["active"] = active
        churn()  # the heap grows once
        out["reused"] = churn()
        out["rss_inside"] = rss_mb()
    out["rss_after"] = rss_mb()
    out["plain_again"] = churn()
    print(json.dumps(out))
    """
)
#: Pages of 4 KiB in one 64 MiB feature map.
MAP_PAGES = 16384


def _probe(env: dict[str, str] | None = None) -> dict:
    full = {**os.environ, **(env or {})}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=full, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_inside_and_given_back_after() -> None:
    out = _probe()
    assert out["active"] is True
    # Without reuse every feature map of every pass is a fresh mmap: several maps' worth of first-touch faults.
    assert out["plain"] > 3 * 2 * MAP_PAGES
    # With reuse the heap keeps the freed maps: later passes touch no new pages.
    assert out["reused"] < out["plain"] * 0.1
    # On exit the freed heap goes back to the system, and big blocks are mmapped (faulted) again.
    assert out["rss_after"] < out["rss_inside"] - 64
    assert out["plain_again"] > 3 * 2 * MAP_PAGES


@pytest.mark.parametrize("env", [{"MEDSEG_HEAP_REUSE": "0"}, {"MALLOC_MMAP_MAX_": "65536"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}])
def test_switched_off_by_the_environment(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert heap_reuse_available() is False
    with reuse_freed_memory("cpu") as active:
        assert active is False


def test_cuda_devices_are_left_alone() -> None:
    with reuse_freed_memory("cuda") as active:
        assert active is False


def test_nested_calls_keep_the_setting_until_the_outermost_ends() -> None:
    import resource

    def churn() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(4):
            block = torch.empty(8 * 2**20)
            block.fill_(1.0)
            del block
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    with reuse_freed_memory("cpu"):
        with reuse_freed_memory("cpu"):
            churn()
        inner_done = churn()  # the outer call is still active: blocks reused
    assert inner_done < 4 * 8192 * 0.5


def test_sliding_window_result_is_the_same_with_and_without_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 3, 1)).eval()
    image = torch.rand(1, 1, 40, 36, 44)
    with_reuse = sliding_window_predict(net, image, 16, output="probabilities", precision="fp32", backend="eager")
    monkeypatch.setenv("MEDSEG_HEAP_REUSE", "0")
    without = sliding_window_predict(net, image, 16, output="probabilities", precision="fp32", backend="eager")
    assert torch.equal(with_reuse, without)
