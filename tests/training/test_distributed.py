"""Distributed training: each rank's share of an epoch, the doors, and real 2-process runs (gloo, CPU).

The multi-process tests start ``python -m torch.distributed.run`` (or two plain processes with torchrun's
variables) on a tiny synthetic polyp set. Their model uses instance norm, which has no batch statistics, so that
2 processes with 2 samples each compute exactly the gradient of 1 process with 4 (with batch norm each process
would normalise with its own half-batch statistics; ``train.sync_batchnorm`` fixes that on GPUs only).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import medseg
from medseg.checkpoint import load_checkpoint
from medseg.cli.main import app
from medseg.config import validate_config
from medseg.config.schema import AugmentConfig
from medseg.data.augmentation import BatchAugment
from medseg.data.synthetic.polyp import make_polyp_dataset
from medseg.errors import ConfigError, MedsegError
from medseg.seeds import epoch_seed
from medseg.training.distributed import (
    Dist,
    Share,
    epoch_batches,
    launch_local,
    micro_batch_size,
    start_distributed,
    wrap_model,
)
from medseg.training.loop import train

ROOT = Path(medseg.__file__).resolve().parents[1]


def _raw(root: Path, **train: object) -> dict:
    return {
        "data": {"kind": "images2d", "root": str(root), "image_size": [32, 32], "val_fraction": 0.25,
                 "labels": {"classes": {0: "background", 255: "polyp"}, "tolerance": 20},
                 "augment": {"rotate_degrees": 10, "scale": 0.1}},
        "model": {"spatial_dims": 2, "channels": [4, 8], "strides": [2], "num_res_units": 0, "norm": "instance"},
        # sgd: Adam would turn the rounding noise in the (null) gradients of biases before instance norm into
        # full-size steps, so the weights would differ where the network does not depend on them
        "train": {"max_epochs": 1, "batch_size": 4, "lr": 0.05, "optimizer": "sgd", "momentum": 0.9,
                  "device": "cpu", "preview_samples": 0, "amp": False,  # fp32: bf16 rounding would hide the check
                  "scheduler": {"name": "none"}, **train},
    }


@pytest.fixture(scope="module")
def polyps(tmp_path_factory):
    return make_polyp_dataset(tmp_path_factory.mktemp("polyps") / "data", n=12, size=(32, 32), seed=3)


# --- each rank's share of an epoch ---------------------------------------------------------------------------

def test_epoch_batches_cut_the_one_process_order():
    n, batch = 11, 4
    # the order a shuffled DataLoader with the epoch's generator gives one process (an independent implementation)
    gen = torch.Generator().manual_seed(epoch_seed(5, 2))
    loader = torch.utils.data.DataLoader(range(n), batch_size=batch, shuffle=True, drop_last=True, generator=gen)
    expected = [b.tolist() for b in loader]
    assert epoch_batches(n, batch, 5, 2) == expected
    for world, accum in ((2, 1), (2, 2), (4, 1)):
        shares = [epoch_batches(n, batch, 5, 2, Share(r, world, accum)) for r in range(world)]
        assert len({len(s) for s in shares}) == 1  # every rank takes the same number of micro-batches
        steps = [sum((s[i * accum + k] for s in shares for k in range(accum)), []) for i in range(len(expected))]
        assert steps == expected  # rank-major shares, each cut into accumulation micro-batches
        flat = [i for s in shares for mb in s for i in mb]
        assert len(flat) == len(set(flat)) == 8  # disjoint; the 3 left over are dropped on every world size


def test_a_set_smaller_than_a_batch_is_repeated_to_fill_it():
    assert sorted(sum(epoch_batches(3, 4, 0, 0, Share(0, 1, 2)) + epoch_batches(3, 4, 0, 0, Share(0, 1, 1)), [])) \
        == sorted([0, 1, 2] * 2 + [epoch_batches(3, 4, 0, 0)[0][3]] * 2)
    assert [len(b) for b in epoch_batches(3, 4, 0, 0, Share(1, 2))] == [2]


def test_batch_that_does_not_split_is_refused():
    assert micro_batch_size(12, 2, 3) == 2
    with pytest.raises(ConfigError, match=r"train\.batch_size: 6 .* 4 processes x 1 .* multiple of 4"):
        micro_batch_size(6, 4, 1)


def test_augmentation_of_a_sample_does_not_depend_on_its_batch():
    aug = BatchAugment(AugmentConfig(probability=1.0, noise_std=0.1, contrast=0.2), spatial_dims=2)
    image, label = torch.rand(3, 1, 16, 16), (torch.rand(3, 1, 16, 16) > 0.5).long()

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    whole_i, whole_l = aug(image, label, gens([7, 8, 9]))
    for i, s in enumerate((7, 8, 9)):
        one_i, one_l = aug(image[i:i + 1], label[i:i + 1], gens([s]))
        torch.testing.assert_close(one_i[0], whole_i[i])
        assert torch.equal(one_l[0], whole_l[i])
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        aug(image, label, gens([1, 2]))


# --- the doors ------------------------------------------------------------------------------------------------

def test_grad_accumulation_below_one_is_a_config_error(polyps):
    with pytest.raises(ConfigError, match="train.grad_accumulation"):
        validate_config(_raw(polyps, grad_accumulation=0))


@pytest.mark.parametrize(("args", "needle"), [
    (["--nproc", "0"], "--nproc: got 0; allowed: 1 or more"),
    (["--nproc", "abc"], "Invalid value for '--nproc': Input should be a valid integer"),
    (["--nproc", "3"], "train.batch_size: 4 samples per step cannot be split evenly over 3 processes"),
])
def test_nproc_door(tmp_path, polyps, args, needle):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(_raw(polyps)))
    result = CliRunner().invoke(app, ["train", str(cfg), "--run-dir", str(tmp_path / "run"), *args],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert needle in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_more_processes_than_cuda_devices_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"4 training processes on this node but 2 CUDA device\(s\).*--nproc 2"):
        start_distributed("cuda", 60)


def test_sync_batchnorm_on_cpu_processes_is_refused():
    with pytest.raises(ConfigError, match="train.sync_batchnorm: .*CUDA devices only"):
        wrap_model(torch.nn.BatchNorm2d(2), Dist(0, 2), torch.device("cpu"), sync_batchnorm=True)


def test_grad_accumulation_gives_the_weights_of_one_big_batch(tmp_path, polyps):
    one = train(validate_config(_raw(polyps)), run_dir=tmp_path / "a", progress=False)
    two = train(validate_config(_raw(polyps, grad_accumulation=2)), run_dir=tmp_path / "b", progress=False)
    wa, wb = (load_checkpoint(r.last_checkpoint)["state_dict"] for r in (one, two))
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5)


# --- real processes (gloo on CPU) -------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", **extra}
    env.pop("CI", None)
    return env


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_on_one(tmp_path, polyps, caplog):
    """2 x 2 samples per step = 1 x 4 samples; then the 2-process run continues on 1 process."""
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(_raw(polyps)))
    run2 = tmp_path / "two"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
         "-m", "medseg", "train", str(cfg_file), "--run-dir", str(run2)],
        env=_env(), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "effective batch: 4 samples per optimizer step = 2 process(es) x 1 accumulation step(s) x 2" in proc.stderr
    assert proc.stdout.count("run folder:") == 1  # rank 0 alone reports (and writes)

    one = train(validate_config(_raw(polyps)), run_dir=tmp_path / "one", progress=False)
    w1, w2 = load_checkpoint(one.last_checkpoint), load_checkpoint(run2 / "checkpoints" / "last.pt")
    assert w2["train_state"]["world_size"] == 2
    for key in w1["state_dict"]:
        torch.testing.assert_close(w2["state_dict"][key], w1["state_dict"][key], rtol=1e-4, atol=1e-5)
    r1, r2 = (json.loads((r / "log.json").read_text())[0] for r in (one.run_dir, run2))
    assert r2["steps"] == r1["steps"] == 2
    for key in ("train_loss", "val_loss", "val_dice"):  # training loss summed over ranks, validation sharded
        assert r2[key] == pytest.approx(r1[key], rel=1e-4), key

    full = train(validate_config(_raw(polyps, max_epochs=2)), run_dir=tmp_path / "full", progress=False)
    with caplog.at_level(logging.INFO, logger="medseg"):
        train(validate_config(_raw(polyps, max_epochs=2)), run_dir=run2, resume=True, progress=False)
    assert "at epoch 2: a run trained with 2 process(es) on 1" in caplog.text
    a, b = (json.loads((r / "log.json").read_text()) for r in (full.run_dir, run2))
    assert [r["epoch"] for r in b] == [1, 2]
    for ra, rb in zip(a, b, strict=True):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-4)
        assert rb["val_loss"] == pytest.approx(ra["val_loss"], rel=1e-4)


@pytest.mark.slow
def test_a_killed_rank_stops_the_other_with_a_clear_error(tmp_path, polyps):
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(_raw(polyps, max_epochs=500, distributed_timeout_s=20)))
    run = tmp_path / "run"
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "medseg", "train", str(cfg_file), "--run-dir", str(run)],
            env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                     MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for r in (0, 1)
    ]
    try:
        deadline = time.monotonic() + 180
        while not (run / "checkpoints" / "last.pt").is_file():
            assert time.monotonic() < deadline and procs[0].poll() is None, procs[0].communicate()[1][-2000:]
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        _, err = procs[0].communicate(timeout=60)
        waited = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert procs[0].returncode == 1
    assert waited < 20 + 30  # the timeout, plus process teardown on a busy machine
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: rank 0 of 2: lost the other training processes while ")
    assert "train.distributed_timeout_s = 20 s" in last and last.endswith(f"continue with --resume {run}")
    assert "Traceback" not in err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] >= 0  # the folder is still resumable


@pytest.mark.parametrize(("exitcode", "error", "needle"), [
    (-9, MedsegError, "rank 1 was killed by SIGKILL; the launcher stopped the others"),
    (2, ConfigError, "rank 1 exited with code 2 (its error is above)"),
])
def test_launcher_names_the_process_that_failed_first(monkeypatch, exitcode, error, needle):
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    first = ProcessFailure(local_rank=1, pid=11, exitcode=exitcode, error_file="")
    later = ProcessFailure(local_rank=0, pid=10, exitcode=-15, error_file="")
    later.timestamp = first.timestamp + 1  # stopped by the launcher after rank 1 failed

    def fail(args):
        assert args.nproc_per_node == "2" and args.standalone and args.module
        assert args.training_script == "medseg" and args.training_script_args == ["train", "cfg.yaml"]
        raise ChildFailedError("medseg", {0: later, 1: first})

    monkeypatch.setattr(torchrun, "run", fail)
    with pytest.raises(error, match=re.escape(needle)) as info:
        launch_local(2, ["train", "cfg.yaml"])
    assert type(info.value) is error and "--resume" not in str(info.value)  # no run folder with a checkpoint
