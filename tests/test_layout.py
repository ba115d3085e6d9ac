"""The package layout: nmt's modules import each other without cycles, and its packages import
only downwards (serve, train, interop -> decode -> evaluate -> data, model -> the shared
top-level modules).

Every import counts: module level, inside functions and under ``TYPE_CHECKING``, since each
of them is a dependency a reader has to follow and a cycle among them is one a refactoring
can turn into an ImportError.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "nmt"

# Each package's floor: a module may import its own package and any package on a lower
# floor (a higher number), never one on a higher floor. The top-level modules (config,
# errors, fileio, device, checkpoint) are shared by everything and sit below all packages.
FLOORS = {
    "serve": 0,
    "train": 0,
    "interop": 0,
    "decode": 1,
    "evaluate": 2,
    "data": 3,
    "model": 3,
    "": 4,  # nmt/*.py
}
PACKAGES = {f"nmt.{p}" for p in FLOORS if p} | {"nmt"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The nmt modules that ``path`` imports anywhere in its body."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from nmt.data import store` imports the module nmt.data.store
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    # a package's __init__ holds only its docstring: importing through it is importing the module
    return found - PACKAGES


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    edges = {name: imports_of(path, known) - {name} for name, path in mods.items()}
    # a package's __init__ is imported by each of its modules' imports; it imports nothing
    return {
        name: {t for t in targets if t not in FLOORS_PACKAGES} for name, targets in edges.items()
    }


FLOORS_PACKAGES = {f"nmt.{p}" for p in FLOORS if p} | {"nmt"}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in FLOORS else ""


def test_every_module_belongs_to_a_known_package() -> None:
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == {p for p in FLOORS if p}, "add the new package to FLOORS"
    for init in ROOT.glob("*/__init__.py"):  # imports_of relies on this
        assert not imports_of(init, set(modules())), f"{init} should hold only its docstring"


def test_no_import_cycles() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_packages_import_only_downwards() -> None:
    upwards = [
        f"{src} imports {dst}"
        for src, targets in graph().items()
        for dst in targets
        if FLOORS[package_of(dst)] < FLOORS[package_of(src)]
    ]
    assert upwards == []


def test_the_checks_see_a_cycle_and_an_upward_import() -> None:
    """The walker is not blind: a cycle through a function-level import and an upward import
    under TYPE_CHECKING are both found."""
    edges = graph()
    assert "nmt.data.store" in edges["nmt.train.run"]  # the walker reads real imports
    edges["nmt.model.cache"] = edges["nmt.model.cache"] | {"nmt.model.transformer"}
    assert find_cycle(edges) is not None
    assert FLOORS[package_of("nmt.serve.app")] < FLOORS[package_of("nmt.model.cache")]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def f():\n    from nmt.serve import app\n", {"nmt.serve.app"}),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import nmt.serve.app\n",
            {"nmt.serve.app"},
        ),
    ],
)
def test_function_level_and_type_checking_imports_count(
    tmp_path: Path, source: str, expected: set[str]
) -> None:
    path = tmp_path / "m.py"
    path.write_text(source)
    assert imports_of(path, set(modules())) == expected
