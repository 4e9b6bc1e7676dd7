"""Segmentation losses by name."""

from medseg.losses.factory import LOSS_BUILDERS, build_loss

__all__ = ["LOSS_BUILDERS", "build_loss"]
