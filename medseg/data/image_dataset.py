"""2D image/mask datasets: decoding, label mapping, resizing and an in-memory sample cache.

Each sample is decoded once (JPEG decoding dominates otherwise), mapped from gray values to class
indices, resized to ``data.image_size`` and cached; augmentation runs on the cached tensors. 8-bit images
under ``intensity: scale`` are cached as uint8 and divided by 255 when drawn; every other image (16-bit,
float, or another intensity rule, see :mod:`medseg.data.image_intensity`) is normalised at its file
resolution, then resized and cached as float32.
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
from medseg.data.image_intensity import ImageIntensity
from medseg.data.labels import LabelMap, mask_to_single_channel
from medseg.data.pairing import Pair
from medseg.errors import DataError
from medseg.io.images import image_dtype, read_image_values, read_mask
from medseg.seeds import substream_seed

log = logging.getLogger(__name__)


def read_mask_gray(path: Any) -> np.ndarray:
    """A mask file as a single-channel gray-value array."""
    return mask_to_single_channel(read_mask(path), source=str(path))


@dataclass(frozen=True)
class Sample2D:
    """One decoded, mapped and resized case."""

    case_id: str
    image: torch.Tensor  # (C, H, W): uint8 (8-bit images under intensity scale) or normalised float32
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


def training_intensity(pairs: Sequence[Pair], cfg: DataConfig) -> ImageIntensity:
    """The intensity rule of a run, with the dtype of its first image (read from the file header)."""
    rule = ImageIntensity.from_config(cfg)
    return rule.with_dtype(image_dtype(pairs[0].image)) if pairs else rule


def load_sample(pair: Pair, *, cfg: DataConfig, labels: LabelMap, intensity: ImageIntensity | None = None
                ) -> Sample2D:
    """Decode one pair, check sizes and values, map gray values to classes and resize.

    Args:
        pair: The image and mask files.
        cfg: The ``data`` section.
        labels: Gray value -> class mapping.
        intensity: The run's rule (:func:`training_intensity`); default: the rule of ``cfg`` for this image's dtype.

    Raises:
        DataError: Unreadable files, mask size differing from the image, a mask value outside the mapping, or
            image values the intensity rule refuses (another dtype than the run's first image, see
            :meth:`~medseg.data.image_intensity.ImageIntensity.check`).
    """
    rule = intensity or training_intensity([pair], cfg)
    values = read_image_values(pair.image, color=cfg.color)
    mask = read_mask_gray(pair.mask)
    if values.shape[:2] != mask.shape[:2]:
        raise DataError(
            f"{pair.mask}: mask size {mask.shape[1]}x{mask.shape[0]} differs from image {pair.image.name} "
            f"size {values.shape[1]}x{values.shape[0]} (width x height); masks must match their images"
        )
    classes, snapped = labels.to_class(mask, tolerance=cfg.labels.tolerance, source=str(pair.mask))
    label = torch.from_numpy(np.ascontiguousarray(classes.astype(np.uint8)))[None]
    size = cfg.image_size
    trained = "the run's first training image is"
    if rule.keeps_uint8:
        arranged = rule.check(values, str(pair.image), trained=trained)
        image = torch.from_numpy(np.ascontiguousarray(arranged)).permute(2, 0, 1)
        image = resize_image(image, size).round().clamp(0, 255).to(torch.uint8)
    else:
        image = resize_image(rule.normalise(values, str(pair.image), trained=trained), size)
    return Sample2D(pair.case_id, image, resize_classes(label, size), tuple(values.shape[:2]), int(snapped))


class ImageMaskDataset(torch.utils.data.Dataset):
    """Image/mask pairs as ``{"image": (C, H, W) float in 0..1, "label": (1, H, W) int64}`` dicts.

    Args:
        pairs: The cases.
        cfg: The ``data`` section (size, colour, labels tolerance, cache).
        labels: Gray value -> class mapping.
        transform: Optional callable on the sample dict (training augmentation).
        intensity: The run's intensity rule (default: :func:`training_intensity` of ``pairs``); a validation set
            takes the training set's, so its images must share the training images' dtype.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        *,
        cfg: DataConfig,
        labels: LabelMap,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        intensity: ImageIntensity | None = None,
    ) -> None:
        self.pairs = list(pairs)
        self.cfg = cfg
        self.labels = labels
        self.transform = transform
        self.intensity = intensity or training_intensity(self.pairs, cfg)
        self.seed = 0  # augmentation of item i depends only on (seed, i): workers change speed, not results
        self._cache: list[Sample2D] | None = None
        if cfg.cache:
            self._cache = load_samples(self.pairs, cfg=cfg, labels=labels, intensity=self.intensity)

    def __len__(self) -> int:
        return len(self.pairs)

    def sample(self, index: int) -> Sample2D:
        """The decoded (cached) case, before augmentation."""
        if self._cache is not None:
            return self._cache[index]
        return load_sample(self.pairs[index], cfg=self.cfg, labels=self.labels, intensity=self.intensity)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.sample(index)
        image = s.image.float() / 255.0 if s.image.dtype == torch.uint8 else s.image
        item: dict[str, Any] = {"image": image, "label": s.label}
        if self.transform is not None:
            if hasattr(self.transform, "set_random_state"):
                self.transform.set_random_state(seed=substream_seed(self.seed, index))
            item = self.transform(item)
        item["image"] = torch.as_tensor(item["image"]).float().contiguous()
        item["label"] = torch.as_tensor(item["label"]).round().long()
        return item


def load_samples(pairs: Sequence[Pair], *, cfg: DataConfig, labels: LabelMap, threads: int = 4,
                 intensity: ImageIntensity | None = None) -> list[Sample2D]:
    """Decode many pairs in parallel threads (Pillow releases the GIL while decoding)."""
    rule = intensity or training_intensity(pairs, cfg)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        samples = list(pool.map(lambda p: load_sample(p, cfg=cfg, labels=labels, intensity=rule), pairs))
    snapped = sum(s.snapped for s in samples)
    if snapped:
        log.info("snapped %d mask pixels of %d cases to the nearest label value", snapped, len(samples))
    return samples
