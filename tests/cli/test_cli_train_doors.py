"""``medseg train``'s refusals: a refused run folder is left exactly as it was (no ``.lock`` written, an existing one
not rewritten); a run folder path that is a file is one line, exit 2; ``--nproc 2`` refuses a run folder before it
starts any process, and an error rank 0 printed is the only line (no launcher line naming a rank)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medseg.cli.main import app

runner = CliRunner()



def _state(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` (its lock file too) with its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


@pytest.fixture()
def run(ckpt2d, tmp_path: Path) -> Path:
    """A copy of a finished one-epoch run, its ``.lock`` holding another pid and dated a day ago."""
    folder = tmp_path / "cv" / "fold_0"
    shutil.copytree(ckpt2d[0].parent.parent, folder)
    (folder / ".lock").write_text("12345")
    day_ago = (folder / ".lock").stat().st_mtime_ns - 86400 * 10**9
    os.utime(folder / ".lock", ns=(day_ago, day_ago))
    return folder


@pytest.mark.parametrize(("args", "code", "line"), [
    (["--run-dir", "{run}"], 2, "error: {run}: run folder exists and is not empty; use --resume {run} to continue "
                                "it, --overwrite to replace it, or another --run-dir"),
    (["--fold", "0", "-o", "{cv}", "--set", "data.folds=2"], 2,
     "error: {run}: run folder exists and is not empty; use --resume {run} to continue it, --overwrite to replace "
     "it, or another --run-dir"),
    (["--resume", "{run}", "--set", "train.lr=0.5"], 1,
     "error: {run}: the config differs from the one this run was started with (train.lr: 0.001 -> 0.5); resume "
     "with the same config (only train.max_epochs may change) or pass --force"),
    (["--run-dir", "{run}", "--nproc", "2"], 2,
     "error: {run}: run folder exists and is not empty; use --resume {run} to continue it, --overwrite to replace "
     "it, or another --run-dir"),
])
def test_a_refused_train_leaves_an_existing_run_folder_as_it_was(cli_refusal, run, monkeypatch, args, code, line):
    """The ``.lock`` of the run keeps its pid and date; --nproc 2 refuses before it starts any process."""
    import torch.distributed.run as torchrun

    def launched(args):
        raise AssertionError("a process was started")

    monkeypatch.setattr(torchrun, "run", launched)
    before = _state(run.parent)
    names = {"run": run, "cv": run.parent}
    got = cli_refusal(["train", run / "config.yaml", *(a.format(**names) for a in args), "-q"], code)
    assert got == line.format(**names)
    assert _state(run.parent) == before


def test_a_refused_train_writes_no_lock_into_a_folder_that_is_not_a_run(cli_refusal, tmp_path: Path):
    folder = tmp_path / "h_rd"
    folder.mkdir()
    (folder / ".hidden").write_text("x")
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"kind": "images2d", "root": str(tmp_path / "data"),
                                            "image_size": [32, 32]}, "train": {"device": "cpu"}}))
    assert cli_refusal(["train", cfg, "--run-dir", folder], 2) == (
        f"error: {folder}: run folder exists and is not empty; use --resume {folder} to continue it, --overwrite to "
        "replace it, or another --run-dir")
    assert sorted(p.name for p in folder.iterdir()) == [".hidden"]


@pytest.mark.parametrize(("where", "extra", "line"), [
    ("{f}", [], "error: {f}: is a file; --run-dir expects a run folder (new or empty)"),
    ("{f}", ["--overwrite"], "error: {f}: is a file; --run-dir expects a run folder (new or empty)"),
    ("{f}/run", [], "error: {f}/run: {f} is a file; --run-dir expects a run folder (new or empty)"),
    ("{f}", ["--nproc", "2"], "error: {f}: is a file; --run-dir expects a run folder (new or empty)"),
])
def test_a_run_folder_that_is_a_file_is_a_usage_error(cli_refusal, tmp_path: Path, where, extra, line):
    file = tmp_path / "h_rdfile"
    file.write_text("keep me")
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"kind": "images2d", "root": str(tmp_path / "data"),
                                            "image_size": [32, 32]}, "train": {"device": "cpu"}}))
    assert cli_refusal(["train", cfg, "--run-dir", where.format(f=file), *extra], 2) == line.format(f=file)
    assert file.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml", "h_rdfile"]


@pytest.mark.parametrize("first", [0, 1])
def test_a_data_error_of_train_nproc_2_is_printed_once_and_alone(tmp_path, monkeypatch, first):
    """Both processes meet the same bad mask; rank 0 prints it, rank 1 hands it to the launcher, which adds nothing
    (whichever process stopped first: the line is rank 0's) and exits with the processes' code.

    torchrun is replaced by running the two processes' command lines one after the other in this process (with
    their RANK); a real two-process run takes about 30 s here (checked by hand: the same single line)."""
    import numpy as np
    import torch.distributed.run as torchrun
    from PIL import Image
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from medseg.data.synthetic.polyp import make_polyp_dataset

    data = make_polyp_dataset(tmp_path / "data", n=4, size=(32, 32), seed=0)
    bad = sorted((data / "masks").iterdir())[0]
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(bad)
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"kind": "images2d", "root": str(data), "image_size": [32, 32], "val_fraction": 0.5,
                 "labels": {"classes": {0: "background", 255: "polyp"}, "tolerance": 20}},
        "model": {"spatial_dims": 2, "channels": [4, 8], "strides": [2], "num_res_units": 0},
        "train": {"max_epochs": 1, "batch_size": 2, "device": "cpu", "preview_samples": 0}}))
    codes: list[int] = []

    def processes(args):
        assert args.training_script_args[:2] == ["train", str(cfg)]
        for rank in (0, 1):
            monkeypatch.setenv("RANK", str(rank))
            codes.append(app(args.training_script_args, prog_name="medseg", standalone_mode=False))
        monkeypatch.delenv("RANK")
        failures = {r: ProcessFailure(local_rank=r, pid=10 + r, exitcode=codes[r], error_file="") for r in (0, 1)}
        failures[1 - first].timestamp = failures[first].timestamp + 1
        raise ChildFailedError("medseg", failures)

    monkeypatch.setattr(torchrun, "run", processes)
    result = runner.invoke(app, ["train", str(cfg), "--run-dir", str(tmp_path / "run"), "--nproc", "2", "-q"])
    assert codes == [1, 1] and result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [
        f"error: {bad}: label values 128 are not within tolerance 20 of any allowed value [0, 255] (classes "
        "{background: [0], polyp: [255]}); add them to the label map or raise the tolerance"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("sig, code, line", [
    ("SIGINT", 130, "interrupted"),
    ("SIGTERM", 1, "error: training on 2 processes stopped: the launcher got SIGTERM and stopped the processes; the "
                   "run folder keeps the last finished epoch: continue with --resume {run}"),
])
def test_a_signal_to_train_nproc_2_is_one_line_not_the_launchers_traceback(ckpt2d, tmp_path, monkeypatch, sig, code,
                                                                           line):
    """Ctrl-C reaches the launcher and every process (one process group): the processes stay quiet and the
    launcher tells it once, as a one-process run does (exit 130); another signal to the launcher is one error line.

    torchrun is replaced: each process meets the Ctrl-C inside medseg's error handler, then the launcher raises
    what torch's raises on a signal (a real Ctrl-C of a two-process run: checked by hand, the same single line)."""
    import signal

    import torch.distributed.run as torchrun
    import typer
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from medseg.cli.exits import user_errors

    def processes(args):
        for rank in (0, 1):
            monkeypatch.setenv("RANK", str(rank))
            with pytest.raises(typer.Exit) as stopped, user_errors():
                raise KeyboardInterrupt
            assert stopped.value.exit_code == 130
        monkeypatch.delenv("RANK")
        raise SignalException("got a signal", sigval=signal.Signals[sig])

    monkeypatch.setattr(torchrun, "run", processes)
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(ckpt2d[0].parent.parent / "config.yaml"), "--run-dir", str(run),
                                 "--nproc", "2", "-q"])
    assert result.exit_code == code, result.output
    assert result.stderr.splitlines() == [line.format(run=run)]


def test_a_training_process_that_lost_the_others_ends_at_once_after_its_line(monkeypatch, capsys):
    """A lost peer ends the process with os._exit after the error line (torch.distributed's teardown can block at
    exit; the real two-process case is tests/training/test_distributed.py's killed-rank test); other errors exit
    through typer as usual."""
    import os

    import typer

    from medseg.cli.exits import user_errors
    from medseg.errors import DataError
    from medseg.training.distributed import Dist

    ended: list[int] = []

    def fake_exit(code: int) -> None:
        ended.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(os, "_exit", fake_exit)
    lost = Dist(0, 2, 0, 20).lost("summing the loss", RuntimeError("Connection closed by peer"))
    with pytest.raises(SystemExit), user_errors():
        raise lost
    assert ended == [1]
    assert capsys.readouterr().err.splitlines() == [
        "error: rank 0 of 2: lost the other training processes while summing the loss (one died or did not answer "
        "within train.distributed_timeout_s = 20 s; Connection closed by peer); stopping. The run folder keeps the "
        "last finished epoch: continue with --resume"]
    with pytest.raises(typer.Exit), user_errors():
        raise DataError("a bad mask")
    assert ended == [1]
