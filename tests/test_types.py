"""mypy over medseg/ runs as part of the suite, with the settings in pyproject.toml ([tool.mypy]: strict on
config/, io/ and cli/). A cold run takes about half a minute; pyproject.toml
skips the parts of torch and its dependencies that medseg never calls (see the comment there)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_mypy_clean(tmp_path, monkeypatch):
    api = pytest.importorskip("mypy.api", reason="mypy is not installed (pip install -e '.[test]')")
    monkeypatch.chdir(REPO)  # module names and the paths in the report relative to the repository
    stdout, stderr, status = api.run([
        "--config-file", str(REPO / "pyproject.toml"),
        "--cache-dir", str(tmp_path / "mypy_cache"),  # nothing written into the repository
        "--show-error-codes",
        "medseg",
    ])
    assert status == 0, f"mypy found problems (exit status {status}):\n{stdout}{stderr}"
