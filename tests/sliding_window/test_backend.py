"""Forward-pass backends of the sliding window: the doors, label agreement with fp32 eager, the probe cache."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from monai.networks.nets import UNet

from medseg.config.kinds import DataKind
from medseg.config.schema import InferConfig
from medseg.errors import ConfigError
from medseg.prediction.settings import apply_infer_overrides
from medseg.sliding_window import backend as backend_mod
from medseg.sliding_window import probe_cache
from medseg.sliding_window.backend import check_backend, choose_backend, network_signature, using_backend
from medseg.sliding_window.predict import sliding_window_predict


def _sphere(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A noisy bright ball at a random place in an n^3 volume, and its mask: (1, 1, n, n, n) each."""
    gen = torch.Generator().manual_seed(seed)
    centre = (torch.rand(3, generator=gen) * 0.4 + 0.3) * n
    radius = float(torch.rand(1, generator=gen)) * n / 6 + n / 6
    grid = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float32),) * 3, indexing="ij"))
    mask = ((grid - centre[:, None, None, None]) ** 2).sum(0) <= radius**2
    image = mask.float() * 0.6 + 0.2 + 0.15 * torch.randn((n, n, n), generator=gen)
    return image[None, None], mask[None, None].long()


@pytest.fixture(scope="module")
def trained_net() -> torch.nn.Module:
    """A batch-norm 3D UNet trained (a few seconds) until it segments the ball decisively."""
    torch.manual_seed(0)
    net = UNet(3, 1, 2, (4, 8), (2,), num_res_units=1, norm="batch")
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    pairs = [_sphere(20, seed) for seed in range(4)]
    images, masks = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])[:, 0]
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(net(images), masks)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def test_backend_doors():
    assert check_backend("compile") == "compile"
    allowed = "backend must be one of 'auto', 'eager', 'channels_last', 'compile', got 'fast'"
    with pytest.raises(ValueError, match=allowed):
        sliding_window_predict(torch.nn.Identity(), torch.zeros(1, 1, 8, 8), 8, backend="fast")
    with pytest.raises(ValueError, match="got 3"):
        check_backend(3)
    with pytest.raises(ValueError, match="backend"):
        InferConfig(backend="onnx")
    with pytest.raises(ConfigError, match=r"^--backend: got 'fast'.*auto, eager, channels_last or compile"):
        apply_infer_overrides(InferConfig(), {"backend": "fast"}, DataKind.VOLUMES3D, spell=lambda n: f"--{n}")
    with pytest.raises(ConfigError, match=r"^backend: got 1 \(int\)"):
        apply_infer_overrides(InferConfig(), {"backend": 1}, DataKind.VOLUMES3D)
    assert apply_infer_overrides(InferConfig(), {"backend": "eager"}, DataKind.VOLUMES3D).backend == "eager"
    with pytest.raises(ValueError, match="concrete backend"):
        with using_backend(torch.nn.Conv3d(1, 1, 1), "auto"):
            pass


def test_channels_last_bf16_labels_agree_with_fp32_eager(trained_net):
    image, mask = _sphere(36, seed=11)  # unseen, and larger than the 20^3 roi: several tiles
    fp32 = sliding_window_predict(trained_net, image, 20, output="labels", precision="fp32", backend="eager")
    assert 2 * int(((fp32 == 1) & (mask == 1)).sum()) / int((fp32 == 1).sum() + (mask == 1).sum()) > 0.8  # trained
    for backend in ("channels_last", "eager"):
        fast, stats = sliding_window_predict(trained_net, image, 20, output="labels", precision="bf16",
                                             backend=backend, return_stats=True)
        assert stats.backend == backend and stats.precision == "bf16"
        assert float((fast == fp32).float().mean()) >= 0.995  # stated agreement: 99.5 % of the voxels
    # fp32 channels-last computes the same convolutions in another layout: the logits match closely
    eager = sliding_window_predict(trained_net, image, 20, output="logits", precision="fp32", backend="eager")
    cl = sliding_window_predict(trained_net, image, 20, output="logits", precision="fp32", backend="channels_last")
    torch.testing.assert_close(cl, eager, atol=1e-4, rtol=1e-4)


def test_using_backend_converts_the_layout_in_place_and_keeps_the_parameters():
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 3, padding=1))
    params = list(net.parameters())
    x = torch.rand(1, 1, 6, 6, 6)
    with using_backend(net, "channels_last") as forward:
        assert net[2].weight.is_contiguous(memory_format=torch.channels_last_3d)
        assert not net[2].weight.is_contiguous()
        y = forward(x)
    assert net[2].weight.is_contiguous(memory_format=torch.channels_last_3d)  # left so: no cost on the next call
    assert all(a is b for a, b in zip(params, net.parameters(), strict=True))
    torch.testing.assert_close(y, net.to(memory_format=torch.contiguous_format)(x))
    with using_backend(net, "eager") as forward:
        assert forward is net and net[2].weight.is_contiguous()


def test_probe_runs_once_and_its_cached_choice_is_reused(tmp_path, monkeypatch):
    calls = []
    real_probe = backend_mod._probe

    def counting_probe(network, window, dtype):
        calls.append(tuple(window.shape))
        return real_probe(network, window, dtype)

    monkeypatch.setattr(backend_mod, "_probe", counting_probe)
    monkeypatch.setattr(backend_mod, "_memory_cache", {})
    monkeypatch.setattr(backend_mod, "PROBE_MIN_VOXELS", 1)
    cache = tmp_path / "probe" / "backends.json"
    net = UNet(3, 1, 2, (4, 8), (2,), num_res_units=0).eval()
    window = torch.rand(1, 1, 8, 8, 8)
    first = choose_backend(net, window, None, cache_file=cache)
    assert first in ("eager", "channels_last") and calls == [(1, 1, 8, 8, 8)]
    stored = json.loads(cache.read_text())
    assert stored.pop(probe_cache.MARKER) == 1  # marks the file as a medseg backend cache
    (key, entry), = stored.items()
    assert network_signature(net) in key and "fp32" in key and "1x1x8x8x8" in key
    assert entry["backend"] == first and set(entry["seconds"]) == {"eager", "channels_last"}
    assert entry["agreement"]["eager"] == 1.0
    assert [p.name for p in cache.parent.iterdir()] == ["backends.json"]  # written atomically: no temp file left
    assert choose_backend(net, window, None, cache_file=cache) == first  # this process: memory
    monkeypatch.setattr(backend_mod, "_memory_cache", {})  # a new process: the file
    other = UNet(3, 1, 2, (4, 8), (2,), num_res_units=0).eval()  # same structure, other weights
    assert choose_backend(other, window, None, cache_file=cache) == first
    assert len(calls) == 1
    # another dtype, window or structure is another key: probed, and added beside the first
    choose_backend(net, window, torch.bfloat16, cache_file=cache)
    choose_backend(UNet(3, 1, 3, (4, 8), (2,), num_res_units=0).eval(), window, None, cache_file=cache)
    assert len(calls) == 3 and json.loads(cache.read_text()).pop(probe_cache.MARKER) == 1
    assert len(json.loads(cache.read_text())) == 1 + 3  # the marker and three entries


def test_probe_cache_file_is_named_by_the_environment_else_in_the_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(backend_mod.CACHE_FILE_ENV, str(tmp_path / "probe.json"))
    assert backend_mod.default_cache_file() == tmp_path / "probe.json"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(backend_mod.CACHE_FILE_ENV, "~/elsewhere/probe.json")
    assert backend_mod.default_cache_file() == tmp_path / "home" / "elsewhere" / "probe.json"
    for unset in (lambda: monkeypatch.setenv(backend_mod.CACHE_FILE_ENV, ""),
                  lambda: monkeypatch.delenv(backend_mod.CACHE_FILE_ENV)):
        unset()
        assert backend_mod.default_cache_file() == tmp_path / "home" / ".cache" / "medseg" / "forward_backends.json"


def test_the_suite_keeps_probe_results_in_its_temporary_folder(tmp_path_factory, monkeypatch):
    """conftest.py points the probe cache into the session's temporary folder, for this process and the processes
    tests start; a probe without an explicit file writes there."""
    path = backend_mod.default_cache_file()
    assert path.is_relative_to(tmp_path_factory.getbasetemp()) and path.name == "forward_backends.json"
    assert not path.is_relative_to(Path.home() / ".cache")
    child = subprocess.run([sys.executable, "-c", "from medseg.sliding_window.backend import default_cache_file; "
                            "print(default_cache_file())"], capture_output=True, text=True, timeout=60,
                           cwd=Path(__file__).resolve().parents[2], env=os.environ.copy())
    assert child.returncode == 0, child.stderr[-2000:]
    assert Path(child.stdout.strip()) == path
    monkeypatch.setattr(backend_mod, "_memory_cache", {})
    monkeypatch.setattr(backend_mod, "PROBE_MIN_VOXELS", 1)
    net = torch.nn.Conv3d(1, 2, 1).eval()
    window = torch.rand(1, 1, 4, 4, 4)
    choice = choose_backend(net, window, None)
    stored = json.loads(path.read_text())
    assert any(network_signature(net) in key and entry["backend"] == choice for key, entry in stored.items())


def test_probe_prefers_a_backend_whose_labels_agree(monkeypatch):
    """A faster backend with other labels is refused; small jobs and conv-free networks are not probed."""
    net = torch.nn.Conv2d(1, 2, 1).eval()
    window = torch.rand(1, 1, 8, 8)

    def fake_time(forward, x, dtype):  # channels_last "measures" faster but swaps the two classes
        y = forward(x)
        return (2.0, y) if forward is net else (1.0, y.flip(1))  # using_backend yields the module itself for eager

    monkeypatch.setattr(backend_mod, "_time_forward", fake_time)
    entry = backend_mod._probe(net, window, None)
    assert entry["seconds"] == {"eager": 2.0, "channels_last": 1.0}
    assert entry["agreement"] == {"eager": 1.0, "channels_last": 0.0}
    assert entry["backend"] == "eager"
    monkeypatch.setattr(backend_mod, "_time_forward", lambda f, x, d: (2.0 if f is net else 1.0, f(x)))
    assert backend_mod._probe(net, window, None)["backend"] == "channels_last"  # agreeing and faster: chosen
    monkeypatch.setattr(backend_mod, "_memory_cache", {})
    assert choose_backend(net, window, None) == "eager"  # 64 voxels: below PROBE_MIN_VOXELS, not probed
    assert choose_backend(torch.nn.Identity(), torch.rand(1, 1, 256, 256, 256), None) == "eager"  # no convolution


# --- the probe cache file: only a medseg backend cache is read or written ------------------------------------------

_PROBED = {"backend": "channels_last", "seconds": {"eager": 2.0, "channels_last": 1.0},
           "agreement": {"eager": 1.0, "channels_last": 1.0}}


@pytest.fixture()
def fake_probe(monkeypatch):
    """choose_backend(cache file, window side) on a tiny network, each call as in a new process, with a fixed probe
    result; the calls to the probe are counted."""
    calls: list[int] = []
    monkeypatch.setattr(backend_mod, "_probe", lambda net, window, dtype: calls.append(1) or dict(_PROBED))
    monkeypatch.setattr(backend_mod, "_memory_cache", {})
    monkeypatch.setattr(backend_mod, "PROBE_MIN_VOXELS", 1)
    monkeypatch.setattr(probe_cache, "_refused", set())
    net = torch.nn.Conv3d(1, 2, 1).eval()

    def choose(cache: Path | None, side: int = 4) -> str:
        backend_mod._memory_cache.clear()  # as in a new process: the file decides
        return choose_backend(net, torch.rand(1, 1, side, side, side), None, cache_file=cache)

    choose.calls = calls  # type: ignore[attr-defined]
    choose.key = lambda side=4: backend_mod._probe_key(net, (1, 1, side, side, side), torch.device("cpu"), None)
    return choose


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def _within(seconds: float, fifo: Path, call):
    """``call()``'s result; fails (after unblocking a reader stuck on ``fifo``) when it takes over ``seconds``."""
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the stuck open returns, its read sees EOF
        thread.join(seconds)
        pytest.fail(f"reading the probe cache blocked on the FIFO {fifo}")
    return result[0]


def test_a_fifo_as_cache_file_is_neither_waited_on_nor_replaced(tmp_path, fake_probe, caplog, monkeypatch):
    fifo = tmp_path / "probe.fifo"
    os.mkfifo(fifo)
    with caplog.at_level(logging.DEBUG, logger="medseg.sliding_window"):
        assert _within(5, fifo, lambda: fake_probe(fifo)) == "channels_last"  # the probe's choice holds
        assert _within(5, fifo, lambda: fake_probe(fifo, side=5)) == "channels_last"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and fake_probe.calls == [1, 1]
    assert [p.name for p in tmp_path.iterdir()] == ["probe.fifo"]  # no temporary file left either
    (line,) = _warnings(caplog)  # one warning for the file, not one per probe
    assert str(fifo) in line and "is a FIFO, not a regular file" in line and "MEDSEG_BACKEND_CACHE_FILE" in line
    assert any("ignoring the cache file" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)
    # a FIFO swapped in after the stat said "regular file": the open does not block, the open file is checked
    real_stat = os.stat

    def stale_stat(path, *args, **kwargs):
        info = real_stat(path, *args, **kwargs)
        return os.stat_result((stat.S_IFREG | 0o644, *tuple(info)[1:])) if Path(path) == fifo else info

    monkeypatch.setattr(os, "stat", stale_stat)
    found = _within(5, fifo, lambda: probe_cache.read_probe_cache(fifo))
    assert found.entries == {} and found.problem == "is a FIFO, not a regular file"


@pytest.mark.parametrize("kind", [stat.S_IFCHR, stat.S_IFBLK])
def test_a_device_as_cache_file_is_neither_read_nor_replaced(tmp_path, fake_probe, caplog, monkeypatch, kind):
    """A device (/dev/null, /dev/zero) is simulated: a regular file that os.stat reports as a device. It holds a
    cache choosing eager, so reading it would show; replacing it would change its inode."""
    device = tmp_path / "device"
    device.write_text(json.dumps({probe_cache.MARKER: 1, fake_probe.key(): {"backend": "eager"}}))
    before = (device.read_bytes(), os.stat(device).st_ino)
    real_stat = os.stat

    def device_stat(path, *args, **kwargs):
        info = real_stat(path, *args, **kwargs)
        return os.stat_result((kind | 0o666, *tuple(info)[1:])) if Path(path) == device else info

    monkeypatch.setattr(os, "stat", device_stat)
    assert fake_probe(device) == "channels_last" and fake_probe.calls == [1]
    monkeypatch.setattr(os, "stat", real_stat)
    assert (device.read_bytes(), os.stat(device).st_ino) == before
    (line,) = _warnings(caplog)
    assert f"{device}: it is a {'character' if kind == stat.S_IFCHR else 'block'} device, not a regular file" in line


def test_a_folder_or_a_file_over_the_size_cap_is_not_read(tmp_path, fake_probe, caplog, monkeypatch):
    folder = tmp_path / "folder"
    folder.mkdir()
    assert fake_probe(folder) == "channels_last" and list(folder.iterdir()) == []
    big = tmp_path / "big.json"
    big.write_text(json.dumps({probe_cache.MARKER: 1, fake_probe.key(): {"backend": "eager"}, "pad": "x" * 64}))
    before = big.read_bytes()
    monkeypatch.setattr(probe_cache, "MAX_CACHE_BYTES", 64)
    assert fake_probe(big) == "channels_last" and big.read_bytes() == before and fake_probe.calls == [1, 1]
    folder_line, big_line = _warnings(caplog)
    assert "is a folder, not a regular file" in folder_line
    assert f"is larger ({len(before)} bytes) than a backend cache can be (64 bytes)" in big_line


@pytest.mark.parametrize("content", [b"my notes\n", b"[1, 2, 3]\n", b"{}\n", b'{"name": "settings"}', b"{not json",
                                     b'"text"', b"\xff\xfe\x00", b'{"a": {"backend": 1}}'],
                         ids=["text", "array", "empty", "object", "broken", "string", "not-utf8", "bad-entry"])
def test_an_unrelated_file_is_left_byte_identical(tmp_path, fake_probe, caplog, monkeypatch, content):
    other = tmp_path / "notes.json"
    other.write_bytes(content)
    monkeypatch.setenv(backend_mod.CACHE_FILE_ENV, str(other))
    assert fake_probe(None) == "channels_last"
    assert other.read_bytes() == content and [p.name for p in tmp_path.iterdir()] == ["notes.json"]
    (line,) = _warnings(caplog)
    assert line.startswith(f"forward backend probe: not caching the result in {other}: it is ")
    assert line.endswith("it is left unchanged (set MEDSEG_BACKEND_CACHE_FILE to another file)")


def test_a_cache_without_the_marker_is_read_and_extended(tmp_path, fake_probe):
    """Files written before the marker existed stay caches: read, and written back with the marker."""
    old = tmp_path / "forward_backends.json"
    old.write_text(json.dumps({fake_probe.key(): {"backend": "eager", "seconds": {}, "agreement": {}}}))
    assert fake_probe(old) == "eager" and fake_probe.calls == []  # the old entry, unprobed
    assert fake_probe(old, side=5) == "channels_last" and fake_probe.calls == [1]
    assert json.loads(old.read_text()) == {probe_cache.MARKER: 1, fake_probe.key(): {"backend": "eager", "seconds": {},
                                                                                    "agreement": {}},
                                           fake_probe.key(5): _PROBED}


def test_a_symlinked_cache_file_writes_its_target(tmp_path, fake_probe, caplog):
    target = tmp_path / "real" / "backends.json"
    link = tmp_path / "link.json"
    link.symlink_to(target)  # dangling: the target is created
    assert fake_probe(link) == "channels_last"
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text()) == {probe_cache.MARKER: 1, fake_probe.key(): _PROBED}
    assert fake_probe(link, side=5) == "channels_last"  # an existing target is read and extended
    assert link.is_symlink() and set(json.loads(target.read_text())) == {probe_cache.MARKER, fake_probe.key(),
                                                                         fake_probe.key(5)}
    assert [p.name for p in target.parent.iterdir()] == ["backends.json"]
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    to_notes = tmp_path / "to_notes.json"
    to_notes.symlink_to(notes)
    assert fake_probe(to_notes) == "channels_last" and notes.read_text() == "keep me" and to_notes.is_symlink()
    (line,) = _warnings(caplog)
    assert f"{to_notes} (-> {notes}): it is not JSON" in line


def test_a_whitespace_cache_variable_counts_as_unset(tmp_path, fake_probe, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(backend_mod.CACHE_FILE_ENV, " \t")
    default = tmp_path / "home" / ".cache" / "medseg" / "forward_backends.json"
    assert backend_mod.default_cache_file() == default
    assert fake_probe(None) == "channels_last"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"] and json.loads(default.read_text())[
        fake_probe.key()] == _PROBED
    monkeypatch.setenv(backend_mod.CACHE_FILE_ENV, f"  {tmp_path / 'named.json'}\n")
    assert backend_mod.default_cache_file() == tmp_path / "named.json"


# --- instance norm on channels-last memory ---------------------------------------------------------------------

from medseg.sliding_window.layers import channels_last_instance_norms  # noqa: E402


@pytest.mark.parametrize("spatial", [2, 3])
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_instance_norm_by_sample_equals_pytorchs(spatial: int, affine: bool, batch: int) -> None:
    torch.manual_seed(spatial * 10 + batch)
    norm_cls = torch.nn.InstanceNorm2d if spatial == 2 else torch.nn.InstanceNorm3d
    layout = torch.channels_last if spatial == 2 else torch.channels_last_3d
    norm = norm_cls(5, affine=affine).eval()
    if affine:
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    x = (torch.randn(batch, 5, *([9] * spatial)) * 3 + 2).contiguous(memory_format=layout)
    expected = norm(x.contiguous())
    with channels_last_instance_norms(norm) as changed:
        got = norm(x)
    assert changed == 1
    assert got.is_contiguous(memory_format=layout)
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)
    assert "forward" not in vars(norm)  # restored


def test_instance_norm_with_running_stats_is_left_alone() -> None:
    tracked = torch.nn.InstanceNorm3d(4, track_running_stats=True).eval()
    plain = torch.nn.InstanceNorm3d(4)
    net = torch.nn.Sequential(tracked, plain)
    with channels_last_instance_norms(net) as changed:
        assert changed == 1
        assert "forward" not in vars(tracked) and "forward" in vars(plain)
    assert "forward" not in vars(plain)


def test_instance_norm_patch_is_undone_on_error() -> None:
    norm = torch.nn.InstanceNorm2d(3)
    with pytest.raises(RuntimeError, match="boom"), channels_last_instance_norms(norm):
        raise RuntimeError("boom")
    assert "forward" not in vars(norm)


def test_instance_norm_unet_channels_last_matches_eager() -> None:
    from monai.networks.nets import UNet

    from medseg.sliding_window.predict import sliding_window_predict

    torch.manual_seed(0)
    net = UNet(3, 1, 3, (8, 16, 32), (2, 2), num_res_units=1, norm="instance").eval()
    image = torch.rand(1, 1, 40, 48, 36)
    eager = sliding_window_predict(net, image, 32, output="logits", precision="fp32", backend="eager")
    fast = sliding_window_predict(net, image, 32, output="logits", precision="fp32", backend="channels_last")
    torch.testing.assert_close(fast, eager, atol=1e-4, rtol=1e-4)
    assert not any("forward" in vars(m) for m in net.modules())


# --- batch norm folded into the convolutions ---------------------------------------------------------------------

from medseg.sliding_window.layers import folded_batch_norms  # noqa: E402


def _trained_bn_unet(spatial: int) -> torch.nn.Module:
    """A batch-norm UNet whose running statistics and affine weights are not the identity."""
    torch.manual_seed(spatial)
    net = UNet(spatial, 1, 3, (8, 16, 32), (2, 2), num_res_units=1, norm="batch")
    net.train()
    with torch.no_grad():
        for _ in range(3):  # batch statistics move the running ones away from 0 / 1
            net(torch.rand(2, 1, *([16] * spatial)) * 4 - 1)
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return net.eval()


@pytest.mark.parametrize("spatial", [2, 3])
def test_folded_network_computes_what_the_network_computes(spatial: int) -> None:
    net = _trained_bn_unet(spatial)
    x = torch.rand(2, 1, *([24] * spatial))
    folded = folded_batch_norms(net)
    assert folded is not net
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    transposed = [m for m in folded.modules() if isinstance(m, torch.nn.modules.conv._ConvTransposeNd)]
    assert transposed  # the up path's transposed convolutions were folded too
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), atol=2e-5, rtol=1e-4)
    assert all(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in norms)  # the network is unchanged


def test_folding_follows_every_change_to_the_network() -> None:
    net = _trained_bn_unet(2)
    x = torch.rand(1, 1, 16, 16)
    norm = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    changes = [
        lambda: next(net.parameters()).add_(0.5),  # an optimizer step, load_state_dict: in place
        lambda: next(net.parameters()).data.mul_(2),  # through .data: no version bump
        lambda: norm.running_mean.data.fill_(3.0),
        lambda: setattr(norm, "eps", 10.0),
    ]
    for change in changes:
        with torch.no_grad():
            change()
            torch.testing.assert_close(folded_batch_norms(net)(x), net(x), atol=2e-5, rtol=1e-4)


class _Residual(torch.nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # conv, then conv + norm(conv): not a chain
        y = self[0](x)
        return y + self[1](y)


def test_only_plain_chains_are_folded() -> None:
    torch.manual_seed(0)
    residual = _Residual(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4))
    grouped_up = torch.nn.Sequential(torch.nn.ConvTranspose2d(4, 6, 3, padding=1, groups=2), torch.nn.BatchNorm2d(6))
    for net in (residual, grouped_up):
        norm = net[1]
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        net.eval()
        assert folded_batch_norms(net) is net
        x = torch.rand(2, net[0].in_channels, 12, 12)
        eager = sliding_window_predict(net, x, 16, output="logits", precision="fp32", backend="eager")
        fast = sliding_window_predict(net, x, 16, output="logits", precision="fp32", backend="channels_last")
        torch.testing.assert_close(fast, eager, atol=1e-5, rtol=1e-5)


def test_hooks_and_training_mode_modules_keep_the_network_unfolded() -> None:
    net = _trained_bn_unet(2)
    calls = []
    handle = net.model[0].register_forward_hook(lambda *_: calls.append(1))
    assert folded_batch_norms(net) is net
    handle.remove()
    dropout = torch.nn.Dropout(0.5).train()  # Monte Carlo dropout in an eval-mode network
    mc = torch.nn.Sequential(net, dropout)
    assert folded_batch_norms(mc) is mc


def test_batch_norm_in_training_mode_is_not_folded() -> None:
    net = _trained_bn_unet(2).train()
    assert folded_batch_norms(net) is net


def test_bn_unet_channels_last_backend_matches_eager() -> None:
    net = _trained_bn_unet(3)
    image = torch.rand(1, 1, 40, 48, 36)
    eager = sliding_window_predict(net, image, 32, output="logits", precision="fp32", backend="eager")
    fast = sliding_window_predict(net, image, 32, output="logits", precision="fp32", backend="channels_last")
    torch.testing.assert_close(fast, eager, atol=1e-4, rtol=1e-4)
