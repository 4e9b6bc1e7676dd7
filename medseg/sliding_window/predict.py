"""Sliding-window inference: run a segmentation network over a 2D or 3D volume, fast and lean.

``sliding_window_predict`` covers the (padded) volume with a grid of tiles and blends the network outputs
with separable Gaussian or constant weights that are pre-normalised, so blending needs no count map and
no final division. With ``tiling="auto"`` (default) tiles grow beyond ``roi_size`` up to the memory budget
and overlap by ``overlap * roi_size`` voxels: a fully convolutional network then runs over the fewest
voxels, often in one pass over the whole padded volume. Its tiles start on multiples of the network's divisor
(in the image, not only in the padded volume), so every tile sees the downsampling grid a single pass would see
and the tiles agree where they overlap: a UNet's tiled result matches its one-pass result but for the context
lost at tile borders. ``tiling="roi"`` uses windows of exactly ``roi_size`` placed as MONAI's
``sliding_window_inference`` places them.

Large tiles are only safe for networks whose output at a voxel does not depend on the window extent:
convolutions and eval-mode batch norm. ``tiling="auto"`` therefore inspects the network
(:func:`~medseg.sliding_window.plan.window_dependent_layers`: instance/group/spatial layer norm, batch norm in
training mode, adaptive pooling, attention) and falls back to roi-size windows when it finds such layers,
logging why once per network type at INFO; ``SlidingWindowStats.tiling`` records the choice.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from medseg.errors import ConfigError, DataError, MedsegError
from medseg.sliding_window.backend import check_backend, choose_backend, using_backend
from medseg.sliding_window.memory import budget_bytes, free_cache, is_oom, network_device, peak_mb
from medseg.sliding_window.plan import (
    ACTIVATION_FACTOR,
    TilePlan,
    cpu_has_native_bf16,
    dtype_name,
    flip_sets,
    network_divisor,
    network_first_width,
    network_in_channels,
    network_out_channels,
    plan_auto,
    plan_roi,
    resolve_precision,
    round_up,
    stitch_bytes,
    window_dependent_layers,
)
from medseg.sliding_window.tiles import SlidingWindowStats, TileJob, run_tiles

__all__ = [
    "SlidingWindowMemoryError",
    "SlidingWindowStats",
    "cpu_has_native_bf16",
    "resolve_precision",
    "resolve_tiling",
    "sliding_window_predict",
]

OUTPUTS = ("logits", "probabilities", "labels")
#: Windows one image may need; more means an overlap near 1 (0.99 on a CT: millions of windows, days of work).
MAX_TILES = 100_000
BLENDS = ("gaussian", "constant")
TILINGS = ("auto", "roi")
NONFINITE = ("error", "zero")

log = logging.getLogger(__name__)
_logged_roi_fallbacks: set[tuple[str, tuple[str, ...]]] = set()


class SlidingWindowMemoryError(MedsegError, MemoryError):
    """Out of memory even with batch size 1, the smallest tiles and CPU stitching."""


def sliding_window_predict(
    network: nn.Module,
    image: torch.Tensor,
    roi_size: int | Sequence[int],
    *,
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    blend: str = "gaussian",
    precision: str = "auto",
    tta: bool | Sequence[Sequence[int]] = False,
    output: str = "probabilities",
    device: torch.device | str | None = None,
    sigma_scale: float = 0.125,
    memory_budget_mb: float | None = None,
    progress: bool = False,
    divisor: int | Sequence[int] | None = None,
    tiling: str = "auto",
    padding_value: float = 0.0,
    nonfinite: str = "error",
    backend: str = "auto",
    return_stats: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, SlidingWindowStats]:
    """Predict a (B, C, *spatial) ``image`` (2D or 3D) with ``network`` tile by tile.

    Args:
        network: maps (N, C, *tile) to (N, K, *tile); moved to ``device`` if it lives elsewhere.
        roi_size: window size (int or one per spatial dim); rounded up to a multiple of ``divisor``;
            the volume is padded (``padding_value``) where it is smaller.
        overlap: fraction of ``roi_size`` by which neighbouring tiles overlap, in [0, 1).
        sw_batch_size: tiles per network call ("auto" tiling lowers it to fit the memory budget).
        blend: "gaussian" (sigma = ``sigma_scale`` x tile) or "constant" weights.
        precision: "fp32", "bf16", "fp16" (autocast; blending stays fp32) or "auto" (see
            :func:`resolve_precision`).
        tta: True averages all flips of the spatial axes (4 in 2D, 8 in 3D), or a list of axis tuples
            (spatial axis numbers from 0); flipped copies run batched with their window.
        output: "logits", "probabilities" (softmax; sigmoid when K == 1) -> (B, K, *spatial) float32;
            "labels" -> (B, 1, *spatial) uint8 (int16/int32 above 256 classes), argmax streamed row by row.
        device: where the network runs; default the network's device (CPU without parameters).
        memory_budget_mb: working memory for tiles and stitching; default 768 MiB on CPU (at most a
            quarter of what is free), half the free memory on CUDA. Estimates are approximate.
        progress: print a progress bar and a final summary line to stderr.
        divisor: every tile dim is a multiple of it; default read from MONAI UNet/BasicUNet, else 1.
        tiling: "auto" (tiles as large as the budget allows; roi-size windows for networks whose output
            depends on the window, see the module docstring) or "roi" (windows of exactly ``roi_size``).
        padding_value: value of the padding where the image is smaller than a window; a finite number (NaN or
            Inf would reach the network and spread through its convolutions).
        nonfinite: "error" raises :class:`DataError` on NaN/Inf voxels; "zero" replaces them with 0.
        backend: how the forward pass runs: "eager", "channels_last", "compile" or "auto" (a cached, measured
            probe on one window picks eager or channels-last; see :mod:`medseg.sliding_window.backend`).
        return_stats: also return a :class:`SlidingWindowStats`.

    Returns the prediction on ``image``'s device (and the stats when ``return_stats``).
    On out-of-memory it retries with half the batch, then smaller tiles, then stitching on the CPU,
    then raises :class:`SlidingWindowMemoryError`.
    """
    _check_args(image, overlap, sw_batch_size, blend, output, tiling, nonfinite, sigma_scale)
    if isinstance(padding_value, bool) or not isinstance(padding_value, (int, float)) or not math.isfinite(
            padding_value):
        raise ValueError(f"padding_value must be a finite number (the padding is network input), got {padding_value!r}")
    check_backend(backend)
    spatial = image.ndim - 2
    roi = _per_dim(roi_size, spatial, "roi_size")
    div = _per_dim(divisor, spatial, "divisor") if divisor is not None else network_divisor(network, spatial)
    expected = network_in_channels(network)
    if expected is not None and expected != image.shape[1]:
        raise ValueError(
            f"network expects {expected} input channels but image has {image.shape[1]} "
            f"(image shape {tuple(image.shape)}, layout (B, C, *spatial))"
        )
    image = _check_finite(image, nonfinite)
    device = torch.device(device) if device is not None else network_device(network)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    network.to(device)
    dtype = resolve_precision(precision, device)
    flips = flip_sets(spatial, tta)
    budget = budget_bytes(memory_budget_mb, device)
    tiling, tiling_note = resolve_tiling(network, tiling)

    if backend == "auto":
        window = _probe_window(image, roi, div, padding_value).to(device)
        backend = choose_backend(network, window, dtype, batch=sw_batch_size * len(flips))
        del window

    stats = SlidingWindowStats(precision=dtype_name(dtype), device=str(device), tiling=tiling_note, backend=backend)
    request = _Request(roi=roi, div=div, overlap=overlap, tiling=tiling, output=output, dtype=dtype, flips=flips,
                       blend=blend, sigma_scale=sigma_scale, padding_value=padding_value, progress=progress)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with using_backend(network, backend, spatial) as forward:
        result, plan, run_batch = _run_with_fallbacks(
            network, image, request, device, budget, sw_batch_size, stats, forward)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stats.seconds = time.perf_counter() - start
    stats.voxels = image.shape[0] * math.prod(image.shape[2:])
    stats.peak_memory_mb = peak_mb(device)
    stats.plan, stats.batch_size = plan.describe(), run_batch
    if progress:
        print(f"\n{stats}", file=sys.stderr)
    result = result.to(image.device if image.device.type != "meta" else "cpu")
    return (result, stats) if return_stats else result


@dataclass(frozen=True)
class _Request:
    """The settings of one call that stay fixed while the out-of-memory fallbacks change batch, tiles and stitching."""

    roi: tuple[float, ...]
    div: tuple[int, ...]
    overlap: float
    tiling: str
    output: str
    dtype: torch.dtype | None
    flips: list[tuple[int, ...]]
    blend: str
    sigma_scale: float
    padding_value: float
    progress: bool


def _run_with_fallbacks(
    network: nn.Module, image: torch.Tensor, req: _Request, device: torch.device, budget: float, batch: int,
    stats: SlidingWindowStats, forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, TilePlan, int]:
    """Plan and run the tiles; on out-of-memory halve the batch, then shrink the tiles, then stitch on the CPU.

    Returns (result, the plan that ran, its batch size).
    """
    roi, div, overlap, tiling, output, dtype, flips = (
        req.roi, req.div, req.overlap, req.tiling, req.output, req.dtype, req.flips)
    stitch_device = device
    while True:
        plan, bpv, fixed = _plan(image, network, roi, div, overlap, tiling, output, dtype, budget, len(flips))
        if plan.n_tiles > MAX_TILES:
            raise ConfigError(
                f"overlap: {overlap} with windows of {'x'.join(str(round(r)) for r in roi)} needs {plan.n_tiles} "
                f"windows for an image of {'x'.join(map(str, image.shape[2:]))} (at most {MAX_TILES}); lower the "
                "overlap (0.25-0.5 is usual) or use larger windows"
            )
        tile_bytes = math.prod(plan.tile) * bpv * len(flips)
        fits = int((budget - fixed) // max(tile_bytes, 1))
        run_batch = batch if tiling == "roi" else max(1, min(batch, fits))
        run_batch = min(run_batch, plan.n_tiles)
        try:
            job = TileJob(plan=plan, blend=req.blend, sigma_scale=req.sigma_scale, dtype=dtype, flips=flips,
                          output=output, device=device, stitch_device=stitch_device, batch=run_batch,
                          padding_value=req.padding_value, progress=req.progress, forward=forward)
            result = run_tiles(network, image, job, stats)
            return result, plan, run_batch
        except (torch.cuda.OutOfMemoryError, MemoryError, RuntimeError) as err:
            if not is_oom(err):
                raise
            free_cache(device)
            if run_batch > 1:
                batch = run_batch // 2
                stats.fallbacks.append(f"batch {run_batch} -> {batch}")
            elif tiling == "auto" and any(t > round(r) for t, r in zip(plan.tile, roi, strict=True)):
                budget /= 4
                stats.fallbacks.append(f"tiles {'x'.join(map(str, plan.tile))} -> smaller")
            elif stitch_device.type != "cpu":
                stitch_device = torch.device("cpu")
                stats.fallbacks.append("stitching on cpu")
            else:
                raise SlidingWindowMemoryError(
                    f"out of memory on {device} with batch 1, tiles {plan.tile} and CPU stitching "
                    f"({err.__class__.__name__}); use a smaller roi_size or free memory"
                ) from err


def resolve_tiling(network: nn.Module, tiling: str) -> tuple[str, str]:
    """(tiling to use, description for the stats): "auto" becomes "roi" for window-dependent networks."""
    if tiling != "auto":
        return tiling, tiling
    layers = window_dependent_layers(network)
    if not layers:
        return "auto", "auto"
    why = f"layers {', '.join(layers)} make the output depend on the window size"
    key = (type(network).__name__, tuple(layers))
    if key not in _logged_roi_fallbacks:
        _logged_roi_fallbacks.add(key)
        log.info(
            "sliding window: tiling='auto' uses roi-size windows for %s: %s (larger tiles would change the "
            "result); eval-mode batch norm lets a fully convolutional network use larger tiles",
            type(network).__name__,
            why,
        )
    return "roi", f"roi (auto: {why})"


def _check_args(image, overlap, sw_batch_size, blend, output, tiling, nonfinite, sigma_scale) -> None:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim not in (4, 5):
        raise ValueError(f"image must be (B, C, H, W) or (B, C, D, H, W), got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"image must be a floating-point tensor, got {image.dtype}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if not isinstance(sw_batch_size, int) or sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be an int >= 1, got {sw_batch_size!r}")
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be > 0, got {sigma_scale}")
    for name, value, allowed in (
        ("blend", blend, BLENDS),
        ("output", output, OUTPUTS),
        ("tiling", tiling, TILINGS),
        ("nonfinite", nonfinite, NONFINITE),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _per_dim(value, spatial: int, name: str) -> tuple[int, ...]:
    values = (value,) * spatial if isinstance(value, int) else tuple(value)
    if len(values) != spatial or any(not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name} must be a positive int or {spatial} positive ints, got {value!r}")
    return values


def _check_finite(image: torch.Tensor, nonfinite: str) -> torch.Tensor:
    finite = torch.isfinite(image)
    if bool(finite.all()):
        return image
    bad = int(finite.numel() - finite.sum())
    if nonfinite == "error":
        raise DataError(
            f"image has {bad} non-finite voxels (NaN/Inf) of {finite.numel()}; clean the input or pass "
            "nonfinite='zero' to replace them with 0"
        )
    return torch.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0)


def _plan(image, network, roi, div, overlap, tiling, output, dtype, budget, n_flips) -> tuple[TilePlan, float, float]:
    """(plan, bytes per tile voxel of one window, bytes the stitcher keeps besides the tiles)."""
    shape = tuple(image.shape[2:])
    elem = 2 if dtype is not None else 4
    width = max(network_first_width(network), 1)
    classes = network_out_channels(network) or width
    # Live activations per voxel (full-resolution feature maps of the first width) + the network's output.
    bpv = elem * ACTIVATION_FACTOR * width + elem * classes
    row_bpv = 4 * classes if output == "labels" else 0.0
    if tiling == "roi":
        plan = plan_roi(shape, roi, div, overlap)
    else:
        plan = plan_auto(
            shape,
            roi,
            div,
            overlap,
            tile_bytes_per_voxel=bpv * n_flips,
            row_bytes_per_voxel=row_bpv,
            budget_bytes=budget,
        )
    counts = [len(s) for s in plan.starts]
    fixed = stitch_bytes(plan.tile, plan.padded, counts, row_bpv, 1 if tiling == "roi" else div[0])
    return plan, bpv, fixed


def _probe_window(image: torch.Tensor, roi: Sequence[int], div: Sequence[int], value: float) -> torch.Tensor:
    """One window of the first image, (1, C, *roi rounded up to the divisor), from its centre (padded if small)."""
    size = [round_up(r, d) for r, d in zip(roi, div, strict=True)]
    window = tuple(slice(max(0, (s - t) // 2), max(0, (s - t) // 2) + t)
                   for s, t in zip(image.shape[2:], size, strict=True))
    crop = image[(slice(0, 1), slice(None)) + window]
    pads = [p for have, t in reversed(list(zip(crop.shape[2:], size, strict=True))) for p in (0, t - have)]
    return torch.nn.functional.pad(crop, pads, value=value) if any(pads) else crop

