"""Resumable batch prediction: killed midway, a rerun skips complete outputs and redoes the rest; partial
outputs never carry final names; inputs stay byte-identical; an output folder inside the inputs is refused."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medseg.cli.main import app
from medseg.prediction.case_records import RECORDS_FOLDER, case_record

#: Cases in the batch: enough that a kill after the third leaves many to redo, few enough to keep the rerun short.
N_CASES = 16


@pytest.fixture(scope="module")
def model_and_images(tmp_path_factory):
    from medseg.config import validate_config
    from medseg.data.synthetic.polyp import make_polyp_dataset
    from medseg.training.loop import train

    tmp = tmp_path_factory.mktemp("predres")
    data = make_polyp_dataset(tmp / "data", n=6, size=(32, 32), seed=2)
    cfg = validate_config({
        "data": {"kind": "images2d", "root": str(data), "image_size": [32, 32], "val_fraction": 0.34,
                 "labels": {"classes": {0: "background", 255: "polyp"}, "tolerance": 20}},
        "model": {"spatial_dims": 2, "channels": [4, 8], "strides": [2], "num_res_units": 0},
        "train": {"max_epochs": 1, "batch_size": 2, "device": "cpu", "preview_samples": 0},
    })
    ckpt = train(cfg, run_dir=tmp / "run", progress=False).last_checkpoint
    images = tmp / "inputs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_CASES):  # large frames so that one case takes a noticeable time (fast PNG compression)
        frame = rng.integers(0, 255, (900, 1200, 3), dtype=np.uint8)
        Image.fromarray(frame).save(images / f"case_{i:02d}.png", compress_level=1)
    return ckpt, images


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_killed_batch_resumes_without_partial_outputs(model_and_images, tmp_path):
    ckpt, images = model_and_images
    before = _hashes(images)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "medseg.cli.main", "predict", str(ckpt), str(images), "-o",
                             str(out), "--device", "cpu", "-q"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and len([p for p in out.iterdir() if not p.name.startswith(".")]) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL, "prediction finished before it could be killed"
    finals = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    assert 3 <= len(finals) < N_CASES
    for p in finals:  # every final name holds a complete, decodable mask of the input's size
        mask = np.asarray(Image.open(p))
        assert mask.shape == (900, 1200) and set(np.unique(mask)) <= {0, 255}
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert all(n.endswith(".tmp") or n in (".medseg-claims", RECORDS_FOLDER) for n in leftovers)  # and the claim
    for p in finals:  # a written record is complete; a mask whose record the kill prevented has none
        record = case_record(out, p.stem)
        assert not record.exists() or json.loads(record.read_text())["settings"]["threshold"] is None
    assert all((out / f"{r.stem}.png").exists() for r in (out / RECORDS_FOLDER).glob("*.json"))  # no lone record

    rerun = CliRunner().invoke(app, ["predict", str(ckpt), str(images), "-o", str(out), "--device", "cpu", "-q"])
    assert rerun.exit_code == 0, rerun.output
    assert f"{N_CASES - len(finals)} files written" in rerun.stdout
    assert f"{len(finals)} existing skipped" in rerun.stdout
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        f"case_{i:02d}.png" for i in range(N_CASES)]
    claims = out / ".medseg-claims"  # the dead process's claim was taken over or swept, then the folder removed
    assert not claims.exists(), sorted(p.name for p in claims.iterdir())
    assert _hashes(images) == before  # inputs never touched
    print(f"predict kill-and-resume: killed after {len(finals)}/{N_CASES} cases, rerun wrote {N_CASES - len(finals)}")


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_in_input_folder_refused(model_and_images, where):
    ckpt, images = model_and_images
    before = _hashes(images)
    out = images if where == "same" else images / "preds"
    result = CliRunner().invoke(app, ["predict", str(ckpt), str(images), "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 2 and "is inside input folder" in result.stderr
    assert _hashes(images) == before and not (images / "preds").exists()


def test_output_folder_of_input_file_refused(model_and_images):
    ckpt, images = model_and_images
    result = CliRunner().invoke(app, ["predict", str(ckpt), str(images / "case_00.png"), "-o", str(images)])
    assert result.exit_code == 2 and "is the folder of input case_00.png" in result.stderr
