"""Cross-validation predictions are named by the case id, so postprocess-select and evaluate find them for nnU-Net
layouts (``case_0000.nii.gz`` with one or several channels). Built as files: no training."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.data.labels import LabelMap
from medseg.data.pairing import Pair
from medseg.errors import DataError
from medseg.training.folds import prediction_name
from medseg.training.postprocess_select import select_postprocessing

VALUES = {0: "background", 1: "organ"}
CASES = [f"case{i:02d}" for i in range(4)]


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)


def _cv_folder(root: Path, n_channels: int) -> Path:
    """data/imagesTr/caseNN_000C + labelsTr/caseNN, run/fold_0..1 (config, labels, splits), run/cv_predictions/
    caseNN.nii.gz (the truth plus one stray voxel, so largest_component wins)."""
    for case in CASES:
        truth = np.zeros((8, 8, 8), np.uint8)
        truth[2:5, 2:5, 2:5] = 1
        for c in range(n_channels):
            _save(np.full((8, 8, 8), c, np.float32), root / "data/imagesTr" / f"{case}_{c:04d}.nii.gz")
        _save(truth, root / "data/labelsTr" / f"{case}.nii.gz")
        pred = truth.copy()
        pred[7, 7, 7] = 1
        _save(pred, root / "run/cv_predictions" / f"{case}.nii.gz")
    channels = "" if n_channels == 1 else ", channels: [" + ", ".join(
        f"{{name: M{c}, intensity: zscore}}" for c in range(n_channels)) + "]"
    for k in range(2):
        fold = root / "run" / f"fold_{k}"
        (fold / "splits").mkdir(parents=True)
        (fold / "config.yaml").write_text(
            f"version: 1\ndata: {{kind: volumes3d, root: {root / 'data'}, images_dir: imagesTr, masks_dir: labelsTr, "
            f"folds: 2, fold: {k}, labels: {{classes: {{0: background, 1: organ}}}}{channels}}}\n"
            "model: {spatial_dims: 3}\n")
        (fold / "labels.json").write_text(json.dumps(LabelMap.from_mapping(VALUES).to_dict()))
        (fold / "splits" / "val.txt").write_text("\n".join(CASES[k::2]) + "\n")
    return root / "run"


@pytest.mark.parametrize("n_channels", [1, 2])
def test_postprocess_select_finds_the_predictions_of_nnunet_named_cases(tmp_path: Path, n_channels: int) -> None:
    run = _cv_folder(tmp_path, n_channels)
    selection = select_postprocessing(run, progress=False)
    (choice,) = selection.classes
    assert choice.n_cases == len(CASES)
    assert choice.rule.option == "largest_component"
    assert choice.dice_before == pytest.approx(2 * 27 / (28 + 27)) and choice.dice_after == 1.0


def test_a_missing_prediction_names_the_case_and_the_run_folder_to_resume(tmp_path: Path) -> None:
    run = _cv_folder(tmp_path, 2)
    (run / "cv_predictions" / "case02.nii.gz").unlink()
    for target in (run, run / "fold_0"):
        with pytest.raises(DataError) as err:
            select_postprocessing(target, progress=False)
        assert str(err.value) == (f"{run / 'cv_predictions'}: no prediction for validation case 'case02' of fold_0; "
                                  f"finish the folds (medseg train CONFIG --fold all --resume {run})")


def test_prediction_name_is_the_case_id_for_nnunet_names() -> None:
    one = Pair("a", Path("imagesTr/a_0000.nii.gz"), Path("labelsTr/a.nii.gz"))
    two = Pair("a", Path("imagesTr/a_0000.nii.gz"), Path("labelsTr/a.nii.gz"),
               (Path("imagesTr/a_0000.nii.gz"), Path("imagesTr/a_0001.nii.gz")))
    plain = Pair("b_0001", Path("images/b_0001.png"), Path("masks/b_0001.png"))
    assert [prediction_name(one, "volumes3d"), prediction_name(two, "volumes3d"), prediction_name(plain, "images2d")] \
        == ["a", "a", "b_0001"]
