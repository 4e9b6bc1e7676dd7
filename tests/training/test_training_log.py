"""The training log (train and val metrics defined alike, confusion matrices, curves, TensorBoard images) and
`medseg compare` on two real tiny runs."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medseg.cli.main import app
from medseg.config import validate_config
from medseg.data.labels import LabelMap
from medseg.data.synthetic.polyp import make_polyp_dataset
from medseg.metrics.confusion import pooled_scores
from medseg.training.epoch import run_epoch
from medseg.training.loop import train

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


def _config(root: Path, **train_keys) -> dict:
    return {
        "data": {"kind": "images2d", "root": str(root), "image_size": [32, 32], "val_fraction": 0.34,
                 "labels": {"classes": {0: "background", 255: "polyp"}, "tolerance": 20}},
        "model": {"spatial_dims": 2, "channels": [4, 8], "strides": [2], "num_res_units": 0},
        "train": {"max_epochs": 2, "batch_size": 2, "device": "cpu", "preview_samples": 0, **train_keys},
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny 2-epoch runs on 6 synthetic polyp images; the first also writes TensorBoard images."""
    tmp = tmp_path_factory.mktemp("zoo")
    data = make_polyp_dataset(tmp / "data", n=6, size=(32, 32), seed=1)
    a = train(validate_config(_config(data, tensorboard=True, tensorboard_images_every=1)), run_dir=tmp / "a",
              progress=False)
    b = train(validate_config(_config(data, lr=0.003, seed=5)), run_dir=tmp / "b", progress=False)
    return a.run_dir, b.run_dir


def test_log_has_every_metric_for_train_and_val(runs):
    records = json.loads((runs[0] / "log.json").read_text())
    for split in ("train", "val"):
        for key in ("loss", "dice", "iou", "pixel_accuracy", "miou_with_background", "miou_without_background"):
            assert isinstance(records[0][f"{split}_{key}"], float), f"{split}_{key}"
        assert set(records[0][f"{split}_per_class"]) == {"polyp"}
        assert set(records[0][f"{split}_pooled_per_class"]) == {"background", "polyp"}
        assert {"dice", "iou", "precision", "recall", "f1"} <= set(records[0][f"{split}_per_class"]["polyp"])
    assert "hd95" in records[0]["val_per_class"]["polyp"]
    assert "train_confusion" not in records[0] and "val_confusion" not in records[0]


def test_confusion_json_per_epoch_matches_the_log(runs):
    records = json.loads((runs[0] / "log.json").read_text())
    for rec in records:
        doc = json.loads((runs[0] / "confusion" / f"epoch_{rec['epoch']:04d}.json").read_text())
        assert doc["class_names"] == ["background", "polyp"] and doc["rows"] == "truth"
        for split in ("train", "val"):
            cm = np.asarray(doc[split])
            pooled = pooled_scores(cm, doc["class_names"])
            assert rec[f"{split}_pixel_accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
            assert rec[f"{split}_miou_with_background"] == pytest.approx(pooled["miou_with_background"])
            for name in doc["class_names"]:
                assert rec[f"{split}_pooled_per_class"][name] == pytest.approx(pooled["per_class"][name])
        assert np.asarray(doc["val"]).sum() == 2 * 32 * 32  # 2 validation images, every pixel once
        assert np.asarray(doc["train"]).sum() == 4 * 32 * 32  # 4 training images (2 steps of 2) per epoch
    assert (runs[0] / "confusion_best.png").read_bytes()[:8] == PNG
    assert (runs[0] / "curves.png").read_bytes()[:8] == PNG


def test_tensorboard_gets_validation_images(runs):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = event_accumulator.EventAccumulator(str(runs[0] / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"val/input", "val/truth", "val/pred"} <= set(tags["images"])
    assert len(acc.Images("val/pred")) == 2  # every epoch
    assert "val_per_class/polyp/dice" in tags["scalars"]


class _FixedLogits(torch.nn.Module):
    """Logits that put each pixel in the class the first input channel names (a parameter keeps the loss
    differentiable)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(x[:, 0].long(), 3).permute(0, 3, 1, 2).float() * 10 + self.w


class _MeanLoss(torch.nn.Module):
    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return logits.mean()


class _HandTask:
    labels = LabelMap.from_mapping({0: "bg", 1: "a", 2: "b"})
    in_channels, spatial_dims = 1, 2

    def __init__(self, pred: torch.Tensor, truth: torch.Tensor) -> None:
        self.batch = {"image": pred[:, None].float(), "label": truth[:, None]}

    def train_loader(self, epoch, share=None):
        return [self.batch]

    def augment_batch(self, image, label, epoch, indices):
        return image, label


def test_run_epoch_metrics_on_a_hand_built_batch(tmp_path):
    pred = torch.tensor([[[0, 1, 1], [2, 2, 0]], [[0, 1, 0], [1, 1, 0]]])
    truth = torch.tensor([[[0, 1, 0], [2, 1, 0]], [[0, 1, 1], [1, 0, 0]]])
    cfg = validate_config(_config(tmp_path, max_epochs=1))
    model = _FixedLogits()
    rec = run_epoch(model, _HandTask(pred, truth), _MeanLoss(),  # type: ignore[arg-type]
                    torch.optim.SGD(model.parameters(), lr=0.0), torch.amp.GradScaler("cuda", enabled=False),
                    torch.device("cpu"), cfg, 0, progress=False)
    assert rec["train_confusion"] == [[4, 2, 0], [1, 3, 1], [0, 0, 1]]
    assert rec["train_pixel_accuracy"] == pytest.approx(8 / 12)
    assert rec["train_miou_with_background"] == pytest.approx((4 / 7 + 3 / 7 + 1 / 2) / 3)
    assert rec["train_miou_without_background"] == pytest.approx((3 / 7 + 1 / 2) / 2)
    assert rec["train_dice"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 2 / 3) / 2)


def _best(records: list[dict]) -> dict:
    return max((r for r in records if "val_dice" in r), key=lambda r: r["val_dice"])


def test_compare_two_runs_png_and_tables_equal_the_logs(runs, tmp_path):
    png, table = tmp_path / "compare.png", tmp_path / "compare.csv"
    result = runner.invoke(app, ["compare", str(runs[0]), str(runs[1]), "-o", str(png), "--table", str(table)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == PNG
    rows = list(csv.DictReader(table.open()))
    assert [r["run"] for r in rows] == ["a", "b"]
    for row, run in zip(rows, runs, strict=True):
        best = _best(json.loads((run / "log.json").read_text()))
        assert int(row["best_epoch"]) == best["epoch"]
        for key in ("val_loss", "val_dice", "val_iou", "val_miou_with_background", "val_miou_without_background",
                    "val_pixel_accuracy"):
            assert float(row[key]) == best[key], key
        assert float(row["polyp dice"]) == best["val_per_class"]["polyp"]["dice"]
        assert f"| {run.name} | {best['epoch']} | dice |" in result.output
    md = tmp_path / "compare.md"
    assert runner.invoke(app, ["compare", str(runs[0]), "-o", str(tmp_path / "one.png"), "--table", str(md)]
                         ).exit_code == 0
    assert md.read_text().splitlines()[0].startswith("| run | best_epoch | best_metric | epochs | val_loss")


@pytest.mark.parametrize(("args", "code", "message"), [
    (["-o", "{tmp}/x.jpg"], 2, "--output: .*must end in .png"),
    (["-o", "{tmp}/x.png", "--table", "{tmp}/t.xlsx"], 2, "--table: .*must end in .csv or .md"),
    (["-o", "{tmp}/exists.png"], 2, "exists; pass --overwrite"),
])
def test_compare_bad_options_are_one_line(runs, tmp_path, args, code, message):
    (tmp_path / "exists.png").write_bytes(b"x")
    result = runner.invoke(app, ["compare", str(runs[0]), *(a.format(tmp=tmp_path) for a in args)])
    assert result.exit_code == code
    assert len(result.output.strip().splitlines()) == 1
    assert re.search(message, result.output)


def test_compare_refuses_a_folder_without_log(runs, tmp_path):
    result = runner.invoke(app, ["compare", str(runs[0]), str(tmp_path), "-o", str(tmp_path / "c.png")])
    assert result.exit_code == 1
    assert "no log.json" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "c.png").exists()
