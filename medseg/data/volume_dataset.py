"""Volume cases for training: prepared cases (in memory, or memory-mapped from the preprocessed cache of
:mod:`medseg.data.preprocessed_cache`) and random patch sampling.

The image/label pairs come from :func:`medseg.data.pairing.find_pairs_from_config` (one finder for 2D and 3D).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medseg.data.labels import LabelMap
from medseg.data.pairing import Pair
from medseg.data.volume_preprocessing import GridRecord, VolumePreprocessor
from medseg.seeds import substream_seed

__all__ = [
    "PatchDataset",
    "PreparedCase",
    "foreground_positions",
    "prepare_cases",
    "prepared_case",
]

log = logging.getLogger(__name__)

#: At most this many voxel positions are kept per class for foreground sampling.
_MAX_FG_POSITIONS = 20_000


@dataclass
class PreparedCase:
    """One case on the canonical grid, in memory (or memory-mapped: see :mod:`medseg.data.preprocessed_cache`).

    Attributes:
        case_id: Case name.
        image: ``(C, X, Y, Z)`` float16 for CT windows (in 0..1, so float16 loses nothing that matters), float32
            for z-scored images.
        label: ``(X, Y, Z)`` uint8 class indices.
        grid: How the case was moved onto the grid.
        foreground: Class index -> flat voxel positions of that class (a random subset for big classes).
    """

    case_id: str
    image: torch.Tensor
    label: torch.Tensor
    grid: GridRecord
    foreground: dict[int, np.ndarray]


def foreground_positions(label: np.ndarray, case_id: str) -> dict[int, np.ndarray]:
    """Class index -> sorted flat voxel positions of that class (class 0 left out).

    Classes with more than 20,000 voxels keep a random subset, drawn from a seed of the case name alone, so a case
    gets the same positions in every fold, split and cache entry.

    Example:
        >>> {c: p.tolist() for c, p in foreground_positions(np.array([[0, 2], [1, 2]], np.uint8), "a").items()}
        {1: [2], 2: [1, 3]}
    """
    flat = np.asarray(label).ravel()
    rng = np.random.default_rng(zlib.crc32(case_id.encode("utf-8", "surrogateescape")))
    fg: dict[int, np.ndarray] = {}
    for c in np.unique(flat).tolist():
        if c == 0:
            continue
        pos = np.flatnonzero(flat == c)
        if pos.size > _MAX_FG_POSITIONS:
            pos = np.sort(rng.choice(pos, _MAX_FG_POSITIONS, replace=False))
        fg[int(c)] = pos
    return fg


def prepared_case(case_id: str, image: torch.Tensor, label: torch.Tensor, grid: GridRecord, pre: VolumePreprocessor
                  ) -> PreparedCase:
    """A case from the output of :meth:`VolumePreprocessor.prepare_pair`: CT windows (0..1) kept as float16,
    z-scored images as float32, and the foreground positions of the label."""
    image = image.half() if pre.half_precision else image
    return PreparedCase(case_id, image.contiguous(), label.contiguous(), grid,
                        foreground_positions(label.numpy(), case_id))


def prepare_cases(
    pairs: Sequence[Pair], pre: VolumePreprocessor, labels: LabelMap, *, tolerance: int = 0
) -> list[PreparedCase]:
    """Read and preprocess every pair into memory (see :meth:`VolumePreprocessor.prepare_pair`); the on-disk
    cache of the same cases is :func:`medseg.data.preprocessed_cache.cached_cases`."""
    out = []
    for pair in pairs:
        image, label, grid = pre.prepare_pair(pair.channels, pair.mask, labels, tolerance=tolerance)
        out.append(prepared_case(pair.case_id, image, label, grid, pre))
        log.debug("prepared %s: %s -> %s", pair.case_id, grid.shape, grid.shape_out)
    return out


def crop(array: torch.Tensor, start: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """``array[..., start:start+size]`` over the last ``len(size)`` dims, zero-padded where it leaves the array."""
    spatial = array.shape[-len(size):]
    src, dst, pad_needed = [], [], False
    for s, n, dim in zip(start, size, spatial, strict=True):
        lo, hi = max(0, s), min(dim, s + n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
        pad_needed |= lo - s > 0 or hi - s < n
    lead = (slice(None),) * (array.ndim - len(size))
    if not pad_needed:
        return array[lead + tuple(src)]
    out = torch.zeros((*array.shape[: array.ndim - len(size)], *size), dtype=array.dtype)
    out[lead + tuple(dst)] = array[lead + tuple(src)]
    return out


class PatchDataset(torch.utils.data.Dataset):
    """Random training patches of prepared cases, fixed for one epoch by ``seed``.

    ``samples_per_volume`` patches per case; a share ``foreground_fraction`` of them is centred on a voxel of a
    foreground class (the class drawn uniformly among those present, so small classes are seen too), the rest
    anywhere. Patches that leave the volume are zero-padded. Augmentation of item ``i`` is seeded from
    ``(seed, i)``, so worker processes change speed, not results. For slice-wise training give a patch size of 1
    along the slice axis and ``squeeze_axis`` (the item is then 2D).

    Items: ``{"image": (C, *patch) float32, "label": (1, *patch) int64}``.
    """

    def __init__(
        self,
        cases: Sequence[PreparedCase],
        *,
        patch_size: Sequence[int],
        samples_per_volume: int,
        foreground_fraction: float,
        seed: int,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        squeeze_axis: int | None = None,
    ) -> None:
        self.cases = list(cases)
        self.patch_size = tuple(int(n) for n in patch_size)
        self.transform = transform
        self.squeeze_axis = squeeze_axis
        self.seed = seed
        rng = np.random.default_rng(seed)
        self.starts: list[tuple[int, tuple[int, ...]]] = []
        for ci, case in enumerate(self.cases):
            shape = tuple(case.label.shape)
            for _ in range(samples_per_volume):
                centre = self._centre(rng, case, shape, rng.random() < foreground_fraction)
                self.starts.append((ci, self._start(rng, centre, shape)))

    def _centre(self, rng: np.random.Generator, case: PreparedCase, shape: tuple[int, ...], fg: bool) -> np.ndarray:
        if fg and case.foreground:
            classes = sorted(case.foreground)
            positions = case.foreground[classes[int(rng.integers(len(classes)))]]
            return np.array(np.unravel_index(int(positions[int(rng.integers(positions.size))]), shape))
        return np.array([int(rng.integers(n)) for n in shape])

    def _start(self, rng: np.random.Generator, centre: np.ndarray, shape: tuple[int, ...]) -> tuple[int, ...]:
        start = []
        for c, p, n in zip(centre, self.patch_size, shape, strict=True):
            s = int(c) - p // 2
            if n >= p:
                s = min(max(s, 0), n - p)  # stay inside when the volume is big enough
            else:
                s = -int(rng.integers(p - n + 1))  # random placement inside the padding
            start.append(s)
        return tuple(start)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ci, start = self.starts[index]
        case = self.cases[ci]
        # copies, never views: the arrays may be memory-mapped cache files shared by every process
        image = crop(case.image, start, self.patch_size).to(torch.float32, copy=True)
        label = crop(case.label, start, self.patch_size)[None].to(torch.int64, copy=True)
        if self.squeeze_axis is not None:
            image, label = image.squeeze(self.squeeze_axis + 1), label.squeeze(self.squeeze_axis + 1)
        item: dict[str, Any] = {"image": image, "label": label}
        if self.transform is not None:
            if hasattr(self.transform, "set_random_state"):  # augmentation of item i depends on (seed, i) only
                self.transform.set_random_state(seed=substream_seed(self.seed, index))
            item = self.transform(item)
        item["image"] = _plain(item["image"]).float().contiguous()
        item["label"] = _plain(item["label"]).round().long().contiguous()
        return item


def _plain(x: Any) -> torch.Tensor:
    """A plain tensor (MONAI transforms return MetaTensors, which collate and compute slower)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
