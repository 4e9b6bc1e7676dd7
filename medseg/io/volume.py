"""A 3D image on a world grid (:class:`Volume`) and the geometry helpers every reader and writer shares.

A :class:`Volume` holds a voxel array indexed ``[i, j, k]`` (nibabel order) and a 4x4 affine that maps
``(i, j, k, 1)`` to RAS+ world millimetres. ITK/SimpleITK geometry (LPS) is available as properties.
This module imports no reader, so the NIfTI/ITK readers (:mod:`medseg.io.volume_io`) and the DICOM reader
(:mod:`medseg.io.dicom`) can both build on it without importing each other.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import DataError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "LPS_RAS",
    "VOLUME_SUFFIXES",
    "Volume",
    "affine_from_lps",
    "check_volume_size",
    "input_kind",
    "split_channel",
    "volume_case_name",
]

#: File suffixes read as volumes (NIfTI by nibabel, the others by SimpleITK).
VOLUME_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
#: Largest voxel array (bytes) a reader allocates unless told otherwise.
DEFAULT_MAX_BYTES = 4 * 2**30
_MAX_VOXELS = 2**31
LPS_RAS = np.diag([-1.0, -1.0, 1.0])



@dataclass(frozen=True)
class Volume:
    """A 3D image on a world grid.

    Attributes:
        array: Voxels, shape ``(I, J, K)``, indexed ``[i, j, k]`` like nibabel (not SimpleITK's ``[k, j, i]``).
        affine: 4x4 float64, ``(i, j, k, 1)`` -> RAS+ world mm (nibabel convention).
        meta: At least ``"path"`` and ``"format"``; DICOM adds ``"series_uid"``, ``"modality"``,
            ``"description"``; NIfTI adds ``"qform_code"`` and ``"sform_code"``.

    Example:
        >>> v = Volume(np.zeros((2, 3, 4), np.int16), np.diag([-2.0, -2.0, 3.0, 1.0]))
        >>> v.spacing, v.origin_lps, v.shape
        ((2.0, 2.0, 3.0), (0.0, 0.0, 0.0), (2, 3, 4))
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.array, np.ndarray) or self.array.ndim != 3:
            raise ValueError(f"Volume.array must be a 3D numpy array, got {_describe(self.array)}")
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise ValueError(f"Volume.affine must be a finite 4x4 matrix, got shape {affine.shape}")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValueError("Volume.affine is singular (zero voxel size or collinear axes)")
        object.__setattr__(self, "affine", affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        i, j, k = self.array.shape  # 3D, checked in __post_init__
        return (int(i), int(j), int(k))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k."""
        s = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(s[0]), float(s[1]), float(s[2]))

    @property
    def origin_lps(self) -> tuple[float, float, float]:
        """World position (LPS mm) of voxel (0, 0, 0), as SimpleITK ``GetOrigin``."""
        o = LPS_RAS @ self.affine[:3, 3] + 0.0  # + 0.0 turns -0.0 into 0.0
        return (float(o[0]), float(o[1]), float(o[2]))

    @property
    def direction_lps(self) -> np.ndarray:
        """3x3 LPS direction cosines, columns = i, j, k axes (SimpleITK ``GetDirection`` reshaped 3x3)."""
        direction: np.ndarray = LPS_RAS @ (self.affine[:3, :3] / np.asarray(self.spacing))
        return direction


def affine_from_lps(
    origin: np.ndarray | tuple[float, ...],
    spacing: np.ndarray | tuple[float, ...],
    direction: np.ndarray,
) -> np.ndarray:
    """RAS+ affine from ITK-style LPS origin, spacing and 3x3 direction (columns = axes)."""
    affine = np.eye(4)
    affine[:3, :3] = LPS_RAS @ np.asarray(direction, float).reshape(3, 3) @ np.diag(np.asarray(spacing, float))
    affine[:3, 3] = LPS_RAS @ np.asarray(origin, float)
    return affine


def check_volume_size(path: Path | str, shape: tuple[int, ...], itemsize: int, max_bytes: int) -> None:
    """Raise :class:`DataError` before allocating an absurdly large array claimed by a header."""
    voxels = int(np.prod([int(n) for n in shape], dtype=object))
    nbytes = voxels * int(itemsize)
    if voxels > _MAX_VOXELS or nbytes > max_bytes:
        raise DataError(
            f"{path}: header claims {'x'.join(str(n) for n in shape)} voxels ({nbytes / 2**30:.1f} GiB); "
            f"allowed at most {_MAX_VOXELS} voxels and max_bytes={max_bytes} bytes"
        )


def input_kind(path: Path, what: str = "file") -> str:
    """``"file"`` for a regular file, ``"dir"`` for a folder, ``"missing"``; anything else raises a clear DataError.

    Refuses FIFOs, sockets and devices (reading them can block forever), symlink loops, names too long and
    unreadable paths before any reader opens them.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return "missing"
        reason = "symlink loop" if err.errno == errno.ELOOP else err.strerror or type(err).__name__
        raise DataError(f"{path}: cannot read {what}: {reason}") from None
    if stat.S_ISDIR(mode):
        return "dir"
    if not stat.S_ISREG(mode):
        kind = "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device or special file"
        raise DataError(f"{path}: is a {kind}, not a regular file; allowed a {what} file")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: cannot read {what}: permission denied")
    return "file"



def volume_case_name(path: str | Path) -> str:
    """File name without its volume suffix (``case_001.nii.gz`` -> ``case_001``).

    Example:
        >>> volume_case_name("imagesTr/la_003_0000.nii.gz")
        'la_003_0000'
    """
    name = Path(path).name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def split_channel(path: str | Path) -> tuple[str, int | None]:
    """Case name and nnU-Net channel index of a volume file (``case_0001.nii.gz`` -> ``("case", 1)``); a name
    without the 4-digit channel suffix gives ``(name, None)``.

    Example:
        >>> split_channel("imagesTs/la_003_0001.nii.gz"), split_channel("ct.mha")
        (('la_003', 1), ('ct', None))
    """
    stem = volume_case_name(path)
    if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit() and stem[-4:].isascii():
        return stem[:-5], int(stem[-4:])
    return stem, None


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.ndim}D array of shape {value.shape}"
    return type(value).__name__
