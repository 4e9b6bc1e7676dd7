"""Every random stream in a run derives from ``train.seed`` through these formulas, so the order of batches and
the augmentation of every sample depend only on ``(seed, epoch, step or sample index)``: a resumed run repeats
an uninterrupted one exactly, whatever the number of data-loader workers.
"""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["epoch_seed", "seed_everything", "substream_seed"]

_EPOCH_MULTIPLIER = 100_003
_SUBSTREAM_MULTIPLIER = 1_000_003


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch (batch order, global random state).

    Example:
        >>> epoch_seed(0, 3), epoch_seed(1, 0)
        (3, 100003)
    """
    return seed * _EPOCH_MULTIPLIER + epoch


def substream_seed(seed: int, index: int, *, bits: int = 32) -> int:
    """The seed of item ``index`` (a training step, a sample) under ``seed``, in ``[0, 2**bits)``.

    MONAI's ``set_random_state`` takes 32-bit seeds; ``torch.Generator.manual_seed`` takes 63 bits.

    Example:
        >>> substream_seed(epoch_seed(0, 1), 2), substream_seed(epoch_seed(42, 0), 0, bits=63)
        (1000005, 4200138600378)
    """
    return (seed * _SUBSTREAM_MULTIPLIER + index) % 2**bits


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
