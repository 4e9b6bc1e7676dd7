"""MONAI networks whose training-mode outputs medseg reads as a list, main output first.

Subclasses keep MONAI's layer names, so their state dicts are MONAI's. In eval mode both return the main
logits alone; in training mode with deep supervision, a list: the main output, then the heads from higher to
lower decoder levels (what :func:`medseg.models.outputs.weighted_outputs` expects).
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import BasicUNetPlusPlus, DynUNet

__all__ = ["DynUNetHeads", "UNetPlusPlus"]


class UNetPlusPlus(BasicUNetPlusPlus):
    """MONAI's BasicUNetPlusPlus returning its deepest nested output (X0,4), or all four, that one first."""

    def forward(self, x: torch.Tensor) -> Any:
        """Logits, or the list of outputs in training with deep supervision."""
        outs = super().forward(x)
        return list(reversed(outs)) if self.training and len(outs) > 1 else outs[-1]


class DynUNetHeads(DynUNet):
    """MONAI's DynUNet with its training-mode heads as a list instead of one stacked tensor."""

    def forward(self, x: torch.Tensor) -> Any:
        """Logits, or the list of outputs (all at the input's size) in training with deep supervision."""
        out = super().forward(x)
        return list(torch.unbind(out, dim=1)) if self.training and self.deep_supervision else out
