"""A full disk while writing an output is one line naming the file, and leaves no temporary file behind."""

from __future__ import annotations

import errno
import os

import pytest

from medseg.atomic import atomic_path, write_text_atomic
from medseg.errors import MedsegError


def test_enospc_inside_the_block(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(MedsegError) as err, atomic_path(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert str(err.value) == (f"no space left on device writing {target}; free some space or choose another "
                              "output folder")
    assert list(tmp_path.iterdir()) == []


def test_enospc_hidden_in_a_rewrapped_error(tmp_path):
    """pydicom (tag_in_exception) re-raises ``type(exc)(message + traceback) from exc``: no errno on the outer one."""
    target = tmp_path / "seg.dcm"
    with pytest.raises(MedsegError) as err, atomic_path(target):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            message = f"With tag (7FE0,0010) got exception: {exc}\nTraceback (most recent call last):\n ..."
            raise OSError(message) from exc
    assert "\n" not in str(err.value) and str(err.value).startswith(f"no space left on device writing {target}")


def test_quota_exceeded_on_rename(tmp_path, monkeypatch):
    def no_quota(src, dst):
        raise OSError(errno.EDQUOT, "Disk quota exceeded", str(src))

    monkeypatch.setattr(os, "replace", no_quota)
    with pytest.raises(MedsegError, match=r"^disk quota exceeded writing .*a\.txt; free some space"):
        write_text_atomic(tmp_path / "a.txt", "x")
    assert list(tmp_path.iterdir()) == []


def test_other_os_errors_pass_unchanged(tmp_path):
    with pytest.raises(PermissionError), atomic_path(tmp_path / "b.txt"):
        raise PermissionError(errno.EACCES, "Permission denied")
