"""The lazy top-level API: every exported name resolves, and the ``if TYPE_CHECKING:`` imports that mypy and
editors read name exactly the lazily exported names, each from the module it is loaded from at run time."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import medseg

INIT = Path(medseg.__file__)


def _type_checking_imports() -> dict[str, str]:
    """name -> module of the ``from module import name as name`` lines under ``if TYPE_CHECKING:``."""
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    blocks = [node for node in tree.body if isinstance(node, ast.If) and isinstance(node.test, ast.Name)
              and node.test.id == "TYPE_CHECKING"]
    assert len(blocks) == 1, "expected one top-level `if TYPE_CHECKING:` block in medseg/__init__.py"
    found: dict[str, str] = {}
    for node in blocks[0].body:
        assert isinstance(node, ast.ImportFrom) and node.level == 0 and node.module, ast.unparse(node)
        for alias in node.names:
            assert alias.asname in (None, alias.name), f"{alias.name} is imported as {alias.asname}"
            assert alias.name not in found, f"{alias.name} is imported twice"
            found[alias.name] = node.module
    return found


def test_every_exported_name_resolves():
    assert medseg.__all__ == ["__version__", *sorted(medseg._EXPORTS)]
    for name in medseg.__all__:
        value = getattr(medseg, name)
        if name != "__version__":
            assert value is getattr(importlib.import_module(medseg._EXPORTS[name]), name), name
    assert sorted(dir(medseg)) == sorted(medseg.__all__)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        medseg.no_such_name  # noqa: B018


def test_type_checking_block_matches_exports():
    assert _type_checking_imports() == medseg._EXPORTS


def test_import_stays_lazy():
    code = "import sys, medseg; print(sorted(m for m in ('torch', 'monai', 'numpy') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
