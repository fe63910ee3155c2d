#!/usr/bin/env python3
"""Print segstream's module import graph: modules, edges, cycles, layering, large modules.

    python scripts/import_graph.py [--root DIR] [--max-lines 400] [--edges]

Reads the source with ``ast`` (imports nothing), so it works on any checkout of the
layout where import names follow paths (``shared/segstream``, ``services/segstream_services``).
An edge A → B means module A imports module B (``from pkg import sub`` counts as an edge
to the submodule when ``sub`` is one). Module-level edges run at import time, others sit
inside functions (lazy) or under ``if TYPE_CHECKING:`` (type hints only, never run). A
cycle is a strongly connected group of modules.
The library must not import the services ("upward" edges).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

SOURCE_ROOTS = (("shared", "segstream"), ("services", "segstream_services"))


def find_modules(root: Path) -> dict[str, Path]:
    """Import name → file, for every module under the source roots."""
    modules: dict[str, Path] = {}
    for folder, package in SOURCE_ROOTS:
        base = root / folder
        for path in sorted((base / package).rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` is or lies in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


RANK = {"type": 0, "lazy": 1, "eager": 2}


def _type_checking(node: ast.AST) -> bool:
    """True for ``if TYPE_CHECKING:`` (also ``typing.TYPE_CHECKING``)."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> dict[str, str]:
    """Internal modules that ``module`` imports → how: "eager" (runs at import time),
    "lazy" (inside a function) or "type" (under ``if TYPE_CHECKING:``, never runs)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: dict[str, str] = {}

    def add(target: str | None, kind: str) -> None:
        if target and target != module and RANK[kind] > RANK.get(found.get(target, ""), -1):
            found[target] = kind

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = kind
            if _type_checking(child):
                inner = "type"
            elif kind == "eager" and isinstance(
                    child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                inner = "lazy"
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(_resolve(alias.name, modules), kind)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module.split(".")
                    anchor = anchor if is_package else anchor[:-1]
                    anchor = anchor[:len(anchor) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    add(sub if sub in modules else _resolve(base, modules), kind)
            visit(child, inner)

    visit(tree, "eager")
    return found


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); returns the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
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
                    out.append(sorted(component))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the checkout to read (default: this one)")
    parser.add_argument("--max-lines", type=int, default=400,
                        help="list modules longer than this (400)")
    parser.add_argument("--edges", action="store_true", help="also print every edge")
    args = parser.parse_args(argv)
    modules = find_modules(args.root)
    if not modules:
        print(f"import_graph: no modules under {args.root}/shared or /services",
              file=sys.stderr)
        return 2
    edges = {m: imports_of(m, p, modules) for m, p in modules.items()}

    def graph(*kinds: str) -> dict[str, set[str]]:
        return {m: {t for t, k in ts.items() if k in kinds} for m, ts in edges.items()}

    eager, runtime, every = graph("eager"), graph("eager", "lazy"), graph("eager", "lazy", "type")
    count = {kind: sum(k == kind for ts in edges.values() for k in ts.values())
             for kind in RANK}
    upward = sorted((m, t) for m, ts in every.items() for t in ts
                    if m.split(".")[0] == "segstream" and t.split(".")[0] != "segstream")
    lines = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in modules.items()}
    large = sorted(((n, m) for m, n in lines.items() if n > args.max_lines), reverse=True)
    print(f"modules: {len(modules)} ({sum(lines.values()):,} lines)")
    print(f"import edges: {sum(count.values())} ({count['eager']} at module level, "
          f"{count['lazy']} inside functions, {count['type']} for type checking only)")
    for label, g in (("cycles (module-level imports)", eager),
                     ("cycles (runtime imports, incl. inside functions)", runtime),
                     ("cycles (incl. type-checking imports)", every)):
        cycles = strongly_connected(g)
        print(f"{label}: {len(cycles)}")
        for cycle in cycles:
            print("  " + " <-> ".join(cycle))
    print(f"upward edges (segstream -> segstream_services): {len(upward)}")
    for src, dst in upward:
        print(f"  {src} -> {dst}")
    print(f"modules over {args.max_lines} lines: {len(large)}")
    for n, m in large:
        print(f"  {n:5d}  {m}")
    if args.edges:
        for m in sorted(every):
            for t in sorted(every[m]):
                kind = edges[m][t]
                print(f"{m} -> {t}{'' if kind == 'eager' else f'  ({kind})'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
