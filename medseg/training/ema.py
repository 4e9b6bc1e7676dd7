"""Exponential moving average (EMA) of a model's weights: ``train.ema``.

Built on PyTorch's :class:`torch.optim.swa_utils.AveragedModel` with ``use_buffers=True`` (batch-norm running
statistics are averaged with the weights). After each optimizer step ``t`` (0 at the first step), every floating
tensor of the copy moves towards the trained model's::

    ema = decay_t * ema + (1 - decay_t) * weights,    decay_t = min(decay, (1 + t) / (10 + t))

The first step copies the weights (``AveragedModel`` does), and the warm-up ``(1 + t) / (10 + t)`` (0.18 at the
second step, 0.9 at the 81st, 0.99 at the 891st) keeps the average from holding on to the random start during the
first steps; from there on ``decay`` itself applies. Integer buffers (batch norm's ``num_batches_tracked``) are
copied, not averaged.

The copy is never compiled nor wrapped for several processes: each process holds the same weights and updates its
own copy, with no communication.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel

__all__ = ["ModelEma", "ema_decay", "warmup_ema_multi_avg_fn"]

#: The tensors AveragedModel hands its ``multi_avg_fn``.
Tensors = list[torch.Tensor] | tuple[torch.Tensor, ...]


def ema_decay(decay: float, t: int) -> float:
    """The decay of step ``t`` (``t`` updates already averaged, counting the first, copied one).

    Example:
        >>> ema_decay(0.999, 1), ema_decay(0.999, 80), ema_decay(0.5, 80)
        (0.18181818181818182, 0.9, 0.5)
    """
    return min(decay, (1 + t) / (10 + t))


def warmup_ema_multi_avg_fn(decay: float) -> Callable[[Tensors, Tensors, torch.Tensor | int], None]:
    """An ``AveragedModel`` ``multi_avg_fn``: the EMA of :func:`ema_decay` (``get_ema_multi_avg_fn`` with warm-up).

    Args:
        decay: The decay after the warm-up, in (0, 1).

    Returns:
        A function of (averaged tensors, current tensors, updates so far) that updates the averaged ones in place.
    """

    @torch.no_grad()
    def update(averaged: Tensors, current: Tensors, n_averaged: torch.Tensor | int) -> None:
        d = ema_decay(decay, int(n_averaged))
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            torch._foreach_lerp_(list(averaged), list(current), 1.0 - d)
        else:  # num_batches_tracked: a counter, not something to average
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    return update


class ModelEma:
    """The EMA copy of a model, updated from it after each optimizer step.

    Args:
        model: The trained module: not compiled, not wrapped in DistributedDataParallel, its weights already in
            the run's device and memory layout (the copy keeps both).
        decay: The decay after the warm-up, in (0, 1).

    Example:
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> _ = net.weight.data.fill_(1.0)
        >>> ema = ModelEma(net, 0.9)
        >>> ema.update(); _ = net.weight.data.fill_(12.0); ema.update()  # t = 1: decay 2/11
        >>> round(float(ema.module.weight), 4), ema.steps
        (10.0, 2)
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay: got {decay!r}; allowed a number strictly between 0 and 1")
        self.decay = decay
        self.source = model
        # AveragedModel deep-copies the model, which keeps each tensor's strides (channels-last stays so)
        self.averaged = AveragedModel(model, multi_avg_fn=warmup_ema_multi_avg_fn(decay), use_buffers=True)
        self.averaged.module.requires_grad_(False)

    @property
    def module(self) -> torch.nn.Module:
        """The averaged network (same class and state-dict keys as the trained one)."""
        module = self.averaged.module
        if not isinstance(module, torch.nn.Module):  # AveragedModel types it loosely
            raise TypeError(f"unexpected averaged module {type(module).__name__}")
        return module

    @property
    def steps(self) -> int:
        """Updates averaged so far (optimizer steps since training began)."""
        return int(self.averaged.n_averaged)

    def update(self) -> None:
        """Average in the trained model's current weights and buffers (call after each optimizer step)."""
        self.averaged.update_parameters(self.source)

    def load(self, state_dict: dict[str, Any], steps: int) -> None:
        """Continue from a saved EMA: the averaged network's state dict and its step count."""
        self.module.load_state_dict(state_dict)
        self.averaged.n_averaged.fill_(int(steps))

