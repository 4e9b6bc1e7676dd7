"""The training engine on synthetic 2D data: outputs, exact resume, guards."""

from __future__ import annotations

import json

import pytest

from medseg.config import validate_config
from medseg.data.synthetic.polyp import make_polyp_dataset
from medseg.errors import MedsegError, OutputExistsError
from medseg.training.loop import train
from medseg.training.run_folder import RunLock, RunLockedError


@pytest.fixture(scope="module")
def polyps(tmp_path_factory):
    return make_polyp_dataset(tmp_path_factory.mktemp("polyps") / "data", n=12, size=(32, 40), seed=3)


def _cfg(raw, root, **train):
    raw = {**raw, "data": {**raw["data"], "root": str(root)}, "train": {**raw["train"], **train}}
    return validate_config(raw)


def test_run_folder_contents(tmp_path, polyps, tiny_2d_config):
    result = train(_cfg(tiny_2d_config, polyps), run_dir=tmp_path / "run", progress=False)
    run = result.run_dir
    for name in ("config.yaml", "labels.json", "log.json", "curves.png", "preview.png", "splits/train.txt",
                 "splits/val.txt", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    records = json.loads((run / "log.json").read_text())
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("train_loss", "val_loss", "val_dice", "val_iou", "lr", "epoch_time_s", "val_per_class"):
        assert key in records[0]
    assert set(records[0]["val_per_class"]) == {"polyp"}
    assert len((run / "splits/val.txt").read_text().split()) == 3  # 12 * 0.25
    assert json.loads((run / "labels.json").read_text())["classes"][1]["values"] == [255]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.best_epoch in (1, 2) and result.epochs_run == 2


def test_resume_continues_exactly(tmp_path, polyps, tiny_2d_config):
    raw = {**tiny_2d_config, "train": {**tiny_2d_config["train"], "scheduler": {"name": "none"}}}
    full = train(_cfg(raw, polyps, max_epochs=3), run_dir=tmp_path / "full", progress=False)
    part = train(_cfg(raw, polyps, max_epochs=2), run_dir=tmp_path / "part", progress=False)
    train(_cfg(raw, polyps, max_epochs=3), run_dir=part.run_dir, resume=True, progress=False)
    a = json.loads((full.run_dir / "log.json").read_text())
    b = json.loads((part.run_dir / "log.json").read_text())
    assert [r["epoch"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b, strict=True):
        assert ra["train_loss"] == rb["train_loss"]
        assert ra["val_loss"] == rb["val_loss"]


def test_resume_with_changed_config_refused_unless_forced(tmp_path, polyps, tiny_2d_config):
    run = train(_cfg(tiny_2d_config, polyps, max_epochs=1), run_dir=tmp_path / "run", progress=False).run_dir
    with pytest.raises(MedsegError, match=r"config differs .*train\.lr: 0\.01 -> 0\.02"):
        train(_cfg(tiny_2d_config, polyps, max_epochs=2, lr=0.02), run_dir=run, resume=True, progress=False)
    result = train(_cfg(tiny_2d_config, polyps, max_epochs=2, lr=0.02), run_dir=run, resume=True, force=True,
                   progress=False)
    assert result.epochs_run == 2


def test_run_of_an_older_version_resumes_when_new_keys_keep_their_defaults(tmp_path, polyps, tiny_2d_config):
    import torch

    run = train(_cfg(tiny_2d_config, polyps, max_epochs=1), run_dir=tmp_path / "run", progress=False).run_dir
    last = run / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    for key in ("hue", "saturation"):  # keys this version added: a run started before them has none
        del ckpt["config"]["data"]["augment"][key]
    torch.save(ckpt, last)
    result = train(_cfg(tiny_2d_config, polyps, max_epochs=2), run_dir=run, resume=True, progress=False)
    assert result.epochs_run == 2
    ckpt["config"]["data"]["augment"]["hue"] = 0.1  # a value the new run does not have is still a change
    torch.save(ckpt, last)
    with pytest.raises(MedsegError, match=r"config differs .*data\.augment\.hue: 0\.1 -> 0\.0"):
        train(_cfg(tiny_2d_config, polyps, max_epochs=3), run_dir=run, resume=True, progress=False)


def test_existing_run_folder_needs_overwrite(tmp_path, polyps, tiny_2d_config):
    cfg = _cfg(tiny_2d_config, polyps, max_epochs=1)
    train(cfg, run_dir=tmp_path / "run", progress=False)
    with pytest.raises(OutputExistsError, match="run folder exists and is not empty; use --resume"):
        train(cfg, run_dir=tmp_path / "run", progress=False)
    assert train(cfg, run_dir=tmp_path / "run", overwrite=True, progress=False).epochs_run == 1


def test_second_writer_is_locked_out(tmp_path, polyps, tiny_2d_config):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with RunLock(run), pytest.raises(RunLockedError, match="another training .* is writing into this run folder"):
        train(_cfg(tiny_2d_config, polyps, max_epochs=1), run_dir=run, overwrite=True, progress=False)


def test_early_stopping(tmp_path, polyps, tiny_2d_config):
    cfg = _cfg(tiny_2d_config, polyps, max_epochs=6, early_stopping_patience=1, early_stopping_min_delta=10.0,
               best_metric="loss")
    result = train(cfg, run_dir=tmp_path / "run", progress=False)
    assert result.stopped_early and result.epochs_run == 2  # epoch 2 is no improvement of 10 over epoch 1


def test_resume_without_checkpoint(tmp_path, polyps, tiny_2d_config):
    with pytest.raises(MedsegError, match="cannot resume: no checkpoints/last.pt"):
        train(_cfg(tiny_2d_config, polyps), run_dir=tmp_path, resume=True, progress=False)


def test_workers_change_speed_not_results(tmp_path, polyps, tiny_2d_config):
    a = train(_cfg(tiny_2d_config, polyps, max_epochs=1), run_dir=tmp_path / "a", progress=False)
    raw = {**tiny_2d_config, "data": {**tiny_2d_config["data"], "num_workers": 2}}
    b = train(_cfg(raw, polyps, max_epochs=1), run_dir=tmp_path / "b", progress=False)
    la = json.loads((a.run_dir / "log.json").read_text())
    lb = json.loads((b.run_dir / "log.json").read_text())
    assert la[0]["train_loss"] == pytest.approx(lb[0]["train_loss"], rel=1e-6)


def test_tensorboard_logs(tmp_path, polyps, tiny_2d_config):
    pytest.importorskip("tensorboard")
    result = train(_cfg(tiny_2d_config, polyps, max_epochs=1, tensorboard=True), run_dir=tmp_path / "r",
                   progress=False)
    events = list((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_training_and_prediction(tmp_path, polyps, tiny_2d_config):
    import medseg

    result = train(_cfg(tiny_2d_config, polyps, max_epochs=1, device="cuda", amp=True), run_dir=tmp_path / "r",
                   progress=False)
    predictor = medseg.Predictor.from_checkpoint(result.last_checkpoint, device="cuda")
    mask = predictor.predict(sorted((polyps / "images").glob("*.png"))[0])
    assert mask.shape == (32, 40) and set(mask.ravel().tolist()) <= {0, 255}
