"""Gray-value label mapping: file values (0/255, 20/31, ...) <-> class indices 0..N-1.

A :class:`LabelMap` lists classes in order; class i gets index i. Each class has one or more
source gray values (TotalSegmentator L1 = 31 and VerSe L1 = 20 both become class ``"L1"``);
the first value of a class is the one written back by :meth:`LabelMap.to_values`.

JPEG masks (Kvasir-SEG) hold compression noise: values 0..8 and 247..255 instead of 0 and 255.
:meth:`LabelMap.to_class` snaps such values to the nearest palette value within ``tolerance``
gray levels and logs how many pixels it snapped; anything farther raises :class:`DataError`
naming the file, the values and the allowed values. :func:`medseg.data.label_discovery.discover_label_values`
finds the palette of a data set from a stream of masks; :mod:`medseg.data.label_transforms` wraps the
mapping as MONAI transforms.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from monai.utils import convert_to_dst_type

from medseg.dtypes import smallest_int_dtype
from medseg.errors import DataError

__all__ = ["LabelClass", "LabelMap", "mask_to_single_channel"]

logger = logging.getLogger(__name__)

_ArrayT = TypeVar("_ArrayT", torch.Tensor, np.ndarray)

_LUT_MAX_RANGE = 1 << 20  # integer inputs spanning fewer values than this use a lookup table
_MAX_LISTED = 10  # offending values listed in an error message


@dataclass(frozen=True)
class LabelClass:
    """One class: a name and its source gray values (the first one is written back)."""

    name: str
    values: tuple[int, ...]


@dataclass(frozen=True)
class LabelMap:
    """Ordered classes with their source gray values; class i has index i.

    Args:
        classes: The classes in index order. Names must be unique non-empty strings and every
            gray value may belong to one class only.

    Raises:
        ValueError: Duplicate or empty names, duplicate values, non-integer values or no classes.

    Example:
        >>> lm = LabelMap.from_mapping({0: "background", 255: "polyp"})
        >>> idx, snapped = lm.to_class(np.array([0, 3, 255, 250], dtype=np.uint8), tolerance=10)
        >>> idx.tolist(), snapped
        ([0, 0, 1, 1], 2)
        >>> lm.to_values(idx).tolist()
        [0, 0, 255, 255]
    """

    classes: tuple[LabelClass, ...]
    unlisted: str = "error"  # what happens to a value outside every tolerance: "error" or "background"

    def __post_init__(self) -> None:
        if self.unlisted not in ("error", "background"):
            raise ValueError(f"LabelMap: unlisted must be 'error' or 'background', got {self.unlisted!r}")
        classes = tuple(self.classes)
        if not classes:
            raise ValueError("LabelMap: needs at least one class, got none")
        seen_values: dict[int, str] = {}
        seen_names: set[str] = set()
        checked = []
        for cls in classes:
            if not isinstance(cls.name, str) or not cls.name:
                raise ValueError(f"LabelMap: class names must be non-empty strings, got {cls.name!r}")
            if cls.name in seen_names:
                raise ValueError(f"LabelMap: class name {cls.name!r} appears twice")
            seen_names.add(cls.name)
            if len(cls.values) == 0:
                raise ValueError(f"LabelMap: class {cls.name!r} has no gray values")
            values = tuple(_as_int(v, f"class {cls.name!r}") for v in cls.values)
            for v in values:
                if v in seen_values:
                    raise ValueError(f"LabelMap: gray value {v} is in both {seen_values[v]!r} and {cls.name!r}")
                seen_values[v] = cls.name
            checked.append(LabelClass(cls.name, values))
        object.__setattr__(self, "classes", tuple(checked))

    @classmethod
    def from_mapping(cls, mapping: Mapping[int, str] | Mapping[str, str] | Mapping[int | str, str]) -> LabelMap:
        """Build from ``{gray_value: class_name}``; values sharing a name merge into one class.

        Classes are ordered by first appearance; within a class the first listed value is the
        one written back. Keys may be digit strings (JSON object keys), e.g. ``{"255": "polyp"}``.
        """
        grouped: dict[str, list[int]] = {}
        for value, name in mapping.items():
            grouped.setdefault(name, []).append(_as_int(value, f"key of name {name!r}"))
        return cls(tuple(LabelClass(name, tuple(values)) for name, values in grouped.items()))

    @classmethod
    def from_classes(cls, classes: Sequence[tuple[str, Sequence[int]]], *, unlisted: str = "error") -> LabelMap:
        """Build from ``[(name, [values...]), ...]`` in index order, e.g. ``[("L1", [31, 20])]``.

        ``unlisted="background"`` maps values that belong to no class (e.g. the organs of a full
        TotalSegmentator label map when training vertebrae only) to class 0 instead of raising.
        """
        return cls(tuple(LabelClass(name, tuple(values)) for name, values in classes), unlisted=unlisted)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelMap:
        """Inverse of :meth:`to_dict`.

        Raises:
            TypeError: If ``data`` is not a mapping.
            ValueError: If ``data`` lacks the ``classes`` list or an entry lacks
                ``name``/``values``.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"LabelMap.from_dict: expected a mapping, got {type(data).__name__}")
        entries = data.get("classes")
        if not isinstance(entries, list):
            raise ValueError(f"LabelMap.from_dict: expected {{'classes': [...]}}, got {data!r}")
        classes = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or set(entry) != {"name", "values"}:
                raise ValueError(f"LabelMap.from_dict: classes[{i}] needs keys 'name' and 'values', got {entry!r}")
            classes.append(LabelClass(entry["name"], tuple(entry["values"])))
        return cls(tuple(classes), unlisted=str(data.get("unlisted", "error")))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, ``{"classes": [{"name": str, "values": [int, ...]}, ...], "unlisted": str}``."""
        return {"classes": [{"name": c.name, "values": list(c.values)} for c in self.classes],
                "unlisted": self.unlisted}

    @property
    def num_classes(self) -> int:
        """Number of classes N (indices 0..N-1)."""
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        """Class names in index order."""
        return [c.name for c in self.classes]

    @property
    def output_values(self) -> list[int]:
        """Gray value written back for each class (its first value), in index order."""
        return [c.values[0] for c in self.classes]

    def to_class(self, array: _ArrayT, *, tolerance: float = 0, source: str = "") -> tuple[_ArrayT, int]:
        """Map gray values to class indices, snapping values within ``tolerance``.

        A value not in the palette is snapped to the nearest palette value if it is at most
        ``tolerance`` gray levels away (on a tie, to the lower one). The number of snapped
        pixels is logged at INFO level and returned.

        Args:
            array: Label map of any shape, ``numpy.ndarray`` or ``torch.Tensor`` (a MONAI
                ``MetaTensor`` stays one; its ``filename_or_obj`` is used when ``source`` is empty).
            tolerance: Largest distance, in gray levels, that is snapped; 0 means exact values only.
            source: File name used in log and error messages.

        Returns:
            ``(indices, num_snapped)``: indices with the shape of ``array``, uint8 for numpy
            input (int64 if N > 256), int64 for tensor input; and the count of snapped pixels.

        Raises:
            DataError: A value is farther than ``tolerance`` from every palette value; the
                message names ``source``, the values and the allowed values.
            ValueError: ``tolerance`` < 0.
        """
        if not tolerance >= 0:
            raise ValueError(f"to_class: tolerance must be >= 0, got {tolerance!r}")
        source = source or _source_of(array)
        arr = as_numpy(array)
        present, counts, apply = _value_table(arr)
        palette = np.array(sorted(v for c in self.classes for v in c.values), dtype=np.float64)
        nearest, dist = _nearest(present, palette)
        bad = ~(dist <= tolerance)  # NaN distances (NaN pixels) are bad too
        if self.unlisted == "background" and bad.any():
            finite = np.isfinite(present)
            to_background = bad & finite
            if to_background.any():
                logger.debug("%s: %d unlisted values mapped to background", source or "<array>",
                             int(to_background.sum()))
            nearest = np.where(to_background, self.classes[0].values[0], nearest)
            dist = np.where(to_background, 0.0, dist)
            bad = bad & ~finite
        if bad.any():
            offending = present[bad]
            listed = ", ".join(_fmt(v) for v in offending[:_MAX_LISTED])
            more = f" and {offending.size - _MAX_LISTED} more" if offending.size > _MAX_LISTED else ""
            raise DataError(
                f"{source or '<array>'}: label values {listed}{more} are not within tolerance {tolerance:g} "
                f"of any allowed value {palette.astype(np.int64).tolist()} "
                f"(classes {self._describe()}); add them to the label map or raise the tolerance"
            )
        snapped_mask = dist > 0
        num_snapped = int(counts[snapped_mask].sum())
        if num_snapped:
            logger.debug(
                "%s: snapped %d pixels with %d off-palette values (%s) to %s within tolerance %g",
                source or "<array>",
                num_snapped,
                int(snapped_mask.sum()),
                ", ".join(_fmt(v) for v in present[snapped_mask][:_MAX_LISTED]),
                palette.astype(np.int64).tolist(),
                tolerance,
            )
        value_to_class = {v: i for i, c in enumerate(self.classes) for v in c.values}
        classes = np.array([value_to_class[int(v)] for v in nearest], dtype=np.int64)
        out_dtype = np.uint8 if self.num_classes <= 256 else np.int64
        result = apply(classes.astype(out_dtype))
        if isinstance(array, torch.Tensor):
            return convert_to_dst_type(result, array, dtype=torch.int64)[0], num_snapped
        return result, num_snapped

    def to_values(self, class_indices: _ArrayT) -> _ArrayT:
        """Map class indices 0..N-1 back to gray values (the first value of each class).

        Args:
            class_indices: Integer array or tensor of any shape, e.g. an argmax prediction.

        Returns:
            Gray values, same shape and container type, in the smallest integer dtype that holds
            them (numpy: uint8 for 0/255; tensors: the smallest torch integer dtype).

        Raises:
            ValueError: If an index is outside 0..N-1.
        """
        arr = as_numpy(class_indices)
        if arr.dtype.kind not in "iub":
            raise ValueError(f"to_values: class indices must be integers, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.num_classes):
            raise ValueError(
                f"to_values: class index {int(arr.max()) if arr.max() >= self.num_classes else int(arr.min())} "
                f"outside 0..{self.num_classes - 1} ({self.num_classes} classes: {self.names})"
            )
        if arr.dtype.kind == "b":
            arr = arr.astype(np.intp)
        values = self.output_values
        dtype = smallest_int_dtype(min(values), max(values)) or np.dtype(np.int64)
        if isinstance(class_indices, torch.Tensor) and dtype in (np.uint16, np.uint32, np.uint64):
            dtype = np.dtype(np.int32 if dtype == np.uint16 else np.int64)  # torch lacks full uint16/32 support
        result = np.asarray(values, dtype=dtype)[arr]
        if isinstance(class_indices, torch.Tensor):
            return convert_to_dst_type(result, class_indices, dtype=torch.from_numpy(result[:0]).dtype)[0]
        return result

    def _describe(self) -> str:
        return "{" + ", ".join(f"{c.name}: {list(c.values)}" for c in self.classes) + "}"


def mask_to_single_channel(array: np.ndarray, source: str, *, max_channel_diff: int = 32) -> np.ndarray:
    """Reduce a (H, W), (H, W, 1) or gray RGB (H, W, 3) mask to (H, W).

    RGB JPEG masks store the same gray value in all three channels, up to compression noise.
    Channels may differ per pixel by at most ``max_channel_diff``; the result is their rounded
    mean in the input dtype.

    Args:
        array: Mask as read by PIL (channel last).
        source: File name for error messages.
        max_channel_diff: Largest allowed per-pixel difference between channels.

    Returns:
        The (H, W) mask.

    Raises:
        DataError: Unsupported shape, or channels that really differ (a color-coded mask, which
            needs an explicit color -> class mapping).
    """
    arr = np.asarray(array)
    if arr.ndim == 2:
        return arr
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise DataError(f"{source}: mask shape {arr.shape} not supported; expected (H, W), (H, W, 1) or (H, W, 3)")
    if arr.shape[2] == 1:
        return arr[..., 0]
    wide = arr.astype(np.float64)
    diff = float((wide.max(axis=2) - wide.min(axis=2)).max())
    if diff > max_channel_diff:
        raise DataError(
            f"{source}: mask channels differ by up to {diff:g} gray levels (allowed {max_channel_diff}); "
            "this looks like a color-coded RGB mask, not a gray one -- convert colors to gray values first"
        )
    mean = wide.mean(axis=2)
    return np.rint(mean).astype(arr.dtype) if arr.dtype.kind in "iub" else mean.astype(arr.dtype)


def _as_int(value: object, where: str) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    raise ValueError(f"LabelMap: gray values must be integers, got {value!r} ({where})")


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _source_of(array: Any) -> str:
    meta = getattr(array, "meta", None)
    name = meta.get("filename_or_obj", "") if isinstance(meta, Mapping) else ""
    return str(name) if name else ""


def as_numpy(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        tensor = array.detach().cpu()
        return tensor.as_tensor().numpy() if hasattr(tensor, "as_tensor") else tensor.numpy()
    if isinstance(array, np.ndarray):
        return array
    raise TypeError(f"expected a numpy.ndarray or torch.Tensor, got {type(array).__name__}")


def _value_table(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Present values, their counts, and a function mapping per-value results back to pixels."""
    if arr.size and arr.dtype.kind == "f" and all_whole_numbers(arr):
        arr = arr.astype(np.int64)  # float label maps (NIfTI) take the fast lookup-table path
    if arr.size and arr.dtype.kind in "iub":
        if arr.dtype.kind == "b":
            arr = arr.view(np.uint8)
        small_unsigned = arr.dtype.kind == "u" and arr.dtype.itemsize <= 4
        low = 0 if small_unsigned else int(arr.min())
        high = int(arr.max())
        if high - low < _LUT_MAX_RANGE:
            if small_unsigned:
                index = arr  # indexes and bincounts directly, no copy
            elif arr.dtype.kind == "u":
                index = (arr - arr.dtype.type(low)).astype(np.intp)
            else:
                index = arr.astype(np.int64) - low
            counts = np.bincount(index.ravel(), minlength=high - low + 1)
            present = np.flatnonzero(counts)

            def apply_lut(per_value: np.ndarray) -> np.ndarray:
                lut = np.zeros(counts.size, dtype=per_value.dtype)
                lut[present] = per_value
                return lut[index]

            return (present + low).astype(np.float64), counts[present], apply_lut
    values, inverse, counts = np.unique(arr, return_inverse=True, return_counts=True)
    return (
        values.astype(np.float64),
        counts,
        lambda per_value: per_value[inverse.reshape(arr.shape)],
    )


def all_whole_numbers(arr: np.ndarray) -> bool:
    """True if every value is finite, integral and exactly representable as int64."""
    with np.errstate(invalid="ignore"):
        return bool(np.all(np.abs(arr) < 2**53) and np.array_equal(arr, np.rint(arr)))


def _nearest(values: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest palette value for each value (lower one on ties) and the distance."""
    right = np.clip(np.searchsorted(palette, values), 0, palette.size - 1)
    left = np.clip(right - 1, 0, palette.size - 1)
    d_left, d_right = np.abs(values - palette[left]), np.abs(values - palette[right])
    use_right = d_right < d_left
    return np.where(use_right, palette[right], palette[left]), np.where(use_right, d_right, d_left)
