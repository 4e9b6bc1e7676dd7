"""``medseg predict --workers N``, torchrun ranks and ``--shard``: outputs identical to one process, one line per
bad option. Uses the session's tiny 2D checkpoint (tests/conftest.py ``ckpt2d``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medseg.cli.main import app
from medseg.errors import ConfigError
from medseg.prediction.batch import predict_paths
from medseg.prediction.case_records import RECORDS_FOLDER
from medseg.prediction.claims import CLAIMS_FOLDER, Sharing
from medseg.prediction.predictor import Predictor
from medseg.prediction.workers import check_parallel, torchrun_rank

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (the per-case records in the hidden folder too) by its relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("args", "message"), [
    (["--shard", "3/3"], "error: --shard: got '3/3'; expected I/N with whole numbers 0 <= I < N"),
    (["--shard", "0/0"], "error: --shard: got '0/0'"),
    (["--shard", "a/b"], "error: --shard: got 'a/b'"),
    (["--workers", "0"], "error: --workers: got 0; allowed: a whole number >= 1"),
    (["--workers", "2", "--shard", "0/2"], "error: --workers 2 with --shard 0/2: give one"),
    (["--claim-timeout", "0"], "error: --claim-timeout: got 0; allowed: seconds > 0"),
])
def test_bad_sharing_options_are_one_line_exit_2(tmp_path, args, message):
    result = runner.invoke(app, ["predict", str(tmp_path / "none.pt"), str(tmp_path), "-o", str(tmp_path / "o"),
                                 *args])
    assert result.exit_code == 2
    assert result.output.startswith(message) and result.output.count("\n") == 1


def test_workers_or_shard_under_torchrun_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert torchrun_rank() == (0, 2, 0)
    result = runner.invoke(app, ["predict", str(tmp_path / "none.pt"), str(tmp_path), "-o", str(tmp_path / "o"),
                                 "--workers", "2"])
    assert result.exit_code == 2 and result.output.startswith("error: --workers 2 under torchrun")
    with pytest.raises(ConfigError, match="shard under torchrun"):
        check_parallel(1, Sharing(shard=(0, 2)), True)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError, match="RANK=2 WORLD_SIZE=2"):
        torchrun_rank()


def test_python_api_refuses_bad_workers(ckpt2d, tmp_path):
    ckpt, images = ckpt2d
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match=f"workers: got {bad!r}"):
            predict_paths(predictor, [images], tmp_path / "o", workers=bad)
    assert not (tmp_path / "o").exists()


def test_three_shards_together_write_what_one_process_writes(ckpt2d, tmp_path):
    ckpt, images = ckpt2d
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    whole = predict_paths(predictor, [images], tmp_path / "one", progress=False)
    taken = [predict_paths(predictor, [images], tmp_path / "shards", sharing=Sharing(shard=(i, 3)),
                           progress=False).predicted for i in range(3)]
    assert taken == [["case_000", "case_003"], ["case_001", "case_004"], ["case_002", "case_005"]]
    assert len(whole.predicted) == 6 and _files(tmp_path / "shards") == _files(tmp_path / "one")


@pytest.mark.slow
def test_two_workers_write_each_output_once_identical_to_one_process(ckpt2d, tmp_path):
    ckpt, images = ckpt2d
    single = runner.invoke(app, ["predict", str(ckpt), str(images), "-o", str(tmp_path / "one"), "--device", "cpu"])
    assert single.exit_code == 0, single.output
    result = runner.invoke(app, ["predict", str(ckpt), str(images), "-o", str(tmp_path / "two"), "--device", "cpu",
                                 "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "6 cases predicted, 0 skipped, 0 failed, 0 finished by other processes (2 workers)" in result.output
    assert _files(tmp_path / "two") == _files(tmp_path / "one")  # masks and their records: no claims folder
    assert sorted(_files(tmp_path / "one")) == sorted(
        [f"case_{i:03d}.png" for i in range(6)] + [f"{RECORDS_FOLDER}/case_{i:03d}.json" for i in range(6)])


@pytest.mark.slow
def test_torchrun_ranks_share_the_cases_and_rank_0_prints_the_total(ckpt2d, tmp_path):
    ckpt, images = ckpt2d
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "case_000.png").write_bytes(b"kept")  # finished before: skipped, counted once
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "medseg.cli.main", "predict", str(ckpt), str(images), "-o", str(tmp_path / "out"), "--device", "cpu"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if "cases predicted" in line]
    assert lines == ["5 cases predicted, 1 skipped, 0 failed, 0 finished by other processes (2 workers)"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != RECORDS_FOLDER) == [
        f"case_{i:03d}.png" for i in range(6)]
    assert (tmp_path / "out" / "case_000.png").read_bytes() == b"kept"
    assert sorted(p.name for p in (tmp_path / "out" / RECORDS_FOLDER).iterdir()) == [  # each by its own rank
        f"case_{i:03d}.json" for i in range(1, 6)]
    assert not (tmp_path / "out" / CLAIMS_FOLDER).exists()
