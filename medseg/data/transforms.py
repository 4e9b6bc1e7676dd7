"""CT intensity windowing: named presets, single windows and multi-window channels.

A CT window ``(center_hu, width_hu)`` maps Hounsfield units linearly to 0..1:
``center - width / 2`` and below become 0, ``center + width / 2`` and above become 1.
Several windows applied to a one-channel CT give a multi-channel network input
(``windows: [bone, soft_tissue]`` -> 2 channels).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, TypeVar, cast

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from medseg.config.schema import WINDOW_PRESETS  # named CT windows; the schema checks data.windows against them

__all__ = [
    "WINDOW_PRESETS",
    "CTWindow",
    "CTWindowd",
    "WindowSpec",
    "ct_window",
    "resolve_window",
]

_ArrayT = TypeVar("_ArrayT", torch.Tensor, np.ndarray)


#: A window: preset name, ``{"center_hu": c, "width_hu": w}`` or a ``(center_hu, width_hu)`` pair.
WindowSpec = str | Mapping[str, float] | Sequence[float]


def ct_window(image: _ArrayT, *, center_hu: float, width_hu: float) -> _ArrayT:
    """Map Hounsfield units linearly to 0..1 and clip outside the window.

    Args:
        image: CT intensities in HU, any shape; a ``torch.Tensor`` (a MONAI ``MetaTensor`` stays
            one) or a ``numpy.ndarray``. Integer inputs are converted to float32.
        center_hu: Window center (level) in HU.
        width_hu: Window width in HU, > 0.

    Returns:
        Same type and shape as ``image``, float, values in 0..1.

    Raises:
        ValueError: If ``width_hu`` is not a finite number > 0 or ``center_hu`` is not finite.
        TypeError: If ``image`` is neither a tensor nor an array.

    Example:
        >>> ct_window(torch.tensor([-1000.0, -160.0, 40.0, 240.0, 3000.0]), center_hu=40, width_hu=400)
        tensor([0.0000, 0.0000, 0.5000, 1.0000, 1.0000])
    """
    center, width = _check_window(center_hu, width_hu, where="ct_window")
    low = center - width / 2
    if isinstance(image, torch.Tensor):
        if not torch.is_floating_point(image):
            image = image.float()
        return ((image - low) / width).clamp(0.0, 1.0)
    if isinstance(image, np.ndarray):
        if image.dtype.kind != "f":
            image = image.astype(np.float32)
        return np.clip((image - low) / width, 0.0, 1.0).astype(image.dtype, copy=False)
    raise TypeError(f"ct_window: image must be a torch.Tensor or numpy.ndarray, got {type(image).__name__}")


def resolve_window(spec: WindowSpec) -> tuple[float, float]:
    """Turn a window spec into ``(center_hu, width_hu)``.

    Args:
        spec: A preset name from :data:`WINDOW_PRESETS` (e.g. ``"bone"``), a mapping
            ``{"center_hu": 400, "width_hu": 1800}`` or a ``(center_hu, width_hu)`` pair.

    Returns:
        ``(center_hu, width_hu)`` as floats.

    Raises:
        ValueError: Unknown preset name (the message lists the valid names), wrong keys,
            a width <= 0 or non-finite numbers.
        TypeError: If ``spec`` is none of the accepted forms.

    Example:
        >>> resolve_window("bone")
        (400.0, 1800.0)
    """
    if isinstance(spec, str):
        if spec not in WINDOW_PRESETS:
            raise ValueError(f"window: unknown preset {spec!r}; choose from {sorted(WINDOW_PRESETS)}")
        return WINDOW_PRESETS[spec]
    if isinstance(spec, Mapping):
        keys = set(spec)
        if keys != {"center_hu", "width_hu"}:
            raise ValueError(
                f"window: mapping needs exactly the keys ['center_hu', 'width_hu'], got {sorted(map(str, keys))}"
            )
        return _check_window(spec["center_hu"], spec["width_hu"], where="window")
    if isinstance(spec, Sequence) and len(spec) == 2 and all(_is_number(v) for v in spec):
        return _check_window(spec[0], spec[1], where="window")
    raise TypeError(
        f"window: expected a preset name {sorted(WINDOW_PRESETS)}, a mapping with center_hu/width_hu "
        f"or a (center_hu, width_hu) pair, got {spec!r}"
    )


class CTWindow(Transform):
    """Apply one CT window, or stack several windows as channels.

    One window maps ``(C, *spatial)`` to the same shape in 0..1. A list of N windows needs a
    one-channel input ``(1, *spatial)`` and returns ``(N, *spatial)``, channel i windowed with
    window i, all in 0..1.

    Args:
        windows: One window spec (preset name, mapping or pair) or a list of them;
            see :func:`resolve_window`. Leave out to use ``center_hu``/``width_hu``.
        center_hu: Window center in HU, together with ``width_hu`` instead of ``windows``.
        width_hu: Window width in HU, > 0.

    Raises:
        ValueError: If both or neither of ``windows`` and ``center_hu``/``width_hu`` are given,
            the list is empty, or a window is invalid.

    Example:
        >>> CTWindow(["bone", "soft_tissue"])(torch.zeros(1, 2, 2)).shape
        torch.Size([2, 2, 2])
    """

    def __init__(
        self,
        windows: WindowSpec | Sequence[WindowSpec] | None = None,
        *,
        center_hu: float | None = None,
        width_hu: float | None = None,
    ) -> None:
        self.windows: tuple[tuple[float, float], ...]
        has_pair = center_hu is not None or width_hu is not None
        if has_pair == (windows is not None):
            raise ValueError("CTWindow: give either windows or center_hu and width_hu, not both or neither")
        if has_pair:
            if center_hu is None or width_hu is None:
                raise ValueError(f"CTWindow: center_hu and width_hu go together, got {center_hu=}, {width_hu=}")
            self.windows = (_check_window(center_hu, width_hu, where="CTWindow"),)
            self.stack = False
        elif _is_single_spec(windows):
            self.windows = (resolve_window(windows),)  # type: ignore[arg-type]
            self.stack = False
        else:
            if not isinstance(windows, Sequence) or len(windows) == 0:
                raise ValueError(f"CTWindow: windows must be one window or a non-empty list, got {windows!r}")
            self.windows = tuple(resolve_window(w) for w in cast("Sequence[WindowSpec]", windows))
            self.stack = True

    def __call__(self, image: _ArrayT) -> _ArrayT:
        """Window ``image`` of shape ``(C, *spatial)``; see the class docstring for shapes."""
        if not self.stack:
            center, width = self.windows[0]
            return ct_window(image, center_hu=center, width_hu=width)
        if image.ndim < 2 or image.shape[0] != 1:
            raise ValueError(
                f"CTWindow: {len(self.windows)} windows need a one-channel input (1, *spatial), "
                f"got shape {tuple(image.shape)}"
            )
        parts = [ct_window(image, center_hu=c, width_hu=w) for c, w in self.windows]
        if isinstance(image, torch.Tensor):
            return torch.cat(parts, dim=0)
        return np.concatenate(parts, axis=0)

    def __repr__(self) -> str:
        if not self.stack:
            center, width = self.windows[0]
            return f"CTWindow(center_hu={center:g}, width_hu={width:g})"
        pairs = ", ".join(f"({c:g}, {w:g})" for c, w in self.windows)
        return f"CTWindow(windows=[{pairs}])"


class CTWindowd(MapTransform):
    """Dictionary version of :class:`CTWindow`: windows each of ``keys``.

    Args:
        keys: Keys of the images to window, e.g. ``"image"``.
        windows: As in :class:`CTWindow`.
        center_hu: As in :class:`CTWindow`.
        width_hu: As in :class:`CTWindow`.
        allow_missing_keys: Skip keys that are not in the data instead of raising ``KeyError``.

    Example:
        >>> CTWindowd("image", center_hu=40, width_hu=400)({"image": torch.tensor([[240.0]])})["image"]
        tensor([[1.]])
    """

    def __init__(
        self,
        keys: KeysCollection,
        windows: WindowSpec | Sequence[WindowSpec] | None = None,
        *,
        center_hu: float | None = None,
        width_hu: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.window = CTWindow(windows, center_hu=center_hu, width_hu=width_hu)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a shallow copy of ``data`` with each key windowed."""
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = self.window(out[key])
        return out

    def __repr__(self) -> str:
        inner = repr(self.window)[len("CTWindow(") : -1]
        return f"CTWindowd(keys={list(self.keys)}, {inner})"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_single_spec(spec: object) -> bool:
    if isinstance(spec, (str, Mapping)):
        return True
    return isinstance(spec, Sequence) and len(spec) == 2 and all(_is_number(v) for v in spec)


def _check_window(center_hu: object, width_hu: object, *, where: str) -> tuple[float, float]:
    if not _is_number(center_hu) or not math.isfinite(float(center_hu)):  # type: ignore[arg-type]
        raise ValueError(f"{where}: center_hu must be a finite number, got {center_hu!r}")
    if not _is_number(width_hu) or not math.isfinite(float(width_hu)) or float(width_hu) <= 0:  # type: ignore[arg-type]
        raise ValueError(f"{where}: width_hu must be a finite number > 0, got {width_hu!r}")
    return float(center_hu), float(width_hu)  # type: ignore[arg-type]
