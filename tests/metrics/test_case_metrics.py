from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU
from monai.networks.utils import one_hot
from scipy import ndimage

from medseg.metrics.case_metrics import (
    CLASS_METRICS,
    OVERALL,
    compute_case_metrics,
    hausdorff95,
    summarize,
)

# truth: 2x2 square, pred: 1x3 bar overlapping its top row.
TRUTH = np.array(
    [
        [0, 0, 0, 0],
        [0, 1, 1, 0],
        [0, 1, 1, 0],
        [0, 0, 0, 0],
    ]
)
PRED = np.array(
    [
        [0, 0, 0, 0],
        [0, 1, 1, 1],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ]
)


def test_hand_computed_overlap_metrics():
    # TP = 2, FP = 1 (pixel (1, 3)), FN = 2 (pixels (2, 1), (2, 2)).
    # dice = 2*2 / (2*2 + 1 + 2) = 4/7; iou = 2 / 5; precision = 2/3; recall = 2/4.
    # pixel accuracy: 3 of 16 pixels differ -> 13/16.
    m = compute_case_metrics(PRED, TRUTH, 2, class_names=["bg", "fg"])
    assert set(m) == {"fg", OVERALL}
    fg = m["fg"]
    assert fg["dice"] == pytest.approx(4 / 7, rel=1e-12)
    assert fg["f1"] == pytest.approx(4 / 7, rel=1e-12)
    assert fg["iou"] == pytest.approx(2 / 5, rel=1e-12)
    assert fg["precision"] == pytest.approx(2 / 3, rel=1e-12)
    assert fg["recall"] == pytest.approx(1 / 2, rel=1e-12)
    assert m[OVERALL]["pixel_accuracy"] == pytest.approx(13 / 16, rel=1e-12)
    assert m[OVERALL]["dice"] == pytest.approx(4 / 7, rel=1e-12)


def test_hand_computed_hd95_with_spacing():
    # All pixels of both shapes are surface pixels (each touches background).
    # 1 mm spacing: pred -> truth distances [0, 0, 1]: p95 = 0 + 0.9 * 1 = 0.9 (linear interpolation);
    # truth -> pred [0, 0, 1, 1]: p95 = 1. HD95 = max = 1.
    assert compute_case_metrics(PRED, TRUTH, 2)["class_1"]["hd95"] == pytest.approx(1.0, rel=1e-12)
    # rows 2 mm, columns 0.5 mm: pred -> truth [0, 0, 0.5] -> 0.45; truth -> pred [0, 0, 2, 2] -> 2.
    m = compute_case_metrics(PRED, TRUTH, 2, spacing=(2.0, 0.5))
    assert m["class_1"]["hd95"] == pytest.approx(2.0, rel=1e-12)
    assert hausdorff95(PRED == 1, TRUTH == 1, (2.0, 0.5)) == pytest.approx(2.0, rel=1e-12)


def test_f1_equals_dice_for_every_class():
    rng = np.random.default_rng(0)
    pred, truth = rng.integers(0, 4, (16, 16)), rng.integers(0, 4, (16, 16))
    for name, m in compute_case_metrics(pred, truth, 4).items():
        if name != OVERALL:
            p, r = m["precision"], m["recall"]
            assert m["f1"] == pytest.approx(2 * p * r / (p + r), rel=1e-12)
            assert m["f1"] == pytest.approx(m["dice"], rel=1e-12)


# ---------------------------------------------------------------- empty policy

SPACING = (2.0, 0.5)
DIAGONAL = math.sqrt((4 * 2.0) ** 2 + (4 * 0.5) ** 2)  # image extent 8 mm x 2 mm


def _metrics(pred, truth):
    return compute_case_metrics(np.array(pred), np.array(truth), 2, spacing=SPACING)["class_1"]


def test_both_empty_is_perfect():
    empty = np.zeros((4, 4), int)
    assert _metrics(empty, empty) == {
        "dice": 1.0,
        "iou": 1.0,
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
        "hd95": 0.0,
    }


def test_false_positive_on_empty_truth():
    assert _metrics(PRED, np.zeros((4, 4), int)) == pytest.approx(
        {"dice": 0.0, "iou": 0.0, "precision": 0.0, "recall": 1.0, "f1": 0.0, "hd95": DIAGONAL}
    )


def test_missed_structure_is_worst_case_never_nan():
    assert _metrics(np.zeros((4, 4), int), TRUTH) == pytest.approx(
        {"dice": 0.0, "iou": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "hd95": DIAGONAL}
    )


def test_missing_a_structure_lowers_the_mean_of_every_metric():
    truth = np.zeros((12, 12), int)
    truth[2:6, 2:6] = 1
    truth[7:11, 7:11] = 2
    poor = np.zeros_like(truth)
    poor[3:7, 3:7] = 1  # shifted by one pixel
    poor[8:12, 6:10] = 2  # shifted, partly overlapping
    missed = poor.copy()
    missed[missed == 2] = 0  # structure 2 not found at all
    with_poor = summarize([compute_case_metrics(truth, truth, 3), compute_case_metrics(poor, truth, 3)])
    with_miss = summarize([compute_case_metrics(truth, truth, 3), compute_case_metrics(missed, truth, 3)])
    for metric in CLASS_METRICS:
        worse = (lambda a, b: a > b) if metric == "hd95" else (lambda a, b: a < b)
        for name in ("class_2", OVERALL):
            miss, hit = with_miss[name][metric], with_poor[name][metric]
            assert miss["n"] == hit["n"] == 2  # the miss stays in the mean
            assert np.isfinite(miss["mean"])
            assert worse(miss["mean"], hit["mean"]), (name, metric, miss["mean"], hit["mean"])


def test_miss_hd95_exceeds_any_real_distance():
    truth = np.zeros((10, 20), int)
    truth[0, 0] = 1
    far = np.zeros_like(truth)
    far[-1, -1] = 1  # farthest possible prediction
    hd_far = compute_case_metrics(far, truth, 2, spacing=(1.5, 0.8))["class_1"]["hd95"]
    hd_miss = compute_case_metrics(np.zeros_like(truth), truth, 2, spacing=(1.5, 0.8))["class_1"]["hd95"]
    assert hd_far == pytest.approx(math.hypot(9 * 1.5, 19 * 0.8))
    assert hd_miss == pytest.approx(math.hypot(10 * 1.5, 20 * 0.8))
    assert hd_miss > hd_far


# ---------------------------------------------------------------- agreement with MONAI


def _blobs(shape, num_classes, seed):
    """Smooth random label map in which every class is present."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma=2)
    edges = np.quantile(field, np.linspace(0, 1, num_classes + 1)[1:-1])
    return np.digitize(field, edges)


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*:FutureWarning")
@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((48, 40), (0.8, 1.3)), ((24, 20, 16), (1.0, 0.7, 2.5))],
)
def test_agreement_with_monai(shape, spacing):
    num_classes = 3
    truth = _blobs(shape, num_classes, seed=1)
    pred = _blobs(shape, num_classes, seed=2)
    ours = compute_case_metrics(torch.as_tensor(pred), torch.as_tensor(truth), num_classes, spacing=spacing)

    p = one_hot(torch.as_tensor(pred)[None, None], num_classes)
    t = one_hot(torch.as_tensor(truth)[None, None], num_classes)
    dice = DiceMetric(include_background=False, reduction="none")(p, t)[0]
    iou = MeanIoU(include_background=False, reduction="none")(p, t)[0]
    hd95 = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(
        p, t, spacing=list(spacing)
    )[0]
    for c in range(1, num_classes):
        m = ours[f"class_{c}"]
        assert m["dice"] == pytest.approx(float(dice[c - 1]), rel=1e-5)
        assert m["iou"] == pytest.approx(float(iou[c - 1]), rel=1e-5)
        assert m["hd95"] == pytest.approx(float(hd95[c - 1]), rel=1e-5)


def test_empty_dice_agrees_with_monai_ignore_empty_false():
    empty = np.zeros((4, 4), int)
    metric = DiceMetric(include_background=False, ignore_empty=False, reduction="none")

    def monai_dice(pred, truth):
        as_one_hot = [one_hot(torch.as_tensor(a)[None, None], 2) for a in (pred, truth)]
        return float(metric(*as_one_hot)[0, 0])

    assert monai_dice(empty, empty) == pytest.approx(_metrics(empty, empty)["dice"]) == 1.0
    assert monai_dice(PRED, empty) == pytest.approx(_metrics(PRED, empty)["dice"]) == 0.0


# ---------------------------------------------------------------- options, summary, errors


def test_include_background_and_class_names():
    m = compute_case_metrics(PRED, TRUTH, 2, include_background=True, class_names=["bg", "polyp"])
    assert list(m) == ["bg", "polyp", OVERALL]
    # background: TP = 11 (16 - 4 truth - 1 FP), FP = 2, FN = 1 -> dice = 22 / 25.
    assert m["bg"]["dice"] == pytest.approx(22 / 25, rel=1e-12)
    assert m[OVERALL]["dice"] == pytest.approx(4 / 7, rel=1e-12)  # background never in the overall mean


def test_summarize_mean_std_n():
    cases = [{"a": {"dice": 0.5}}, {"a": {"dice": 1.0}}, {"a": {"dice": 0.0}}]
    assert summarize(cases)["a"]["dice"] == pytest.approx({"mean": 0.5, "std": 0.5, "n": 3})
    assert summarize(cases[:1])["a"]["dice"] == pytest.approx({"mean": 0.5, "std": 0.0, "n": 1})
    with pytest.raises(ValueError, match="no cases"):
        summarize([])


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"pred": np.zeros((4, 5), int)}, r"pred shape \(4, 5\) != truth shape \(4, 4\)"),
        ({"spacing": (1.0,)}, r"spacing must be 2 finite values > 0.*\(1\.0,\)"),
        ({"spacing": (1.0, 0.0)}, r"spacing must be 2 .*\(1\.0, 0\.0\)"),
        ({"num_classes": 1}, r"num_classes must be an int >= 2.*got 1"),
        ({"class_names": ["a"]}, r"class_names must be 2 unique names.*\['a'\]"),
        ({"class_names": ["bg", "overall"]}, r"other than 'overall'"),
        ({"pred": np.full((4, 4), 2)}, r"pred holds label 2, outside 0\.\.1"),
        ({"truth": np.full((4, 4), -1)}, r"truth holds label -1"),
        ({"pred": np.full((4, 4), 0.5)}, r"pred must hold integer class indices"),
        ({"pred": np.zeros(4, int), "truth": np.zeros(4, int)}, r"2D \(H, W\) or 3D.*\(4,\)"),
    ],
)
def test_invalid_arguments(kwargs, pattern):
    args = {"pred": PRED, "truth": TRUTH, "num_classes": 2} | kwargs
    with pytest.raises(ValueError, match=pattern):
        compute_case_metrics(args.pop("pred"), args.pop("truth"), args.pop("num_classes"), **args)


def test_hausdorff95_rejects_empty_masks():
    with pytest.raises(ValueError, match="both masks must be non-empty"):
        hausdorff95(np.zeros((3, 3), bool), np.ones((3, 3), bool))


def test_case_mean_leaves_out_classes_absent_from_both_maps():
    truth = np.zeros((8, 8), dtype=np.int64)
    truth[2:4, 2:4] = 1  # only class 1 present; classes 2 and 3 absent from both maps
    pred = np.zeros_like(truth)  # class 1 missed
    m = compute_case_metrics(pred, truth, 4)
    assert m["class_2"]["dice"] == 1.0 and m["class_3"]["dice"] == 1.0  # the stated per-class policy
    assert m["overall"]["dice"] == 0.0  # not (0 + 1 + 1) / 3: absent classes do not pad the mean
    pred[5, 5] = 3  # a false positive of class 3 counts
    m = compute_case_metrics(pred, truth, 4)
    assert m["overall"]["dice"] == 0.0 and m["class_3"]["precision"] == 0.0
    empty = compute_case_metrics(np.zeros_like(truth), np.zeros_like(truth), 4)
    assert empty["overall"]["dice"] == 1.0 and empty["overall"]["hd95"] == 0.0
