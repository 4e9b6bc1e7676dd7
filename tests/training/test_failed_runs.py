"""Training data without foreground is refused; a run that fails before its first checkpoint leaves no folder, or
one the next run takes over; after a checkpoint --resume works."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medseg.cli.main import app
from medseg.config import validate_config
from medseg.data.synthetic.polyp import make_polyp_dataset
from medseg.errors import DataError, MedsegError
from medseg.training.loop import train
from medseg.training.run_folder import NO_CHECKPOINT_YET


@pytest.fixture(scope="module")
def polyps(tmp_path_factory):
    return make_polyp_dataset(tmp_path_factory.mktemp("polyps") / "data", n=6, size=(32, 32), seed=3)


@pytest.fixture(scope="module")
def blank(polyps, tmp_path_factory):
    """The same images with all-background masks (a wrong masks folder, or masks saved empty)."""
    root = tmp_path_factory.mktemp("blank") / "data"
    shutil.copytree(polyps, root)
    for mask in (root / "masks").iterdir():
        size = Image.open(mask).size
        Image.fromarray(np.zeros(size[::-1], np.uint8)).save(mask)
    return root


def _cfg(root, classes=None, **train):
    return validate_config({
        "data": {"kind": "images2d", "root": str(root), "image_size": [32, 32], "val_fraction": 0.34,
                 "labels": {"classes": classes or {0: "background", 255: "polyp"}, "tolerance": 20}},
        "model": {"spatial_dims": 2, "channels": [4, 8], "strides": [2], "num_res_units": 0},
        "train": {"max_epochs": 1, "batch_size": 2, "device": "cpu", "preview_samples": 0, **train},
    })


def test_all_background_masks_are_an_error_naming_the_classes(blank, tmp_path):
    with pytest.raises(DataError) as err:
        train(_cfg(blank, {0: "background", 255: "polyp", 128: "stalk"}), run_dir=tmp_path / "run", progress=False)
    assert str(err.value).startswith(
        "no foreground class appears in any of the 4 training masks (never seen: polyp, stalk); every mask is "
        "background only")


def test_class_absent_from_training_split_is_a_warning(polyps, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        result = train(_cfg(polyps, {0: "background", 255: "polyp", 128: "stalk"}), run_dir=tmp_path / "run",
                       progress=False)
    assert result.epochs_run == 1
    assert "classes absent from the 4 training masks (the network cannot learn them): stalk" in caplog.text
    assert "polyp" not in caplog.text.split("cannot learn them")[1]


def test_failed_run_removes_the_folder_it_created(blank, tmp_path):
    run = tmp_path / "runs" / "exp"
    with pytest.raises(DataError):
        train(_cfg(blank), run_dir=run, progress=False)
    assert not run.exists() and (tmp_path / "runs").is_dir()


def test_failed_run_in_existing_folder_is_taken_over_by_the_rerun(blank, polyps, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(DataError):
        train(_cfg(blank), run_dir=run, progress=False)
    assert (run / NO_CHECKPOINT_YET).is_file() and (run / "splits" / "train.txt").is_file()
    with pytest.raises(MedsegError, match="cannot resume: this run stopped before its first checkpoint; start it "
                                          r"again without --resume \(the folder is reused\)"):
        train(_cfg(polyps), run_dir=run, resume=True, progress=False)
    result = train(_cfg(polyps), run_dir=run, progress=False)  # no --overwrite needed: nothing to keep
    assert result.epochs_run == 1 and (run / "checkpoints" / "last.pt").is_file()
    assert not (run / NO_CHECKPOINT_YET).exists()
    assert train(_cfg(polyps, max_epochs=2), run_dir=run, resume=True, progress=False).epochs_run == 2


def test_failure_after_a_checkpoint_keeps_the_run_for_resume(polyps, tmp_path):
    run = tmp_path / "run"
    train(_cfg(polyps), run_dir=run, progress=False)
    with pytest.raises(MedsegError, match="run folder exists and is not empty"):
        train(_cfg(polyps), run_dir=run, progress=False)
    assert (run / "checkpoints" / "last.pt").is_file()


def test_cli_rerun_after_data_error(blank, polyps, tmp_path):
    (tmp_path / "bad.yaml").write_text(f"data: {{root: {blank}, image_size: [32, 32], labels: {{classes: "
                                       "{0: background, 255: polyp}, tolerance: 20}}\nmodel: {channels: [4, 8], "
                                       "strides: [2], num_res_units: 0}\ntrain: {max_epochs: 1, batch_size: 2, "
                                       "preview_samples: 0, device: cpu}\n")
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(tmp_path / "bad.yaml"), "-o", str(run), "-q"])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: no foreground class appears in any of the 5 training masks")  # 6 - 20 %
    assert not run.exists()
