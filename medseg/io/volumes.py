"""3D volumes in memory and on disk: NIfTI (nibabel), MHA/NRRD (SimpleITK), DICOM folders.

A :class:`Volume` holds a voxel array indexed ``[i, j, k]`` (nibabel order) and a 4x4 affine that maps
``(i, j, k, 1)`` to RAS+ world millimetres. ITK/SimpleITK geometry (LPS) is available as properties.
"""

from __future__ import annotations

import errno
import gzip
import logging
import os
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.atomic import atomic_path
from medseg.errors import DataError, OutputExistsError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "Volume",
    "check_volume_size",
    "input_kind",
    "read_volume",
    "write_label_map",
    "write_volume",
]

logger = logging.getLogger(__name__)

#: Largest voxel array (bytes) a reader allocates unless told otherwise.
DEFAULT_MAX_BYTES = 4 * 2**30
_MAX_VOXELS = 2**31
_LPS_RAS = np.diag([-1.0, -1.0, 1.0])
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
#: deflate cannot expand data by more than ~1032:1, so a .gz claiming more is corrupt or hostile.
_GZIP_MAX_RATIO = 1100


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
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.array.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k."""
        s = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(s[0]), float(s[1]), float(s[2]))

    @property
    def origin_lps(self) -> tuple[float, float, float]:
        """World position (LPS mm) of voxel (0, 0, 0), as SimpleITK ``GetOrigin``."""
        o = _LPS_RAS @ self.affine[:3, 3] + 0.0  # + 0.0 turns -0.0 into 0.0
        return (float(o[0]), float(o[1]), float(o[2]))

    @property
    def direction_lps(self) -> np.ndarray:
        """3x3 LPS direction cosines, columns = i, j, k axes (SimpleITK ``GetDirection`` reshaped 3x3)."""
        return _LPS_RAS @ (self.affine[:3, :3] / np.asarray(self.spacing))


def affine_from_lps(
    origin: np.ndarray | tuple[float, ...],
    spacing: np.ndarray | tuple[float, ...],
    direction: np.ndarray,
) -> np.ndarray:
    """RAS+ affine from ITK-style LPS origin, spacing and 3x3 direction (columns = axes)."""
    affine = np.eye(4)
    affine[:3, :3] = _LPS_RAS @ np.asarray(direction, float).reshape(3, 3) @ np.diag(np.asarray(spacing, float))
    affine[:3, 3] = _LPS_RAS @ np.asarray(origin, float)
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


def read_volume(path: str | Path, *, series_uid: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> Volume:
    """Read a 3D volume from a NIfTI/MHA/MHD/NRRD file or a DICOM folder.

    Args:
        path: ``.nii``/``.nii.gz`` (nibabel), ``.mha``/``.mhd``/``.nrrd``/``.nhdr`` (SimpleITK),
            or a folder searched recursively for one DICOM series.
        series_uid: Pick this SeriesInstanceUID when the folder holds several volume series.
        max_bytes: Refuse files whose header claims a larger voxel array (default 4 GiB).

    Returns:
        The volume; ``array`` keeps the stored dtype (scaled data become float).

    Raises:
        DataError: Missing/unreadable/truncated file, unknown suffix, not 3D, NaN/Inf voxels,
            absurd size, or an ambiguous/unusable DICOM folder.
    """
    path = Path(path)
    kind = input_kind(path, "volume")
    if kind == "missing":
        raise DataError(f"{path}: no such file or folder")
    if kind == "dir":
        from medseg.io.dicom import read_dicom_series  # noqa: PLC0415 (dicom imports this module)

        return read_dicom_series(path, series_uid=series_uid, max_bytes=max_bytes)
    if series_uid is not None:
        raise DataError(
            f"{path}: series_uid={series_uid!r} given but the path is a file; allowed only for DICOM folders"
        )
    name = path.name.lower()
    if name.endswith(_NIFTI_SUFFIXES):
        volume = _read_nifti(path, max_bytes)
    elif name.endswith(_ITK_SUFFIXES):
        volume = _read_itk(path, max_bytes)
    else:
        raise DataError(
            f"{path}: unknown volume file type; allowed {', '.join(_NIFTI_SUFFIXES + _ITK_SUFFIXES)} or a DICOM folder"
        )
    _check_finite(path, volume.array)
    return volume


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


def _make_volume(path: Path, array: np.ndarray, affine: np.ndarray, meta: dict[str, Any]) -> Volume:
    """Build the Volume, turning header problems (zero size, non-real dtype, bad geometry) into DataError."""
    if 0 in array.shape:
        raise DataError(f"{path}: image has a zero-sized dimension (shape {array.shape}); allowed sizes >= 1")
    if array.dtype.kind not in "biuf":
        raise DataError(f"{path}: voxel type {array.dtype} is not supported; allowed integer or real float voxels")
    try:
        return Volume(array, affine, meta)
    except ValueError as err:
        raise DataError(f"{path}: unusable geometry in the header: {err}") from None


def _read_nifti(path: Path, max_bytes: int) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises many types for corrupt headers
        raise DataError(f"{path}: not a readable NIfTI file ({type(err).__name__}: {err})") from err
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise DataError(f"{path}: image has shape {img.shape} ({len(img.shape)}D); allowed 3D (or 4D with last dim 1)")
    if min(shape) < 1:
        raise DataError(f"{path}: header gives image shape {shape}; allowed sizes >= 1 in every dimension")
    if img.get_data_dtype().kind not in "biuf":
        raise DataError(
            f"{path}: voxel type {img.get_data_dtype()} is not supported; allowed integer or real float voxels"
        )
    check_volume_size(path, shape, img.get_data_dtype().itemsize, max_bytes)
    _check_file_can_hold(path, shape, img.get_data_dtype().itemsize)
    try:
        array = np.asanyarray(img.dataobj).reshape(shape, order="F")
        affine = np.asarray(img.affine, dtype=np.float64)
        if path.name.lower().endswith(".gz"):
            _verify_gzip(path)
    except (OSError, EOFError, ValueError, OverflowError, zlib.error, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: voxel data truncated or corrupt ({type(err).__name__}: {err})") from err
    hdr = img.header
    meta = {
        "path": str(path),
        "format": "nifti",
        "qform_code": int(hdr["qform_code"]),
        "sform_code": int(hdr["sform_code"]),
    }
    return _make_volume(path, np.asarray(array), affine, meta)


def _verify_gzip(path: Path) -> None:
    """Read the gzip stream to its end so a flipped bit fails the CRC check instead of giving wrong voxels
    (nibabel stops reading after the voxels it needs, before the CRC trailer)."""
    with gzip.open(path, "rb") as fh:
        while fh.read(1 << 22):
            pass


def _check_file_can_hold(path: Path, shape: tuple[int, ...], itemsize: int) -> None:
    nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize
    size = path.stat().st_size
    if path.name.lower().endswith(".gz") and nbytes > _GZIP_MAX_RATIO * size + 2**20:
        raise DataError(
            f"{path}: header claims {nbytes} bytes of voxels but the {size}-byte gzip file cannot hold that; "
            "allowed at most ~1000x compression"
        )
    if not path.name.lower().endswith(".gz") and nbytes > size:
        raise DataError(
            f"{path}: header claims {nbytes} bytes of voxels but the file has only {size} bytes (truncated)"
        )


def _read_itk(path: Path, max_bytes: int) -> Volume:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise DataError(f"{path}: not a readable image file ({_first_line(err)})") from err
    size = tuple(reader.GetSize())
    if reader.GetDimension() != 3 and not (reader.GetDimension() == 4 and size[3] == 1):
        raise DataError(f"{path}: image has size {size} ({reader.GetDimension()}D); allowed 3D")
    if reader.GetNumberOfComponents() != 1:
        raise DataError(f"{path}: {reader.GetNumberOfComponents()} components per voxel; allowed 1 (scalar image)")
    itemsize = np.dtype(sitk.GetArrayViewFromImage(sitk.Image([1] * 3, reader.GetPixelID())).dtype).itemsize
    if min(size) < 1:
        raise DataError(f"{path}: image has a zero-sized dimension (size {size}); allowed sizes >= 1")
    check_volume_size(path, size[:3], itemsize, max_bytes)
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise DataError(f"{path}: voxel data truncated or corrupt ({_first_line(err)})") from err
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    affine = affine_from_lps(image.GetOrigin(), image.GetSpacing(), np.reshape(image.GetDirection(), (3, 3)))
    fmt = "nrrd" if path.name.lower().endswith((".nrrd", ".nhdr")) else "mha"
    return _make_volume(path, array, affine, {"path": str(path), "format": fmt})


def _check_finite(path: Path | str, array: np.ndarray) -> None:
    if np.issubdtype(array.dtype, np.floating):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise DataError(f"{path}: {bad} NaN/Inf voxels of {array.size}; allowed only finite values")


def write_volume(path: str | Path, volume: Volume, *, overwrite: bool = True) -> Path:
    """Write ``volume`` as NIfTI-1 (``.nii`` or ``.nii.gz``), atomically.

    ``volume.affine`` goes into both qform and sform; their codes come from ``volume.meta``
    (``qform_code``/``sform_code``) or default to 1 (scanner). NIfTI stores the affine as float32.

    Raises:
        DataError: Unsupported suffix, missing parent folder or unsupported dtype.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    array = volume.array
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype.kind in "iu" and array.dtype.itemsize == 8:
        array = array.astype(_smallest_int_dtype(path, array))
    elif array.dtype.kind not in "iuf":
        raise DataError(f"{path}: cannot write dtype {array.dtype}; allowed bool, integer or float arrays")
    codes = (int(volume.meta.get("qform_code", 1) or 1), int(volume.meta.get("sform_code", 1) or 1))
    return _save_nifti(Path(path), array, volume.affine, codes, overwrite)


def write_label_map(path: str | Path, labels: np.ndarray, reference: Volume, *, overwrite: bool = True) -> Path:
    """Write an integer label map on ``reference``'s grid as NIfTI, atomically.

    The dtype is the smallest that holds the values (uint8, uint16, int16, int32). The reference affine
    goes into both qform and sform, with the codes of ``reference.meta`` (default 1).

    Raises:
        DataError: Shape differs from ``reference.shape``, non-integer labels, values beyond int32,
            unsupported suffix or missing parent folder.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    labels = np.asarray(labels)
    if labels.shape != reference.shape:
        raise DataError(
            f"{path}: label map shape {labels.shape} differs from reference {reference.meta.get('path', '')} "
            f"shape {reference.shape}; allowed only the reference shape"
        )
    if labels.dtype.kind not in "biu":
        raise DataError(f"{path}: label map dtype {labels.dtype}; allowed integer or bool labels")
    array = labels.astype(_smallest_int_dtype(path, labels), copy=False)
    meta = reference.meta
    codes = (int(meta.get("qform_code", 1) or 1), int(meta.get("sform_code", 1) or 1))
    return _save_nifti(Path(path), array, reference.affine, codes, overwrite)


def _smallest_int_dtype(path: str | Path, labels: np.ndarray) -> np.dtype:
    if labels.size == 0:
        return np.dtype(np.uint8)
    low, high = int(labels.min()), int(labels.max())
    for dtype in (np.uint8, np.uint16, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    raise DataError(f"{path}: label values span {low}..{high}; allowed values that fit int32")


def _save_nifti(path: Path, array: np.ndarray, affine: np.ndarray, codes: tuple[int, int], overwrite: bool) -> Path:
    import nibabel as nib

    name = path.name.lower()
    if not name.endswith(_NIFTI_SUFFIXES):
        raise DataError(f"{path}: cannot write this file type; allowed {', '.join(_NIFTI_SUFFIXES)}")
    if not path.parent.is_dir():
        raise DataError(f"{path}: parent folder {path.parent} does not exist; create it first")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: file exists; pass overwrite=True to replace it")
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=codes[0])
    img.set_sform(affine, code=codes[1])
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_slope_inter(1.0, 0.0)
    suffix = ".nii.gz" if name.endswith(".gz") else ".nii"
    with atomic_path(path, suffix=".tmp" + suffix) as tmp:
        nib.save(img, tmp)
    logger.debug("wrote %s %s %s", path, array.shape, array.dtype)
    return path


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.ndim}D array of shape {value.shape}"
    return type(value).__name__


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
