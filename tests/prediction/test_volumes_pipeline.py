"""Volume pipeline end to end on real CT: train (3D and slice-wise), predict files, DICOM and folders, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import medseg
from medseg.cli.main import app
from medseg.config.kinds import DataKind
from medseg.config.loading import validate_config
from medseg.errors import DataError
from medseg.io.volume_io import read_volume
from medseg.models.factory import build_model
from medseg.prediction.predictor import Predictor
from medseg.prediction.volume import find_volume_cases, predict_volume, predict_volumes

SPINE_CLASSES = [
    {"name": "background", "values": [0]}, {"name": "S1", "values": [26]}, {"name": "L5", "values": [27, 24]},
    {"name": "L4", "values": [28, 23]}, {"name": "L3", "values": [29, 22]}, {"name": "L2", "values": [30, 21]},
    {"name": "L1", "values": [31, 20]}, {"name": "T12", "values": [32, 19]}, {"name": "T11", "values": [33, 18]},
]
OUTPUT_VALUES = {0, 26, 27, 28, 29, 30, 31, 32, 33}
runner = CliRunner()


def _spine_root(shared_data: Path, tmp: Path) -> Path:
    """Two cases (the shared spine CT under two names) in the nnU-Net layout."""
    src = shared_data / "spine-ct-totalseg"
    for name in ("a", "b"):
        for folder, file in (("imagesTr", "example_ct.nii.gz"), ("labelsTr", "totalseg_vertebrae.nii.gz")):
            (tmp / folder).mkdir(parents=True, exist_ok=True)
            (tmp / folder / f"{name}.nii.gz").symlink_to(src / file)
    return tmp


def _config(root: Path, kind: str = "volumes3d") -> dict:
    slices = kind == "slices2d"
    return {
        "data": {
            "kind": kind, "root": str(root), "images_dir": "imagesTr", "masks_dir": "labelsTr",
            "val_fraction": 0.5, "labels": {"classes": SPINE_CLASSES}, "windows": ["bone", "soft_tissue"],
            "spacing_mm": [6.0, 6.0, 6.0], "patch_size": [32, 32] if slices else [32, 32, 32],
            "samples_per_volume": 4 if slices else 2, "augment": {"rotate_degrees": 5, "probability": 0.2},
        },
        "model": {"spatial_dims": 2 if slices else 3, "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0},
        "train": {"max_epochs": 1, "batch_size": 2, "device": "cpu", "preview_samples": 2},
        "infer": {"sw_batch_size": 2},
    }


@pytest.fixture(scope="module")
def spine_run(shared_data, tmp_path_factory):
    """A tiny 3D UNet trained for one epoch on the shared spine CT at 6 mm (trained once per module)."""
    tmp = tmp_path_factory.mktemp("spine3d")
    cfg = validate_config(_config(_spine_root(shared_data, tmp / "data")), source="test")
    result = medseg.train(cfg, run_dir=tmp / "run", progress=False)
    return result


@pytest.fixture(scope="module")
def checkpoint(spine_run) -> Path:
    return spine_run.best_checkpoint or spine_run.last_checkpoint


def test_training_writes_checkpoint_with_preprocessing(spine_run, checkpoint):
    assert spine_run.last_checkpoint.is_file() and checkpoint.is_file()
    assert (spine_run.run_dir / "splits" / "val.txt").read_text().split() in (["a"], ["b"])
    assert (spine_run.run_dir / "preview.png").is_file()
    pred = Predictor.from_checkpoint(checkpoint, device="cpu")
    pre = pred.preprocessing
    assert pre["kind"] == "volumes3d" and pre["spacing_mm"] == [6.0, 6.0, 6.0] and pre["orientation"] == "RAS"
    assert pre["windows"] == [[400.0, 1800.0], [40.0, 400.0]] and pred.in_channels == 2
    log = json.loads((spine_run.run_dir / "log.json").read_text())
    assert np.isfinite(log[0]["train_loss"]) and 0.0 <= log[0]["val_dice"] <= 1.0


def test_cli_predict_nifti_keeps_grid_values_and_writes_sidecar(shared_data, checkpoint, tmp_path):
    src = shared_data / "spine-ct-totalseg" / "example_ct.nii.gz"
    out = tmp_path / "out"
    res = runner.invoke(app, ["predict", str(checkpoint), str(src), "-o", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    pred, ref = read_volume(out / "example_ct.nii.gz"), read_volume(src)
    assert pred.shape == ref.shape
    np.testing.assert_array_equal(pred.affine, ref.affine)
    assert set(np.unique(pred.array).tolist()) <= OUTPUT_VALUES
    side = json.loads((out / "example_ct.json").read_text())
    assert side["input_geometry"]["shape"] == list(ref.shape)
    np.testing.assert_allclose(side["input_geometry"]["spacing_mm"], [3.0, 3.0, 3.0])
    assert side["medseg_version"] == medseg.__version__ and side["checkpoint"].endswith(".pt")
    for entry in side["classes"]:
        count = int((pred.array == entry["value"]).sum())
        assert entry["voxels"] == count
        assert entry["volume_mm3"] == pytest.approx(count * 27.0)
    assert sum(e["voxels"] for e in side["classes"]) == int(np.prod(ref.shape))


def test_predict_dicom_series_folder_keeps_its_grid(shared_data, checkpoint, tmp_path):
    series = shared_data / "dicom-ct-totalseg" / "series"
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    report = predict_volumes(predictor, [series], tmp_path / "out", progress=False, dicom_seg=True)
    assert report.ok, report.failed
    ref = read_volume(series)
    pred = read_volume(tmp_path / "out" / "series.nii.gz")
    assert pred.shape == ref.shape
    np.testing.assert_array_equal(pred.affine, ref.affine)
    assert set(np.unique(pred.array).tolist()) <= OUTPUT_VALUES
    if (pred.array > 0).any():  # the SEG holds the same voxels as the label map, in the same values
        from medseg.io.dicom_seg import read_dicom_seg

        names = {v: n for n, v in zip(predictor.labels.names, predictor.labels.output_values, strict=True) if v}
        back = read_dicom_seg(tmp_path / "out" / "series.seg.dcm", series, class_names=names)
        np.testing.assert_array_equal(back, pred.array)
    else:
        assert not (tmp_path / "out" / "series.seg.dcm").exists()


def test_folder_batch_skips_done_cases_and_isolates_a_corrupt_one(shared_data, checkpoint, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(shared_data / "spine-ct-totalseg" / "example_ct.nii.gz", inputs / "one.nii.gz")
    shutil.copy(shared_data / "spine-ct-verse-cutout" / "sub-ct_label-22_ct.nii.gz", inputs / "two.nii.gz")
    assert [c.name for c in find_volume_cases([inputs])] == ["one", "two"]
    out = tmp_path / "out"
    args = ["predict", str(checkpoint), str(inputs), "-o", str(out), "--device", "cpu"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["one.json", "one.nii.gz", "two.json", "two.nii.gz"]
    two = read_volume(out / "two.nii.gz")
    np.testing.assert_array_equal(two.affine, read_volume(inputs / "two.nii.gz").affine)  # P-I-R input kept
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "2 existing skipped" in res.output
    data = (inputs / "two.nii.gz").read_bytes()
    (inputs / "two.nii.gz").write_bytes(data[: len(data) // 3])
    res = runner.invoke(app, [*args, "--overwrite"])
    assert res.exit_code == 1
    assert "two.nii.gz" in res.output and "1 failed" in res.output


def test_2d_checkpoint_refuses_volume_and_3d_checkpoint_refuses_png(shared_data, checkpoint, tmp_path):
    cfg = validate_config({
        "data": {"kind": "images2d", "root": str(tmp_path), "image_size": [32, 32],
                 "labels": {"classes": {0: "background", 255: "polyp"}}},
        "model": {"spatial_dims": 2, "channels": [4, 8], "strides": [2]},
    }, source="test")
    model = build_model(cfg.model, in_channels=3, out_channels=2).eval()
    from medseg.data.labels import LabelMap

    p2d = Predictor(model, cfg, LabelMap.from_mapping({0: "background", 255: "polyp"}),
                    {"kind": "images2d", "color": "rgb", "image_size": [32, 32], "scale": 1 / 255},
                    cfg.infer, torch.device("cpu"), DataKind.IMAGES2D, source="polyp.pt", in_channels=3)
    volume = shared_data / "spine-ct-totalseg" / "example_ct.nii.gz"
    with pytest.raises(DataError, match=r"polyp\.pt.*images2d.*cannot segment a volume"):
        predict_volume(p2d, volume)
    with pytest.raises(DataError, match="images2d"):
        predict_volumes(p2d, [volume], tmp_path / "out2d", progress=False)
    png = next((shared_data / "kvasir-seg" / "images").iterdir())
    p3d = Predictor.from_checkpoint(checkpoint, device="cpu")
    with pytest.raises(DataError, match="is a 2D image but this checkpoint segments 3D volumes"):
        p3d.predict(png)
    report = predict_volumes(p3d, [png], tmp_path / "out3d", progress=False)
    assert not report.ok and "2D image" in report.failed[0][1]


def test_slices2d_trains_and_predicts_slice_wise_on_the_input_grid(shared_data, tmp_path):
    cfg = validate_config(_config(_spine_root(shared_data, tmp_path / "data"), "slices2d"), source="test")
    result = medseg.train(cfg, run_dir=tmp_path / "run", progress=False)
    predictor = Predictor.from_checkpoint(result.last_checkpoint, device="cpu")
    assert predictor.preprocessing["kind"] == "slices2d" and predictor.spatial_dims == 2
    src = shared_data / "spine-ct-verse-cutout" / "sub-ct_label-22_ct.nii.gz"
    pred, ref = predictor.predict(src), read_volume(src)
    assert pred.shape == ref.shape
    np.testing.assert_array_equal(pred.affine, ref.affine)
    assert set(np.unique(pred.array).tolist()) <= OUTPUT_VALUES
