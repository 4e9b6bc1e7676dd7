"""Confusion-matrix metrics: hand-computed values, agreement with compute_case_metrics and MONAI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot

from medseg.metrics.case_metrics import OVERALL, compute_case_metrics
from medseg.metrics.confusion import (
    EpochMetrics,
    case_scores,
    class_scores,
    confusion_matrices,
    confusion_matrix,
    pooled_scores,
)

NAMES = ["bg", "a", "b"]
# sample 0: 3 classes; sample 1: class b absent from truth and prediction
PRED = torch.tensor([[[0, 1, 1], [2, 2, 0]],
                     [[0, 1, 0], [1, 1, 0]]])
TRUTH = torch.tensor([[[0, 1, 0], [2, 1, 0]],
                      [[0, 1, 1], [1, 0, 0]]])


def test_confusion_matrices_by_hand():
    cms = confusion_matrices(PRED, TRUTH[:, None], 3)  # truth with a channel axis, as loaders give it
    # rows truth, columns prediction
    assert cms[0].tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert cms[1].tolist() == [[2, 1, 0], [1, 2, 0], [0, 0, 0]]
    assert confusion_matrix(PRED[1].numpy(), TRUTH[1].numpy(), 3).tolist() == cms[1].tolist()


def test_epoch_metrics_on_a_hand_built_batch():
    m = EpochMetrics(NAMES)
    m.add_batch(PRED, TRUTH)
    r = m.record("train")
    # sample 0: a: TP1 FP1 FN1 -> Dice 1/2, IoU 1/3; b: TP1 FP1 FN0 -> Dice 2/3, IoU 1/2
    # sample 1: a: TP2 FP1 FN1 -> Dice 2/3, IoU 1/2; b absent from both: out of the case mean, Dice 1 for the class
    case0_dice, case1_dice = (1 / 2 + 2 / 3) / 2, 2 / 3
    assert r["train_dice"] == pytest.approx((case0_dice + case1_dice) / 2)
    assert r["train_iou"] == pytest.approx(((1 / 3 + 1 / 2) / 2 + 1 / 2) / 2)
    assert r["train_per_class"]["a"]["dice"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert r["train_per_class"]["b"]["dice"] == pytest.approx((2 / 3 + 1) / 2)
    assert r["train_per_class"]["a"]["precision"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m.confusion.tolist() == [[4, 2, 0], [1, 3, 1], [0, 0, 1]]
    iou = [4 / 7, 3 / 7, 1 / 2]
    assert r["train_pixel_accuracy"] == pytest.approx(8 / 12)
    assert r["train_miou_with_background"] == pytest.approx(sum(iou) / 3)
    assert r["train_miou_without_background"] == pytest.approx((iou[1] + iou[2]) / 2)
    pooled = r["train_pooled_per_class"]
    assert pooled["a"] == pytest.approx({"dice": 6 / 10, "iou": 3 / 7, "precision": 3 / 5, "recall": 3 / 5,
                                         "f1": 6 / 10})
    assert pooled["bg"]["recall"] == pytest.approx(4 / 6) and pooled["bg"]["precision"] == pytest.approx(4 / 5)
    assert m.running_dice == pytest.approx((case0_dice + case1_dice) / 2)


def test_empty_policy_never_nan():
    # class 1 absent everywhere, class 2 predicted but not in the truth
    s = class_scores(np.array([[5, 0, 1], [0, 0, 0], [0, 0, 0]]))
    assert s[1] == dict.fromkeys(("dice", "iou", "precision", "recall", "f1"), 1.0)
    assert s[2] == {"dice": 0.0, "iou": 0.0, "precision": 0.0, "recall": 1.0, "f1": 0.0}
    p = pooled_scores(np.array([[5, 0, 1], [0, 0, 0], [0, 0, 0]]), NAMES)
    assert p["miou_without_background"] == 0.0  # class 1 left out, class 2 scores 0
    assert p["miou_with_background"] == pytest.approx((5 / 6 + 0) / 2)
    assert EpochMetrics(NAMES).record("val") == {}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_case_scores_equal_compute_case_metrics(seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, size=(9, 11))
    pred = np.where(rng.random((9, 11)) < 0.7, truth, rng.integers(0, 3, size=(9, 11)))
    if seed == 2:
        pred[pred == 2], truth[truth == 2] = 0, 0  # a class absent from both
    ref = compute_case_metrics(pred, truth, 3, class_names=NAMES)
    got = case_scores(confusion_matrix(pred, truth, 3), NAMES)
    for name in ("a", "b", OVERALL):
        for metric, value in got[name].items():
            assert value == pytest.approx(ref[name][metric]), (name, metric)


def test_dice_agrees_with_monai():
    rng = np.random.default_rng(4)
    truth = torch.as_tensor(rng.integers(0, 3, size=(1, 1, 16, 16)))
    pred = torch.where(torch.as_tensor(rng.random((1, 1, 16, 16))) < 0.6, truth,
                       torch.as_tensor(rng.integers(0, 3, size=(1, 1, 16, 16))))
    monai = DiceMetric(include_background=True, reduction="none")(one_hot(pred, 3), one_hot(truth, 3))[0]
    ours = class_scores(confusion_matrices(pred[:, 0], truth, 3)[0].numpy())
    assert [s["dice"] for s in ours] == pytest.approx(monai.tolist())


def test_bad_inputs_refused():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrices(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="outside 0..1"):
        confusion_matrices(torch.full((1, 3), 2), torch.zeros(1, 3, dtype=torch.long), 2)
