"""Python API doors of prediction: numpy integers for roi, CUDA asked without CUDA, empty arrays, empty checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.errors import CheckpointError, ConfigError, DataError
from medseg.prediction.predictor import Predictor


@pytest.mark.parametrize(("roi", "expected"), [
    (np.int64(16), (16,)), ((np.int64(16), np.int32(16), np.uint8(16)), (16, 16, 16)),
    (np.array([16, 16, 24]), (16, 16, 24)), (np.array(16), (16,))])
def test_roi_size_takes_numpy_integers(ckpt3d, roi, expected):
    predictor = Predictor.from_checkpoint(ckpt3d[0], device="cpu", roi_size=roi)
    assert predictor.infer.roi_size == expected  # one size means every axis


@pytest.mark.parametrize("roi", [np.float64(16.5), np.array([16, 0, 16]), np.array([[16, 16, 16]])])
def test_bad_numpy_roi_size_is_one_line(ckpt3d, roi):
    with pytest.raises(ConfigError, match=r"^roi_size: got .*; allowed integers 1\.\.4096") as err:
        Predictor.from_checkpoint(ckpt3d[0], device="cpu", roi_size=roi)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the machine without CUDA")
def test_cuda_without_cuda_is_a_config_error(ckpt2d):
    with pytest.raises(ConfigError) as err:
        Predictor.from_checkpoint(ckpt2d[0], device="cuda")
    assert str(err.value) == "device 'cuda' requested but no CUDA device is available; use 'cpu' or 'auto'"


@pytest.mark.parametrize(("array", "message"), [
    (np.zeros((0, 0, 3), np.uint8),
     "array: empty image (shape (0, 0, 3)); expected (H, W) or (H, W, 3) with H, W >= 1"),
    (np.zeros((0,), np.uint8), "array: shape (0,) is not a 2D image; expected (H, W) or (H, W, 3)"),
])
def test_empty_array_is_one_line(ckpt2d, array, message):
    with pytest.raises(DataError) as err:
        Predictor.from_checkpoint(ckpt2d[0], device="cpu").predict(array)
    assert str(err.value) == message


def test_zero_byte_checkpoint_says_empty(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        Predictor.from_checkpoint(tmp_path / "empty.pt", device="cpu")
    assert str(err.value) == f"{tmp_path / 'empty.pt'}: empty file (0 bytes); not a checkpoint"
