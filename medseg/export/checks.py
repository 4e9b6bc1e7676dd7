"""Does the exported network compute what the PyTorch network computes? One seeded input, one tolerance.

Every export is checked before it gets its final name: the exported network and the PyTorch network run on
the same input, and their logits must agree within ``|a - b| <= ATOL + RTOL * |b|`` voxel by voxel
(fp32 both). The default input is seeded Gaussian noise of the window size the network runs on.
"""

from __future__ import annotations

import torch

from medseg.errors import ExportError
from medseg.export.metadata import export_roi
from medseg.models.outputs import main_output
from medseg.prediction.loaded import LoadedModel
from medseg.sliding_window.plan import network_divisor, round_up

__all__ = ["ATOL", "RTOL", "check_outputs", "example_input", "run_reference"]

#: Tolerance on logits (fp32): absolute ...
ATOL = 1e-4
#: ... plus relative to the PyTorch value.
RTOL = 1e-4


def example_input(loaded: LoadedModel, *, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """Seeded noise ``(batch, C, *roi)``, the roi rounded up to the network's divisor.

    Example:
        >>> import types
        >>> from medseg.config.kinds import DataKind
        >>> from medseg.config.schema import InferConfig
        >>> fake = types.SimpleNamespace(kind=DataKind.VOLUMES3D, in_channels=2, model=torch.nn.Identity(),
        ...                              preprocessing={"kind": "volumes3d", "patch_size": [20, 16, 9]},
        ...                              infer=InferConfig())
        >>> tuple(example_input(fake).shape)
        (1, 2, 20, 16, 9)
    """
    roi = export_roi(loaded)
    divisor = network_divisor(loaded.model, len(roi))
    shape = [round_up(int(n), int(d)) for n, d in zip(roi, divisor, strict=True)]
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch, loaded.in_channels, *shape), generator=generator)


def check_outputs(reference: torch.Tensor, exported: torch.Tensor, what: str) -> float:
    """Max abs difference of two logit tensors; raises when they differ beyond the tolerance.

    Args:
        reference: The PyTorch network's output.
        exported: The exported network's output on the same input.
        what: Names the export in the message.

    Raises:
        ExportError: Shapes differ, or some voxel differs by more than ``ATOL + RTOL * |reference|``.

    Example:
        >>> check_outputs(torch.zeros(1, 2, 4), torch.full((1, 2, 4), 5e-5), "x.onnx")
        5e-05
    """
    if tuple(reference.shape) != tuple(exported.shape):
        raise ExportError(f"{what}: exported network gives shape {tuple(exported.shape)}, PyTorch gives "
                          f"{tuple(reference.shape)}")
    ref, out = reference.double(), exported.double()
    diff = (ref - out).abs()
    worst = float(diff.max()) if diff.numel() else 0.0
    if not bool(torch.isfinite(out).all()) or bool((diff > ATOL + RTOL * ref.abs()).any()):
        raise ExportError(f"{what}: exported network differs from PyTorch by up to {worst:.3g} on the same input "
                          f"(allowed {ATOL:g} + {RTOL:g} x |logit|); not written")
    return round(worst, 10)


def run_reference(loaded: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    """The PyTorch network's main logits on ``x`` (fp32, CPU, no grad)."""
    with torch.no_grad():
        return main_output(loaded.model.to("cpu").eval()(x)).float()

