"""2D image/mask datasets: decoding, label mapping, resizing and an in-memory sample cache.

Each sample is decoded once (JPEG decoding dominates otherwise), mapped from gray values to class
indices, resized to ``data.image_size`` and kept as compact uint8 tensors; augmentation runs on the
cached tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medseg.config.schema import DataConfig
from medseg.data.labels import LabelMap, mask_to_single_channel
from medseg.data.pairing import Pair
from medseg.errors import DataError
from medseg.io.images import read_image, read_mask
from medseg.seeds import substream_seed

log = logging.getLogger(__name__)


def read_mask_gray(path: Any) -> np.ndarray:
    """A mask file as a single-channel gray-value array."""
    return mask_to_single_channel(read_mask(path), source=str(path))


@dataclass(frozen=True)
class Sample2D:
    """One decoded, mapped and resized case."""

    case_id: str
    image: torch.Tensor  # (C, H, W) uint8
    label: torch.Tensor  # (1, H, W) uint8 class indices
    original_size: tuple[int, int]  # (H, W) of the file
    snapped: int  # mask pixels snapped to a palette value


def resize_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a (C, H, W) image with antialiased bilinear interpolation; returns float32."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image.float()
    return F.interpolate(image[None].float(), size=tuple(size), mode="bilinear", antialias=True)[0]


def resize_classes(label: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a (1, H, W) class map with nearest-neighbour interpolation (values unchanged)."""
    if tuple(label.shape[-2:]) == tuple(size):
        return label
    return F.interpolate(label[None].float(), size=tuple(size), mode="nearest-exact")[0].to(label.dtype)


def load_sample(pair: Pair, *, cfg: DataConfig, labels: LabelMap) -> Sample2D:
    """Decode one pair, check sizes, map gray values to classes and resize.

    Raises:
        DataError: Unreadable files, mask size differing from the image, or a mask value outside the mapping.
    """
    rgb = read_image(pair.image, mode="RGB" if cfg.color == "rgb" else "L")
    mask = read_mask_gray(pair.mask)
    if rgb.shape[:2] != mask.shape[:2]:
        raise DataError(
            f"{pair.mask}: mask size {mask.shape[1]}x{mask.shape[0]} differs from image {pair.image.name} "
            f"size {rgb.shape[1]}x{rgb.shape[0]} (width x height); masks must match their images"
        )
    classes, snapped = labels.to_class(mask, tolerance=cfg.labels.tolerance, source=str(pair.mask))
    image = torch.from_numpy(np.ascontiguousarray(rgb if rgb.ndim == 3 else rgb[..., None])).permute(2, 0, 1)
    label = torch.from_numpy(np.ascontiguousarray(classes.astype(np.uint8)))[None]
    size = cfg.image_size
    image = resize_image(image, size).round().clamp(0, 255).to(torch.uint8)
    return Sample2D(pair.case_id, image, resize_classes(label, size), tuple(rgb.shape[:2]), int(snapped))


class ImageMaskDataset(torch.utils.data.Dataset):
    """Image/mask pairs as ``{"image": (C, H, W) float in 0..1, "label": (1, H, W) int64}`` dicts.

    Args:
        pairs: The cases.
        cfg: The ``data`` section (size, colour, labels tolerance, cache).
        labels: Gray value -> class mapping.
        transform: Optional callable on the sample dict (training augmentation).
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        *,
        cfg: DataConfig,
        labels: LabelMap,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.pairs = list(pairs)
        self.cfg = cfg
        self.labels = labels
        self.transform = transform
        self.seed = 0  # augmentation of item i depends only on (seed, i): workers change speed, not results
        self._cache: list[Sample2D] | None = None
        if cfg.cache:
            self._cache = load_samples(self.pairs, cfg=cfg, labels=labels)

    def __len__(self) -> int:
        return len(self.pairs)

    def sample(self, index: int) -> Sample2D:
        """The decoded (cached) case, before augmentation."""
        if self._cache is not None:
            return self._cache[index]
        return load_sample(self.pairs[index], cfg=self.cfg, labels=self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.sample(index)
        item: dict[str, Any] = {"image": s.image.float() / 255.0, "label": s.label}
        if self.transform is not None:
            if hasattr(self.transform, "set_random_state"):
                self.transform.set_random_state(seed=substream_seed(self.seed, index))
            item = self.transform(item)
        item["image"] = torch.as_tensor(item["image"]).float().contiguous()
        item["label"] = torch.as_tensor(item["label"]).round().long()
        return item


def load_samples(pairs: Sequence[Pair], *, cfg: DataConfig, labels: LabelMap, threads: int = 4) -> list[Sample2D]:
    """Decode many pairs in parallel threads (Pillow releases the GIL while decoding)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        samples = list(pool.map(lambda p: load_sample(p, cfg=cfg, labels=labels), pairs))
    snapped = sum(s.snapped for s in samples)
    if snapped:
        log.info("snapped %d mask pixels of %d cases to the nearest label value", snapped, len(samples))
    return samples
