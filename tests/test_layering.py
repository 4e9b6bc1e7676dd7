"""The package layout holds: imports point down the layers, no import cycles, no private names across modules.

The layers are drawn in docs/design.md. Every ``import`` counts, also those inside functions (a cycle
"fixed" by moving an import into a function is still a cycle); only ``if TYPE_CHECKING:`` blocks are left
out of the cycle check, because they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medseg"

#: Top-level modules everyone may import: no job of their own, no medseg imports beyond each other.
GROUND = {"errors", "atomic", "checkpoint", "device", "progress", "processes", "seeds", "dtypes"}
#: Other top-level modules and the layer each belongs to (``python -m medseg`` is the command line).
TOP_LEVEL = {"__main__": "cli", "doctor": "doctor"}

# package -> packages it may import (besides itself and the ground floor)
ALLOWED: dict[str, set[str]] = {
    "ground": set(),
    "config": set(),
    "io": set(),
    "data": {"config", "io"},
    "models": {"config"},
    "losses": {"config"},
    "metrics": set(),
    "sliding_window": set(),
    "prediction": {"config", "io", "data", "models", "sliding_window"},
    "evaluation": {"config", "io", "data", "metrics"},
    "training": {"config", "io", "data", "models", "losses", "metrics", "sliding_window", "prediction",
                 "evaluation"},
    "demo": {"config", "io", "data", "training", "prediction", "evaluation"},
    "doctor": {"io", "sliding_window"},
    "export": {"config", "io", "data", "models", "prediction", "sliding_window"},
    "planning": {"config", "io", "data", "models", "sliding_window"},
    "cli": {"config", "io", "data", "models", "losses", "metrics", "sliding_window", "prediction", "evaluation",
            "training", "demo", "doctor", "export", "planning"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "medseg" or len(parts) < 2:
        return None
    if parts[1] in GROUND:
        return "ground"
    if parts[1] in TOP_LEVEL:
        return TOP_LEVEL[parts[1]]
    return parts[1] if parts[1] in ALLOWED else None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, *, runtime_only: bool = False) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every absolute import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and _is_type_checking(node):
                skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
    return out


MODULES = sorted(PACKAGE.rglob("*.py"))
NAMES = {_module_name(p): p for p in MODULES}


def _targets(module: str, names: list[str]) -> list[str]:
    """The medseg modules an import statement loads: the module, and submodules named in ``from pkg import sub``."""
    if module not in NAMES:
        return []
    return [module] + [f"{module}.{n}" for n in names if f"{module}.{n}" in NAMES]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in NAMES.items():
        graph[name] = {t for _, mod, names in _imports(path, runtime_only=True) for t in _targets(mod, names)
                       if t != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


LAYERED = [p for p in MODULES if p != PACKAGE / "__init__.py"]  # every module but the lazy re-export list


@pytest.mark.parametrize("path", LAYERED, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path):
    own = _layer(_module_name(path))
    assert own is not None, f"{path.relative_to(PACKAGE)} is in no layer; add its package to ALLOWED"
    bad = []
    for line, module, _ in _imports(path):
        target = _layer(module)
        if target is None or target == own or target == "ground":
            continue
        if target not in ALLOWED[own]:
            bad.append(f"line {line}: {module}")
    assert not bad, f"{path.relative_to(PACKAGE)} ({own}) imports against the layer order: {bad}"


def test_ground_floor_imports_only_the_ground_floor():
    for name in sorted(GROUND):
        path = PACKAGE / f"{name}.py"
        if not path.exists():
            continue
        other = [m for _, m, _ in _imports(path) if m.startswith("medseg.") and _layer(m) != "ground"]
        assert other == [], f"medseg/{name}.py imports {other}"


def test_no_import_cycles():
    assert find_cycles(_graph()) == []


def test_cycle_finder_finds_a_cycle_and_a_self_contained_chain_passes():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_private_names_imported_from_another_module():
    bad = []
    for path in MODULES:
        for line, module, names in _imports(path):
            if not module.startswith("medseg"):
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            private += [p for p in module.split(".") if p.startswith("_") and not p.startswith("__")]
            if private:
                bad.append(f"{path.relative_to(PACKAGE)}:{line}: {module} {private}")
    assert bad == []


def test_no_star_imports():
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names)
    ]
    assert offenders == []
