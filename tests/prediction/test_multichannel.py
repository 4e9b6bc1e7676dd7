"""Several input channels per case (nnU-Net's ``case_0000``, ``case_0001``): a synthetic 2-channel set trains two
steps and predicts through the CLI onto the first channel's grid; wrong inputs fail in one line; a single-channel
checkpoint (no ``channels`` in its preprocessing) still predicts."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medseg.cli.main import app
from medseg.config.loading import validate_config
from medseg.data.volume_preprocessing import VolumePreprocessor
from medseg.io import read_volume
from medseg.prediction.predictor import Predictor
from medseg.prediction.volume import predict_volumes
from medseg.training.loop import train

runner = CliRunner()
SHAPE = (12, 12, 12)
#: the first channel's affine: 2 mm voxels, an origin away from 0 and axes flipped (LAS)
AFFINE = np.array([[-2.0, 0, 0, 30.0], [0, 2.0, 0, -10.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])


def write_two_channel_set(root: Path, cases: tuple[str, ...] = ("a", "b", "c"), seed: int = 0) -> Path:
    """Channel 0 (CT): a bright 300 HU cube on -100 HU with noise; channel 1 (MR): noise only; the label is the cube."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for k, case in enumerate(cases):
        label = np.zeros(SHAPE, np.uint8)
        lo = 2 + k
        label[lo:lo + 5, 3:8, 4:9] = 1
        ct = np.where(label == 1, 300.0, -100.0) + rng.normal(0, 10, SHAPE)
        mr = rng.normal(100, 20, SHAPE)
        nib.save(nib.Nifti1Image(ct.astype(np.float32), AFFINE), root / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(mr.astype(np.float32), AFFINE), root / "imagesTr" / f"{case}_0001.nii.gz")
        nib.save(nib.Nifti1Image(label, AFFINE), root / "labelsTr" / f"{case}.nii.gz")
    return root


@pytest.fixture(scope="module")
def two_channel(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny 3D UNet trained 2 steps on 3 cases of 2 channels (CT windowed, MR z-scored), and the data set."""
    tmp = tmp_path_factory.mktemp("twochannel")
    root = write_two_channel_set(tmp / "data")
    cfg = validate_config({
        "data": {"kind": "volumes3d", "root": str(root), "images_dir": "imagesTr", "masks_dir": "labelsTr",
                 "channels": [{"name": "CT", "windows": [{"center_hu": 100, "width_hu": 800}]}, {"name": "MR"}],
                 "val_fraction": 0.34, "labels": {"classes": {0: "background", 1: "cube"}},
                 "spacing_mm": [4.0, 4.0, 4.0], "patch_size": [4, 4, 4], "samples_per_volume": 1},
        "model": {"spatial_dims": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0},
        "train": {"max_epochs": 1, "steps_per_epoch": 2, "batch_size": 1, "device": "cpu", "preview_samples": 0},
    })
    return train(cfg, run_dir=tmp / "run", progress=False).last_checkpoint, root


def test_checkpoint_records_the_channels_and_the_network_takes_two(two_channel):
    ckpt, _ = two_channel
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert stored["in_channels"] == 2
    assert stored["preprocessing"]["channels"] == [
        {"name": "CT", "intensity": "ct_window", "windows": [[100.0, 800.0]]},
        {"name": "MR", "intensity": "zscore", "windows": []}]
    assert VolumePreprocessor(stored["preprocessing"]).files_per_case == 2


def test_folder_and_channel_files_predict_through_the_cli_on_the_first_channels_grid(two_channel, tmp_path):
    ckpt, root = two_channel
    images = root / "imagesTr"
    result = runner.invoke(app, ["predict", str(ckpt), str(images), "-o", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    for case in "abc":
        labels = read_volume(tmp_path / "out" / f"{case}.nii.gz")
        first = read_volume(images / f"{case}_0000.nii.gz")
        assert labels.shape == first.shape == SHAPE
        np.testing.assert_allclose(labels.affine, AFFINE, atol=1e-5)
        assert set(np.unique(labels.array).tolist()) <= {0, 1}
    side = json.loads((tmp_path / "out" / "b.json").read_text())
    assert side["channels"] == [str(images / "b_0000.nii.gz"), str(images / "b_0001.nii.gz")]
    # the channel files themselves, given out of order: grouped by case, sorted by channel index
    result = runner.invoke(app, ["predict", str(ckpt), str(images / "b_0001.nii.gz"), str(images / "b_0000.nii.gz"),
                                 "-o", str(tmp_path / "files"), "-q"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(read_volume(tmp_path / "files" / "b.nii.gz").array,
                                  read_volume(tmp_path / "out" / "b.nii.gz").array)
    # the Python API takes one file per channel and agrees with the CLI
    predicted = Predictor.from_checkpoint(ckpt).predict([images / "b_0000.nii.gz", images / "b_0001.nii.gz"])
    np.testing.assert_array_equal(predicted.array, read_volume(tmp_path / "out" / "b.nii.gz").array)


def _one_line_failure(result) -> str:
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert len(lines) == 1, result.output
    return lines[0]


def test_a_case_missing_a_channel_is_one_line(two_channel, tmp_path):
    ckpt, root = two_channel
    line = _one_line_failure(runner.invoke(app, ["predict", str(ckpt), str(root / "imagesTr" / "a_0000.nii.gz"),
                                                 str(root / "imagesTr" / "b_0000.nii.gz"),
                                                 str(root / "imagesTr" / "b_0001.nii.gz"), "-o", str(tmp_path / "o")]))
    assert "case a: channel file(s) a_0001.nii.gz missing" in line
    assert "takes 2 per case (CT: <case>_0000, MR: <case>_0001)" in line


def test_a_single_channel_file_says_how_many_channels_and_how_to_name_them(two_channel, tmp_path):
    ckpt, root = two_channel
    plain = tmp_path / "in" / "ct.nii.gz"
    plain.parent.mkdir()
    plain.write_bytes((root / "imagesTr" / "a_0000.nii.gz").read_bytes())
    line = _one_line_failure(runner.invoke(app, ["predict", str(ckpt), str(plain), "-o", str(tmp_path / "o")]))
    assert f"{plain}: has no channel suffix, but the model" in line
    assert "takes 2 channel files per case (CT: <case>_0000, MR: <case>_0001); name them <case>_0000.nii.gz to " \
           "<case>_0001.nii.gz" in line


def test_channels_on_different_grids_fail_the_case_naming_both_files(two_channel, tmp_path):
    ckpt, root = two_channel
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_0000.nii.gz").write_bytes((root / "imagesTr" / "a_0000.nii.gz").read_bytes())
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.5
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.float32), shifted), folder / "a_0001.nii.gz")
    report = predict_volumes(Predictor.from_checkpoint(ckpt), [folder], tmp_path / "out", progress=False)
    assert len(report.failed) == 1
    message = report.failed[0][1]
    assert "\n" not in message
    assert message.startswith(f"channels {folder / 'a_0000.nii.gz'} and {folder / 'a_0001.nii.gz'}: geometry "
                              "differs (spacing by 0 mm, origin by 0.5 mm")
    assert "resample" in message


def test_a_single_channel_checkpoint_still_predicts_one_file_per_case(ckpt3d, tmp_path):
    """ckpt3d's preprocessing has no ``channels`` (as every checkpoint before data.channels)."""
    ckpt, images = ckpt3d
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert "channels" not in stored["preprocessing"]
    first = sorted(images.iterdir())[0]
    report = predict_volumes(Predictor.from_checkpoint(ckpt), [first], tmp_path / "out", progress=False)
    assert report.ok and len(report.predicted) == 1
    labels = read_volume(report.written[0])
    assert labels.shape == read_volume(first).shape


def test_bundle_export_is_refused_and_onnx_metadata_names_each_channel(two_channel):
    from medseg.export.bundle import bundle_refusal
    from medseg.export.metadata import input_channels

    loaded = Predictor.from_checkpoint(two_channel[0])
    assert bundle_refusal(loaded) == ("the model takes 2 input files per case (data.channels); the bundle reads one "
                                      "image file; use --format onnx or torchscript")
    assert input_channels(loaded) == ["CT (<case>_0000): CT window 100/800 HU -> 0..1",
                                      "MR (<case>_0001): intensity, z-scored over the resampled volume"]


def test_a_failing_case_is_reported_once_by_its_case_name_and_leaves_no_output_folder(two_channel, tmp_path):
    ckpt, root = two_channel
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "d_0000.nii.gz").write_bytes((root / "imagesTr" / "a_0000.nii.gz").read_bytes())
    nib.save(nib.Nifti1Image(np.ones((5, 6, 7), np.float32), AFFINE), folder / "d_0001.nii.gz")
    result = runner.invoke(app, ["predict", str(ckpt), str(folder), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    mentions = [line for line in result.output.splitlines() if "shapes differ" in line]
    assert len(mentions) == 1, result.output
    assert mentions[0].startswith(f"failed: d: channels {folder / 'd_0000.nii.gz'} and {folder / 'd_0001.nii.gz'}: "
                                  "shapes differ ((12, 12, 12) vs (5, 6, 7))")
    assert not (tmp_path / "out").exists()
