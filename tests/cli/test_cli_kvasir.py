"""End to end on real Kvasir-SEG pairs through the CLI: train -> predict -> evaluate, and bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from medseg.cli.main import app

runner = CliRunner()


def _subset(kvasir: Path, dest: Path, n: int) -> Path:
    ids = sorted(p.stem for p in (kvasir / "images").glob("*.jpg"))[:n]
    for sub in ("images", "masks"):
        (dest / sub).mkdir(parents=True)
        for i in ids:
            shutil.copy(kvasir / sub / f"{i}.jpg", dest / sub / f"{i}.jpg")
    return dest


def _config(tmp_path: Path, root: Path, **train) -> Path:
    raw = {
        "data": {"root": str(root), "image_size": [32, 32], "val_fraction": 0.25,
                 "labels": {"classes": {0: "background", 255: "polyp"}, "tolerance": 20}},
        "model": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "train": {"max_epochs": 1, "batch_size": 4, "lr": 0.01, "device": "cpu", "preview_samples": 2, **train},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def trained(kvasir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kvasir_e2e")
    data = _subset(kvasir, tmp / "data", 8)
    cfg = _config(tmp, data)
    result = runner.invoke(app, ["train", str(cfg), "--run-dir", str(tmp / "run"), "-q"])
    assert result.exit_code == 0, result.output
    return tmp, data


def test_train_outputs(trained):
    tmp, _ = trained
    assert (tmp / "run" / "checkpoints" / "best.pt").is_file()
    assert "best checkpoint:" in runner.invoke(app, ["train", str(tmp / "exp.yaml"), "--resume", str(tmp / "run"),
                                                      "--set", "train.max_epochs=2", "-q"]).output


def test_predict_full_size_original_values_then_evaluate(trained):
    tmp, data = trained
    out = tmp / "pred"
    result = runner.invoke(app, ["predict", str(tmp / "run"), str(data / "images"), "-o", str(out), "--overlay", "-q"])
    assert result.exit_code == 0, result.output
    assert "16 files written" in result.output  # 8 masks + 8 overlays
    for img in sorted((data / "images").glob("*.jpg")):
        mask = np.asarray(Image.open(out / f"{img.stem}.png"))
        assert mask.shape == np.asarray(Image.open(img)).shape[:2]
        assert set(np.unique(mask)) <= {0, 255}
    again = runner.invoke(app, ["predict", str(tmp / "run"), str(data / "images"), "-o", str(out), "-q"])
    assert again.exit_code == 0 and "8 existing skipped" in again.output
    ev = runner.invoke(app, ["evaluate", "--pred", str(out), "--truth", str(data / "masks"), "--tolerance", "20",
                             "--checkpoint", str(tmp / "run"), "-o", str(tmp / "metrics.csv")])
    assert ev.exit_code == 0, ev.output
    lines = (tmp / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("case,class,missing_prediction,dice,iou,precision,recall,f1,hd95")
    assert len(lines) == 1 + 8 * 2  # polyp + overall per case
    dice = [float(line.split(",")[3]) for line in lines[1:]]
    assert all(0.0 <= d <= 1.0 for d in dice)
    again = runner.invoke(app, ["evaluate", "--pred", str(out), "--truth", str(data / "masks"), "--tolerance", "20",
                                "-o", str(tmp / "metrics.csv")])
    assert again.exit_code == 2 and "exists; pass --overwrite" in again.output


def test_predictor_python_api_matches_cli(trained):
    import medseg

    tmp, data = trained
    predictor = medseg.Predictor.from_checkpoint(tmp / "run" / "checkpoints" / "best.pt", device="cpu")
    first = sorted((data / "images").glob("*.jpg"))[0]
    mask = predictor.predict(first)
    out = tmp / "pred-api"
    result = runner.invoke(app, ["predict", str(tmp / "run"), str(first), "-o", str(out), "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(mask, np.asarray(Image.open(out / f"{first.stem}.png")))
    assert mask.shape == np.asarray(Image.open(first)).shape[:2]


# ---------------------------------------------------------------------------------------------- bad input
def _fail(args, code, pattern):
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert pattern in result.output, result.output
    return result


def test_missing_data_root(tmp_path):
    cfg = _config(tmp_path, tmp_path / "nowhere")
    _fail(["train", str(cfg), "--run-dir", str(tmp_path / "run")], 1, "data.root: folder")


def test_image_without_mask_and_mask_without_image_listed(kvasir, tmp_path):
    data = _subset(kvasir, tmp_path / "data", 4)
    imgs = sorted((data / "images").iterdir())
    imgs[0].rename(data / "images" / "lonely_image.jpg")
    (data / "masks" / imgs[1].name).rename(data / "masks" / "lonely_mask.jpg")
    r = _fail(["train", str(_config(tmp_path, data)), "--run-dir", str(tmp_path / "run")], 1, "lonely_image")
    assert "lonely_mask" in r.output


def test_truncated_image_named(kvasir, tmp_path):
    data = _subset(kvasir, tmp_path / "data", 4)
    victim = sorted((data / "images").iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:2000])
    _fail(["train", str(_config(tmp_path, data)), "--run-dir", str(tmp_path / "run")], 1, victim.name)


def test_mask_size_mismatch_named(kvasir, tmp_path):
    data = _subset(kvasir, tmp_path / "data", 4)
    mask = sorted((data / "masks").iterdir())[1]
    Image.open(mask).resize((50, 40)).save(mask)
    _fail(["train", str(_config(tmp_path, data)), "--run-dir", str(tmp_path / "run")], 1, "differs from image")


def test_label_value_outside_mapping_named(kvasir, tmp_path):
    data = _subset(kvasir, tmp_path / "data", 4)
    mask = sorted((data / "masks").iterdir())[0]
    arr = np.asarray(Image.open(mask).convert("L")).copy()
    arr[:20, :20] = 128
    Image.fromarray(arr).save(mask.with_suffix(".png"))
    mask.unlink()
    r = _fail(["train", str(_config(tmp_path, data)), "--run-dir", str(tmp_path / "run")], 1, mask.stem)
    assert "128" in r.output


def test_config_typo_and_negative_lr_exit_2(tmp_path):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("data:\n  root: x\ntrian:\n  lr: 0.1\n")
    _fail(["train", str(cfg)], 2, "trian (line 3): unknown key")
    cfg.write_text("data:\n  root: x\ntrain:\n  lr: -1\n")
    _fail(["config", "check", str(cfg)], 2, "train.lr (line 4): Input should be greater than 0")
    _fail(["train", str(cfg), "--set", "train.lr=0.1", "--set", "model.channels=[8]"], 2, "model")


def test_not_a_medseg_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, path)
    img = tmp_path / "in"
    img.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img / "a.png")
    _fail(["predict", str(path), str(img), "-o", str(tmp_path / "out")], 1, "other.pt: not a medseg checkpoint")


def test_existing_run_folder_refused(trained):
    tmp, _ = trained
    _fail(["train", str(tmp / "exp.yaml"), "--run-dir", str(tmp / "run")], 2, "run folder exists and is not empty")


def test_output_inside_input_refused(trained):
    tmp, data = trained
    _fail(["predict", str(tmp / "run"), str(data / "images"), "-o", str(data / "images" / "out")], 2,
          "is inside input folder")


def test_config_show_prints_resolved_defaults(tmp_path):
    cfg = _config(tmp_path, tmp_path / "d")
    result = runner.invoke(app, ["config", "show", str(cfg), "--set", "train.max_epochs=9"])
    assert result.exit_code == 0
    shown = yaml.safe_load(result.output)
    assert shown["train"]["max_epochs"] == 9 and shown["train"]["optimizer"] == "adamw"
    assert shown["data"]["root"] == str(tmp_path / "d")


def test_output_that_is_a_file_refused(trained, tmp_path):
    tmp, data = trained
    afile = tmp_path / "afile"
    afile.write_text("x")
    _fail(["predict", str(tmp / "run"), str(data / "images"), "-o", str(afile)], 2,
          f"-o: {afile} is a file; the output must be a folder (new or existing)")
    assert afile.read_text() == "x"
