"""The engine's layers stay clean: the import-linter contracts in pyproject.toml hold, and the
modules of snp_engine import each other without any cycle.

``lint-imports`` checks two contracts: snp_engine never imports snp_gui or Qt (PySide6, pyqtgraph,
superqt), and no two modules of snp_engine (nor of its subpackages) import each other through a
cycle. The cycle test below checks the same graph once more, the package ``__init__`` included,
and prints the cycle it finds with the file and line of every import in it.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import grimp  # installed with import-linter (the test extra)

ROOT = Path(__file__).resolve().parent.parent


def _lint_imports_command() -> list[str]:
    """The ``lint-imports`` of this environment (beside the interpreter), or the same entry point
    run by the interpreter where the scripts folder is elsewhere."""
    script = Path(sys.executable).with_name("lint-imports")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"]


def find_cycle(graph) -> list[str] | None:
    """One import cycle among the modules of ``graph`` (a grimp ImportGraph) as ``[a, b, …, a]``,
    or ``None``; an iterative depth-first search, so deep graphs cannot overflow the stack."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph.modules):
        if start in state:
            continue
        path = [start]
        stack = [iter(sorted(graph.find_modules_directly_imported_by(start)))]
        state[start] = 1
        while stack:
            following = next(stack[-1], None)
            if following is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(following) == 1:
                return [*path[path.index(following) :], following]
            elif following not in state:
                state[following] = 1
                path.append(following)
                stack.append(iter(sorted(graph.find_modules_directly_imported_by(following))))
    return None


def describe_cycle(graph, cycle: list[str]) -> str:
    """The cycle as one line per import: ``importer -> imported (line N: the import statement)``."""
    lines = []
    for importer, imported in itertools.pairwise(cycle):
        details = graph.get_import_details(importer=importer, imported=imported)
        where = "; ".join(f"line {d['line_number']}: {d['line_contents']}" for d in details) or "?"
        lines.append(f"  {importer} -> {imported}  ({where})")
    return "\n".join(lines)


def test_import_contracts_are_kept():
    done = subprocess.run(
        [*_lint_imports_command(), "--no-cache", "--no-logo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"lint-imports failed:\n{done.stdout}{done.stderr}"[-6000:]
    assert "2 kept, 0 broken" in done.stdout, done.stdout[-3000:]


def test_snp_engine_has_no_import_cycle():
    graph = grimp.build_graph("snp_engine", cache_dir=None)
    assert "snp_engine.api" in graph.modules and "snp_engine.io" in graph.modules
    cycle = find_cycle(graph)
    assert cycle is None, "snp_engine has an import cycle:\n" + describe_cycle(graph, cycle)


def test_the_cycle_check_finds_cycles():
    graph = grimp.ImportGraph()
    for importer, imported in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.d"), ("p.x", "p.a")]:
        graph.add_import(importer=importer, imported=imported, line_number=1, line_contents=f"import {imported}")
    assert find_cycle(graph) is None
    graph.add_import(importer="p.d", imported="p.b", line_number=7, line_contents="from p import b")
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"p.b", "p.c", "p.d"}
    assert "p.d -> p.b  (line 7: from p import b)" in describe_cycle(graph, cycle)
