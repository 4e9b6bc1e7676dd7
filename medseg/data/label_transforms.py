"""MONAI transforms around :class:`~medseg.data.labels.LabelMap`: gray values <-> class indices."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, TypeVar

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from medseg.data.labels import LabelMap

__all__ = ["InverseMapLabels", "InverseMapLabelsd", "MapLabels", "MapLabelsd"]

_ArrayT = TypeVar("_ArrayT", torch.Tensor, np.ndarray)


class MapLabels(Transform):
    """Gray values -> class indices with a :class:`LabelMap` (see :meth:`LabelMap.to_class`).

    Reads the input and writes a new array, so swaps such as 1 -> 2, 2 -> 1 work.
    The file name for errors comes from a ``MetaTensor``'s ``filename_or_obj``.

    Args:
        label_map: The label map.
        tolerance: Snapping tolerance in gray levels, >= 0.

    Example:
        >>> import numpy as np
        >>> MapLabels(LabelMap.from_classes([("bg", [0]), ("b", [2]), ("a", [1])]))(np.array([0, 1, 2])).tolist()
        [0, 2, 1]
    """

    def __init__(self, label_map: LabelMap, *, tolerance: float = 0) -> None:
        if not isinstance(label_map, LabelMap):
            raise TypeError(f"MapLabels: label_map must be a LabelMap, got {type(label_map).__name__}")
        if not tolerance >= 0:
            raise ValueError(f"MapLabels: tolerance must be >= 0, got {tolerance!r}")
        self.label_map, self.tolerance = label_map, tolerance

    def __call__(self, labels: _ArrayT) -> _ArrayT:
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

    def __call__(self, class_indices: _ArrayT) -> _ArrayT:
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
