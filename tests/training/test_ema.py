"""train.ema: the exponential moving average of the weights, checked against the formula, through validation,
checkpoints, resume and the CLI."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from typer.testing import CliRunner

from medseg.checkpoint import load_checkpoint
from medseg.cli.main import app
from medseg.config import validate_config
from medseg.data.label_sources import labels_from_checkpoint
from medseg.data.synthetic.polyp import make_polyp_dataset
from medseg.losses.factory import build_loss
from medseg.models.factory import build_model
from medseg.training.ema import ModelEma
from medseg.training.epoch import run_epoch
from medseg.training.loop import train
from medseg.training.task import build_task

#: tests/conftest.py's tiny_2d_config (a function-scoped fixture; the runs here are shared by the module)
RAW = {
    "data": {"kind": "images2d", "root": "data", "image_size": [32, 32], "val_fraction": 0.25,
             "labels": {"classes": {0: "background", 255: "polyp"}, "tolerance": 20},
             "augment": {"rotate_degrees": 10, "scale": 0.1}},
    "model": {"spatial_dims": 2, "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
    "train": {},
}
DECAY = 0.2  # small, so that both the warm-up (t = 1: 2/11) and the decay itself (t >= 2) are used in a few steps
TRAIN = {"max_epochs": 2, "batch_size": 4, "lr": 0.01, "device": "cpu", "preview_samples": 0,
         "scheduler": {"name": "none"}}


@pytest.fixture(scope="module")
def polyps(tmp_path_factory):
    return make_polyp_dataset(tmp_path_factory.mktemp("polyps") / "data", n=12, size=(32, 40), seed=3)


def _cfg(raw, root, **train):
    raw = {**raw, "data": {**raw["data"], "root": str(root)}, "train": {**raw["train"], **TRAIN, **train}}
    return validate_config(raw)


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory, polyps):
    """A 2-epoch run with train.ema, and the trained weights and EMA layouts seen at each update."""
    raw_cfg = RAW
    seen: list[dict[str, torch.Tensor]] = []
    layouts: list[bool] = []
    original = ModelEma.update

    def recording(self: ModelEma) -> None:
        seen.append({k: v.detach().clone() for k, v in self.source.state_dict().items()})
        weight = self.module.state_dict()["model.0.conv.unit0.conv.weight"]
        layouts.append(weight.is_contiguous(memory_format=torch.channels_last))
        original(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ModelEma, "update", recording)
        result = train(_cfg(raw_cfg, polyps, ema=DECAY), run_dir=tmp_path_factory.mktemp("ema") / "run",
                       progress=False)
    return raw_cfg, result, seen, layouts


def _ema_by_hand(states: list[dict[str, torch.Tensor]], decay: float) -> dict[str, torch.Tensor]:
    """The EMA computed here, in float64: the first state copied, then decay_t = min(decay, (1 + t) / (10 + t))."""
    ema = {k: v.double() for k, v in states[0].items()}
    for t, state in enumerate(states[1:], start=1):
        d = min(decay, (1 + t) / (10 + t))
        ema = {k: d * ema[k] + (1 - d) * state[k].double() for k in ema}
    return ema


def test_ema_weights_follow_the_formula(ema_run):
    _, result, seen, layouts = ema_run
    records = json.loads((result.run_dir / "log.json").read_text())
    steps = sum(r["steps"] for r in records)
    assert steps == 4 and len(seen) == steps  # 9 training images, batches of 4, 2 epochs: one update per step
    last = load_checkpoint(result.last_checkpoint)
    trained, averaged = last["train_state"]["model"], last["state_dict"]
    assert last["train_state"]["ema_steps"] == steps
    # seen[i] is the model before update i+1; the last update saw the trained weights saved in last.pt
    assert all(torch.equal(seen[-1][k], trained[k]) for k in trained)
    expected = _ema_by_hand(seen, DECAY)
    assert set(averaged) == set(expected)
    for key, value in averaged.items():
        if value.is_floating_point():
            torch.testing.assert_close(value.double(), expected[key], rtol=0, atol=1e-6, msg=key)
        else:  # num_batches_tracked is copied, not averaged
            assert int(value) == int(trained[key]) == steps, key
    weight = "model.0.conv.unit0.conv.weight"
    assert not torch.allclose(averaged[weight], trained[weight], atol=1e-4)  # the average is not the last weights
    assert [r["ema_decay"] for r in records] == [pytest.approx(2 / 11), DECAY]  # last step of each epoch: t=1, t=3
    assert all(layouts)  # the copy keeps the run's channels-last layout


def _validate(cfg, run_dir, state_dict):
    """Validate ``state_dict`` on the run's validation split, as the training loop does."""
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    labels = labels_from_checkpoint(ckpt)
    task = build_task(cfg, run_dir, labels=labels, resume=True, write=False)
    model = build_model(cfg.model, in_channels=task.in_channels, out_channels=labels.num_classes)
    model.load_state_dict(state_dict)
    return task.validate(model, build_loss(cfg.loss, labels.num_classes), torch.device("cpu"))


def test_validation_and_checkpoints_use_the_ema(ema_run, polyps):
    raw_cfg, result, _, _ = ema_run
    cfg = _cfg(raw_cfg, polyps, ema=DECAY)
    records = json.loads((result.run_dir / "log.json").read_text())
    best = load_checkpoint(result.best_checkpoint)
    last = load_checkpoint(result.last_checkpoint)
    assert best["train_state"] is None and "model" not in best  # best.pt: the EMA weights only
    best_val = _validate(cfg, result.run_dir, best["state_dict"])
    assert best_val["val_loss"] == pytest.approx(records[best["epoch"]]["val_loss"], rel=1e-6)
    last_val = _validate(cfg, result.run_dir, last["state_dict"])
    assert last_val["val_loss"] == pytest.approx(records[-1]["val_loss"], rel=1e-6)
    trained_val = _validate(cfg, result.run_dir, last["train_state"]["model"])
    assert trained_val["val_loss"] != pytest.approx(records[-1]["val_loss"], rel=1e-3)  # not the trained weights


def test_resume_with_ema_continues_exactly(tmp_path, ema_run, polyps):
    raw_cfg, full, _, _ = ema_run
    part = train(_cfg(raw_cfg, polyps, ema=DECAY, max_epochs=1), run_dir=tmp_path / "part", progress=False)
    train(_cfg(raw_cfg, polyps, ema=DECAY), run_dir=part.run_dir, resume=True, progress=False)
    a, b = (load_checkpoint(r.run_dir / "checkpoints" / "last.pt") for r in (full, part))
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
        assert torch.equal(a["train_state"]["model"][key], b["train_state"]["model"][key]), key
    assert a["train_state"]["ema_steps"] == b["train_state"]["ema_steps"] == 4
    la, lb = (json.loads((r.run_dir / "log.json").read_text()) for r in (full, part))
    for key in ("train_loss", "val_loss", "val_dice", "ema_decay"):
        assert [r[key] for r in la] == [r[key] for r in lb], key


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, polyps):
    """The run of :func:`ema_run` without train.ema."""
    return train(_cfg(RAW, polyps), run_dir=tmp_path_factory.mktemp("plain") / "run", progress=False)


def test_ema_off_trains_the_same_weights(ema_run, plain_run):
    """Without train.ema the run trains exactly the weights an EMA run trains (the EMA draws no random numbers and
    changes no step), and its checkpoints keep their former layout."""
    _, with_ema, _, _ = ema_run
    plain = plain_run
    a = load_checkpoint(plain.last_checkpoint)
    b = load_checkpoint(with_ema.last_checkpoint)
    assert "model" not in a["train_state"] and "ema_steps" not in a["train_state"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["train_state"]["model"][key]), key
    la, lb = (json.loads((r.run_dir / "log.json").read_text()) for r in (plain, with_ema))
    assert [r["train_loss"] for r in la] == [r["train_loss"] for r in lb]
    assert all("ema_decay" not in r for r in la)


def test_resume_turning_ema_off_or_on(tmp_path, ema_run, plain_run, polyps):
    """--force resumes with train.ema changed: off, training continues from the trained weights (not the EMA); on,
    the average starts at the resume."""
    runs = {name: tmp_path / name for name in ("was_ema", "was_plain", "now_ema")}
    shutil.copytree(ema_run[1].run_dir, runs["was_ema"])
    shutil.copytree(plain_run.run_dir, runs["was_plain"])
    shutil.copytree(plain_run.run_dir, runs["now_ema"])
    train(_cfg(RAW, polyps, max_epochs=3), run_dir=runs["was_ema"], resume=True, force=True, progress=False)
    train(_cfg(RAW, polyps, max_epochs=3), run_dir=runs["was_plain"], resume=True, progress=False)
    train(_cfg(RAW, polyps, max_epochs=3, ema=DECAY), run_dir=runs["now_ema"], resume=True, force=True,
          progress=False)
    was_ema, was_plain, now_ema = (load_checkpoint(p / "checkpoints" / "last.pt") for p in runs.values())
    for key, value in was_plain["state_dict"].items():
        assert torch.equal(was_ema["state_dict"][key], value), key
        assert torch.equal(now_ema["train_state"]["model"][key], value), key
    assert "ema_steps" not in was_ema["train_state"] and now_ema["train_state"]["ema_steps"] == 2  # epoch 3 only


@pytest.mark.parametrize("value", [1.5, 0, 1, -0.1])
def test_cli_ema_out_of_range_is_one_line_exit_2(tmp_path, value):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"kind": "images2d", "root": str(tmp_path), "image_size": [32, 32]},
                                      "train": {"ema": value}}))
    result = CliRunner().invoke(app, ["train", str(config), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: {config}: 1 invalid setting(s): train.ema (line 8): expected a decay strictly between 0 "
                     f"and 1 (e.g. 0.999), or null for no EMA (found: {value!r})"], lines
    assert not (tmp_path / "run").exists()


def test_steps_the_loss_scaler_skips_are_not_averaged(tmp_path, polyps):
    """fp16 loss scaling skips a step whose scaled gradients overflow (lowering its scale); the EMA skips it too.
    The CPU GradScaler behaves as the CUDA one: a huge initial scale makes the first steps overflow."""
    cfg = _cfg(RAW, polyps, max_epochs=1)
    task = build_task(cfg, tmp_path, labels=None, resume=False, write=False)
    model = build_model(cfg.model, in_channels=task.in_channels, out_channels=task.labels.num_classes)
    loss_fn = build_loss(cfg.loss, task.labels.num_classes)
    ema = ModelEma(model, 0.5)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)
    rec = run_epoch(model, task, loss_fn, optimizer, scaler, torch.device("cpu"), cfg, 0, False, ema=ema)
    assert rec["steps"] == 2 and scaler.get_scale() == 2.0**125  # both steps skipped: the scale halved twice
    assert ema.steps == 0
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items() if v.is_floating_point()
               and "running" not in k)  # the weights did not move
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    run_epoch(model, task, loss_fn, optimizer, scaler, torch.device("cpu"), cfg, 1, False, ema=ema)
    assert scaler.get_scale() == 1.0 and ema.steps == 2  # no step skipped: both averaged


def test_compiled_steps_average_into_a_plain_copy(tmp_path, polyps, monkeypatch):
    """train.compile compiles what the steps call; the EMA copies the plain module and is never compiled. (Dynamo
    with its eager backend here: the same graph capture, no code generation, seconds instead of a minute.)"""
    from medseg.training import loop

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compile_(model, backend="eager"))
    built = []
    build_run = loop.build_run
    monkeypatch.setattr(loop, "build_run", lambda *a, **kw: built.append(build_run(*a, **kw)) or built[-1])
    result = train(_cfg(RAW, polyps, ema=DECAY, compile=True, max_epochs=1), run_dir=tmp_path / "run",
                   progress=False)
    run = built[0]
    assert isinstance(run.step_model, torch._dynamo.eval_frame.OptimizedModule)
    assert type(run.ema.module) is type(run.model) and run.ema.source is run.model
    last = load_checkpoint(result.last_checkpoint)
    assert last["train_state"]["ema_steps"] == 2
    assert all(torch.equal(v, run.ema.module.state_dict()[k]) for k, v in last["state_dict"].items())
