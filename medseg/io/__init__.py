"""Volume I/O: NIfTI, MHA/NRRD, DICOM series and DICOM-SEG. Knows file formats only."""

from __future__ import annotations

from medseg.io.dicom import SeriesInfo, SkippedFile, list_series, list_skipped, read_dicom_series
from medseg.io.dicom_seg import read_dicom_seg, read_dicom_seg_segments, write_dicom_seg
from medseg.io.volume import Volume
from medseg.io.volume_io import read_volume, write_label_map, write_volume

__all__ = [
    "SeriesInfo",
    "SkippedFile",
    "Volume",
    "list_series",
    "list_skipped",
    "read_dicom_seg",
    "read_dicom_seg_segments",
    "read_dicom_series",
    "read_volume",
    "write_dicom_seg",
    "write_label_map",
    "write_volume",
]
