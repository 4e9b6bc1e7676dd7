"""Imports point one way: config/io -> data -> models/losses -> engine -> cli (see docs/design.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medseg"

# layer -> layers it may import (besides itself, medseg.errors and the top-level package)
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "io": set(),
    "data": {"config", "io"},
    "models": {"config"},
    "losses": {"config"},
    "engine": {"config", "io", "data", "models", "losses"},
    "cli": {"config", "engine"},
}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "medseg" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in ALLOWED else None


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path):
    own = path.relative_to(PACKAGE).parts[0]
    bad = []
    for line, module in _imports(path):
        target = _layer(module)
        if target is None or target == own:
            continue
        if target not in ALLOWED[own]:
            bad.append(f"line {line}: {module}")
    assert not bad, f"{path.relative_to(PACKAGE)} ({own}) imports against the layer order: {bad}"


def test_no_star_imports():
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names)
    ]
    assert offenders == []
