"""Fixtures for the io tests: the shared real data beside the repository, and copies of it to modify."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from medseg.io import Volume, read_volume


@pytest.fixture(scope="session")
def ct_series(shared_data: Path) -> Path:
    """20-slice JPEG 2000 CT series (no Study/Series/SOP UIDs in the files)."""
    return shared_data / "dicom-ct-totalseg" / "series"


@pytest.fixture(scope="session")
def ct_volume(ct_series: Path) -> Volume:
    """The CT series read once per session (treat as read-only)."""
    return read_volume(ct_series)


@pytest.fixture(scope="session")
def dcmqi_ct(shared_data: Path) -> Path:
    """3-slice uncompressed CT series that dicom-seg-dcmqi/liver_seg.dcm references."""
    return shared_data / "dicom-seg-dcmqi" / "ct"


@pytest.fixture(scope="session")
def mr_folder(shared_data: Path) -> Path:
    """Flat folder: T1 sagittal series (35 files) + DWI mosaic series (13 files) + SOURCE.md."""
    return shared_data / "dicom-mr-multiseries-decubitus"


@pytest.fixture
def copy_files() -> Callable[[list[Path], Path], Path]:
    """Function copying files into a (created) folder as writable files; returns the folder."""

    def copy(files: list[Path], dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        for f in files:
            target = dest / f.name
            shutil.copyfile(f, target)
            target.chmod(0o644)
        return dest

    return copy
