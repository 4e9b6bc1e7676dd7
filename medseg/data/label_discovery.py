"""Finding the gray values a set of masks uses (a "gray list"), robust to JPEG noise."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medseg.data.labels import LabelMap, all_whole_numbers, as_numpy
from medseg.errors import DataError

__all__ = [
    "LabelDiscovery", "ValueCluster", "check_class_presence", "discover_label_map", "discover_label_values",
]

logger = logging.getLogger(__name__)


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
        arr = as_numpy(array)
        if arr.dtype.kind == "b" or arr.dtype in (np.uint8, np.uint16):
            binc = np.bincount(arr.ravel().astype(np.intp, copy=False) if arr.dtype.kind == "b" else arr.ravel())
            if binc.size > small.size:
                small = np.pad(small, (0, binc.size - small.size))
            small[: binc.size] += binc
            continue
        if arr.dtype.kind == "f":
            if not all_whole_numbers(arr):
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


def discover_label_map(
    sources: Sequence[Any], *, read: Callable[[Any], np.ndarray], tolerance: int, min_classes: int = 2
) -> LabelMap:
    """Scan masks for their gray values and build a label map: the lowest value is ``background``, the others
    ``class_<value>``.

    The one place masks are turned into a label map when no classes are configured (training on images and
    volumes, and ``medseg evaluate`` without ``--labels``).

    Args:
        sources: Mask sources (paths or arrays).
        read: Reads one source into an integer array.
        tolerance: Snapping tolerance in gray levels (JPEG masks: about 10).
        min_classes: Fewer distinct values than this is an error (training needs a background and a class).

    Raises:
        DataError: Fewer than ``min_classes`` values found.

    Example:
        >>> masks = [np.array([0, 0, 255], np.uint8), np.array([0, 251], np.uint8)]
        >>> discover_label_map(masks, read=lambda m: m, tolerance=10).to_dict()["classes"]
        [{'name': 'background', 'values': [0]}, {'name': 'class_255', 'values': [255]}]
    """
    found = discover_label_values((read(m) for m in sources), tolerance=tolerance)
    palette, summary = found.values, found.summary()
    if len(palette) < min_classes:
        raise DataError(
            f"label discovery over {len(sources)} masks found only the value(s) {list(palette)}; "
            "a segmentation needs a background and at least one class (set data.labels.classes)"
        )
    logger.info("discovered label values %s (%s)", list(palette), summary)
    names = ["background"] + [f"class_{v}" for v in palette[1:]]
    return LabelMap.from_classes([(n, [int(v)]) for n, v in zip(names, palette, strict=True)])


def check_class_presence(present: Iterable[int], labels: LabelMap, *, num_masks: int, split: str = "training") -> None:
    """Refuse training data where no foreground class appears, and warn about classes absent from the split.

    Masks without any foreground train a network that predicts background everywhere, to a validation Dice of
    1.0 (nothing to find, nothing found): a wrong folder or label mapping passes unnoticed otherwise.

    Args:
        present: Class indices (0 = background) found in the split's masks, after the label mapping.
        labels: The label map.
        num_masks: Masks looked at (for the message).
        split: Which split (for the message).

    Raises:
        DataError: No foreground class in any mask, naming the classes never seen.

    Example:
        >>> labels = LabelMap.from_mapping({0: "background", 255: "polyp"})
        >>> check_class_presence({0, 1}, labels, num_masks=3)  # polyp seen: nothing to say
        >>> try:
        ...     check_class_presence({0}, labels, num_masks=3)
        ... except DataError as err:
        ...     print(str(err)[:71])
        no foreground class appears in any of the 3 training masks (never seen:
    """
    seen = set(present)
    missing = [c.name for i, c in enumerate(labels.classes) if i > 0 and i not in seen]
    if len(missing) == labels.num_classes - 1:
        raise DataError(
            f"no foreground class appears in any of the {num_masks} {split} masks (never seen: {', '.join(missing)}); "
            "every mask is background only, which trains a network that finds nothing. Check data.masks_dir and "
            "data.labels.classes (the masks' gray values must be listed there)"
        )
    if missing:
        logger.warning("classes absent from the %d %s masks (the network cannot learn them): %s", num_masks, split,
                       ", ".join(missing))
