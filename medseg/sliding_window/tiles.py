"""The tile loop of sliding-window inference: pad, gather windows (with flips), run the network, stitch.

Called by :func:`medseg.sliding_window.predict.sliding_window_predict`, which plans the tiles and handles
memory fallbacks.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from medseg.progress import progress_bar
from medseg.sliding_window.plan import TilePlan, blend_weights
from medseg.sliding_window.stitch import DenseAccumulator, LabelStreamer

__all__ = ["SlidingWindowStats", "TileJob", "run_tiles"]


@dataclass
class SlidingWindowStats:
    """What one call did; ``str()`` gives the one-line summary the progress bar prints."""

    tiles: int = 0  # tile positions x batch items
    windows: int = 0  # network evaluations of one tile (TTA copies count)
    seconds: float = 0.0
    voxels: int = 0  # input voxels (B x spatial)
    peak_memory_mb: float = 0.0  # CUDA: max allocated during the call; CPU: process peak RSS
    precision: str = "fp32"
    backend: str = "eager"  # how the forward pass ran (medseg.sliding_window.backend)
    plan: str = ""
    tiling: str = ""  # "auto", "roi", or "roi (auto: <why>)" when auto fell back to roi-size windows
    batch_size: int = 1
    device: str = "cpu"
    fallbacks: list[str] = field(default_factory=list)

    @property
    def windows_per_s(self) -> float:
        return self.windows / self.seconds if self.seconds else 0.0

    @property
    def voxels_per_s(self) -> float:
        return self.voxels / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        return (
            f"sliding window: {self.windows} windows ({self.plan}, tiling {self.tiling}, batch {self.batch_size}, "
            f"{self.precision}, {self.backend}, {self.device}) in {self.seconds:.2f} s, "
            f"{self.windows_per_s:.2f} windows/s, "
            f"{self.voxels_per_s / 1e6:.2f} Mvoxel/s, peak memory {self.peak_memory_mb:.0f} MB"
        )



@dataclass(frozen=True)
class TileJob:
    """One pass of the tile loop, as the planner decided it.

    Attributes:
        plan: Tile size, positions and padding.
        blend: ``"gaussian"`` or ``"constant"`` weights for overlapping tiles.
        sigma_scale: Gaussian sigma as a fraction of the tile size.
        dtype: Autocast dtype, or None for fp32.
        flips: Flip axes per TTA copy (``[()]`` without TTA).
        output: ``"logits"``, ``"probabilities"`` or ``"labels"``.
        device: Where the network runs.
        stitch_device: Where the output is accumulated (the CPU after a CUDA out-of-memory fallback).
        batch: Tiles per network call.
        padding_value: Value of the padding around the image.
        progress: Show a progress bar on stderr.
        forward: What runs the network on a batch of tiles (a backend of
            :func:`medseg.sliding_window.backend.using_backend`); None calls the network itself.
    """

    plan: TilePlan
    blend: str
    sigma_scale: float
    dtype: torch.dtype | None
    flips: Sequence[tuple[int, ...]]
    output: str
    device: torch.device
    stitch_device: torch.device
    batch: int
    padding_value: float
    progress: bool = False
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None


def run_tiles(network: nn.Module, image: torch.Tensor, job: TileJob, stats: SlidingWindowStats) -> torch.Tensor:
    """Run ``network`` over every tile of ``image`` (B, C, *spatial) and stitch; counts go into ``stats``."""
    plan, flips, device = job.plan, job.flips, job.device
    weights = blend_weights(plan, job.blend, job.sigma_scale)
    tiles = plan.tiles()
    n_batches = math.ceil(len(tiles) / job.batch)
    stats.tiles = stats.windows = 0
    acc: LabelStreamer | DenseAccumulator | None = None
    autocast = torch.autocast(device.type, dtype=job.dtype) if job.dtype is not None else contextlib.nullcontext()
    with torch.no_grad(), progress_bar("sliding window", image.shape[0] * n_batches, enabled=job.progress) as advance:
        # not inference_mode: callers may modify the returned tensor in place
        for b in range(image.shape[0]):
            source = _pad(image[b : b + 1], plan, job.padding_value)
            source = source.to(device if job.stitch_device == device else source.device)
            for i in range(n_batches):
                group = tiles[i * job.batch : (i + 1) * job.batch]
                x = _gather(source, group, plan.tile, device, flips)
                with autocast:
                    y = _forward(job.forward or network, x, plan.tile)
                y = y.contiguous()  # a channels-last output: the stitcher reads one class map at a time
                y = _merge_flips(y, flips, len(group))
                if acc is None:
                    cls = LabelStreamer if job.output == "labels" else DenseAccumulator
                    acc = cls(plan, weights, job.stitch_device, image.shape[0], y.shape[1])
                for j, corner in enumerate(group):
                    acc.add(b, corner, y[j])
                stats.tiles += len(group)
                stats.windows += len(group) * len(flips)
                del x, y
                advance()
            if acc is not None:
                acc.finish_item(b)
    if isinstance(acc, LabelStreamer):
        return acc.labels
    if isinstance(acc, DenseAccumulator):
        return acc.probabilities() if job.output == "probabilities" else acc.out
    raise ValueError(f"image of shape {tuple(image.shape)} gave no tiles")


def _pad(item: torch.Tensor, plan: TilePlan, value: float) -> torch.Tensor:
    if plan.padded == plan.shape:
        return item
    pads = []
    for size, padded, before in reversed(list(zip(plan.shape, plan.padded, plan.pad, strict=True))):
        pads += [before, padded - size - before]
    return torch.nn.functional.pad(item, pads, value=value)


def _gather(source, group, tile, device, flips) -> torch.Tensor:
    if len(group) == 1 and len(flips) == 1 and tuple(tile[1:]) == tuple(source.shape[3:]):
        # one tile spanning every dim but the first: a contiguous slab of the source, no copy needed
        return source[:, :, group[0][0] : group[0][0] + tile[0]].to(device)
    x = torch.empty((len(group) * len(flips), source.shape[1], *tile), dtype=source.dtype, device=device)
    for j, corner in enumerate(group):
        window = (0, slice(None), *(slice(c, c + t) for c, t in zip(corner, tile, strict=True)))
        x[j].copy_(source[window])
    n = len(group)
    for f, axes in enumerate(flips[1:], start=1):
        x[f * n : (f + 1) * n] = x[:n].flip(axes)
    return x


def _forward(network: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile) -> torch.Tensor:
    try:
        y = network(x)
    except ValueError as err:
        if "more than 1 spatial element" in str(err):
            raise ValueError(
                f"network failed on a tile of {tuple(tile)}: its deepest level gets one voxel per channel, which "
                "instance norm cannot normalise; use a larger roi_size (above the product of the strides)"
            ) from err
        raise
    except RuntimeError as err:
        if "size" in str(err).lower() and "match" in str(err).lower():
            raise ValueError(
                f"network failed on a tile of {tuple(tile)}: {err}. Tile dims must be a multiple of the "
                "network's divisor (e.g. the product of a UNet's strides); pass divisor=..."
            ) from err
        raise
    if not isinstance(y, torch.Tensor) or y.ndim != x.ndim or y.shape[0] != x.shape[0] or y.shape[2:] != x.shape[2:]:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"network must map (N, C, *tile) {tuple(x.shape)} to (N, K, *tile), got {got}")
    return y


def _merge_flips(y: torch.Tensor, flips, n: int) -> torch.Tensor:
    if len(flips) == 1:
        return y
    out = y[:n].float()
    for f, axes in enumerate(flips[1:], start=1):
        out += y[f * n : (f + 1) * n].flip(axes)
    return out.div_(len(flips))
