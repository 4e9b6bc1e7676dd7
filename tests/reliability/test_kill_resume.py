"""Crash-safe training through the real CLI in subprocesses: SIGKILL mid-epoch, --resume, compare with an
uninterrupted run; kills during checkpoint writes; the run-folder lock across processes; extending a run."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from medseg.checkpoint import load_checkpoint, save_checkpoint
from medseg.cli.main import app
from medseg.data.synthetic.polyp import make_polyp_dataset
from medseg.training.run_folder import RunLock

# Runs the real CLI, but reports each training step to a marker file so the test can kill mid-epoch.
WRAPPER = '''
import os, sys
from contextlib import contextmanager
import medseg.training.epoch as tr

_orig = tr.progress_bar

@contextmanager
def _bar(description, total, *, enabled=True):
    with _orig(description, total, enabled=False) as advance:
        def step(**fields):
            advance(**fields)
            with open(os.environ["MEDSEG_STEP_MARKER"], "a") as fh:
                fh.write(description.split("/")[0] + "\\n")
        yield step

tr.progress_bar = _bar
from medseg.cli.main import app
app(sys.argv[1:], prog_name="medseg")
'''
MAX_EPOCHS = 3
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("kill")
    data = make_polyp_dataset(tmp / "data", n=16, size=(48, 48), seed=5)
    raw = {
        "data": {"kind": "images2d", "root": str(data), "image_size": [32, 32], "val_fraction": 0.25,
                 "labels": {"classes": {0: "background", 255: "polyp"}, "tolerance": 20},
                 "augment": {"rotate_degrees": 10, "scale": 0.1}},
        "model": {"spatial_dims": 2, "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "train": {"max_epochs": MAX_EPOCHS, "batch_size": 2, "lr": 0.01, "device": "cpu", "preview_samples": 0,
                  "seed": 7, "scheduler": {"name": "cosine"}},
    }
    (tmp / "exp.yaml").write_text(yaml.safe_dump(raw))
    (tmp / "wrapper.py").write_text(WRAPPER)
    return tmp


def _train(setup: Path, run: Path, *extra: str, marker: Path | None = None) -> subprocess.Popen:
    env = {**ENV, "MEDSEG_STEP_MARKER": str(marker or setup / f"{run.name}.steps")}
    return subprocess.Popen([sys.executable, str(setup / "wrapper.py"), "train", str(setup / "exp.yaml"), *extra,
                             "-q"], cwd=setup, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _log(run: Path) -> list[dict]:
    return json.loads((run / "log.json").read_text())


@pytest.fixture(scope="module")
def killed_and_resumed(setup):
    """An uninterrupted run and, beside it, a run SIGKILLed in the middle of epoch 2 then resumed."""
    full, part = setup / "full", setup / "part"
    marker = setup / "part.steps"
    a = _train(setup, full, "-o", str(full))
    b = _train(setup, part, "-o", str(part), marker=marker)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and b.poll() is None:
        steps = marker.read_text().split("\n") if marker.exists() else []
        if steps.count("epoch 2") >= 2:
            b.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    b.wait(60)
    assert b.returncode == -signal.SIGKILL, f"not killed in time: rc {b.returncode}, {b.stderr.read()[-2000:]}"
    at_kill = {"records": len(_log(part)), "steps_in_epoch_2": marker.read_text().split("\n").count("epoch 2"),
               "checkpoint_epoch": load_checkpoint(part / "checkpoints" / "last.pt")["epoch"]}
    resumed = _train(setup, part, "--resume", str(part))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    out_a, err_a = a.communicate(timeout=300)
    assert a.returncode == 0, err_a[-3000:]
    return full, part, at_kill


def test_resumed_run_matches_uninterrupted_run_exactly(killed_and_resumed):
    full, part, at_kill = killed_and_resumed
    assert at_kill["records"] == 1 and at_kill["checkpoint_epoch"] == 0  # killed inside epoch 2
    assert 2 <= at_kill["steps_in_epoch_2"] < 6
    a, b = _log(full), _log(part)
    assert [r["epoch"] for r in b] == list(range(1, MAX_EPOCHS + 1))
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_loss", "val_loss", "val_dice", "lr"):
            assert ra[key] == rb[key], (ra["epoch"], key, ra[key], rb[key])  # bit-identical on CPU
    wa = load_checkpoint(full / "checkpoints" / "last.pt")["state_dict"]
    wb = load_checkpoint(part / "checkpoints" / "last.pt")["state_dict"]
    for name, tensor in wa.items():
        torch.testing.assert_close(wb[name], tensor, rtol=0, atol=0)
    print(f"kill-and-resume: killed at epoch 2 step {at_kill['steps_in_epoch_2']}, resumed, "
          f"{len(b)} epochs identical to the uninterrupted run")


def test_finished_run_extends_with_max_epochs(killed_and_resumed, setup):
    _, part, _ = killed_and_resumed
    before = _log(part)
    result = CliRunner().invoke(app, ["train", str(setup / "exp.yaml"), "--resume", str(part),
                                      "--set", f"train.max_epochs={MAX_EPOCHS + 1}", "-q"])
    assert result.exit_code == 0, result.output
    after = _log(part)
    assert [r["epoch"] for r in after] == list(range(1, MAX_EPOCHS + 2))
    assert [r["train_loss"] for r in after[:MAX_EPOCHS]] == [r["train_loss"] for r in before]
    changed = CliRunner().invoke(app, ["train", str(setup / "exp.yaml"), "--resume", str(part),
                                       "--set", "train.lr=0.5", "-q"])
    assert changed.exit_code == 1 and "train.lr: 0.01 -> 0.5" in changed.stderr


def test_second_training_process_is_locked_out(killed_and_resumed, setup):
    full, _, _ = killed_and_resumed
    files = {p: p.read_bytes() for p in (full / "checkpoints").iterdir()} | {full / "log.json":
                                                                            (full / "log.json").read_bytes()}
    with RunLock(full):  # this test process is "the other training"
        resume = _train(setup, full, "--resume", str(full), "--set", "train.max_epochs=9")
        overwrite = _train(setup, full, "-o", str(full), "--overwrite")
        r_out, r_err = resume.communicate(timeout=120)
        o_out, o_err = overwrite.communicate(timeout=120)
    for proc, err in ((resume, r_err), (overwrite, o_err)):
        assert proc.returncode == 1, err[-2000:]
        assert f"another training (pid {os.getpid()}) is writing into this run folder" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    for path, data in files.items():  # --overwrite did not clear the locked folder
        assert path.read_bytes() == data


def _save_forever(path: str) -> None:
    import numpy as np

    n = 0
    big = np.arange(2_000_000, dtype=np.float32)
    while True:
        n += 1
        w = torch.from_numpy(big + np.float32(n))  # numpy arithmetic: no OpenMP pool in the forked child
        save_checkpoint({"config": {}, "labels": {}, "state_dict": {"w": w}, "in_channels": 1,
                         "out_channels": 2, "n": n}, path)


def test_kill_during_checkpoint_writes_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(0)
    loaded = []
    for _ in range(6):
        proc = ctx.Process(target=_save_forever, args=(str(path),))
        proc.start()
        deadline = time.monotonic() + 30
        while not path.exists() and proc.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert path.exists(), f"writer made no checkpoint (exit code {proc.exitcode})"
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        ckpt = load_checkpoint(path)  # never truncated: the previous or the new file
        torch.testing.assert_close(ckpt["state_dict"]["w"][:3], torch.tensor([0.0, 1.0, 2.0]) + ckpt["n"],
                                   rtol=0, atol=0)
        loaded.append(ckpt["n"])
    assert len(loaded) == 6 and min(loaded) >= 1
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert all(n.startswith(".last.pt.") and n.endswith(".tmp") for n in leftovers)  # never a final name
