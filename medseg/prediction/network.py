"""The network over a prepared image: a 3D sliding window, or a 2D one over batches of slices.

Prediction and validation during training both run the network through :func:`infer_prepared`, so the
validation Dice is measured the way ``medseg predict`` will segment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from medseg.config.kinds import DataKind
from medseg.config.schema import InferConfig
from medseg.data.volume_preprocessing import slice_axis_index
from medseg.errors import ConfigError
from medseg.models.outputs import MainOutput
from medseg.sliding_window.plan import network_divisor
from medseg.sliding_window.predict import sliding_window_predict

__all__ = ["SLICE_BATCH", "infer_prepared", "roi_for"]

#: Slices per network call for slice-wise (slices2d) models.
SLICE_BATCH = 32


def _sliding_window(
    network: torch.nn.Module, x: torch.Tensor, roi: Sequence[int], *, infer: InferConfig, device: torch.device,
    output: str, tiling: str, divisor: Sequence[int] | None,
) -> torch.Tensor:
    """The one place the sliding-window engine is called ((B, C, *spatial) -> (B, K, *spatial)).

    The network's main output is used (a dict's ``"out"``, a list's first); the divisor is read before it is
    wrapped for that.
    """
    if divisor is None and not isinstance(network, MainOutput):
        divisor = network_divisor(network, x.ndim - 2)
    if not isinstance(network, MainOutput):
        network = MainOutput(network)
    return sliding_window_predict(  # type: ignore[return-value]
        network, x, tuple(roi), overlap=infer.overlap, sw_batch_size=infer.sw_batch_size, blend=infer.blend,
        precision=infer.precision, tta=infer.tta, output=output, device=device, tiling=tiling,
        divisor=None if divisor is None else tuple(int(d) for d in divisor), backend=infer.backend,
    )


def roi_for(preprocessing: Mapping[str, Any], infer: InferConfig) -> tuple[int, ...]:
    """Sliding-window size: ``infer.roi_size``, else the training patch size (first two for slices2d)."""
    kind = DataKind.of(preprocessing) or DataKind.VOLUMES3D
    dims = kind.spatial_dims
    roi = tuple(infer.roi_size or preprocessing.get("patch_size") or ())
    if len(roi) == 1:
        roi = roi * dims
    if len(roi) < dims:
        raise ConfigError(f"infer.roi_size: need {dims} sizes for {kind.value!r}, got {list(roi)}")
    return tuple(int(n) for n in roi[:dims])


@torch.no_grad()
def infer_prepared(
    model: torch.nn.Module,
    image: torch.Tensor,
    preprocessing: Mapping[str, Any],
    infer: InferConfig,
    device: torch.device,
    *,
    output: str = "probabilities",
    tiling: str = "auto",
    divisor: Sequence[int] | None = None,
) -> torch.Tensor:
    """Run the network over a prepared ``(C, X, Y, Z)`` image; returns ``(K, X, Y, Z)`` float32 on the CPU.

    3D models run a 3D sliding window; slices2d models run a 2D sliding window over batches of slices
    along ``preprocessing["slice_axis"]``. ``divisor`` (one per spatial dim of the network) is what every
    tile dim must be a multiple of; None reads it from the network (MONAI UNet strides), which a network
    behind ONNX Runtime cannot tell.
    """
    model.eval()
    roi = roi_for(preprocessing, infer)
    if DataKind.of(preprocessing) is not DataKind.SLICES2D:
        return _sliding_window(model, image[None], roi, infer=infer, device=device, output=output,
                               tiling=tiling, divisor=divisor)[0].float().cpu()
    axis = slice_axis_index(preprocessing.get("orientation", "RAS"), preprocessing.get("slice_axis", "axial"))
    slices = image.movedim(axis + 1, 0)  # (S, C, H, W)
    parts = [_sliding_window(model, slices[i:i + SLICE_BATCH], roi, infer=infer, device=device, output=output,
                             tiling=tiling, divisor=divisor).float().cpu()
             for i in range(0, slices.shape[0], SLICE_BATCH)]
    return torch.cat(parts).movedim(0, axis + 1)  # (K, X, Y, Z)
