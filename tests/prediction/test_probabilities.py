"""Probabilities and thresholds at prediction: `predict --probabilities`, `--threshold`, `Predictor.predict(output=)`.

On the session's tiny trained checkpoints (tests/conftest.py): ckpt2d (background, polyp) and ckpt3d (background and
three vertebrae, trained at 6 mm on 3 mm phantoms, so probabilities are resampled back to the input grid).
"""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medseg.cli.main import app
from medseg.data.volume_preprocessing import VolumePreprocessor
from medseg.errors import ConfigError
from medseg.io.volume import Volume
from medseg.io.volume_io import read_volume
from medseg.prediction.predictor import Predictor

runner = CliRunner()
F16 = 2e-3  # float16 rounding of probabilities near 1 is 4.9e-4; sums of up to 4 classes stay well within this


def _argmax_agrees(probs: np.ndarray, classes: np.ndarray) -> None:
    """argmax of ``probs`` equals ``classes`` wherever the top two probabilities are not tied within F16."""
    p = probs.astype(np.float32)
    top2 = np.sort(p, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > F16
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(p.argmax(0)[clear], classes[clear])


def test_image_probabilities_sum_to_one_and_argmax_is_the_labels(ckpt2d):
    ckpt, images = ckpt2d
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    image = sorted(images.iterdir())[0]
    probs = predictor.predict(image, output="probabilities")
    h, w = np.asarray(Image.open(image)).shape[:2]
    assert isinstance(probs, np.ndarray) and probs.dtype == np.float16 and probs.shape == (2, h, w)
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=F16)
    _argmax_agrees(probs, predictor.predict_image_classes(image))


def test_threshold_half_is_argmax_and_higher_gives_a_subset(ckpt2d):
    ckpt, images = ckpt2d
    image = sorted(images.iterdir())[0]
    plain = Predictor.from_checkpoint(ckpt, device="cpu")
    probs = plain.predict(image, output="probabilities").astype(np.float32)
    half = Predictor.from_checkpoint(ckpt, device="cpu", threshold=0.5).predict_image_classes(image)
    _argmax_agrees(probs, half)
    # a threshold between the smallest and largest p(polyp) splits the image, and a higher one keeps a subset
    t = float(np.quantile(probs[1], 0.7))
    high = Predictor.from_checkpoint(ckpt, device="cpu", threshold=t).predict_image_classes(image)
    low = Predictor.from_checkpoint(ckpt, device="cpu", threshold=t / 2).predict_image_classes(image)
    assert 0 < high.sum() < low.sum() and not (high & ~low.astype(bool)).any()
    clear = np.abs(probs[1] - t) > F16
    np.testing.assert_array_equal(high[clear], (probs[1] >= t)[clear])
    very = Predictor.from_checkpoint(ckpt, device="cpu", threshold=0.9).predict_image_classes(image)
    assert not (very.astype(bool) & ~half.astype(bool)).any()  # 0.9 is a subset of 0.5


def test_cli_image_probabilities_npz(ckpt2d, tmp_path):
    ckpt, images = ckpt2d
    out = tmp_path / "out"
    first = runner.invoke(app, ["predict", str(ckpt), str(images), "-o", str(out), "--device", "cpu"])
    assert first.exit_code == 0, first.output
    assert not list(out.glob("*.npz"))
    # a rerun asking for probabilities does not skip the finished masks: it writes what is missing
    again = runner.invoke(app, ["predict", str(ckpt), str(images), "-o", str(out), "--device", "cpu",
                                "--probabilities"])
    assert again.exit_code == 0, again.output
    for image in sorted(images.iterdir()):
        npz = np.load(out / f"{image.stem}_probabilities.npz")
        assert npz["class_names"].tolist() == ["background", "polyp"]
        probs = npz["probabilities"]
        mask = np.asarray(Image.open(out / f"{image.stem}.png"))
        assert probs.dtype == np.float16 and probs.shape == (2, *mask.shape)
        _argmax_agrees(probs, (mask == 255).astype(np.uint8))


def test_volume_probabilities_on_the_input_grid(ckpt3d, tmp_path):
    ckpt, images = ckpt3d
    case = sorted(images.iterdir())[0]
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    probs = predictor.predict(case, output="probabilities")
    labels = predictor.predict(case)
    vol = read_volume(case)
    assert isinstance(probs, np.ndarray) and probs.dtype == np.float16 and probs.shape == (4, *vol.shape)
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=F16)
    _argmax_agrees(probs, labels.meta["classes"])
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(ckpt), str(case), "-o", str(out), "--device", "cpu",
                                 "--probabilities"])
    assert result.exit_code == 0, result.output
    name = case.name.removesuffix(".nii.gz")
    img = nib.load(out / f"{name}_probabilities.nii.gz")
    assert img.shape == (*vol.shape, 4)  # class last
    np.testing.assert_allclose(img.affine, vol.affine, atol=1e-4)
    np.testing.assert_allclose(np.moveaxis(img.get_fdata(), -1, 0), probs.astype(np.float64), atol=1e-5)
    written = read_volume(out / f"{name}.nii.gz").array
    np.testing.assert_array_equal(written, labels.array)


def test_volume_threshold_resamples_foreground_then_thresholds():
    pre = VolumePreprocessor({"kind": "volumes3d", "intensity": "zscore", "spacing_mm": [2, 2, 2],
                              "orientation": "RAS"})
    rng = np.random.default_rng(0)
    _, grid = pre.prepare_image(Volume(rng.random((16, 12, 8)).astype(np.float32), np.diag([-1.0, 1, 1, 1]), {}))
    assert grid.shape_out != grid.shape  # resampled and reoriented back
    fg = torch.rand(grid.shape_out, generator=torch.Generator().manual_seed(0))
    probs = torch.stack([1 - fg, fg])
    argmax = pre.invert_probabilities(probs, grid)
    half = pre.invert_probabilities(probs, grid, threshold=0.5)
    up = pre.invert_probability_maps(probs, grid).astype(np.float32)
    clear = np.abs(up[1] - 0.5) > F16
    np.testing.assert_array_equal(half[clear], argmax[clear])
    high = pre.invert_probabilities(probs, grid, threshold=0.9)
    assert not (high.astype(bool) & ~half.astype(bool)).any()
    np.testing.assert_array_equal(high[np.abs(up[1] - 0.9) > F16], (up[1] >= 0.9)[np.abs(up[1] - 0.9) > F16])


@pytest.mark.parametrize(("value", "which", "message"), [
    ("1.5", "2d", r"--threshold: got 1\.5; input should be less than 1 \(allowed: a number with 0 < threshold < 1"),
    ("nan", "2d", r"--threshold: got nan \(float\); allowed a number with 0 < threshold < 1"),
    ("0", "2d", r"--threshold: got 0\.0; input should be greater than 0"),
    ("0.5", "3d", r"--threshold: got 0\.5; a threshold applies to two-class models only and .* has 4 classes"),
])
def test_bad_thresholds_are_one_line_exit_2(ckpt2d, ckpt3d, tmp_path, value, which, message):
    ckpt, images = ckpt2d if which == "2d" else ckpt3d
    result = runner.invoke(app, ["predict", str(ckpt), str(images), "-o", str(tmp_path / "o"), "--threshold", value])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert re.search(message, result.output), result.output
    assert not (tmp_path / "o").exists()


def test_predict_output_refuses_unknown(ckpt2d):
    ckpt, images = ckpt2d
    with pytest.raises(ConfigError, match=r"output: got 'mask'; allowed: labels, probabilities"):
        Predictor.from_checkpoint(ckpt, device="cpu").predict(sorted(images.iterdir())[0], output="mask")
