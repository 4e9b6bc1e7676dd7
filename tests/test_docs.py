"""The docs site builds with ``mkdocs build --strict``: no broken link or anchor, no unresolved API reference."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import medseg

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict`` (mkdocs, Material and mkdocstrings are in the test extra)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's end-of-life banner, not a build warning
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], cwd=config.parent, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    proc = _build(REPO / "mkdocs.yml", site)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return site


def _text(page: Path) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.read_text(encoding="utf-8")))


def test_every_page_is_built(site):
    pages = sorted(p.relative_to(DOCS).with_suffix("").as_posix() for p in DOCS.rglob("*.md"))
    assert "tutorials/own-2d-data" in pages and "troubleshooting" in pages
    for page in pages:
        folder = page.removesuffix("index").rstrip("/")  # api/index.md -> api/index.html
        target = site / folder / "index.html" if page.endswith("index") else site / page / "index.html"
        assert target.is_file(), page


def test_api_pages_render_the_docstrings(site):
    text = _text(site / "api" / "data" / "index.html")
    # a Google "Args:" section became a parameter table, an "Example:" a code block (not literal text)
    assert "Scan masks for their gray values and build a label map" in text
    assert "Example:" not in text and ":class:" not in text and ":func:" not in text
    html = (site / "api" / "data" / "index.html").read_text(encoding="utf-8")
    assert 'id="medseg.data.label_discovery.discover_label_map"' in html
    assert "&gt;&gt;&gt;" in html  # the doctest prompt, inside a code block


def test_api_overview_lists_every_public_name():
    overview = (DOCS / "api" / "index.md").read_text(encoding="utf-8")
    missing = [name for name in medseg.__all__ if name != "__version__" and f"`medseg.{name}`" not in overview]
    assert missing == []


def test_broken_link_fails_the_strict_build(tmp_path):
    """The strictness the site relies on: a link to a missing page or anchor stops the build."""
    copy = tmp_path / "repo"
    shutil.copytree(DOCS, copy / "docs")
    shutil.copy(REPO / "mkdocs.yml", copy / "mkdocs.yml")
    (copy / "medseg").symlink_to(REPO / "medseg")
    page = copy / "docs" / "troubleshooting.md"
    page.write_text(page.read_text() + "\nSee [the FAQ](faq.md) and [item 11](#11-no-such-item).\n")
    proc = _build(copy / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode != 0
    assert "faq.md" in proc.stderr and "#11-no-such-item" in proc.stderr, proc.stderr[-2000:]
