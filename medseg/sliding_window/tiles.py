"""The tile loop of sliding-window inference: pad, gather windows (with flips), run the network, stitch.

Private helper of :mod:`medseg.sliding_window.predict`, which plans the tiles and handles memory fallbacks.
"""

from __future__ import annotations

import contextlib
import math
import sys

import torch
from torch import nn

from medseg.sliding_window.plan import TilePlan, blend_weights
from medseg.sliding_window.stitch import DenseAccumulator, LabelStreamer

__all__ = ["run_tiles"]


def run_tiles(
    network,
    image,
    plan,
    blend,
    sigma_scale,
    dtype,
    flips,
    output,
    device,
    stitch_device,
    batch,
    padding_value,
    progress,
    stats,
) -> torch.Tensor:
    weights = blend_weights(plan, blend, sigma_scale)
    tiles = plan.tiles()
    n_batches = math.ceil(len(tiles) / batch)
    total = image.shape[0] * n_batches
    stats.tiles = stats.windows = 0
    acc = None
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with torch.no_grad():  # not inference_mode: callers may modify the returned tensor in place
        for b in range(image.shape[0]):
            source = _pad(image[b : b + 1], plan, padding_value)
            source = source.to(device if stitch_device == device else source.device)
            for i in range(n_batches):
                group = tiles[i * batch : (i + 1) * batch]
                x = _gather(source, group, plan.tile, device, flips)
                with autocast:
                    y = _forward(network, x, plan.tile)
                y = _merge_flips(y, flips, len(group))
                if acc is None:
                    cls = LabelStreamer if output == "labels" else DenseAccumulator
                    acc = cls(plan, weights, stitch_device, image.shape[0], y.shape[1])
                for j, corner in enumerate(group):
                    acc.add(b, corner, y[j])
                stats.tiles += len(group)
                stats.windows += len(group) * len(flips)
                del x, y
                if progress:
                    _progress(b * n_batches + i + 1, total)
            acc.finish_item(b)
    if output == "labels":
        return acc.labels
    return acc.probabilities() if output == "probabilities" else acc.out


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
        x[j].copy_(source[(0, slice(None), *(slice(c, c + t) for c, t in zip(corner, tile, strict=True)))])
    n = len(group)
    for f, axes in enumerate(flips[1:], start=1):
        x[f * n : (f + 1) * n] = x[:n].flip(axes)
    return x


def _forward(network: nn.Module, x: torch.Tensor, tile) -> torch.Tensor:
    try:
        y = network(x)
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


def _progress(done: int, total: int) -> None:
    width = 30
    filled = width * done // total
    print(
        f"\rsliding window [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="", file=sys.stderr, flush=True
    )
