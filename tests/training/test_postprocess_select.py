"""medseg postprocess-select: per-class rules chosen from cross-validation predictions, and predict applying them.

The selection tests build the cross-validation folder as files (masks, predictions with stray blobs added, the
fold folders' config, labels and splits): no training. One small real 2-fold run checks the whole path to predict.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from typer.testing import CliRunner

from medseg.cli.main import app
from medseg.config import load_config
from medseg.data.labels import LabelMap
from medseg.data.synthetic.polyp import make_polyp_dataset
from medseg.errors import ConfigError, DataError, OutputExistsError
from medseg.prediction.ensemble import Ensemble
from medseg.prediction.postprocess import (
    ComponentRule,
    apply_postprocessing,
    find_postprocessing,
    keep_largest_component,
    read_postprocessing,
    remove_small_components,
)
from medseg.prediction.predictor import Predictor
from medseg.training.folds import train_folds
from medseg.training.postprocess_select import select_postprocessing

VALUES = {0: "background", 60: "blobby", 120: "clean", 180: "twin"}
N_CASES = 6


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    denominator = int(pred.sum()) + int(truth.sum())
    return 1.0 if denominator == 0 else 2.0 * int((pred & truth).sum()) / denominator


def _case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Truth and prediction (gray values) of one 40x40 case.

    blobby: one square; the prediction adds two stray blobs (4 and 1 pixels).
    clean: one square; the prediction is it shifted by one pixel (no stray blob).
    twin: two squares of 16 and 25 pixels; the prediction adds a 2-pixel blob.
    """
    truth = np.zeros((40, 40), np.uint8)
    r, c = rng.integers(2, 6, size=2)
    truth[r:r + 7, c:c + 6] = 60
    truth[22:27, 3:8] = 120
    truth[4:8, 30:34] = 180
    truth[30:35, 30:35] = 180
    pred = truth.copy()
    pred[15:17, 15:17] = 60
    pred[37, 2] = 60
    pred[22:27, 3:8] = 0
    pred[23:28, 3:8] = 120
    pred[20, 20:22] = 180
    return truth, pred


@pytest.fixture(scope="module")
def cv_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RUN/fold_0, RUN/fold_1 (config, labels, splits) and RUN/cv_predictions, over data/images + data/masks."""
    root = tmp_path_factory.mktemp("ppsel")
    rng = np.random.default_rng(0)
    for sub in ("data/images", "data/masks", "run/cv_predictions"):
        (root / sub).mkdir(parents=True)
    names = [f"case{i}" for i in range(N_CASES)]
    for name in names:
        truth, pred = _case(rng)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "data/images" / f"{name}.png")
        Image.fromarray(truth).save(root / "data/masks" / f"{name}.png")
        Image.fromarray(pred).save(root / "run/cv_predictions" / f"{name}.png")
    classes = ", ".join(f"{v}: {n}" for v, n in VALUES.items())
    for k in range(2):
        fold = root / "run" / f"fold_{k}"
        (fold / "splits").mkdir(parents=True)
        (fold / "config.yaml").write_text(
            f"version: 1\ndata: {{kind: images2d, root: {root / 'data'}, image_size: [32, 32], folds: 2, fold: {k},"
            f" labels: {{classes: {{{classes}}}}}}}\nmodel: {{channels: [4, 8], strides: [2]}}\n")
        (fold / "labels.json").write_text(json.dumps(LabelMap.from_mapping(VALUES).to_dict()))
        (fold / "splits" / "val.txt").write_text("\n".join(names[k::2]) + "\n")
    return root / "run"


def test_blobs_pick_largest_component_and_clean_class_none(cv_files: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _copy_tree(cv_files, run)
    selection = select_postprocessing(run, progress=False)
    chosen = {c.name: c.rule for c in selection.classes}
    assert chosen["blobby"] == ComponentRule("largest_component")
    assert chosen["clean"] == ComponentRule("none")
    # two true squares: keeping the largest loses one, removing components under a few pixels keeps both
    assert chosen["twin"].option == "remove_small" and 3 <= chosen["twin"].min_size <= 16
    doc = json.loads((run / "postprocessing.json").read_text())
    assert doc["classes"]["blobby"]["option"] == "largest_component" and doc["classes"]["blobby"]["min_size"] is None
    assert doc["classes"]["twin"]["min_size"] == chosen["twin"].min_size
    assert {e["n_cases"] for e in doc["classes"].values()} == {N_CASES}
    # the stored figures equal Dice computed here from the files
    truths = [np.asarray(Image.open(p)) for p in sorted((cv_files.parent / "data/masks").glob("*.png"))]
    preds = [np.asarray(Image.open(p)) for p in sorted((run / "cv_predictions").glob("*.png"))]
    for value, name in list(VALUES.items())[1:]:
        before = np.mean([_dice(p == value, t == value) for p, t in zip(preds, truths, strict=True)])
        assert doc["classes"][name]["dice_before"] == pytest.approx(before, abs=1e-12)
    assert doc["classes"]["blobby"]["dice_after"] == 1.0  # the prediction is the truth plus the blobs
    assert doc["classes"]["twin"]["dice_after"] == 1.0
    clean_before = np.mean([_dice(p == 120, t == 120) for p, t in zip(preds, truths, strict=True)])
    assert doc["classes"]["clean"]["dice_after"] == pytest.approx(clean_before, abs=1e-12) == 20 / 25
    assert doc["classes"]["blobby"]["dice_before"] == pytest.approx(2 * 42 / (42 + 47))
    # the rules read back for a model with these classes
    rules = read_postprocessing(run / "postprocessing.json", LabelMap.from_mapping(VALUES))
    assert rules == {1: ComponentRule("largest_component"), 2: ComponentRule("none"), 3: chosen["twin"]}
    with pytest.raises(OutputExistsError, match="--overwrite"):
        select_postprocessing(run, progress=False)


def test_one_fold_scores_its_own_cases(cv_files: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _copy_tree(cv_files, run)
    selection = select_postprocessing(run / "fold_1", progress=False)
    assert selection.path == run / "fold_1" / "postprocessing.json"
    assert {c.n_cases for c in selection.classes} == {N_CASES // 2}
    assert find_postprocessing(run / "fold_1" / "checkpoints" / "best.pt") == selection.path
    assert find_postprocessing(run / "fold_0") is None  # no file in fold_0 nor in RUN


def test_doors(cv_files: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["postprocess-select", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "nowhere: run folder not found" in missing.output
    assert "Traceback" not in missing.output and len(missing.output.strip().splitlines()) == 1
    plain = tmp_path / "plain"  # a run folder without validation predictions
    (plain / "splits").mkdir(parents=True)
    (plain / "config.yaml").write_text("version: 1\n")
    result = runner.invoke(app, ["postprocess-select", str(plain)])
    assert result.exit_code == 1 and "no validation predictions" in result.output and "data.folds" in result.output
    assert str(plain) in result.output and len(result.output.strip().splitlines()) == 1
    run = tmp_path / "run"
    _copy_tree(cv_files, run)
    gain = runner.invoke(app, ["postprocess-select", str(run), "--min-gain", "2"])
    assert gain.exit_code == 2 and "--min-gain" in gain.output
    with pytest.raises(ConfigError, match="--min-gain"):
        select_postprocessing(run, min_gain=-0.1)
    (run / "fold_1" / "splits" / "val.txt").unlink()
    with pytest.raises(DataError, match=r"fold\(s\) 1 of 2 not trained yet"):
        select_postprocessing(run, progress=False)


def test_several_folders_are_all_checked_before_any_is_written(cv_files: Path, tmp_path: Path) -> None:
    """CV1 has its postprocessing.json already: `postprocess-select CV2 CV1` writes nothing, prints no table."""
    cv1, cv2 = tmp_path / "cv1", tmp_path / "cv2"
    _copy_tree(cv_files, cv1)
    _copy_tree(cv_files, cv2)
    (cv1 / "postprocessing.json").write_text('{"mine": 1}\n')
    before = {p: p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}
    runner = CliRunner()
    result = runner.invoke(app, ["postprocess-select", str(cv2), str(cv1)])
    assert result.exit_code == 2 and result.stdout == "", result.output
    assert result.stderr.splitlines() == [f"error: {cv1}/postprocessing.json: exists; pass --overwrite to replace it"]
    assert {p: p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")} == before
    # a bad file in the second folder: the first is scored but not written either (exit 1)
    Image.fromarray(np.zeros((7, 7), np.uint8)).save(next((cv1 / "cv_predictions").glob("*.png")))
    (cv1 / "postprocessing.json").unlink()
    result = runner.invoke(app, ["postprocess-select", str(cv2), str(cv1)])
    assert result.exit_code == 1 and "differs from the mask" in result.stderr and result.stdout == ""
    assert not (cv2 / "postprocessing.json").exists() and not (cv1 / "postprocessing.json").exists()
    twice = runner.invoke(app, ["postprocess-select", str(cv2), str(cv2 / ".." / "cv2")])
    assert twice.exit_code == 2
    assert twice.stderr.splitlines() == [f"error: {cv2 / '..' / 'cv2'}: run folder given twice (as {cv2} too); "
                                         "give each once"]
    assert not (cv2 / "postprocessing.json").exists()


def test_cli_prints_the_table(cv_files: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _copy_tree(cv_files, run)
    result = CliRunner().invoke(app, ["postprocess-select", str(run)])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines() if line.split()}
    assert rows["blobby"][3] == "largest_component" and rows["clean"][3] == "none"
    assert rows["blobby"][2] == "1.0000"
    assert f"written: {run / 'postprocessing.json'}" in result.output


def test_rules_on_arrays() -> None:
    classes = np.zeros((6, 6), np.uint8)
    classes[0:2, 0:2] = 1  # 4 px
    classes[4, 4] = 1  # 1 px
    classes[3:6, 0:2] = 2  # 6 px
    classes[0, 5] = 2  # 1 px
    assert (remove_small_components(classes, 1, 2) == np.where((classes == 1) & (np.arange(6)[None] == 4), 0,
                                                                classes)).all()
    out = apply_postprocessing(classes, {1: ComponentRule("none"), 2: ComponentRule("largest_component")})
    assert (out == keep_largest_component(np.where(classes == 1, 0, classes), 3) + (classes == 1)).all()
    assert ndimage.label(out == 2)[1] == 1 and (out == 1).sum() == 5
    with pytest.raises(ValueError, match="option"):
        ComponentRule("biggest")


# ----------------------------------------------------------------------------------------- a real 2-fold run
@pytest.fixture(scope="module")
def cv_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 2-fold run (one epoch per fold) of 4 synthetic polyp images."""
    root = make_polyp_dataset(tmp_path_factory.mktemp("ppcv") / "polyp", n=4, size=(48, 48), seed=3)
    cfg = root.parent / "cfg.yaml"
    cfg.write_text(
        "version: 1\n"
        "data: {kind: images2d, root: polyp, image_size: [32, 32], folds: 2, cache: false,\n"
        "       labels: {classes: {0: background, 255: polyp}, tolerance: 20}}\n"
        "model: {channels: [4, 8], strides: [2], num_res_units: 0}\n"
        "train: {max_epochs: 1, batch_size: 2, device: cpu, preview_samples: 0}\n"
    )
    run = root.parent / "cv"
    assert train_folds(load_config(cfg), [0, 1], run_dir=run, progress=False).cv is not None
    return run


def test_real_folds_select_and_predict_applies_it(cv_run: Path, tmp_path: Path) -> None:
    selection = select_postprocessing(cv_run, overwrite=True, progress=False)
    summary = json.loads((cv_run / "cv_metrics.summary.json").read_text())["summary"]
    assert selection.classes[0].dice_before == pytest.approx(summary["polyp"]["dice"]["mean"], abs=1e-6)
    images = cv_run.parent / "polyp" / "images"
    plain = Predictor.from_checkpoint(cv_run / "fold_0", postprocessing=False, threshold=0.5)
    found = {p.name: plain.labels.to_class(plain.predict(p))[0] for p in sorted(images.iterdir())}
    assert any(ndimage.label(c == 1)[1] > 1 for c in found.values()), "the test needs a prediction with blobs"
    # decide largest component for the polyp, then predict the way a user does
    doc = json.loads(selection.path.read_text())
    doc["classes"]["polyp"].update(option="largest_component", min_size=None)
    selection.path.write_text(json.dumps(doc))
    runner = CliRunner()
    applied = runner.invoke(app, ["predict", str(cv_run / "fold_0"), str(images), "-o", str(tmp_path / "pp"),
                                  "--threshold", "0.5"])
    assert applied.exit_code == 0, applied.output
    assert "postprocessing from" in applied.output and "polyp: largest_component" in applied.output
    every = runner.invoke(app, ["predict", str(cv_run / "fold_0" / "checkpoints" / "best.pt"), str(images),
                                "-o", str(tmp_path / "all"), "--threshold", "0.5", "--all-components"])
    assert every.exit_code == 0 and "not applied" in every.output
    for name, classes in found.items():
        written = np.asarray(Image.open(tmp_path / "pp" / name)) > 127
        assert (written == (keep_largest_component(classes, 2) == 1)).all()
        assert ndimage.label(written)[1] <= 1  # no blobs
        assert ((np.asarray(Image.open(tmp_path / "all" / name)) > 127) == (classes == 1)).all()
    # the ensemble of both folds applies the rules once, to the average of their probabilities
    mean = Ensemble.from_checkpoints([cv_run], postprocessing=False, threshold=0.5)
    assert Ensemble.from_checkpoints([cv_run]).postprocessing == {1: ComponentRule("largest_component", 0)}
    both = runner.invoke(app, ["predict", str(cv_run), str(images), "-o", str(tmp_path / "ens"), "--threshold", "0.5"])
    assert both.exit_code == 0, both.output
    for p in sorted(images.iterdir()):
        classes = mean.labels.to_class(mean.predict(p))[0]
        written = np.asarray(Image.open(tmp_path / "ens" / p.name)) > 127
        assert (written == (keep_largest_component(classes, 2) == 1)).all()
    doc["classes"] = {"tumour": {"index": 1, "option": "none"}}
    selection.path.write_text(json.dumps(doc))
    stale = runner.invoke(app, ["predict", str(cv_run / "fold_0"), str(images), "-o", str(tmp_path / "x")])
    assert stale.exit_code == 1 and "'tumour'" in stale.output and "--all-components" in stale.output


def _copy_tree(source: Path, target: Path) -> None:
    shutil.copytree(source, target)  # the folds' configs point at the fixture's data folder


def test_volume_predictions_take_the_rules(ckpt3d: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, images = ckpt3d
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt, run / "checkpoints" / "last.pt")
    scan = sorted(images.iterdir())[0]
    plain = Predictor.from_checkpoint(run, postprocessing=False)
    values = plain.predict(scan).array
    found, counts = np.unique(values[values > 0], return_counts=True)
    assert found.size, "the test needs a prediction with foreground"
    target = int(found[counts.argmax()])  # the most predicted structure goes, the others stay
    name = plain.labels.names[plain.labels.output_values.index(target)]
    index = plain.labels.names.index(name)
    (run / "postprocessing.json").write_text(json.dumps({"format": "medseg-postprocessing", "classes": {
        name: {"index": index, "option": "remove_small", "min_size": values.size + 1}}}))
    ruled = Predictor.from_checkpoint(run / "checkpoints" / "last.pt")
    assert ruled.postprocessing == {index: ComponentRule("remove_small", values.size + 1)}
    assert (ruled.predict(scan).array == np.where(values == target, 0, values)).all()
