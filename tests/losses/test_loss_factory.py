"""Losses by name, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from medseg.config import LossConfig
from medseg.errors import ConfigError
from medseg.losses import build_loss

# Two pixels, two classes; softmax probabilities chosen by hand: pixel 0 -> (0.8, 0.2), pixel 1 -> (0.4, 0.6).
LOGITS = torch.log(torch.tensor([[[[0.8, 0.4]], [[0.2, 0.6]]]]))  # (B=1, K=2, H=1, W=2)
TARGET = torch.tensor([[[[0, 1]]]])  # (B=1, 1, H=1, W=2)
# Dice per class: class 0: 2*0.8 / (1.2 + 1) = 0.72727; class 1: 2*0.6 / (0.8 + 1) = 0.66667
DICE_LOSS = ((1 - 1.6 / 2.2) + (1 - 1.2 / 1.8)) / 2  # 0.30303
CE = -(math.log(0.8) + math.log(0.6)) / 2  # 0.366985


def test_dice_hand_computed():
    loss = build_loss(LossConfig(name="dice"), 2)
    assert float(loss(LOGITS, TARGET)) == pytest.approx(DICE_LOSS, rel=1e-4)


def test_dice_ce_hand_computed():
    loss = build_loss(LossConfig(name="dice_ce"), 2)
    assert float(loss(LOGITS, TARGET)) == pytest.approx(DICE_LOSS + CE, rel=1e-4)


def test_dice_without_background():
    loss = build_loss(LossConfig(name="dice", include_background=False), 2)
    assert float(loss(LOGITS, TARGET)) == pytest.approx(1 - 1.2 / 1.8, rel=1e-4)


def test_class_weights_reach_cross_entropy():
    loss = build_loss(LossConfig(name="dice_ce", class_weights=[1.0, 3.0], lambda_dice=0.0), 2)
    # weighted CE = sum(w_t * -log p_t) / sum(w_t) = (1*0.22314 + 3*0.51083) / 4
    expected = (-math.log(0.8) * 1 + -math.log(0.6) * 3) / 4
    assert float(loss(LOGITS, TARGET)) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("name", ["dice", "focal", "dice_focal", "dice_ce"])
def test_perfect_prediction_scores_near_zero_and_wrong_one_high(name):
    loss = build_loss(LossConfig(name=name), 2)
    perfect = torch.tensor([[[[20.0, -20.0]], [[-20.0, 20.0]]]])
    assert float(loss(perfect, TARGET)) < 1e-3
    assert float(loss(-perfect, TARGET)) > 0.9


def test_focal_down_weights_easy_pixels():
    focal0 = build_loss(LossConfig(name="focal", focal_gamma=0.0), 2)
    focal2 = build_loss(LossConfig(name="focal", focal_gamma=2.0), 2)
    assert float(focal2(LOGITS, TARGET)) < float(focal0(LOGITS, TARGET))


def test_class_weight_count_checked():
    with pytest.raises(ConfigError, match="loss.class_weights has 3 entries; the model predicts 2 classes"):
        build_loss(LossConfig(name="dice_ce", class_weights=[1, 1, 1]), 2)
