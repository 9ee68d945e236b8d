"""The layout's rules that the import linter does not check: no import circle between faultlab's modules, and
modules and functions of a size a reader can hold (docs/ARCHITECTURE.md). The layers and the sans-IO cores are
`lint-imports`' contracts in pyproject.toml, run by scripts/test."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import grimp
import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "faultlab"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80

# Known exceptions, each to be split; the test fails when one grows, or when one is mended and still listed here.
BIG_MODULES: dict[str, int] = {}
LONG_FUNCTIONS: dict[str, int] = {}


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circle() -> None:
    graph = grimp.build_graph("faultlab")  # every import, also those inside functions and under TYPE_CHECKING
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_circle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "circlepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from circlepkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from circlepkg import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _cycles(grimp.build_graph("circlepkg")) == [["circlepkg.a", "circlepkg.b"]]
    sys.modules.pop("circlepkg", None)


def _sources() -> list[tuple[str, str]]:
    return [(str(p.relative_to(PACKAGE)), p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.rglob("*.py"))]


def test_modules_are_at_most_500_lines() -> None:
    sizes = {name: text.count("\n") for name, text in _sources()}
    too_big = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES and n > BIG_MODULES.get(name, 0)}
    assert too_big == {}, "split these modules (or, for a table, say so in BIG_MODULES)"
    mended = [name for name in BIG_MODULES if sizes.get(name, 0) <= MAX_MODULE_LINES]
    assert mended == [], "no longer too big: take them out of BIG_MODULES"


def test_functions_are_at_most_80_lines() -> None:
    lengths: dict[str, int] = {}
    for name, text in _sources():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                key = f"{name}:{node.name}"
                lengths[key] = max(lengths.get(key, 0), node.end_lineno - node.lineno + 1)
    too_long = {key: n for key, n in lengths.items()
                if n > MAX_FUNCTION_LINES and n > LONG_FUNCTIONS.get(key, 0)}
    assert too_long == {}, "split these functions"
    mended = [key for key in LONG_FUNCTIONS if lengths.get(key, 0) <= MAX_FUNCTION_LINES]
    assert mended == [], "no longer too long: take them out of LONG_FUNCTIONS"
