"""Tile planning, blend weights and device/network introspection for sliding-window inference.

Private helpers of :mod:`medseg.sliding_window.predict`.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

#: Live activations per tile voxel, in full-resolution maps of the first layer's width: the peak of an eval
#: forward pass of MONAI's UNet 16-256 (2 residual units) measured 2.2-2.65 such maps (bf16 and fp32 tiles of
#: 144^3 to 96x208x224); 2.75 leaves a margin.
ACTIVATION_FACTOR = 2.75
#: Per-tile overhead, in voxels of network work, used by the planner to prefer fewer, larger tiles.
TILE_OVERHEAD_VOXELS = 32**3
#: Cost of blending every voxel through the row buffer (several tiles in a row along dim 0), in voxels of network
#: work per voxel: a 160x224x224 volume in 2 tiles of 160x224x128 ran 1.72 s against 1.59 s for 2 tiles of
#: 96x224x224 along dim 0, though the latter computes 5 % more voxels (MONAI UNet 16-256, bf16, 2 CPU cores).
ROW_BUFFER_COST = 0.25


@cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU has native bf16 instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    try:  # no /proc (macOS, Windows): only AMX-capable builds report a bf16-native level
        return "AMX" in str(torch.backends.cpu.get_cpu_capability()).upper()
    except Exception:  # noqa: BLE001 - capability probing must never fail inference
        return False


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype | None:
    """Autocast dtype for ``precision`` on ``device``; ``None`` means plain fp32.

    ``"auto"`` picks the fastest accurate choice: bf16 on a CPU with native bf16 instructions, else fp32;
    on CUDA bf16 where supported, else fp16.
    """
    device = torch.device(device)
    choices = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu":
            return torch.bfloat16 if cpu_has_native_bf16() else None
        return None
    if precision not in choices:
        raise ValueError(f"precision must be one of 'auto', 'fp32', 'bf16', 'fp16', got {precision!r}")
    return choices[precision]


def precision_name(precision: str, device: torch.device | str) -> str:
    """What ``precision`` runs as on ``device``: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (``"auto"`` resolved by
    :func:`resolve_precision`), as a prediction's outputs record it.

    Example:
        >>> precision_name("fp32", "cpu"), precision_name("bf16", "cpu")
        ('fp32', 'bf16')
    """
    return dtype_name(resolve_precision(precision, device))


def dtype_name(dtype: torch.dtype | None) -> str:
    """The precision name of an autocast dtype (None: plain fp32)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def network_in_channels(network: nn.Module) -> int | None:
    """Input channels of the first convolution/linear layer, or None when it can't be told.

    A network without torch layers (e.g. an ONNX Runtime session behind a module) may declare them as an
    ``in_channels`` attribute.
    """
    for module in network.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return int(module.in_channels)
        if isinstance(module, nn.Linear):
            return int(module.in_features)
    return _declared(network, "in_channels")


def network_first_width(network: nn.Module) -> int:
    """Output channels of the first convolution (the widest full-resolution activation in a UNet).

    A network without torch layers may declare it as a ``first_width`` attribute (1 when unknown).
    """
    for module in network.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return int(module.out_channels)
    return _declared(network, "first_width") or 1


def _declared(network: nn.Module, name: str) -> int | None:
    value = getattr(network, name, None)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def network_out_channels(network: nn.Module) -> int | None:
    """Output channels (classes) when the network says so (MONAI nets keep ``out_channels``), else None."""
    value = getattr(network, "out_channels", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def network_divisor(network: nn.Module, spatial_dims: int) -> tuple[int, ...]:
    """Size every spatial dim of the network input must be a multiple of (1 when unknown).

    Read from a MONAI UNet's strides, BasicUNet's four poolings, or a ``divisor`` attribute the network declares.
    """
    strides = getattr(network, "strides", None)
    if strides is not None and type(network).__name__ == "UNet":  # monai.networks.nets.UNet
        div = [1] * spatial_dims
        for stride in strides:
            s = (stride,) * spatial_dims if isinstance(stride, int) else tuple(stride)
            div = [d * int(x) for d, x in zip(div, s, strict=True)]
        return tuple(div)
    if type(network).__name__ in {"BasicUNet", "BasicUnet", "Basicunet"}:
        return (16,) * spatial_dims
    declared = _declared(network, "divisor")  # medseg's model factory sets it on every other network
    if declared is not None:
        return (declared,) * spatial_dims
    return (1,) * spatial_dims


#: Layers whose output at a voxel depends on the extent of the input (statistics or pooling over it).
_EXTENT_LAYERS = (
    nn.GroupNorm,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.MultiheadAttention,
)


def window_dependent_layers(network: nn.Module) -> list[str]:
    """Names of the layer types that make ``network``'s output depend on the window it sees.

    Such a network must run on windows of the training patch size: a larger tile changes its result.
    Found (MONAI's Norm factory returns these torch classes, or subclasses of them):

    * instance norm (``InstanceNorm1/2/3d``) unless it uses running statistics in eval mode;
    * ``GroupNorm``; ``LayerNorm`` over more than one trailing dim (spatial dims of an (N, C, *spatial)
      map; a LayerNorm over one dim normalises channels of tokens and is local);
    * batch norm in training mode (batch statistics over the tile);
    * adaptive (global) pooling, e.g. squeeze-and-excitation blocks, and multi-head attention.

    Eval-mode batch norm, convolutions, pooling with fixed kernels and pointwise layers are local.
    """
    found: dict[str, None] = {}
    for module in network.modules():
        name = type(module).__name__
        if isinstance(module, nn.modules.instancenorm._InstanceNorm):
            if module.training or not module.track_running_stats:
                found[name] = None
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.training:
                found[f"{name} (training mode)"] = None
        elif isinstance(module, nn.LayerNorm):
            if len(module.normalized_shape) > 1:
                found[name] = None
        elif isinstance(module, _EXTENT_LAYERS):
            found[name] = None
    return list(found)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class TilePlan:
    """Where tiles go. Coordinates are in the padded volume; ``pad[d]`` voxels precede the image in dim d."""

    shape: tuple[int, ...]  # original spatial shape
    padded: tuple[int, ...]
    pad: tuple[int, ...]
    tile: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...]  # per dim, sorted tile start positions

    @property
    def n_tiles(self) -> int:
        return math.prod(len(s) for s in self.starts)

    def tiles(self) -> list[tuple[int, ...]]:
        """Tile start corners, row-major (dim 0 slowest), so rows along dim 0 finish in order."""
        return list(itertools.product(*self.starts))

    def describe(self) -> str:
        grid = "x".join(str(len(s)) for s in self.starts)
        return f"{self.n_tiles} tiles of {'x'.join(map(str, self.tile))} (grid {grid})"


def _even_starts(padded: int, tile: int, n: int) -> tuple[int, ...]:
    if n == 1:
        return (0,)
    return tuple(round(i * (padded - tile) / (n - 1)) for i in range(n))


def _aligned_starts(padded: int, tile: int, n: int, div: int) -> tuple[int, ...]:
    """``n`` tile starts from 0 to ``padded - tile`` (both multiples of ``div``), each a multiple of ``div``.

    A network that downsamples by ``div`` computes its coarse maps on a grid anchored at the tile's first voxel;
    tiles that all start on multiples of ``div`` share one grid, so where they overlap they agree with each other
    and with a single pass over the whole volume (up to the context lost at tile borders).
    """
    if n == 1:
        return (0,)
    m = (padded - tile) // div
    return tuple(div * (i * m // (n - 1)) for i in range(n))


def _aligned_step(padded: int, tile: int, n: int, div: int) -> int:
    """Largest distance between neighbouring :func:`_aligned_starts`."""
    m = (padded - tile) // div
    return div * -(-m // (n - 1))


def _dim_options(size: int, roi: int, div: int, overlap_vox: int) -> list[tuple[int, int, int]]:
    """(n_tiles, tile, padded) candidates for one dim, tiles at least ``overlap_vox`` apart from covering each
    other's ends, every tile size and start a multiple of ``div`` (``padded`` too: see :func:`_aligned_starts`)."""
    roi = round_up(roi, div)
    size = round_up(size, div)
    single = max(size, roi)
    options = [(1, single, single)]
    if size <= roi:
        return options
    overlap_vox = min(overlap_vox, roi - 1)
    step = max(div, (roi - overlap_vox) // div * div)
    n_max = math.ceil((size - roi) / step) + 1  # tiles of exactly roi, aligned steps
    for n in range(2, n_max + 1):
        tile = max(round_up(-(-(size + (n - 1) * overlap_vox) // n), div), roi)
        while tile < size and _aligned_step(size, tile, n, div) > tile - overlap_vox:
            tile += div
        if tile < options[-1][1]:
            options.append((n, tile, size))
    return options


def plan_roi(shape: Sequence[int], roi: Sequence[int], div: Sequence[int], overlap: float) -> TilePlan:
    """MONAI-style plan: windows of exactly ``roi`` (rounded up to the divisor), stepping ``roi*(1-overlap)``."""
    tiles, padded, starts = [], [], []
    for size, r, d in zip(shape, roi, div, strict=True):
        t = round_up(r, d)
        p = max(size, t)
        step = max(1, int(t * (1 - overlap)))
        n = 1 if p == t else math.ceil((p - t) / step) + 1
        tiles.append(t)
        padded.append(p)
        starts.append(_even_starts(p, t, n))
    return _finish(shape, tiles, padded, starts)


def plan_auto(
    shape: Sequence[int],
    roi: Sequence[int],
    div: Sequence[int],
    overlap: float,
    *,
    tile_bytes_per_voxel: float,
    row_bytes_per_voxel: float,
    budget_bytes: float,
) -> TilePlan:
    """Fewest computed voxels whose tile (plus a row accumulator where needed) fits ``budget_bytes``.

    ``row_bytes_per_voxel`` is charged on ``tile[0] * padded[1:]`` voxels when a row along dim 0 holds
    several tiles (the streaming-labels accumulator); 0 for the other outputs.
    """
    per_dim = [
        _dim_options(size, r, d, math.ceil(overlap * r)) if overlap > 0 else _dim_options(size, r, d, 0)
        for size, r, d in zip(shape, roi, div, strict=True)
    ]
    best, best_cost, smallest, smallest_mem = None, math.inf, None, math.inf
    for combo in itertools.product(*per_dim):
        tile = [c[1] for c in combo]
        padded = [c[2] for c in combo]
        n_tiles = math.prod(c[0] for c in combo)
        mem = math.prod(tile) * tile_bytes_per_voxel
        mem += stitch_bytes(tile, padded, [c[0] for c in combo], row_bytes_per_voxel, div[0])
        cost: float = n_tiles * (math.prod(tile) + TILE_OVERHEAD_VOXELS)
        if row_bytes_per_voxel and math.prod(c[0] for c in combo[1:]) > 1:
            cost += ROW_BUFFER_COST * math.prod(padded)
        if mem < smallest_mem:
            smallest, smallest_mem = combo, mem
        if mem <= budget_bytes and cost < best_cost:
            best, best_cost = combo, cost
    chosen = best if best is not None else smallest
    assert chosen is not None  # itertools.product of non-empty option lists yields at least one combo
    tiles = [c[1] for c in chosen]
    padded = [c[2] for c in chosen]
    starts = [_aligned_starts(p, t, c[0], d) for c, t, p, d in zip(chosen, tiles, padded, div, strict=True)]
    return _finish(shape, tiles, padded, starts, div)


def stitch_bytes(
    tile: Sequence[int], padded: Sequence[int], counts: Sequence[int], row_bytes_per_voxel: float, div: int = 1
) -> float:
    """Memory the streaming-labels stitcher keeps besides the tiles: a K x tile[0] x H x W row buffer when a row
    along dim 0 holds several tiles, else the overlap carried from one tile to the next along dim 0 (the widest
    one of :func:`_aligned_starts` with divisor ``div``; counted at float32 though a single tile's overlap is kept
    in the network's dtype)."""
    if math.prod(counts[1:]) > 1:
        return tile[0] * math.prod(padded[1:]) * row_bytes_per_voxel
    if counts[0] > 1:
        overlap = tile[0] - div * ((padded[0] - tile[0]) // div // (counts[0] - 1))
        return max(overlap, 0) * math.prod(padded[1:]) * row_bytes_per_voxel
    return 0.0


def _finish(shape, tiles, padded, starts, div=None) -> TilePlan:
    """The padding is split evenly before and after the image; with ``div``, the part before is rounded down to a
    multiple of it, so that tile starts on multiples of ``div`` are on multiples of it in the image too."""
    div = div or (1,) * len(shape)
    pad = tuple((p - s) // 2 // d * d for p, s, d in zip(padded, shape, div, strict=True))
    return TilePlan(tuple(shape), tuple(padded), pad, tuple(tiles), tuple(tuple(s) for s in starts))


def blend_weights(plan: TilePlan, blend: str, sigma_scale: float) -> list[dict[int, torch.Tensor]]:
    """Per dim, 1D weight of each tile start, already divided by the sum over tiles covering each voxel.

    The tiles form a Cartesian grid and the window weight is separable, so the product of these 1D
    weights sums to exactly one over the tiles covering any voxel: no count map, no final division.
    """
    out = []
    for padded, tile, starts in zip(plan.padded, plan.tile, plan.starts, strict=True):
        if blend == "gaussian":
            x = torch.arange(tile, dtype=torch.float64) - (tile - 1) / 2
            sigma = max(sigma_scale * tile, 1e-3)
            g = torch.exp(-0.5 * (x / sigma) ** 2).clamp_min(1e-6)
        else:
            g = torch.ones(tile, dtype=torch.float64)
        norm = torch.zeros(padded, dtype=torch.float64)
        for s in starts:
            norm[s : s + tile] += g
        out.append({s: (g / norm[s : s + tile]).float() for s in starts})
    return out


def flip_sets(spatial_dims: int, tta: bool | Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Flip combinations (tensor dims of a (N, C, *spatial) batch) to average over; () is identity.

    Example:
        >>> flip_sets(2, True), flip_sets(3, [[0]]), flip_sets(3, False)
        ([(), (2,), (3,), (2, 3)], [(), (2,)], [()])
    """
    if tta is False or tta is None:
        return [()]
    if tta is True:
        spatial = range(2, 2 + spatial_dims)
        return [c for k in range(spatial_dims + 1) for c in itertools.combinations(spatial, k)]
    sets = [tuple(sorted(2 + int(a) for a in axes)) for axes in tta]
    for axes in sets:
        if any(a < 2 or a >= 2 + spatial_dims for a in axes):
            raise ValueError(f"tta flip axes must be spatial axes 0..{spatial_dims - 1}, got {tta!r}")
    return sets if () in sets else [(), *sets]


def available_memory_bytes(device: torch.device) -> int:
    """Free memory on ``device`` (CUDA: free device memory; CPU: MemAvailable, else 8 GiB)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30
