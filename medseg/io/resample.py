"""Irregular geometry onto a regular grid: DICOM slice stacks (gantry tilt, uneven gaps, shifted slices) and
NIfTI volumes whose affine shears the voxel axes.

Readers refuse such inputs by default (``irregular="refuse"``) and call this module on request
(``irregular="resample"``). The grid chosen is stated in the volume's ``meta["resampled"]``:

* DICOM: directions are the slices' own row, column and normal; the in-plane spacing is the pixel spacing and the
  grid's in-plane lattice is the first slice's pixels, extended to cover every slice; the slice spacing is the
  smallest gap between neighbouring slices, shrunk just enough (``span / ceil(span / smallest gap)``) that the
  first and last slices lie on grid planes. A grid plane is interpolated linearly between the two original slices
  around it along the normal, each sampled bilinearly at the plane's points (both at the original positions as
  stored: nothing is rounded). So a grid node at an original pixel's position holds that pixel's value, and values
  that vary linearly in the world are reproduced exactly everywhere.
* NIfTI: the grid keeps the voxel count and the voxel sizes (column norms of the affine) along the orthonormal
  directions nearest the sheared axes (polar decomposition), centred on the same world point; values are trilinear
  in the original voxel grid.

Nodes outside the original data are filled with the volume's minimum (air for CT) and counted. Integer voxels are
rounded back to their dtype.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medseg.io.volume import LPS_RAS, affine_from_lps

__all__ = ["IRREGULAR_CHOICES", "labels_on_slices", "resample_sheared", "resample_slices", "shear_of"]

#: What readers do with irregular geometry: refuse it (the default) or resample it onto a regular grid.
IRREGULAR_CHOICES = ("refuse", "resample")


def resample_slices(
    stack: np.ndarray, positions: np.ndarray, direction: np.ndarray, pixel_spacing: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Resample slices at arbitrary positions (one orientation) onto a regular grid.

    Args:
        stack: Slices ``(K, rows, cols)``, sorted along the normal.
        positions: ``(K, 3)`` LPS position (mm) of each slice's first pixel (ImagePositionPatient).
        direction: 3x3 LPS, columns = row direction, column direction, normal.
        pixel_spacing: (between rows, between columns) in mm, as DICOM PixelSpacing.

    Returns:
        ``(array [i, j, k], RAS affine, report)``; the report states the grid and what was filled.

    Example:
        Three slices 1 mm apart then 2 mm: the grid has 1 mm spacing and the missing plane is their mean.

        >>> stack = np.array([np.full((2, 2), v, np.int16) for v in (0, 10, 30)])
        >>> pos = np.array([[0.0, 0, 0], [0, 0, 1], [0, 0, 3]])
        >>> array, affine, report = resample_slices(stack, pos, np.eye(3), (1.0, 1.0))
        >>> array[0, 0].tolist(), report["spacing_mm"]
        ([0, 10, 20, 30], [1.0, 1.0, 1.0])
    """
    row, col, normal = (np.asarray(direction[:, a], float) for a in range(3))
    dy, dx = (float(v) for v in pixel_spacing)
    positions = np.asarray(positions, float)
    rel = positions - positions[0]
    dist = rel @ normal
    offsets = np.column_stack([rel @ row / dx, rel @ col / dy])  # each slice's first pixel on the first's lattice
    n_slices, rows, cols = stack.shape
    low = np.floor(offsets.min(axis=0) + 1e-6).astype(int)
    high = np.ceil(offsets.max(axis=0) - 1e-6).astype(int)
    size_i, size_j = cols + int(high[0] - low[0]), rows + int(high[1] - low[1])
    span = float(dist[-1])
    smallest = float(np.diff(dist).min())
    planes = max(1, math.ceil(span / smallest - 1e-6))
    dz = span / planes
    fill = float(stack.min())
    out = np.empty((planes + 1, size_j, size_i), np.float64)
    grid_u, grid_v = np.meshgrid(np.arange(size_i) + low[0], np.arange(size_j) + low[1])
    empty = 0
    for m in range(planes + 1):
        d = m * dz
        k = int(np.clip(np.searchsorted(dist, d, side="right") - 1, 0, n_slices - 2))
        weight = float(np.clip((d - dist[k]) / (dist[k + 1] - dist[k]), 0.0, 1.0))
        plane = np.zeros((size_j, size_i))
        missing = np.zeros((size_j, size_i), bool)
        for kk, w in ((k, 1.0 - weight), (k + 1, weight)):
            if w < 1e-9:
                continue
            sampled = _bilinear(stack[kk], grid_v - offsets[kk, 1], grid_u - offsets[kk, 0])
            missing |= np.isnan(sampled)
            plane += w * np.nan_to_num(sampled)
        plane[missing] = fill
        empty += int(missing.sum())
        out[m] = plane
    array = out.transpose(2, 1, 0)
    if np.issubdtype(stack.dtype, np.integer):
        array = np.rint(array).astype(stack.dtype)
    else:
        array = array.astype(stack.dtype)
    origin = positions[0] + low[0] * dx * row + low[1] * dy * col
    affine = affine_from_lps(origin, (dx, dy, dz), np.column_stack([row, col, normal]))
    gaps = np.diff(dist)
    report = {
        "what": "DICOM slices onto a regular grid",
        "method": "linear between the two nearest slices along the normal, bilinear within each slice",
        "spacing_mm": [dx, dy, dz],
        "slice_spacing_rule": "smallest gap, shrunk so that the first and last slices lie on grid planes",
        "slice_gaps_mm": {"min": float(gaps.min()), "max": float(gaps.max())},
        "shape_from": [cols, rows, n_slices],
        "shape_to": list(array.shape),
        "filled_voxels": empty,
        "fill_value": fill,
    }
    return array, affine, report


def _bilinear(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``image`` sampled bilinearly at fractional (row, col) points; NaN outside it (exact at whole indices)."""
    from scipy.ndimage import map_coordinates

    n_rows, n_cols = image.shape
    eps = 1e-6
    inside = (rows >= -eps) & (rows <= n_rows - 1 + eps) & (cols >= -eps) & (cols <= n_cols - 1 + eps)
    coords = np.stack([np.clip(rows, 0, n_rows - 1), np.clip(cols, 0, n_cols - 1)])
    values: np.ndarray = map_coordinates(image.astype(np.float64), coords, order=1, mode="nearest")
    values[~inside] = np.nan
    return values


def labels_on_slices(labels: np.ndarray, grid_affine: np.ndarray, positions: np.ndarray, direction: np.ndarray,
                     pixel_spacing: tuple[float, float], size: tuple[int, int]) -> np.ndarray:
    """A label map on a regular grid, sampled (nearest node) at every pixel of the original slices.

    Args:
        labels: ``(I, J, K)`` on the grid of ``grid_affine`` (RAS).
        positions: ``(N, 3)`` LPS position of each original slice.
        direction: 3x3 LPS, columns = row direction, column direction (the normal is ignored).
        pixel_spacing: (between rows, between columns) in mm.
        size: (rows, cols) of the original slices.

    Returns:
        ``(cols, rows, N)``, indexed like a volume read from the original slices; 0 where a pixel lies off the grid.
    """
    rows, cols = size
    dy, dx = (float(v) for v in pixel_spacing)
    row, col = np.asarray(direction[:, 0], float), np.asarray(direction[:, 1], float)
    to_index = np.linalg.inv(grid_affine)
    c, r = np.meshgrid(np.arange(cols), np.arange(rows), indexing="ij")
    out = np.zeros((cols, rows, len(positions)), labels.dtype)
    for n, position in enumerate(np.asarray(positions, float)):
        world_lps = position + c[..., None] * dx * row + r[..., None] * dy * col
        ras = world_lps @ LPS_RAS.T
        index = np.rint(ras @ to_index[:3, :3].T + to_index[:3, 3]).astype(np.int64)
        inside = np.all((index >= 0) & (index < np.array(labels.shape)), axis=-1)
        i, j, k = (index[..., a][inside] for a in range(3))
        out[..., n][inside] = labels[i, j, k]
    return out


def shear_of(affine: np.ndarray) -> float:
    """Largest angle (degrees) by which two voxel axes of ``affine`` depart from perpendicular.

    Example:
        >>> shear_of(np.diag([2.0, 2.0, 3.0, 1.0]))
        0.0
    """
    axes = np.asarray(affine, float)[:3, :3]
    unit = axes / np.linalg.norm(axes, axis=0)
    cosines = np.abs(unit.T @ unit - np.eye(3))
    return float(np.degrees(np.arcsin(np.clip(cosines.max(), 0.0, 1.0))))


def resample_sheared(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Resample a volume with a sheared affine onto the nearest orthogonal grid (see the module docstring).

    Returns:
        ``(array, RAS affine, report)``.
    """
    from scipy.ndimage import map_coordinates

    affine = np.asarray(affine, float)
    axes = affine[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    u, _, vt = np.linalg.svd(axes / spacing)
    rotation = u @ vt  # nearest orthonormal directions (polar decomposition)
    shape = np.array(array.shape)
    centre = affine[:3, :3] @ ((shape - 1) / 2) + affine[:3, 3]
    new = np.eye(4)
    new[:3, :3] = rotation * spacing
    new[:3, 3] = centre - new[:3, :3] @ ((shape - 1) / 2)
    to_source = np.linalg.inv(affine) @ new
    grid = np.indices(array.shape, dtype=np.float64).reshape(3, -1)
    coords = to_source[:3, :3] @ grid + to_source[:3, 3:4]
    fill = float(array.min())
    values = map_coordinates(array.astype(np.float64), coords, order=1, mode="constant", cval=np.nan)
    outside = np.isnan(values)
    values[outside] = fill
    out = values.reshape(array.shape)
    result = np.rint(out).astype(array.dtype) if np.issubdtype(array.dtype, np.integer) else out.astype(array.dtype)
    report = {
        "what": "sheared affine onto an orthogonal grid",
        "method": "trilinear in the original voxel grid",
        "shear_deg": shear_of(affine),
        "spacing_mm": [float(s) for s in spacing],
        "shape_from": [int(n) for n in array.shape],
        "shape_to": [int(n) for n in array.shape],
        "filled_voxels": int(outside.sum()),
        "fill_value": fill,
    }
    return result, new, report
