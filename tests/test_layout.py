"""The package's shape: no import circle between its modules, and no module that keeps growing.

Both are read from the source with `ast`, so every import counts, the ones inside functions included: a
circle closed by a function-level import works until someone moves that import to the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "distill"
MAX_LINES = 400
# Import circles let through, each closed by a function-level import (importer, imported): the edge to break.
# None is left: a new circle is broken by moving the shared piece, not listed here. The check skips these and
# fails on any other circle; an edge that no longer exists must leave the list.
KNOWN_CIRCLE_EDGES: set[tuple[str, str]] = set()
# Modules over MAX_LINES let through, with their length when listed. None is left: a module that grows past
# MAX_LINES is split, not listed here. A new one, or one of these growing past its figure, fails (a module under
# MAX_LINES leaves the list).
KNOWN_LONG: dict[str, int] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that `name` imports anywhere in its file, relative imports resolved. `from a import b`
    counts a.b when that is a module, else a."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import distill.eval.x as y` names distill.eval.x; a.b.Class names a.b
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imported(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "distill.sampling" in graph["distill.train.transfer"]  # imported inside a function
    assert "distill.eval.output" in graph["distill.eval.report"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle():
    graph = import_graph()
    print("known import circles, to be broken at: " + ", ".join(f"{a} -> {b}" for a, b in sorted(KNOWN_CIRCLE_EDGES)))
    gone = sorted(f"{a} -> {b}" for a, b in KNOWN_CIRCLE_EDGES if b not in graph.get(a, ()))
    assert not gone, f"no longer imported, remove from KNOWN_CIRCLE_EDGES: {gone}"
    for a, b in KNOWN_CIRCLE_EDGES:
        graph[a] = graph[a] - {b}
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_module_grows_past_the_limit():
    lengths = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
               for p in PACKAGE.rglob("*.py")}
    long = {p: n for p, n in lengths.items() if n > MAX_LINES}
    print(f"modules over {MAX_LINES} lines (known, to be split): "
          + ", ".join(f"{p} {n}" for p, n in sorted(long.items())))
    new = sorted(p for p in long if p not in KNOWN_LONG)
    grown = sorted(f"{p} {n} > {KNOWN_LONG[p]}" for p, n in long.items() if p in KNOWN_LONG and n > KNOWN_LONG[p])
    assert not new, f"new module(s) over {MAX_LINES} lines, split them: {new}"
    assert not grown, f"known long module(s) grew further, split them: {grown}"


def test_the_bench_does_not_import_the_study():
    """The bench measures the library; the study is an experiment built on it. What both need (the usable
    cores) lives in the library (distill.hardware)."""
    graph = import_graph()
    reach = sorted(f"{a} -> {b}" for a, deps in graph.items() if a.startswith("distill.bench")
                   for b in deps if b == "distill.study" or b.startswith("distill.study."))
    assert not reach, f"the bench imports the study: {reach}"
