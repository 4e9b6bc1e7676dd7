"""What kind of data a run trains on, and so what kind of model a checkpoint holds (decided in one place)."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

__all__ = ["DataKind"]


class DataKind(str, Enum):
    """The ``data.kind`` of a config and the ``preprocessing["kind"]`` of a checkpoint.

    Example:
        >>> DataKind("slices2d").segments_volumes, DataKind.IMAGES2D.spatial_dims
        (True, 2)
    """

    IMAGES2D = "images2d"
    VOLUMES3D = "volumes3d"
    SLICES2D = "slices2d"

    @property
    def segments_volumes(self) -> bool:
        """True for models that take volumes (3D models and 2D slice-wise models)."""
        return self is not DataKind.IMAGES2D

    @property
    def spatial_dims(self) -> int:
        """Dimensions the network itself sees: 3 for volumes3d, 2 for images and slices."""
        return 3 if self is DataKind.VOLUMES3D else 2

    @classmethod
    def of(cls, preprocessing: Mapping[str, Any]) -> DataKind | None:
        """The kind stored in a checkpoint's preprocessing dict, or None when it is missing or unknown."""
        try:
            return cls(preprocessing.get("kind"))
        except ValueError:
            return None
