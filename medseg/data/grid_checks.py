"""Do two volumes lie on one grid? The image and its label, and the channel files of one case.

Shapes must be equal; spacing, origin and direction may differ by float noise in the headers (the tolerances
below), which is logged and the first volume's geometry used.
"""

from __future__ import annotations

import logging

import numpy as np

from medseg.errors import DataError
from medseg.io.volume import Volume

__all__ = ["DIRECTION_TOLERANCE", "ORIGIN_TOLERANCE_MM", "SPACING_TOLERANCE_MM", "check_same_channel_grid",
           "check_same_grid"]

log = logging.getLogger(__name__)

#: Image and label grids may differ by this much (float noise in headers) and still be paired.
SPACING_TOLERANCE_MM = 1e-3
ORIGIN_TOLERANCE_MM = 1e-3
DIRECTION_TOLERANCE = 1e-5


def _differences(a: Volume, b: Volume) -> tuple[float, float, float]:
    """Largest spacing (mm), origin (mm) and direction differences of two grids of one shape."""
    return (float(np.abs(np.subtract(a.spacing, b.spacing)).max()),
            float(np.abs(a.affine[:3, 3] - b.affine[:3, 3]).max()),
            float(np.abs(a.direction_lps - b.direction_lps).max()))


def _within_tolerance(names: str, a: Volume, b: Volume, fix: str) -> None:
    """Raise naming both files when ``b``'s grid is not ``a``'s (shape, or beyond the tolerances); log float noise."""
    if a.shape != b.shape:
        raise DataError(f"{names}: shapes differ ({a.shape} vs {b.shape}); {fix}")
    d_spacing, d_origin, d_dir = _differences(a, b)
    if d_spacing > SPACING_TOLERANCE_MM or d_origin > ORIGIN_TOLERANCE_MM or d_dir > DIRECTION_TOLERANCE:
        raise DataError(
            f"{names}: geometry differs (spacing by {d_spacing:.3g} mm, origin by {d_origin:.3g} mm, direction by "
            f"{d_dir:.3g}; allowed {SPACING_TOLERANCE_MM} mm, {ORIGIN_TOLERANCE_MM} mm, {DIRECTION_TOLERANCE}); {fix}"
        )
    if d_spacing or d_origin or d_dir:
        log.info("%s: geometry differs by float noise only (spacing %.2g mm, origin %.2g mm, direction %.2g); "
                 "using the first one's geometry", names, d_spacing, d_origin, d_dir)


def check_same_grid(image: Volume, label: Volume) -> None:
    """Raise unless ``label`` lies on ``image``'s grid (differences within float noise are logged).

    Raises:
        DataError: Shapes differ, or spacing/origin (> 1e-3 mm) or direction (> 1e-5) differ; names both files.
    """
    names = f"image {image.meta.get('path', '<array>')} and label {label.meta.get('path', '<array>')}"
    fix = ("the label must be on the image grid" if image.shape != label.shape
           else "resample the label onto the image grid")
    _within_tolerance(names, image, label, fix)


def check_same_channel_grid(first: Volume, other: Volume) -> None:
    """Raise unless input channel ``other`` lies on the first channel's grid (the tolerances of
    :func:`check_same_grid`).

    Raises:
        DataError: One line naming both channel files and what differs.

    Example:
        >>> a = Volume(np.zeros((2, 2, 2)), np.eye(4), {"path": "c_0000.nii.gz"})
        >>> b = Volume(np.zeros((2, 2, 3)), np.eye(4), {"path": "c_0001.nii.gz"})
        >>> try:
        ...     check_same_channel_grid(a, b)
        ... except DataError as err:
        ...     print(str(err).split(";")[0])
        channels c_0000.nii.gz and c_0001.nii.gz: shapes differ ((2, 2, 2) vs (2, 2, 3))
    """
    a, b = first.meta.get("path", "<array>"), other.meta.get("path", "<array>")
    _within_tolerance(f"channels {a} and {b}", first, other,
                      f"co-registered channels must share one grid: resample {b} onto {a}'s grid")
