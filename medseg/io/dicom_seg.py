"""DICOM Segmentation objects: write a label map as DICOM-SEG (highdicom), read one back onto a grid.

Class ids map to segment numbers 1..N in increasing class-id order; each segment's label is the
class name, so :func:`read_dicom_seg` with the same ``class_names`` gives back the original ids.
Reading places every frame by its ImagePositionPatient on the reference grid (not by frame order),
so sparse SEGs (empty frames omitted) and any frame order work.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medseg.atomic import atomic_path
from medseg.errors import DataError, OutputExistsError
from medseg.io.dicom import read_dicom_series, select_series
from medseg.io.resample import labels_on_slices
from medseg.io.volume import Volume
from medseg.io.volume_io import read_volume

__all__ = ["read_dicom_seg", "read_dicom_seg_segments", "write_dicom_seg"]

logger = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def write_dicom_seg(
    path: str | Path,
    labels: np.ndarray,
    source: Volume | str | Path,
    class_names: Mapping[int, str],
    *,
    series_description: str = "medseg segmentation",
    series_number: int = 300,
    algorithm_name: str = "medseg",
    algorithm_version: str = "0",
    manufacturer: str = "medseg",
    overwrite: bool = True,
) -> Path:
    """Write ``labels`` (on the grid of a DICOM series) as a BINARY DICOM-SEG that references the series.

    Args:
        path: Output ``.dcm`` file.
        labels: Integer label map, shape ``(I, J, K)`` equal to the source volume's shape; 0 = background.
        source: The DICOM Volume the labels were made on (from :func:`read_dicom_series`) or its folder. For a
            series read with ``irregular="resample"`` the labels lie on the regular grid; the SEG's frames still
            lie on the original slices (each pixel takes the label of the nearest grid node), so they overlay the
            series as it is stored.
        class_names: Label value -> segment label, e.g. ``{1: "liver"}``. Every non-zero value must be a key.

    Returns:
        ``path``.

    Raises:
        DataError: Shape mismatch, unnamed label values, a source that is not a DICOM series.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: file exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise DataError(f"{path}: parent folder {path.parent} does not exist; create it first")
    datasets, shape = _source_headers(source)
    labels = np.asarray(labels)
    if isinstance(source, Volume) and "slice_geometry" in source.meta:
        if labels.shape != source.shape:
            raise DataError(f"{path}: label map shape {labels.shape} differs from the resampled grid {source.shape}")
        geo = source.meta["slice_geometry"]
        labels = labels_on_slices(labels, source.affine, np.asarray(geo["positions_lps"]),
                                  np.asarray(geo["direction_lps"]), tuple(geo["pixel_spacing"]), tuple(geo["size"]))
    if labels.shape != shape:
        raise DataError(f"{path}: label map shape {labels.shape} differs from source series shape {shape}")
    if labels.dtype.kind not in "biu":
        raise DataError(f"{path}: label map dtype {labels.dtype}; allowed integer or bool labels")
    present = {int(v) for v in np.unique(labels)} - {0}
    unnamed = sorted(present - set(class_names))
    if unnamed:
        raise DataError(f"{path}: label values {unnamed} have no entry in class_names {dict(class_names)}")
    ids = sorted(int(c) for c in class_names if int(c) != 0)
    lut = np.zeros(max(ids + [int(labels.max()), 0]) + 1, dtype=np.uint16)
    lut[ids] = np.arange(1, len(ids) + 1)
    segments = lut[labels.astype(np.int64)].transpose(2, 1, 0)  # [k, row, col] like the source frames
    frames = source.meta.get("frames") if isinstance(source, Volume) else None
    if frames is not None:  # one enhanced multi-frame source: the SEG's frames follow the source's frame order
        in_file_order = np.empty_like(segments)
        in_file_order[np.asarray(frames)] = segments
        segments = in_file_order
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.cid7162.ArtificialIntelligence, version=algorithm_version
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=str(class_names[c])[:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for n, c in enumerate(ids, 1)
    ]
    try:
        seg = _segmentation(hd, datasets, segments, ids, descriptions, series_number, manufacturer,
                            algorithm_name, algorithm_version, series_description)
    except (AttributeError, ValueError, TypeError, KeyError) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise DataError(f"{path}: cannot build a DICOM-SEG from this source series: {reason}") from None
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path


def _segmentation(hd: Any, datasets: list[Any], segments: np.ndarray, ids: list[int], descriptions: list[Any],
                  series_number: int, manufacturer: str, algorithm_name: str, algorithm_version: str,
                  series_description: str) -> Any:
    from pydicom.uid import generate_uid

    return hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=segments if len(ids) > 1 else segments.astype(bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=algorithm_name,
        software_versions=algorithm_version,
        device_serial_number="0",
        series_description=series_description,
    )


#: Patient and study attributes of type 2 that a SEG copies from its source (highdicom needs them present).
_TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _source_headers(source: Volume | str | Path) -> tuple[list[Any], tuple[int, int, int]]:
    """Headers of the source slices in k order (copies, missing UIDs filled in) and the volume shape."""
    import pydicom
    from pydicom.uid import generate_uid

    if isinstance(source, Volume):
        files = source.meta.get("files")
        if source.meta.get("format") != "dicom" or not files:
            raise DataError(
                f"{source.meta.get('path', 'volume')}: DICOM-SEG needs a DICOM source volume "
                f"(format {source.meta.get('format')!r}); allowed a volume from read_dicom_series or its folder"
            )
        if source.meta.get("frames") is not None:  # the frames of one enhanced multi-frame file
            files = list(dict.fromkeys(files))
        datasets: list[pydicom.Dataset] = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        shape = source.shape
        if "slice_geometry" in source.meta:  # resampled: the SEG's frames lie on the original slices
            rows, cols = source.meta["slice_geometry"]["size"]
            shape = (int(cols), int(rows), len(source.meta["slice_geometry"]["positions_lps"]))
    else:
        _, info = select_series(source)
        if info.headers[0].frame is not None:
            raise DataError(f"{source}: an enhanced multi-frame series; pass the Volume read from it "
                            "(read_dicom_series) as the source")
        datasets = [h.dataset for h in info.headers]
        shape = info.size
    datasets = [ds.copy() for ds in datasets]
    seed = [str(datasets[0].get("FrameOfReferenceUID", "")), str(datasets[0].get("SeriesDescription", ""))]
    fills = {
        "StudyInstanceUID": generate_uid(entropy_srcs=["study", *seed]),
        "SeriesInstanceUID": generate_uid(entropy_srcs=["series", *seed]),
    }
    filled: set[str] = set()
    for ds in datasets:
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet  # empty means the default repertoire; highdicom refuses the empty value
        for key in _TYPE2_PATIENT_STUDY:  # type 2: must be present, may be empty; a SEG copies them
            if key not in ds:
                ds.setdefault(key, None)
                filled.add(key)
        if not ds.get("SOPClassUID"):
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        if not ds.get("SOPInstanceUID"):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        for key, uid in fills.items():
            if not ds.get(key):
                filled.add(key)
                setattr(ds, key, uid)
    if filled:
        logger.warning("source series has no %s; the SEG gets derived UIDs and empty type-2 attributes",
                       "/".join(sorted(filled)))
    return datasets, (int(shape[0]), int(shape[1]), int(shape[2]))


def read_dicom_seg_segments(path: str | Path) -> dict[int, str]:
    """Segment number -> segment label of a DICOM-SEG file."""
    ds = _read_seg(Path(path), pixels=False)
    return {int(s.SegmentNumber): str(s.get("SegmentLabel", "")) for s in ds.SegmentSequence}


def read_dicom_seg(
    path: str | Path,
    reference: Volume | str | Path,
    *,
    class_names: Mapping[int, str] | None = None,
) -> np.ndarray:
    """Read a DICOM-SEG as a label map on ``reference``'s grid.

    Args:
        path: The SEG file (BINARY or FRACTIONAL; fractional frames are thresholded at 50 %).
        reference: Volume (or folder/file to read one from) whose grid the SEG frames lie on.
        class_names: If given, value -> segment label as passed to :func:`write_dicom_seg`; segments are
            written with these values. Otherwise each voxel holds its segment number.

    Returns:
        Label map, shape ``reference.shape``, uint8 (or uint16 for values > 255).

    Raises:
        DataError: Not a SEG, different frame of reference, frames off the reference grid, overlapping
            segments, or segment labels missing from ``class_names``.
    """
    path = Path(path)
    ref = reference if isinstance(reference, Volume) else _read_reference(reference)
    ds = _read_seg(path, pixels=True)
    seg_for = ref.meta.get("frame_of_reference_uid")
    if seg_for and ds.get("FrameOfReferenceUID") and str(ds.FrameOfReferenceUID) != seg_for:
        raise DataError(
            f"{path}: FrameOfReferenceUID {ds.FrameOfReferenceUID} differs from the reference's {seg_for}; "
            "allowed a SEG made on the reference series"
        )
    values = _segment_values(path, ds, class_names)
    frames = ds.pixel_array.reshape(-1, int(ds.Rows), int(ds.Columns))
    if str(ds.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL":
        frames = frames >= (float(ds.get("MaximumFractionalValue", 255)) / 2)
    dtype = np.uint8 if max(values.values(), default=0) <= 255 else np.uint16
    out = np.zeros(ref.shape, dtype=dtype)
    ks = _frame_slices(path, ds, ref)
    for f, k in enumerate(ks):
        mask = frames[f].T != 0  # frame [row, col] -> [i, j]
        value = values[_frame_segment(ds, f)]
        plane = out[:, :, k]
        clash = mask & (plane != 0) & (plane != value)
        if clash.any():
            raise DataError(
                f"{path}: segments overlap on {int(clash.sum())} voxels of slice {k}; "
                "allowed only non-overlapping segments for a label map"
            )
        plane[mask] = value
    return out


def _read_reference(reference: str | Path) -> Volume:
    ref_path = Path(reference)
    return read_dicom_series(ref_path) if ref_path.is_dir() else read_volume(ref_path)


def _read_seg(path: Path, *, pixels: bool) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
    except (InvalidDicomError, OSError, EOFError, ValueError) as err:
        raise DataError(f"{path}: not a readable DICOM file ({err}); allowed a DICOM-SEG file") from err
    sop = str(ds.get("SOPClassUID", ""))
    if sop != SEG_SOP_CLASS:
        raise DataError(f"{path}: SOP class {sop or 'missing'}; allowed Segmentation Storage ({SEG_SOP_CLASS})")
    return ds


def _segment_values(path: Path, ds: Any, class_names: Mapping[int, str] | None) -> dict[int, int]:
    numbers = {int(s.SegmentNumber): str(s.get("SegmentLabel", "")) for s in ds.SegmentSequence}
    if class_names is None:
        return {n: n for n in numbers}
    by_name = {str(name): int(value) for value, name in class_names.items()}
    missing = sorted({label for label in numbers.values() if label not in by_name})
    if missing:
        raise DataError(f"{path}: segment labels {missing} are not in class_names {dict(class_names)}")
    return {n: by_name[label] for n, label in numbers.items()}


def _frame_segment(ds: Any, f: int) -> int:
    item = ds.PerFrameFunctionalGroupsSequence[f]
    if "SegmentIdentificationSequence" not in item:
        item = ds.SharedFunctionalGroupsSequence[0]
    return int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)


def _functional(ds: Any, f: int, seq: str) -> Any:
    item = ds.PerFrameFunctionalGroupsSequence[f]
    if seq in item:
        return item[seq].value[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and seq in shared[0]:
        return shared[0][seq].value[0]
    return None


def _frame_slices(path: Path, ds: Any, ref: Volume) -> list[int]:
    """Reference slice index k of every frame, checking each frame lies exactly on the reference grid."""
    if int(ds.Columns) != ref.shape[0] or int(ds.Rows) != ref.shape[1]:
        raise DataError(
            f"{path}: frames are {ds.Columns}x{ds.Rows} pixels; allowed the reference's {ref.shape[0]}x{ref.shape[1]}"
        )
    to_index = np.linalg.inv(ref.direction_lps @ np.diag(ref.spacing))
    origin = np.asarray(ref.origin_lps)
    ks = []
    for f in range(int(ds.get("NumberOfFrames", 1))):
        plane = _functional(ds, f, "PlaneOrientationSequence")
        pos = _functional(ds, f, "PlanePositionSequence")
        if plane is None or pos is None:
            raise DataError(f"{path}: frame {f + 1} has no plane position/orientation; cannot place it on a grid")
        iop = np.array([float(v) for v in plane.ImageOrientationPatient])
        if not (np.allclose(iop[:3], ref.direction_lps[:, 0], atol=1e-4)
                and np.allclose(iop[3:], ref.direction_lps[:, 1], atol=1e-4)):  # fmt: skip
            raise DataError(
                f"{path}: frame {f + 1} orientation {iop.tolist()} differs from the reference's rows/columns"
            )
        idx = to_index @ (np.array([float(v) for v in pos.ImagePositionPatient]) - origin)
        k = int(round(idx[2]))
        if np.abs(idx[:2]).max() > 0.05 or abs(idx[2] - k) > 0.05 or not 0 <= k < ref.shape[2]:
            raise DataError(
                f"{path}: frame {f + 1} at voxel index {np.round(idx, 3).tolist()} is not on a slice of the reference "
                f"grid {ref.shape}; allowed a SEG made on the reference series"
            )
        ks.append(k)
    return ks
