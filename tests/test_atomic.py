"""Atomic writes: the final file appears complete, with the mode the umask gives (not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat

import pytest

from medseg.atomic import atomic_path, write_json_atomic, write_text_atomic


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        text = write_text_atomic(tmp_path / "a.txt", "x")
        js = write_json_atomic(tmp_path / "b.json", {"a": 1})
    finally:
        os.umask(old)
    for path in (text, js):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert js.read_text() == '{\n  "a": 1\n}\n'


def test_failed_block_leaves_neither_target_nor_temporary(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
