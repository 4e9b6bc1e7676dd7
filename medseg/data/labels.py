"""Gray-value label mapping: file values (0/255, 20/31, ...) <-> class indices 0..N-1.

A :class:`LabelMap` lists classes in order; class i gets index i. Each class has one or more
source gray values (TotalSegmentator L1 = 31 and VerSe L1 = 20 both become class ``"L1"``);
the first value of a class is the one written back by :meth:`LabelMap.to_values`.

JPEG masks (Kvasir-SEG) hold compression noise: values 0..8 and 247..255 instead of 0 and 255.
:meth:`LabelMap.to_class` snaps such values to the nearest palette value within ``tolerance``
gray levels and logs how many pixels it snapped; anything farther raises :class:`DataError`
naming the file, the values and the allowed values. :func:`discover_label_values` finds the
palette of a data set from a stream of masks.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type

from medseg.errors import DataError

__all__ = [
    "InverseMapLabels",
    "InverseMapLabelsd",
    "LabelClass",
    "LabelDiscovery",
    "LabelMap",
    "MapLabels",
    "MapLabelsd",
    "ValueCluster",
    "discover_label_values",
    "mask_to_single_channel",
]

logger = logging.getLogger(__name__)

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
    def from_mapping(cls, mapping: Mapping[int | str, str]) -> LabelMap:
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

    def to_class(self, array: Any, *, tolerance: float = 0, source: str = "") -> tuple[Any, int]:
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
        arr = _to_numpy(array)
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

    def to_values(self, class_indices: Any) -> Any:
        """Map class indices 0..N-1 back to gray values (the first value of each class).

        Args:
            class_indices: Integer array or tensor of any shape, e.g. an argmax prediction.

        Returns:
            Gray values, same shape and container type, in the smallest integer dtype that holds
            them (numpy: uint8 for 0/255; tensors: the smallest torch integer dtype).

        Raises:
            ValueError: If an index is outside 0..N-1.
        """
        arr = _to_numpy(class_indices)
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
        dtype = _smallest_int_dtype(min(values), max(values))
        if isinstance(class_indices, torch.Tensor) and dtype in (np.uint16, np.uint32, np.uint64):
            dtype = np.int32 if dtype == np.uint16 else np.int64  # torch lacks full uint16/32 support
        result = np.asarray(values, dtype=dtype)[arr]
        if isinstance(class_indices, torch.Tensor):
            return convert_to_dst_type(result, class_indices, dtype=torch.from_numpy(result[:0]).dtype)[0]
        return result

    def _describe(self) -> str:
        return "{" + ", ".join(f"{c.name}: {list(c.values)}" for c in self.classes) + "}"


@dataclass(frozen=True)
class ValueCluster:
    """Present gray values ``low..high`` represented by ``value``; ``count`` pixels in all."""

    value: int
    low: int
    high: int
    count: int
    num_snapped: int


@dataclass(frozen=True)
class LabelDiscovery:
    """Result of :func:`discover_label_values`.

    Attributes:
        values: The palette, sorted: one representative per cluster.
        clusters: One :class:`ValueCluster` per palette value.
        counts: Pixel count of every present gray value.
        num_arrays: Number of arrays read.
    """

    values: tuple[int, ...]
    clusters: tuple[ValueCluster, ...]
    counts: dict[int, int]
    num_arrays: int

    @property
    def num_snapped(self) -> int:
        """Pixels whose value differs from their cluster's representative."""
        return sum(c.num_snapped for c in self.clusters)

    def summary(self) -> str:
        """One log line: palette, clusters with pixel shares and snapped counts."""
        total = sum(self.counts.values()) or 1
        parts = [
            f"{c.low}..{c.high} -> {c.value} ({100 * c.count / total:.2f}% of pixels, {c.num_snapped} snapped)"
            if c.low != c.high
            else f"{c.value} ({100 * c.count / total:.2f}%)"
            for c in self.clusters
        ]
        return (
            f"{len(self.counts)} gray values in {self.num_arrays} arrays ({total} pixels) -> "
            f"palette {list(self.values)}: " + "; ".join(parts)
        )


def discover_label_values(
    arrays: np.ndarray | torch.Tensor | Iterable[np.ndarray | torch.Tensor], *, tolerance: int = 0
) -> LabelDiscovery:
    """Find the palette of gray values used by a set of masks.

    With ``tolerance=0`` the palette is the exact set of present values. With ``tolerance > 0``
    present values are grouped into clusters (sorted present values whose gaps are at most
    ``tolerance`` join one cluster). Each cluster is represented by a value chosen among those
    with at least half the pixels of the cluster's most frequent value, preferring round values
    (0, 255, 65535 first, then multiples of 10 or 16, then of 5), then the higher count, then the
    lower value. For Kvasir-SEG (values 0..8 and 247..255) this gives ``[0, 255]``. A warning is
    logged for a cluster wider than ``2 * tolerance`` (a gradient, not noise: check the masks).

    Args:
        arrays: One array/tensor or an iterable of them (e.g. a generator reading files), so a
            data set need not fit in memory. uint8/uint16/bool arrays are counted with
            ``np.bincount``. Float arrays must hold whole numbers.
        tolerance: Largest gap, in gray levels, inside one cluster; >= 0.

    Returns:
        A :class:`LabelDiscovery`; ``.values`` is the palette, ``.summary()`` a log line.

    Raises:
        DataError: An array holds non-integer or non-finite values (the message gives its position).
        ValueError: ``tolerance`` < 0 or no pixels at all.

    Example:
        >>> discover_label_values(np.array([0, 0, 3, 255, 250], dtype=np.uint8), tolerance=10).values
        (0, 255)
    """
    if not tolerance >= 0:
        raise ValueError(f"discover_label_values: tolerance must be >= 0, got {tolerance!r}")
    if isinstance(arrays, (np.ndarray, torch.Tensor)):
        arrays = [arrays]
    small = np.zeros(0, dtype=np.int64)  # bincount over 0..65535 for unsigned 8/16-bit and bool
    other: dict[int, int] = {}
    num_arrays = 0
    for num_arrays, array in enumerate(arrays, start=1):
        arr = _to_numpy(array)
        if arr.dtype.kind == "b" or arr.dtype in (np.uint8, np.uint16):
            binc = np.bincount(arr.ravel().astype(np.intp, copy=False) if arr.dtype.kind == "b" else arr.ravel())
            if binc.size > small.size:
                small = np.pad(small, (0, binc.size - small.size))
            small[: binc.size] += binc
            continue
        if arr.dtype.kind == "f":
            if not _is_whole(arr):
                raise DataError(f"array #{num_arrays}: label values must be whole numbers, got non-integer floats")
            arr = arr.astype(np.int64)
        values, counts = np.unique(arr, return_counts=True)
        for v, n in zip(values.tolist(), counts.tolist(), strict=True):
            other[int(v)] = other.get(int(v), 0) + int(n)
    for v in np.flatnonzero(small).tolist():
        other[v] = other.get(v, 0) + int(small[v])
    if not other:
        raise ValueError("discover_label_values: no pixels in the given arrays")
    counts_by_value = dict(sorted(other.items()))
    clusters = tuple(_represent(group, counts_by_value, tolerance) for group in _group(counts_by_value, tolerance))
    return LabelDiscovery(
        values=tuple(c.value for c in clusters),
        clusters=clusters,
        counts=counts_by_value,
        num_arrays=num_arrays,
    )


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


class MapLabels(Transform):
    """Gray values -> class indices with a :class:`LabelMap` (see :meth:`LabelMap.to_class`).

    Reads the input and writes a new array, so swaps such as 1 -> 2, 2 -> 1 work.
    The file name for errors comes from a ``MetaTensor``'s ``filename_or_obj``.

    Args:
        label_map: The label map.
        tolerance: Snapping tolerance in gray levels, >= 0.

    Example:
        >>> MapLabels(LabelMap.from_classes([("bg", [0]), ("b", [2]), ("a", [1])]))(np.array([0, 1, 2])).tolist()
        [0, 2, 1]
    """

    def __init__(self, label_map: LabelMap, *, tolerance: float = 0) -> None:
        if not isinstance(label_map, LabelMap):
            raise TypeError(f"MapLabels: label_map must be a LabelMap, got {type(label_map).__name__}")
        if not tolerance >= 0:
            raise ValueError(f"MapLabels: tolerance must be >= 0, got {tolerance!r}")
        self.label_map, self.tolerance = label_map, tolerance

    def __call__(self, labels: Any) -> Any:
        """Return class indices for ``labels`` (any shape)."""
        return self.label_map.to_class(labels, tolerance=self.tolerance)[0]

    def __repr__(self) -> str:
        return f"MapLabels(label_map={self.label_map._describe()}, tolerance={self.tolerance:g})"


class MapLabelsd(MapTransform):
    """Dictionary version of :class:`MapLabels`.

    Args:
        keys: Keys of the label maps, e.g. ``"label"``.
        label_map: The label map.
        tolerance: Snapping tolerance in gray levels.
        allow_missing_keys: Skip absent keys instead of raising ``KeyError``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_map: LabelMap,
        *,
        tolerance: float = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mapper = MapLabels(label_map, tolerance=tolerance)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a shallow copy of ``data`` with each key mapped."""
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = self.mapper(out[key])
        return out

    def __repr__(self) -> str:
        return f"MapLabelsd(keys={list(self.keys)}, {repr(self.mapper)[len('MapLabels(') : -1]})"


class InverseMapLabels(Transform):
    """Class indices (e.g. a prediction) -> gray values, see :meth:`LabelMap.to_values`.

    Args:
        label_map: The label map the model was trained with.
    """

    def __init__(self, label_map: LabelMap) -> None:
        if not isinstance(label_map, LabelMap):
            raise TypeError(f"InverseMapLabels: label_map must be a LabelMap, got {type(label_map).__name__}")
        self.label_map = label_map

    def __call__(self, class_indices: Any) -> Any:
        """Return gray values for ``class_indices`` (any shape)."""
        return self.label_map.to_values(class_indices)

    def __repr__(self) -> str:
        return f"InverseMapLabels(label_map={self.label_map._describe()})"


class InverseMapLabelsd(MapTransform):
    """Dictionary version of :class:`InverseMapLabels`.

    Args:
        keys: Keys of the predictions, e.g. ``"pred"``.
        label_map: The label map.
        allow_missing_keys: Skip absent keys instead of raising ``KeyError``.
    """

    def __init__(self, keys: KeysCollection, label_map: LabelMap, *, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.inverse = InverseMapLabels(label_map)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a shallow copy of ``data`` with each key mapped back to gray values."""
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = self.inverse(out[key])
        return out

    def __repr__(self) -> str:
        return f"InverseMapLabelsd(keys={list(self.keys)}, label_map={self.inverse.label_map._describe()})"


# ----------------------------------------------------------------------------------- helpers


def _as_int(value: object, where: str) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    raise ValueError(f"LabelMap: gray values must be integers, got {value!r} ({where})")


def _smallest_int_dtype(low: int, high: int) -> np.dtype:
    for candidate in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64):
        info = np.iinfo(candidate)
        if info.min <= low and high <= info.max:
            return np.dtype(candidate)
    return np.dtype(np.int64)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _source_of(array: Any) -> str:
    meta = getattr(array, "meta", None)
    name = meta.get("filename_or_obj", "") if isinstance(meta, Mapping) else ""
    return str(name) if name else ""


def _to_numpy(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().as_tensor().numpy() if hasattr(array, "as_tensor") else array.detach().cpu().numpy()
    if isinstance(array, np.ndarray):
        return array
    raise TypeError(f"expected a numpy.ndarray or torch.Tensor, got {type(array).__name__}")


def _value_table(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, Any]:
    """Present values, their counts, and a function mapping per-value results back to pixels."""
    if arr.size and arr.dtype.kind == "f" and _is_whole(arr):
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


def _is_whole(arr: np.ndarray) -> bool:
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


def _group(counts: dict[int, int], tolerance: float) -> list[list[int]]:
    groups: list[list[int]] = []
    for v in counts:
        if groups and v - groups[-1][-1] <= tolerance:
            groups[-1].append(v)
        else:
            groups.append([v])
    return groups


def _roundness(v: int) -> int:
    if v in (0, 255, 65535):
        return 3
    if v % 10 == 0 or v % 16 == 0:
        return 2
    return 1 if v % 5 == 0 else 0


def _represent(group: list[int], counts: dict[int, int], tolerance: float) -> ValueCluster:
    top = max(counts[v] for v in group)
    candidates = [v for v in group if 2 * counts[v] >= top]
    value = max(candidates, key=lambda v: (_roundness(v), counts[v], -v))
    total = sum(counts[v] for v in group)
    if group[-1] - group[0] > 2 * tolerance:
        logger.warning(
            "gray values %d..%d chain into one cluster wider than 2 * tolerance (%g): the masks may hold a "
            "gradient (anti-aliasing, resampling), not compression noise; check them",
            group[0],
            group[-1],
            tolerance,
        )
    return ValueCluster(value=value, low=group[0], high=group[-1], count=total, num_snapped=total - counts[value])
