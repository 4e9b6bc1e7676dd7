"""Cross-validation folds: the partition, the config doors, and a tiny 2-fold run scored over the union."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medseg.cli.main import app
from medseg.config import load_config
from medseg.data.pairing import find_pairs_from_config
from medseg.data.splits import fold_of_each, select_split
from medseg.data.synthetic.polyp import make_polyp_dataset
from medseg.errors import ConfigError, DataError
from medseg.training.folds import parse_fold_option, train_folds


@pytest.mark.parametrize(("n", "folds"), [(5, 2), (10, 5), (7, 3), (3, 3)])
def test_folds_partition_the_cases(n: int, folds: int) -> None:
    fold = fold_of_each(n, folds=folds, seed=4)
    sizes = np.bincount(fold, minlength=folds)
    assert sizes.sum() == n and sizes.max() - sizes.min() <= 1
    assert fold == fold_of_each(n, folds=folds, seed=4)  # deterministic
    assert fold != fold_of_each(n, folds=folds, seed=5) or n == folds


def test_too_few_cases_for_the_folds() -> None:
    with pytest.raises(DataError, match="data.folds: 5 folds need at least 5 cases, found 3"):
        fold_of_each(3, folds=5, seed=0)


@pytest.fixture(scope="module")
def polyps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_polyp_dataset(tmp_path_factory.mktemp("cv") / "polyp", n=6, size=(48, 64), seed=2)
    cfg = root.parent / "cfg.yaml"
    cfg.write_text(
        "version: 1\n"
        "data: {kind: images2d, root: polyp, image_size: [32, 32], folds: 3, cache: false,\n"
        "       labels: {classes: {0: background, 255: polyp}}}\n"
        "model: {channels: [4, 8], strides: [2], num_res_units: 0}\n"
        "train: {max_epochs: 1, batch_size: 2, device: cpu, preview_samples: 0}\n"
    )
    return cfg


def test_select_split_by_fold(polyps: Path) -> None:
    cfg = load_config(polyps)
    pairs = find_pairs_from_config(cfg.data)
    vals = []
    for k in range(3):
        data = cfg.data.model_copy(update={"fold": k})
        train, val = select_split(pairs, data)
        assert not {p.case_id for p in train} & {p.case_id for p in val}
        assert len(train) + len(val) == 6
        vals += [p.case_id for p in val]
    assert sorted(vals) == sorted(p.case_id for p in pairs)  # every case validated exactly once
    with pytest.raises(DataError, match="--fold"):
        select_split(pairs, cfg.data)  # folds set, no fold chosen


def test_config_doors(polyps: Path) -> None:
    with pytest.raises(ConfigError, match="data.fold"):
        load_config(polyps, ["data.fold=3"])  # 0..2
    with pytest.raises(ConfigError, match="data.folds"):
        load_config(polyps, ["data.folds=null", "data.fold=0"])
    with pytest.raises(ConfigError, match="data.folds"):
        load_config(polyps, ["data.folds=1"])
    with pytest.raises(ConfigError, match="allowed 0..2"):
        parse_fold_option("7", 3)
    with pytest.raises(ConfigError, match="no data.folds"):
        parse_fold_option("0", None)


def test_two_runs_then_the_union_is_scored(polyps: Path, tmp_path: Path) -> None:
    cfg = load_config(polyps)
    run = tmp_path / "cv"
    first = train_folds(cfg, [0, 1], run_dir=run, progress=False)
    assert first.cv is None  # fold 2 has not predicted yet
    last = train_folds(cfg, [2], run_dir=run, progress=False)  # e.g. another job
    assert last.cv is not None and last.cv.csv_path == run / "cv_metrics.csv"
    predictions = sorted(p.name for p in (run / "cv_predictions").glob("*.png"))
    assert predictions == sorted(p.image.name for p in find_pairs_from_config(cfg.data))  # each case once
    # the score equals Dice computed here from the files
    dices = []
    for pair in find_pairs_from_config(cfg.data):
        pred = np.asarray(Image.open(run / "cv_predictions" / pair.image.name)) > 127
        truth = np.asarray(Image.open(pair.mask).convert("L")) > 127
        denom = pred.sum() + truth.sum()
        dices.append(1.0 if denom == 0 else 2 * (pred & truth).sum() / denom)
    assert last.cv.summary["polyp"]["dice"]["mean"] == pytest.approx(np.mean(dices), abs=1e-6)
    # resuming a finished cross-validation trains nothing new and keeps the predictions
    before = {p: p.stat().st_mtime_ns for p in (run / "cv_predictions").iterdir()}
    again = train_folds(cfg, [0, 1, 2], run_dir=run, resume=True, progress=False)
    assert again.cv is not None
    assert {p: p.stat().st_mtime_ns for p in (run / "cv_predictions").iterdir() if p in before} == before


def test_cli_fold_errors(polyps: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["train", str(polyps), "--fold", "9", "-o", str(tmp_path / "r")])
    assert bad.exit_code == 2 and "--fold" in bad.output and "Traceback" not in bad.output
    none = runner.invoke(app, ["train", str(polyps), "--set", "data.folds=null", "--fold", "0",
                               "-o", str(tmp_path / "r")])
    assert none.exit_code == 2 and "data.folds" in none.output
