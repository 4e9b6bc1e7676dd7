"""Training speed settings: what runs in bf16 where, and bf16 training tracking fp32."""

from __future__ import annotations

import logging

import pytest
import torch

from medseg.config.loading import validate_config
from medseg.config.schema import TrainConfig
from medseg.data.synthetic.polyp import make_polyp_dataset
from medseg.training import speed as speed_mod
from medseg.training.loop import train
from medseg.training.run_folder import read_log
from medseg.training.speed import TrainingSpeed, resolve_training_speed

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_resolution_per_device(monkeypatch):
    monkeypatch.setattr(speed_mod, "cpu_has_native_bf16", lambda: True)
    s = resolve_training_speed(TrainConfig(), CPU, 2)
    assert (s.amp_dtype, s.scale_loss, s.memory_format, s.compile) == (
        torch.bfloat16, False, torch.channels_last, False)
    assert s.describe() == "bf16 autocast, channels_last"
    s = resolve_training_speed(TrainConfig(), CUDA, 3)  # resolving touches no CUDA API: testable without a GPU
    assert (s.amp_dtype, s.scale_loss, s.memory_format) == (torch.float16, True, torch.channels_last_3d)
    s = resolve_training_speed(TrainConfig(amp=False, channels_last=False, compile=True), CUDA, 3)
    assert (s.amp_dtype, s.scale_loss, s.memory_format, s.compile) == (None, False, torch.contiguous_format, True)
    assert s.describe() == "fp32, contiguous_format, torch.compile"
    assert resolve_training_speed(TrainConfig(), CPU, 2, (64, 64)).amp_dtype is None  # small samples: fp32
    assert resolve_training_speed(TrainConfig(), CPU, 2, (192, 192)).amp_dtype is torch.bfloat16
    assert resolve_training_speed(TrainConfig(), CPU, 3, (32, 32, 32)).amp_dtype is None
    monkeypatch.setattr(speed_mod, "cpu_has_native_bf16", lambda: False)
    assert resolve_training_speed(TrainConfig(), CPU, 2).amp_dtype is None
    with pytest.raises(ValueError, match="channels_last"):
        TrainConfig(channels_last="yes please")


def test_batch_layout():
    s = TrainingSpeed(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 8, 8)
    y = s.batch(x)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous() and torch.equal(x, y)
    volume = torch.rand(2, 3, 4, 4, 4)
    assert s.batch(volume) is volume  # a 3D batch with a 2D layout is left as it is
    assert TrainingSpeed().batch(x) is x


@pytest.fixture(scope="module")
def polyps(tmp_path_factory):
    return make_polyp_dataset(tmp_path_factory.mktemp("speed") / "data", n=8, size=(32, 32), seed=3)


def _final_losses(data, run_dir, **train_keys) -> list[float]:
    cfg = validate_config({
        "data": {"kind": "images2d", "root": str(data), "image_size": [32, 32], "val_fraction": 0.25,
                 "labels": {"classes": {0: "background", 255: "polyp"}, "tolerance": 20}},
        "model": {"spatial_dims": 2, "channels": [4, 8], "strides": [2], "num_res_units": 1},
        "train": {"max_epochs": 4, "batch_size": 3, "lr": 0.02, "device": "cpu", "preview_samples": 0,
                  "val_every": 4, **train_keys},
    })
    train(cfg, run_dir=run_dir, progress=False)
    return [r["train_loss"] for r in read_log(run_dir)]


def test_bf16_channels_last_training_tracks_fp32(polyps, tmp_path, monkeypatch, caplog):
    """Same seed and data: the bf16 channels-last loss curve stays within 0.05 of fp32's (stated tolerance)."""
    monkeypatch.setattr(speed_mod, "cpu_has_native_bf16", lambda: True)  # bf16 runs (emulated) on any CPU
    monkeypatch.setattr(speed_mod, "CPU_BF16_MIN_VOXELS", {2: 1, 3: 1})  # these 32x32 samples too
    fp32 = _final_losses(polyps, tmp_path / "fp32", amp=False, channels_last=False)
    with caplog.at_level(logging.INFO, logger="medseg.training.loop"):
        bf16 = _final_losses(polyps, tmp_path / "bf16", amp=True, channels_last=True)
    assert "training steps: bf16 autocast, channels_last" in caplog.text
    assert fp32[-1] < 0.8 * fp32[0], fp32  # it learns
    assert bf16 != fp32  # bf16 did change the arithmetic
    assert max(abs(a - b) for a, b in zip(bf16, fp32, strict=True)) < 0.05, (fp32, bf16)
