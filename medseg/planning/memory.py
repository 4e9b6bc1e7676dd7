"""Training memory of a network at a patch size, from a measured probe.

Two forward passes of the real network at two small probe patches, with
``torch.autograd.graph.saved_tensors_hooks`` counting the bytes autograd keeps for the backward pass (the
activations that dominate training memory, and the weights the convolutions keep). Activations grow in
proportion to the voxels and the weights do not, so a line through the two counts gives any patch that
has the same number of levels. Weights, gradients and the two Adam moments add four copies of the
parameters. The probe is deterministic (it counts tensor sizes, not the allocator) and takes well under a
second on a CPU.

On CUDA with mixed precision the activations are mostly float16, so they count half (with
:data:`CUDA_RESERVE_BYTES` for the context and cuDNN's workspace); on CPU they count in float32, with
:data:`CPU_OVERHEAD` for the allocator.
"""

from __future__ import annotations

import functools
import math

import torch

from medseg.config.schema import ModelConfig
from medseg.models.factory import build_model

__all__ = ["CPU_OVERHEAD", "CUDA_RESERVE_BYTES", "training_bytes"]

#: Bytes a CUDA process holds beyond tensors (context, cuDNN workspace, allocator slack).
CUDA_RESERVE_BYTES = 1.5 * 2**30
#: Allocator and temporary-buffer overhead on CPU, as a factor on the counted bytes.
CPU_OVERHEAD = 1.3


@functools.lru_cache(maxsize=32)
def _probe(model_json: str, in_channels: int, out_channels: int, probe: tuple[int, ...]) -> tuple[int, int]:
    """(bytes autograd saves for one sample at ``probe``, parameter count)."""
    cfg = ModelConfig.model_validate_json(model_json)
    torch.manual_seed(0)
    net = build_model(cfg, in_channels=in_channels, out_channels=out_channels)
    net.train()
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    x = torch.zeros((1, in_channels, *probe))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x)
    del out
    params = sum(p.numel() for p in net.parameters())
    return saved, params


def training_bytes(model: ModelConfig, *, in_channels: int, out_channels: int, patch: tuple[int, ...],
                   batch_size: int, device: str) -> float:
    """Estimated peak memory of one training step.

    Args:
        model: The ``model`` section (its strides set the probe size).
        in_channels: Input channels.
        out_channels: Classes including background.
        patch: Training patch (or image) size.
        batch_size: Samples per step.
        device: ``"cpu"`` (float32 activations) or ``"cuda"`` (mixed precision).

    Returns:
        Bytes.

    Example:
        >>> from medseg.config.schema import ModelConfig
        >>> m = ModelConfig(spatial_dims=2, channels=(4, 8), strides=(2,), num_res_units=0)
        >>> one = training_bytes(m, in_channels=1, out_channels=2, patch=(64, 64), batch_size=1, device="cpu")
        >>> two = training_bytes(m, in_channels=1, out_channels=2, patch=(64, 64), batch_size=2, device="cpu")
        >>> 1.9 < two / one < 2.0   # activations double, parameters do not
        True
    """
    divisor = math.prod(model.strides)
    small, large = tuple(2 * divisor for _ in patch), tuple(3 * divisor for _ in patch)
    saved_small, params = _probe(model.model_dump_json(), in_channels, out_channels, small)
    saved_large, _ = _probe(model.model_dump_json(), in_channels, out_channels, large)
    per_voxel = (saved_large - saved_small) / (math.prod(large) - math.prod(small))
    fixed = max(0.0, saved_small - per_voxel * math.prod(small))  # weights kept by the convolutions
    activations = fixed + per_voxel * math.prod(patch) * batch_size
    state = 4 * 4 * params  # weights, gradients, Adam's two moments (float32)
    if device == "cuda":
        return 0.5 * activations + state + CUDA_RESERVE_BYTES
    return CPU_OVERHEAD * (activations + state)
