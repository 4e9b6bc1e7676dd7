"""Reading and writing volumes: NIfTI (nibabel), MHA/NRRD (SimpleITK) and DICOM folders (:mod:`medseg.io.dicom`).

The in-memory :class:`~medseg.io.volume.Volume` and its geometry live in :mod:`medseg.io.volume`.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path
from typing import Any, cast

import numpy as np

from medseg.atomic import atomic_path
from medseg.dtypes import NIFTI_LABEL_DTYPES, smallest_int_dtype
from medseg.errors import DataError, OutputExistsError
from medseg.io.dicom import check_irregular, read_dicom_series
from medseg.io.resample import resample_sheared, shear_of
from medseg.io.volume import DEFAULT_MAX_BYTES, Volume, affine_from_lps, check_volume_size, input_kind

__all__ = [
    "read_volume",
    "PROBABILITY_STEP",
    "write_label_map",
    "write_probability_map",
    "write_volume",
]

logger = logging.getLogger(__name__)

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
#: deflate cannot expand data by more than ~1032:1, so a .gz claiming more is corrupt or hostile.
_GZIP_MAX_RATIO = 1100
#: voxel axes more than this many degrees from perpendicular make an affine sheared (float32 noise is far below)
_SHEAR_TOL_DEG = 0.01


def read_volume(
    path: str | Path,
    *,
    series_uid: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    irregular: str = "refuse",
) -> Volume:
    """Read a 3D volume from a NIfTI/MHA/MHD/NRRD file or a DICOM folder.

    Args:
        path: ``.nii``/``.nii.gz`` (nibabel), ``.mha``/``.mhd``/``.nrrd``/``.nhdr`` (SimpleITK),
            or a folder searched recursively for one DICOM series.
        series_uid: Pick this SeriesInstanceUID when the folder holds several volume series.
        max_bytes: Refuse files whose header claims a larger voxel array (default 4 GiB).
        irregular: What to do with geometry that is no regular grid: a DICOM series with uneven gaps, gantry tilt
            or a slice shifted in-plane, or a NIfTI whose affine shears the voxel axes. ``"refuse"`` (default):
            a :class:`DataError` naming the problem and this option; ``"resample"``: onto a regular grid
            (:mod:`medseg.io.resample`), stated in ``meta["resampled"]``.

    Returns:
        The volume; ``array`` keeps the stored dtype (scaled data become float). NIfTI volumes keep the header's
        ``qform``/``sform`` matrices and codes in ``meta``, so writers put back both as they came.

    Raises:
        DataError: Missing/unreadable/truncated file, unknown suffix, not 3D, NaN/Inf voxels,
            absurd size, an ambiguous/unusable DICOM folder, or irregular geometry with ``irregular="refuse"``.
        ConfigError: ``irregular`` is not ``"refuse"`` or ``"resample"``.
    """
    check_irregular(irregular)
    path = Path(path)
    kind = input_kind(path, "volume")
    if kind == "missing":
        raise DataError(f"{path}: no such file or folder")
    if kind == "dir":
        return read_dicom_series(path, series_uid=series_uid, max_bytes=max_bytes, irregular=irregular)
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
    return _regular(path, volume, irregular)


def _regular(path: Path, volume: Volume, irregular: str) -> Volume:
    """``volume`` itself when its voxel axes are perpendicular; else refused, or resampled on request."""
    shear = shear_of(volume.affine)
    if shear <= _SHEAR_TOL_DEG:
        return volume
    if irregular == "refuse":
        raise DataError(f"{path}: the affine shears the voxel axes by {shear:.2f} deg (no regular grid); "
                        "irregular='resample' (--irregular resample) resamples it onto an orthogonal grid")
    array, affine, report = resample_sheared(volume.array, volume.affine)
    logger.warning("%s: affine sheared by %.2f deg; resampled onto an orthogonal grid", path, shear)
    meta = {k: v for k, v in volume.meta.items() if k not in ("qform", "sform")}
    return Volume(array, affine, {**meta, "resampled": {"reason": f"affine sheared by {shear:.2f} deg", **report}})


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
        img = cast("nib.Nifti1Image", nib.load(str(path)))  # NIfTI-1, or NIfTI-2 (a subclass), for .nii(.gz)
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
        **_forms(hdr),
    }
    return _make_volume(path, np.asarray(array), affine, meta)


def _forms(header: Any) -> dict[str, np.ndarray]:
    """The header's qform and sform as stored (none when the quaternion fields are invalid: nibabel refuses them)."""
    try:
        return {"qform": np.asarray(header.get_qform(), float), "sform": np.asarray(header.get_sform(), float)}
    except (ValueError, np.linalg.LinAlgError):
        return {}


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

    A volume read from NIfTI on this grid (``volume.meta`` holds ``qform``/``sform`` and the affine is the one they
    give) gets both back as they came, with their codes, even when they disagree or the qform cannot hold the
    sform's shear. Otherwise ``volume.affine`` goes into both, with the codes of ``volume.meta``
    (``qform_code``/``sform_code``) or 1 (scanner). NIfTI stores the affine as float32.

    Raises:
        DataError: Unsupported suffix, missing parent folder or unsupported dtype.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    array = volume.array
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype.kind in "iu" and array.dtype.itemsize == 8:
        array = array.astype(_label_dtype(path, array))
    elif array.dtype.kind not in "iuf":
        raise DataError(f"{path}: cannot write dtype {array.dtype}; allowed bool, integer or float arrays")
    return _save_nifti(Path(path), array, _header_forms(volume.meta, volume.affine), overwrite)


def write_label_map(path: str | Path, labels: np.ndarray, reference: Volume, *, overwrite: bool = True) -> Path:
    """Write an integer label map on ``reference``'s grid as NIfTI, atomically.

    The dtype is the smallest that holds the values (uint8, uint16, int16, int32). The header's qform and sform
    are the reference's as read (see :func:`write_volume`), else the reference affine in both, with the codes of
    ``reference.meta`` (default 1).

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
    array = labels.astype(_label_dtype(path, labels), copy=False)
    return _save_nifti(Path(path), array, _header_forms(reference.meta, reference.affine), overwrite)


#: (qform, qform code, sform, sform code) of a NIfTI header
_Forms = tuple[np.ndarray, int, np.ndarray, int]


def _header_forms(meta: dict[str, Any], affine: np.ndarray) -> _Forms:
    """The qform and sform to write: those read (when they still describe ``affine``), else ``affine`` twice."""
    qcode, scode = int(meta.get("qform_code", 1) or 0), int(meta.get("sform_code", 1) or 0)
    qform, sform = meta.get("qform"), meta.get("sform")
    if qform is not None and sform is not None:
        qform, sform = np.asarray(qform, float), np.asarray(sform, float)
        read = sform if scode > 0 else qform  # the affine nibabel gives for this header
        if (scode > 0 or qcode > 0) and np.allclose(read, affine, atol=1e-5):
            return qform, qcode, sform, scode
    return affine, qcode or 1, affine, scode or 1


#: Probabilities are stored as uint16 counts of this step (NIfTI-1 has no float16): 2 bytes per value.
PROBABILITY_STEP = 1.0 / 65535.0


def write_probability_map(path: str | Path, probabilities: np.ndarray, reference: Volume, *,
                          overwrite: bool = True) -> Path:
    """Write per-class probabilities ``(K, *reference.shape)`` as a 4D NIfTI (X, Y, Z, K), class last, atomically.

    NIfTI-1 has no float16 type, so values are stored as uint16 with ``scl_slope`` 1/65535 (2 bytes per value;
    readers that apply the scaling -- nibabel's ``get_fdata``, SimpleITK, ITK-SNAP, 3D Slicer -- see floats in
    0..1, to within 7.7e-6). The affine and its codes are the reference's, as for :func:`write_label_map`.

    Raises:
        DataError: Shape not ``(K, *reference.shape)``, values outside 0..1 or not finite, unsupported suffix or
            missing parent folder.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    probs = np.asarray(probabilities)
    if probs.ndim != 4 or probs.shape[1:] != tuple(reference.shape):
        raise DataError(f"{path}: probabilities of shape {probs.shape}; allowed (K, *{tuple(reference.shape)})")
    stored = np.empty((*reference.shape, probs.shape[0]), dtype=np.uint16)
    for c in range(probs.shape[0]):  # one class at a time: no float32 copy of the whole map
        p = probs[c].astype(np.float32)
        if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1.0 + 1e-3:
            raise DataError(f"{path}: class {c} holds values outside 0..1; probabilities must lie in 0..1")
        stored[..., c] = np.rint(np.clip(p, 0.0, 1.0) * 65535.0).astype(np.uint16)
    return _save_nifti(Path(path), stored, _header_forms(reference.meta, reference.affine), overwrite,
                       slope=PROBABILITY_STEP)


def _label_dtype(path: str | Path, labels: np.ndarray) -> np.dtype:
    if labels.size == 0:
        return np.dtype(np.uint8)
    low, high = int(labels.min()), int(labels.max())
    dtype = smallest_int_dtype(low, high, NIFTI_LABEL_DTYPES)
    if dtype is None:
        raise DataError(f"{path}: label values span {low}..{high}; allowed values that fit int32")
    return dtype


def _save_nifti(path: Path, array: np.ndarray, forms: _Forms, overwrite: bool, *, slope: float = 1.0) -> Path:
    import nibabel as nib

    name = path.name.lower()
    if not name.endswith(_NIFTI_SUFFIXES):
        raise DataError(f"{path}: cannot write this file type; allowed {', '.join(_NIFTI_SUFFIXES)}")
    if not path.parent.is_dir():
        raise DataError(f"{path}: parent folder {path.parent} does not exist; create it first")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: file exists; pass overwrite=True to replace it")
    qform, qcode, sform, scode = forms
    img = nib.Nifti1Image(array, sform if scode > 0 else qform)
    img.set_qform(qform, code=qcode)
    img.set_sform(sform, code=scode)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_slope_inter(slope, 0.0)
    suffix = ".nii.gz" if name.endswith(".gz") else ".nii"
    with atomic_path(path, suffix=".tmp" + suffix) as tmp:
        nib.save(img, tmp)
    logger.debug("wrote %s %s %s", path, array.shape, array.dtype)
    return path


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
