"""The canonical grid of a volume: where it goes (:class:`GridRecord`), how it gets there and how results come back.

1. reorient to an orientation (``"RAS"``) by axis permutations and flips only (nibabel ``io_orientation`` /
   ``ornt_transform`` / ``apply_orientation``; no interpolation, exactly invertible);
2. resample to about a spacing with ``torch.nn.functional.interpolate`` (images trilinear, after a Gaussian
   anti-aliasing filter when shrinking; labels ``nearest-exact``). The grid keeps the volume's extent
   (``align_corners=False``), so the new size is ``round(extent / spacing)`` and the real spacing differs slightly
   from the requested one; it is recorded.

Back (:func:`invert_probabilities`): class probabilities are resampled to the oriented original size trilinearly,
one class at a time with a running argmax (memory: two volumes of the original size), then the class map is turned
back into the input orientation. Label maps go back nearest-neighbour (:func:`invert_classes`).
:class:`~medseg.data.volume_preprocessing.VolumePreprocessor` uses these with its settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from scipy import ndimage

from medseg.errors import DataError
from medseg.io.volume import Volume

__all__ = ["GridRecord", "invert_classes", "invert_probabilities", "invert_probability_maps", "labels_onto_grid",
           "plan_grid", "resample_image"]


@dataclass(frozen=True)
class GridRecord:
    """How one volume was moved onto the canonical grid (enough to move a result back).

    Attributes:
        shape: Original voxel shape ``(I, J, K)``.
        affine: Original 4x4 RAS affine.
        transform: nibabel orientation transform (original -> canonical axes), shape (3, 2).
        inverse: The transform back (canonical -> original axes).
        oriented_shape: Shape after reorientation, before resampling.
        oriented_affine: Affine after reorientation.
        shape_out: Shape of the preprocessed grid.
        spacing_out: Real voxel size (mm) of the preprocessed grid.
        affine_out: Affine of the preprocessed grid (for debugging outputs).
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    transform: np.ndarray
    inverse: np.ndarray
    oriented_shape: tuple[int, int, int]
    oriented_affine: np.ndarray
    shape_out: tuple[int, int, int]
    spacing_out: tuple[float, float, float]
    affine_out: np.ndarray


def plan_grid(volume: Volume, *, orientation: str, spacing_mm: tuple[float, ...] | None) -> GridRecord:
    """The grid a volume goes to (no voxel work): turned to ``orientation``, resampled to about ``spacing_mm``
    (None: the volume's own spacing)."""
    _check_volume(volume)
    shape = volume.shape
    current = io_orientation(volume.affine)
    target = axcodes2ornt(tuple(orientation))
    transform, inverse = ornt_transform(current, target), ornt_transform(target, current)
    oriented_affine = volume.affine @ inv_ornt_aff(transform, shape)
    oriented_shape = cast("tuple[int, int, int]", tuple(int(shape[int(a)]) for a in _source_axes(transform)))
    spacing_in = np.linalg.norm(oriented_affine[:3, :3], axis=0)
    shape_out: tuple[int, ...]
    if spacing_mm is None:
        shape_out = oriented_shape
    else:
        shape_out = tuple(max(1, round(n * s / t)) for n, s, t in
                          zip(oriented_shape, spacing_in, spacing_mm, strict=True))
    factor = np.asarray(oriented_shape, float) / np.asarray(shape_out, float)
    scale = np.eye(4)
    scale[:3, :3] = np.diag(factor)
    scale[:3, 3] = 0.5 * factor - 0.5  # voxel centres with align_corners=False
    affine_out = oriented_affine @ scale
    return GridRecord(
        shape=shape, affine=volume.affine.copy(), transform=transform, inverse=inverse,
        oriented_shape=oriented_shape, oriented_affine=oriented_affine,
        shape_out=cast("tuple[int, int, int]", tuple(int(n) for n in shape_out)),
        spacing_out=cast("tuple[float, float, float]", tuple(float(s) for s in spacing_in * factor)),
        affine_out=affine_out,
    )


def resample_image(volume: Volume, grid: GridRecord) -> torch.Tensor:
    """One volume reoriented and resampled onto ``grid``: ``(1, X, Y, Z)`` float32."""
    _check_volume(volume)
    array = np.asarray(volume.array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise DataError(f"{volume.meta.get('path', '<array>')}: volume holds NaN or Inf voxels")
    oriented = np.ascontiguousarray(apply_orientation(array, grid.transform))
    if grid.shape_out != grid.oriented_shape:
        sigma = [max(0.0, (a / b - 1) / 2) for a, b in zip(grid.oriented_shape, grid.shape_out, strict=True)]
        if max(sigma) > 0:
            oriented = ndimage.gaussian_filter(oriented, sigma=sigma, mode="nearest")
        return F.interpolate(torch.from_numpy(oriented)[None, None], size=grid.shape_out, mode="trilinear",
                             align_corners=False)[0]
    return torch.from_numpy(oriented)[None]


def labels_onto_grid(classes: np.ndarray, grid: GridRecord) -> torch.Tensor:
    """A class map of the original volume on ``grid``: reoriented, then resampled nearest-neighbour, same dtype."""
    oriented = np.ascontiguousarray(apply_orientation(classes, grid.transform))
    return _resample_classes(torch.from_numpy(oriented), grid.shape_out)


def invert_classes(classes: torch.Tensor | np.ndarray, grid: GridRecord) -> np.ndarray:
    """A class map on the prepared grid -> the original grid (nearest-neighbour), same dtype."""
    t = torch.as_tensor(np.asarray(classes))
    back = _resample_classes(t, grid.oriented_shape).numpy()
    return _unorient(back, grid)


@torch.no_grad()
def invert_probabilities(probs: torch.Tensor, grid: GridRecord, *, threshold: float | None = None
                         ) -> np.ndarray:
    """Class scores ``(K, X, Y, Z)`` on the prepared grid -> class map (uint8/int64) on the original grid.

    Each class is resampled trilinearly to the original size and the argmax kept as it goes, so memory
    stays at two original-size volumes whatever K is. With ``threshold`` (two classes only), class 1 wherever
    its resampled probability is ``>= threshold``.
    """
    k = probs.shape[0]
    dtype = torch.uint8 if k <= 256 else torch.int64
    if threshold is not None:
        if k != 2:
            raise ValueError(f"threshold needs two classes, got {k}")
        fg = probs[1].float().cpu()
        if tuple(fg.shape) != grid.oriented_shape:
            fg = F.interpolate(fg[None, None], size=grid.oriented_shape, mode="trilinear",
                               align_corners=False)[0, 0]
        return _unorient((fg >= threshold).to(dtype).numpy(), grid)
    if tuple(probs.shape[1:]) == grid.oriented_shape:
        return _unorient(probs.argmax(0).to(dtype).cpu().numpy(), grid)
    best = torch.full(grid.oriented_shape, -torch.inf)
    arg = torch.zeros(grid.oriented_shape, dtype=dtype)
    for c in range(k):
        up = F.interpolate(probs[c][None, None].float().cpu(), size=grid.oriented_shape, mode="trilinear",
                           align_corners=False)[0, 0]
        arg[up > best] = c
        torch.maximum(best, up, out=best)
    return _unorient(arg.numpy(), grid)


def invert_probability_maps(probs: torch.Tensor, grid: GridRecord) -> np.ndarray:
    """Class scores ``(K, X, Y, Z)`` on the prepared grid -> float16 ``(K, *original shape)`` on the original
    grid, class first.

    Each class is resampled trilinearly (as :func:`invert_probabilities` does before its argmax) and stored as
    float16 before the next one, so memory stays at the float16 result plus one float32 class.
    """
    out = np.empty((probs.shape[0], *grid.shape), dtype=np.float16)
    for c in range(probs.shape[0]):
        up = probs[c].float().cpu()
        if tuple(up.shape) != grid.oriented_shape:
            up = F.interpolate(up[None, None], size=grid.oriented_shape, mode="trilinear",
                               align_corners=False)[0, 0]
        out[c] = _unorient(up.numpy(), grid)
    return out


def _resample_classes(classes: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    if tuple(classes.shape) == tuple(shape):
        return classes
    dtype = classes.dtype
    out = F.interpolate(classes[None, None].float(), size=tuple(shape), mode="nearest-exact")[0, 0]
    return out.to(dtype)


def _check_volume(volume: Volume) -> None:
    if volume.array.ndim != 3:
        raise DataError(f"{volume.meta.get('path', '<array>')}: expected a 3D volume, got shape {volume.array.shape}")


def _source_axes(transform: np.ndarray) -> list[int]:
    """For each output axis of ``apply_orientation(arr, transform)``, the input axis it comes from."""
    src = [0, 0, 0]
    for in_axis, (out_axis, _) in enumerate(transform):
        src[int(out_axis)] = in_axis
    return src


def _unorient(array: np.ndarray, grid: GridRecord) -> np.ndarray:
    """Undo the reorientation of ``grid`` on an array of the oriented shape."""
    out = np.ascontiguousarray(apply_orientation(array, grid.inverse))
    if out.shape != grid.shape:
        raise RuntimeError(f"inverse orientation gave shape {out.shape}, expected {grid.shape}")
    return out
