"""`evaluate` on label volumes: HD95 in mm from the spacing, geometry checked before comparing."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from medseg.data.labels import LabelMap
from medseg.errors import DataError, OutputExistsError
from medseg.evaluation.evaluate import evaluate

VERTEBRAE = LabelMap.from_classes([("background", [0])] + [(n, [v]) for n, v in
                                   [("S1", 26), ("L5", 27), ("L4", 28), ("L3", 29), ("L2", 30), ("L1", 31),
                                    ("T12", 32), ("T11", 33)]])


@pytest.fixture()
def folders(shared_data, tmp_path):
    truth = tmp_path / "truth"
    pred = tmp_path / "pred"
    truth.mkdir()
    pred.mkdir()
    shutil.copy(shared_data / "spine-ct-totalseg" / "totalseg_vertebrae.nii.gz", truth / "spine.nii.gz")
    return pred, truth


def test_identical_volumes_score_perfectly(folders):
    pred, truth = folders
    shutil.copy(truth / "spine.nii.gz", pred / "spine.nii.gz")
    result = evaluate(pred, truth, labels=VERTEBRAE, output=pred / "m.csv")
    for name in VERTEBRAE.names[1:]:
        assert result.summary[name]["dice"]["mean"] == 1.0
        assert result.summary[name]["hd95"]["mean"] == 0.0
    assert (pred / "m.summary.json").is_file()


def test_one_voxel_shift_gives_hd95_of_one_spacing(folders):
    pred, truth = folders
    img = nib.load(truth / "spine.nii.gz")
    data = np.asarray(img.dataobj)
    shifted = np.zeros_like(data)
    shifted[:, :, 1:] = data[:, :, :-1]  # one voxel (3 mm) along k
    nib.save(nib.Nifti1Image(shifted, img.affine, img.header), pred / "spine.nii.gz")
    result = evaluate(pred, truth, labels=VERTEBRAE)
    assert result.summary["L3"]["hd95"]["mean"] == pytest.approx(3.0, abs=1e-6)
    assert 0.5 < result.summary["L3"]["dice"]["mean"] < 1.0


def test_geometry_mismatch_refused_naming_files(folders):
    pred, truth = folders
    img = nib.load(truth / "spine.nii.gz")
    affine = img.affine.copy()
    affine[0, 3] += 5.0  # moved 5 mm: same shape, other place
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), pred / "spine.nii.gz")
    with pytest.raises(DataError, match=r"spine.nii.gz: geometry differs from truth spine.nii.gz"):
        evaluate(pred, truth, labels=VERTEBRAE)


def test_missing_prediction_scores_as_miss_and_is_listed(folders):
    pred, truth = folders
    shutil.copy(truth / "spine.nii.gz", pred / "spine.nii.gz")
    shutil.copy(truth / "spine.nii.gz", truth / "other.nii.gz")
    result = evaluate(pred, truth, labels=VERTEBRAE)
    assert result.missing_predictions == ["other"]
    assert result.summary["L3"]["dice"]["mean"] == pytest.approx(0.5)  # 1.0 and 0.0


def test_existing_output_needs_overwrite(folders):
    pred, truth = folders
    shutil.copy(truth / "spine.nii.gz", pred / "spine.nii.gz")
    (pred / "m.csv").write_text("old")
    with pytest.raises(OutputExistsError, match="m.csv: exists"):
        evaluate(pred, truth, labels=VERTEBRAE, output=pred / "m.csv")
    evaluate(pred, truth, labels=VERTEBRAE, output=pred / "m.csv", overwrite=True)
    assert (pred / "m.csv").read_text().startswith("case,class")


def test_no_prediction_pairing_with_any_truth_is_one_error_line_not_a_table_of_zeros(tmp_path):
    from typer.testing import CliRunner

    from medseg.cli.main import app

    labels = np.zeros((4, 4, 4), np.uint8)
    labels[1:3, 1:3, 1:3] = 1
    for folder, name in (("pred", "case00_0000"), ("pred", "case01_0000"), ("truth", "case00"), ("truth", "case01")):
        (tmp_path / folder).mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / folder / f"{name}.nii.gz")
    result = CliRunner().invoke(app, ["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth"),
                                      "-o", str(tmp_path / "scores.csv")])
    assert result.exit_code == 1, result.output
    assert result.output.strip() == (
        f"error: no prediction in {tmp_path / 'pred'} pairs with a truth file in {tmp_path / 'truth'}: predictions "
        "are named like 'case00_0000', truths like 'case00'; cases pair by file name without extension")
    assert not (tmp_path / "scores.csv").exists()
    # one pairing case is enough: the other truth scores as an empty prediction, as before
    (tmp_path / "pred" / "case00_0000.nii.gz").rename(tmp_path / "pred" / "case00.nii.gz")
    result = evaluate(tmp_path / "pred", tmp_path / "truth")
    assert result.missing_predictions == ["case01"]
