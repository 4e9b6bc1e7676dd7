"""What a network returns, made uniform: the main logits for inference, weighted heads for the loss.

medseg's networks return one of:

* a tensor ``(B, K, *spatial)``: the logits;
* a list or tuple of such tensors, the main output first and then deep-supervision heads from higher to lower
  decoder levels (DynUNet and BasicUNetPlusPlus as medseg builds them, in training mode);
* a dict with ``"out"`` (the logits) and optionally ``"aux"`` (DeepLabV3's auxiliary head), as torchvision's
  segmentation models return.

The loss weights deep-supervision heads as nnU-Net does, halving per level (1, 1/2, 1/4, ...), and the
auxiliary head of a dict by 0.5 (torchvision's reference recipe); the weights are normalised to sum to 1 so
the loss keeps the scale of a single output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AUX_WEIGHT", "MainOutput", "main_output", "supervision_weights", "weighted_loss", "weighted_outputs"]

#: Weight of a dict's auxiliary output against the main output (before normalisation).
AUX_WEIGHT = 0.5


def main_output(output: Any) -> torch.Tensor:
    """The main logits of whatever the network returned.

    Raises:
        TypeError: Not a tensor, a non-empty list/tuple of tensors, or a dict with ``"out"``.

    Example:
        >>> t = torch.zeros(1, 2, 4, 4)
        >>> main_output(t) is t, main_output([t, t * 2]) is t, main_output({"out": t, "aux": t}) is t
        (True, True, True)
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("out"), torch.Tensor):
        return output["out"]
    if isinstance(output, Sequence) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"network output {type(output).__name__} is not a tensor, a list of tensors or a dict with "
                    "'out'")


def supervision_weights(n: int) -> list[float]:
    """nnU-Net's deep-supervision weights for ``n`` outputs: halving per level, normalised to sum 1.

    Example:
        >>> supervision_weights(3)
        [0.5714285714285714, 0.2857142857142857, 0.14285714285714285]
    """
    raw = [0.5 ** i for i in range(n)]
    return [w / sum(raw) for w in raw]


def weighted_outputs(output: Any) -> list[tuple[float, torch.Tensor]]:
    """Every output the loss should see, with its weight (the weights sum to 1; the main output first).

    Example:
        >>> t = torch.zeros(1, 2, 4, 4)
        >>> [round(w, 4) for w, _ in weighted_outputs({"out": t, "aux": t})]
        [0.6667, 0.3333]
        >>> [w for w, _ in weighted_outputs(t)]
        [1.0]
    """
    if isinstance(output, torch.Tensor):
        return [(1.0, output)]
    if isinstance(output, Mapping):
        main = main_output(output)
        heads = [v for k, v in output.items() if k != "out" and isinstance(v, torch.Tensor)]
        total = 1.0 + AUX_WEIGHT * len(heads)
        return [(1.0 / total, main)] + [(AUX_WEIGHT / total, h) for h in heads]
    main_output(output)  # refuses what is not a list of tensors
    return list(zip(supervision_weights(len(output)), output, strict=True))


def weighted_loss(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], output: Any,
                  label: torch.Tensor) -> torch.Tensor:
    """The loss of every output against ``label``, weighted by :func:`weighted_outputs`.

    A head smaller than the label (a lower decoder level) is up-sampled to it (trilinear / bilinear).

    Example:
        >>> loss = lambda x, y: (x - y).abs().mean()
        >>> out = weighted_loss(loss, [torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 1, 1)], torch.zeros(1, 1, 2, 2))
        >>> round(float(out), 4)  # 2/3 x 1 + 1/3 x 0
        0.6667
    """
    total: torch.Tensor | None = None
    for weight, head in weighted_outputs(output):
        if head.shape[2:] != label.shape[2:]:
            mode = "trilinear" if head.ndim == 5 else "bilinear"
            head = F.interpolate(head, size=label.shape[2:], mode=mode, align_corners=False)
        term = weight * loss_fn(head.float(), label)
        total = term if total is None else total + term
    assert total is not None
    return total


class MainOutput(nn.Module):
    """A network that returns only its main logits (for export and the sliding window).

    What the sliding window reads of the wrapped network (``in_channels``, ``out_channels``, ``divisor``,
    ``first_width``) stays readable on the wrapper.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network
        for name in ("in_channels", "out_channels", "divisor", "first_width"):
            value = getattr(network, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(self, name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The main logits."""
        return main_output(self.network(x))
