"""Report import cycles among lasa's modules: ``python scripts/check_imports.py [--top-level-only]``.

Reads every module under ``src/lasa`` with ``ast`` (nothing is imported), draws an edge A → B for
each ``import lasa.B`` / ``from lasa.B import …`` in A — at module level and, unless
``--top-level-only``, inside functions too (a lazy import is still a dependency) — and prints every
strongly connected component with more than one module. Exit status 1 when there is a cycle.
A package's ``__init__`` counts as the package: ``lasa.judges`` → ``lasa.judges.pair`` is an edge.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def graph(top_level_only: bool) -> dict[str, set[str]]:
    mods = {module_name(p): p for p in SRC.joinpath("lasa").rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        for node in nodes:
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in list(targets):  # importing a.b.c runs a/__init__ and a/b/__init__ first
                parts = t.split(".")
                targets += [".".join(parts[:k]) for k in range(2, len(parts))]
            for t in targets:
                if (
                    t in mods and t != name and not name.startswith(t + ".")
                ):  # a child importing its package is fine
                    edges[name].add(t)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of size > 1."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top-level-only", action="store_true")
    args = ap.parse_args()
    edges = graph(args.top_level_only)
    found = cycles(edges)
    for comp in found:
        print("cycle:", " ".join(comp))
    print(
        f"{len(found)} import cycle(s) among {len(edges)} lasa modules ({sum(map(len, edges.values()))} import edges)"
    )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
