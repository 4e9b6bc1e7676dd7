"""How a 2D image's stored values become network input: the rule a run records and a predictor enforces.

The rule is ``data.intensity``; it is applied to each image at its file resolution, before resizing:

============  =========================================================  ==========================================
intensity     images                                                     network input
============  =========================================================  ==========================================
scale         uint8 (8-bit), uint16 (16-bit), float32 within 0..1        uint8 / 255, uint16 / 65535, float as is
minmax        any                                                        per image (x - min) / (max - min); a
                                                                         constant image gives 0
zscore        any                                                        per image (x - mean) / std; a constant
                                                                         image is refused
ct_window     16-bit, 32-bit integer or float gray (8-bit is refused)    HU = x + ``data.intensity_offset``; each
                                                                         of ``data.windows`` to 0..1, stacked
============  =========================================================  ==========================================

All images of a run share one dtype, the first training image's. The checkpoint's ``preprocessing`` stores the
rule with that dtype (``intensity``, ``dtype``, ``windows``, ``intensity_offset``, ``scale``), and prediction
takes only images and arrays of that dtype (any float width for float models): a 16-bit image given to a model
trained on 8-bit images, or a float array in 0..1 given to one trained on uint8 0..255, is refused with one line;
medseg never guesses a scale. Checkpoints from before this rule (no ``intensity``) are 8-bit ``scale`` models.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from medseg.config.schema import DataConfig
from medseg.data.transforms import ct_window, resolve_window
from medseg.errors import DataError

__all__ = ["INTENSITIES_2D", "ImageIntensity", "describe_dtype"]

#: The ``data.intensity`` rules 2D images take.
INTENSITIES_2D = ("scale", "minmax", "zscore", "ct_window")

_FULL_SCALE = {"uint8": 255.0, "uint16": 65535.0}


def describe_dtype(dtype: np.dtype | str) -> str:
    """A dtype in words, e.g. ``'16-bit (uint16)'``.

    Example:
        >>> describe_dtype("uint8"), describe_dtype(np.dtype("float64"))
        ('8-bit (uint8)', 'float (float64)')
    """
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return f"float ({dt.name})"
    return f"{dt.itemsize * 8}-bit ({dt.name})"


@dataclass(frozen=True)
class ImageIntensity:
    """The intensity rule of a 2D image model (see the module docstring).

    Args:
        intensity: ``scale``, ``minmax``, ``zscore`` or ``ct_window``.
        color: ``rgb`` or ``gray``: channels of 8-bit images (deeper images are gray).
        dtype: Dtype of the training images (``uint8``, ``uint16``, ``int32``, ``float32``); None before it is known.
        windows: ``(center_hu, width_hu)`` per channel, for ``ct_window``.
        offset: ``ct_window``: HU = stored value + offset.

    Example:
        >>> rule = ImageIntensity("scale", "gray", "uint16")
        >>> rule.normalise(np.array([[0, 65535]], np.uint16), "a.png").tolist()
        [[[0.0, 1.0]]]
        >>> rule.normalise(np.array([[0, 255]], np.uint8), "b.png")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        medseg.errors.DataError: b.png: 8-bit (uint8) values, but the training images were 16-bit (uint16); ...
    """

    intensity: str
    color: str
    dtype: str | None = None
    windows: tuple[tuple[float, float], ...] = ()
    offset: float = 0.0

    def __post_init__(self) -> None:
        if self.intensity not in INTENSITIES_2D:
            raise ValueError(f"intensity: unknown {self.intensity!r}; 2D images take {', '.join(INTENSITIES_2D)}")
        if self.color not in ("rgb", "gray"):
            raise ValueError(f"color: must be 'rgb' or 'gray', got {self.color!r}")
        if self.intensity == "ct_window" and not self.windows:
            raise ValueError("windows: ct_window needs at least one window")
        if not np.isfinite(self.offset):
            raise ValueError(f"intensity_offset: must be finite, got {self.offset}")

    @classmethod
    def from_config(cls, data: DataConfig, dtype: np.dtype | str | None = None) -> ImageIntensity:
        """The rule of an images2d ``data`` section; ``dtype``: of the first training image."""
        windows = tuple(resolve_window(w if isinstance(w, str) else w.model_dump()) for w in data.windows or [])
        return cls(data.intensity, data.color, None if dtype is None else np.dtype(dtype).name,
                   windows if data.intensity == "ct_window" else (), float(data.intensity_offset))

    @classmethod
    def from_preprocessing(cls, pre: Mapping[str, Any]) -> ImageIntensity:
        """The rule stored in a checkpoint's ``preprocessing``; older checkpoints are 8-bit ``scale`` models."""
        intensity = str(pre.get("intensity", "scale"))
        windows = tuple((float(c), float(w)) for c, w in pre.get("windows", [])) if intensity == "ct_window" else ()
        return cls(intensity, str(pre.get("color", "rgb")), str(pre.get("dtype", "uint8")), windows,
                   float(pre.get("intensity_offset", 0.0)))

    def with_dtype(self, dtype: np.dtype | str) -> ImageIntensity:
        """The same rule for training images of ``dtype``."""
        return replace(self, dtype=np.dtype(dtype).name)

    @property
    def settings(self) -> dict[str, Any]:
        """JSON-safe entries of the checkpoint's ``preprocessing``."""
        out: dict[str, Any] = {"intensity": self.intensity, "dtype": self.dtype}
        if self.intensity == "scale" and self.dtype is not None:
            out["scale"] = 1.0 / _FULL_SCALE[self.dtype] if self.dtype in _FULL_SCALE else 1.0
        if self.intensity == "ct_window":
            out["windows"] = [list(w) for w in self.windows]
            out["intensity_offset"] = self.offset
        return out

    @property
    def in_channels(self) -> int:
        """Channels of the network input: one per window (ct_window), else 3 (rgb) or 1 (gray)."""
        if self.intensity == "ct_window":
            return len(self.windows)
        return 3 if self.color == "rgb" else 1

    @property
    def keeps_uint8(self) -> bool:
        """True for 8-bit ``scale`` models, whose training samples are cached as uint8."""
        return self.intensity == "scale" and self.dtype == "uint8"

    def check(self, array: np.ndarray, source: str, *, trained: str = "the training images were") -> np.ndarray:
        """Refuse values this rule cannot take; return them as ``(H, W, C)`` with the model's channels.

        Args:
            array: ``(H, W)`` or ``(H, W, C)`` pixel values, as read from a file or given to a predictor.
            source: The file or ``"array"``, for messages.
            trained: How the reference dtype is named in messages.

        Raises:
            DataError: A dtype other than the training images' (any float width for float models), NaN/Inf,
                float values outside 0..1 under ``scale``, 32-bit integers under ``scale``, 8-bit images under
                ``ct_window``, colour channels in a 16-bit or float image.
        """
        array = np.asarray(array)
        if array.dtype.kind not in "iuf":
            raise DataError(f"{source}: dtype {array.dtype} holds no pixel values; allowed: integer or float dtypes")
        if self.dtype is not None:
            expected = np.dtype(self.dtype)
            same = array.dtype.kind == "f" if expected.kind == "f" else array.dtype == expected
            if not same:
                hint = ""
                if expected == np.uint8 and array.dtype.kind == "f":
                    hint = " (for values in 0..1: (x * 255).round().astype(numpy.uint8))"
                raise DataError(
                    f"{source}: {describe_dtype(array.dtype)} values, but {trained} {describe_dtype(expected)}; "
                    f"convert it to that dtype the way the training images were made{hint} "
                    "(medseg does not guess a scale)"
                )
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise DataError(f"{source}: holds NaN or infinite values; pixel values must be finite")
        deep = array.dtype != np.uint8
        if self.intensity == "ct_window" and not deep:
            raise DataError(
                f"{source}: 8-bit (uint8) image: 8 bits hold no Hounsfield units, so data.windows cannot apply; "
                "CT windows need 16-bit, 32-bit integer or float gray images (HU + data.intensity_offset)"
            )
        if self.intensity == "scale" and array.dtype.kind in "iu" and array.dtype.name not in _FULL_SCALE:
            raise DataError(
                f"{source}: {describe_dtype(array.dtype)} image has no fixed full scale for intensity 'scale' "
                "(uint8 and uint16 do); use data.intensity minmax, zscore or ct_window"
            )
        if self.intensity == "scale" and array.dtype.kind == "f" and array.size:
            low, high = float(array.min()), float(array.max())
            if low < 0 or high > 1:
                raise DataError(
                    f"{source}: float values {low:g}..{high:g} lie outside 0..1, which intensity 'scale' takes as "
                    "they are; use data.intensity minmax or zscore (or ct_window for HU)"
                )
        return self._channels(array, source, deep)

    def _channels(self, array: np.ndarray, source: str, deep: bool) -> np.ndarray:
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if deep:
            if array.ndim != 2:
                raise DataError(f"{source}: {describe_dtype(array.dtype)} image with {array.shape[-1]} channels; "
                                "16-bit and float images are read as gray (H, W)")
            if self.color == "rgb" and self.intensity != "ct_window":
                raise DataError(f"{source}: {describe_dtype(array.dtype)} gray image, but data.color is rgb; "
                                "16-bit and float images are gray: set data.color: gray")
            return array[..., None]
        if self.color == "rgb":
            if array.ndim == 2:
                array = np.repeat(array[..., None], 3, axis=-1)
            if array.ndim != 3 or array.shape[-1] not in (3, 4):
                raise DataError(f"{source}: expected an RGB image (H, W, 3), got shape {array.shape}")
            return array[..., :3]
        if array.ndim == 3:
            array = array[..., :3].mean(-1)
        return array[..., None]

    def normalise(self, array: np.ndarray, source: str, *, trained: str = "the training images were") -> torch.Tensor:
        """Network input ``(C, H, W)`` float32 of one image's values (checked first, see :meth:`check`).

        Raises:
            DataError: As :meth:`check`, and a constant image under ``zscore``.
        """
        name = np.asarray(array).dtype.name
        values = self.check(array, source, trained=trained)
        x = torch.from_numpy(np.ascontiguousarray(values)).permute(2, 0, 1).float()
        if self.intensity == "scale":
            return x * float(1.0 / _FULL_SCALE[name]) if name in _FULL_SCALE else x
        if self.intensity == "minmax":
            low, high = x.min(), x.max()
            return (x - low) / (high - low) if high > low else torch.zeros_like(x)
        if self.intensity == "zscore":
            std = float(x.std(unbiased=False)) if x.numel() > 1 else 0.0
            if std < 1e-8:
                raise DataError(f"{source}: constant image, cannot z-score normalise it")
            return (x - x.mean()) / std
        hu = x + self.offset  # float32: integers below 2**24 and their offsets are exact
        return torch.cat([ct_window(hu, center_hu=c, width_hu=w) for c, w in self.windows]).float()
