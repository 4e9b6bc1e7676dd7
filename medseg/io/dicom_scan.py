"""Find DICOM series in a folder: read headers, group by series and file kind, say why a group is no volume.

Only headers are read here (large values such as uncompressed pixel data are deferred, i.e. left on disk until
touched); :mod:`medseg.io.dicom` reads the pixels. pydicom's warnings meanwhile go to the debug log (``-v``): the
reason a file is skipped says what matters.

Reading one file's header and its skip reason: :mod:`medseg.io.dicom_headers`; grouping into series:
:mod:`medseg.io.dicom_grouping`; whether a group is a (regular) volume: :mod:`medseg.io.dicom_series_checks`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from medseg.errors import DataError
from medseg.io.dicom_grouping import group_series
from medseg.io.dicom_headers import DicomHeader as DicomHeader  # re-exported: medseg.io.dicom reads it here
from medseg.io.dicom_headers import SkippedFile, read_headers
from medseg.io.dicom_series_checks import SeriesInfo

__all__ = ["SeriesInfo", "SkippedFile", "list_series", "list_skipped", "scan_dicom"]

logger = logging.getLogger(__name__)


@contextmanager
def _pydicom_warnings_to_debug() -> Iterator[None]:
    """While headers are read, pydicom's warnings (its log records and Python warnings, e.g. "Expected implicit VR,
    but found explicit VR") go to this module's debug log, each message once: what matters about a file is in the
    reason it is skipped, and ``-v`` shows the rest."""
    heard: dict[str, None] = {}  # insertion-ordered set

    class _Hold(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.levelno < logging.WARNING:
                return True
            heard.setdefault(record.getMessage())
            return False

    hold, pydicom_log = _Hold(), logging.getLogger("pydicom")
    pydicom_log.addFilter(hold)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for warning in caught:
            heard.setdefault(str(warning.message))
    finally:
        pydicom_log.removeFilter(hold)
    for message in heard:
        logger.debug("pydicom, while reading DICOM headers: %s", message)


def _files_in(source: Path | str | Sequence[Path | str]) -> tuple[str, list[Path]]:
    if isinstance(source, (str, Path)):
        folder = Path(source)
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder; allowed a folder of DICOM files")
        files = sorted(Path(root) / name for root, _, names in os.walk(folder) for name in names)
        if not files:
            raise DataError(f"{folder}: folder is empty; allowed a folder holding one DICOM series")
        return str(folder), files
    files = [Path(p) for p in source]
    if not files:
        raise DataError("no DICOM files given; allowed a folder or a non-empty list of files")
    return f"{files[0].parent} ({len(files)} files)", files


def scan_dicom(source: Path | str | Sequence[Path | str]) -> tuple[str, list[SeriesInfo], list[SkippedFile]]:
    """Read all headers under ``source`` (folder, recursive, or list of files) and group them.

    Returns:
        (name of the source for messages, series groups, skipped files).
    """
    name, files = _files_in(source)
    with _pydicom_warnings_to_debug():
        headers = read_headers(files)
    skipped = [h for h in headers if isinstance(h, SkippedFile)]
    images = [h for h in headers if isinstance(h, DicomHeader)]
    return name, group_series(images), skipped


def list_series(folder: Path | str | Sequence[Path | str]) -> list[SeriesInfo]:
    """Every candidate series under ``folder`` (recursive), usable volumes first.

    Example:
        A folder with one CT slice (pydicom's test file) and a text file: the slice is listed, as no volume.

        >>> import shutil, tempfile
        >>> from pydicom.data import get_testdata_file
        >>> tmp = tempfile.TemporaryDirectory()
        >>> _ = shutil.copy(get_testdata_file("CT_small.dcm"), tmp.name)
        >>> _ = (Path(tmp.name) / "notes.txt").write_text("not DICOM")
        >>> [(s.modality, s.n_files, s.size, s.usable, s.reason) for s in list_series(tmp.name)]
        [('CT', 1, (128, 128, 1), False, 'single frame of one file; a volume needs >= 2 slices')]
        >>> tmp.cleanup()
    """
    return scan_dicom(folder)[1]


def list_skipped(folder: Path | str | Sequence[Path | str]) -> list[SkippedFile]:
    """Files under ``folder`` that belong to no volume, each with the reason.

    Covers non-DICOM files, non-image SOP classes and every file of an unusable series.
    """
    _, groups, skipped = scan_dicom(folder)
    out = list(skipped)
    for g in groups:
        if not g.usable:
            out.extend(SkippedFile(p, g.reason or "not a volume") for p in g.files)
    return sorted(out, key=lambda s: s.path)


def describe_groups(groups: Iterable[SeriesInfo]) -> str:
    return "; ".join(g.summary() for g in groups)
