"""The project's import graph, and the rules it must follow (stdlib only; read from the source, not run).

Every ``import`` and ``from ... import`` of the project's own code is collected, including imports inside
functions (a lazy import is still a dependency). Nodes are modules; a group is a module's layer (the first
two parts of its name in ``sab_mips``, e.g. ``sab_mips.model``; the package for ``indexes``, ``benchmarks``
and ``experiments``).

Rules (``check``):

1. Layers point one way. ``LAYERS`` ranks the groups of ``sab_mips``; a module may import its own group
   and groups of a lower rank only (the model layer knows nothing of training or the CLI; the library
   knows nothing of ``bench`` or ``cli``). ``indexes`` stands apart: it imports nothing from ``sab_mips``.
2. Nothing imports ``benchmarks`` or ``experiments``: they hold scripts, configs and results, not code
   that the library may depend on.
3. No cycle between modules.

Run ``python scripts/import_graph.py [ROOT]`` to print the group graph, the cycles and the violations
(exit status 1 when there are any); ``--modules`` prints every module edge. The tests run ``check``.
"""
from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

PROJECT = ("sab_mips", "indexes", "benchmarks", "experiments")
APPLICATIONS = ("benchmarks", "experiments")  # folders of scripts and results: nothing may import them

# Groups of sab_mips, lowest first. A group may import groups of a lower rank (and itself).
LAYERS: dict[str, int] = {
    "sab_mips.errors": 0,
    "sab_mips.io": 1, "sab_mips.config_base": 1,  # atomic files; the config dataclasses' shared behaviour
    "sab_mips.devices": 1,  # choosing the device
    "sab_mips.ops": 2,  # pure tensor functions and small autograd functions
    "sab_mips.retrieval": 3,  # measuring retrieval in a model's pass: recall, attention mass, the index factory
    "sab_mips.kernel": 3,  # the compiled SAB recurrence (C++ built at first use) and its autograd function
    "sab_mips.images": 3,  # image datasets from IDX files: reading, checks, splits
    "sab_mips.model": 4, "sab_mips.tasks": 4,  # modules and models; the tasks (independent of each other)
    "sab_mips.corpora": 4,  # text corpora for character-level language modelling: loading, splits, streams
    "sab_mips.training": 5, "sab_mips.plots": 5,  # the training engine; figures
    "sab_mips": 6,  # the package's public API (re-exports)
    # measuring indexes offline (key data sets, timed searches, tuning): for bench and cli only, so no model,
    # training or public-API module may import it
    "sab_mips.offline_retrieval": 6,
    "sab_mips.bench": 7,  # benchmark harnesses run by `sab-mips bench`
    "sab_mips.cli": 8, "sab_mips.__main__": 9,  # the command line
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def collect(root: Path) -> dict[str, set[str]]:
    """{module: set of project modules it imports}, for every .py file of the project under ``root``."""
    files = {module_name(p, root): p for top in PROJECT for p in sorted((root / top).rglob("*.py"))
             if (root / top).is_dir()}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if is_package(path) else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                # `from pkg import mod` depends on pkg.mod when that is a module, else on pkg itself
                for alias in node.names:
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base)
        graph[module] = {t for t in targets if t.split(".")[0] in PROJECT and t != module}
    return graph


def group(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "sab_mips":
        return parts[0]
    return ".".join(parts[:2])


def group_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for source, targets in graph.items():
        out[group(source)]
        for target in targets:
            if group(target) != group(source):
                out[group(source)].add(group(target))
    return dict(out)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(component))

    sys.setrecursionlimit(max(1000, 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports that break rules 1 and 2, one line each."""
    out = []
    for source in sorted(graph):
        for target in sorted(graph[source]):
            src, dst = group(source), group(target)
            if dst in APPLICATIONS:
                out.append(f"{source} imports {target}: nothing may import {dst}/ (scripts and results)")
            elif src == "indexes" and dst != "indexes":
                out.append(f"{source} imports {target}: indexes/ imports nothing from the rest of the project")
            elif src in LAYERS and dst in LAYERS and src != dst and LAYERS[dst] >= LAYERS[src]:
                out.append(f"{source} imports {target}: layer {src} (rank {LAYERS[src]}) may not import "
                           f"{dst} (rank {LAYERS[dst]})")
            elif src.startswith("sab_mips") and src != dst and (src not in LAYERS or dst.startswith("sab_mips") and dst not in LAYERS):
                unknown = src if src not in LAYERS else dst
                out.append(f"{source} imports {target}: group {unknown} has no rank in LAYERS")
    return out


def check(root: Path) -> list[str]:
    """Every broken rule under ``root`` (empty: the graph is clean)."""
    graph = collect(root)
    return violations(graph) + [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", default=Path(__file__).resolve().parents[1], type=Path,
                        help="project root (default: this checkout)")
    parser.add_argument("--modules", action="store_true", help="print every module-to-module edge")
    args = parser.parse_args(argv)
    graph = collect(args.root)
    print("groups (-> what each imports):")
    for source, targets in sorted(group_graph(graph).items()):
        print(f"  {source:<26} -> {', '.join(sorted(targets)) or '-'}")
    if args.modules:
        print("modules:")
        for source, targets in sorted(graph.items()):
            print(f"  {source:<36} -> {', '.join(sorted(targets)) or '-'}")
    problems = check(args.root)
    print("\n".join(problems) if problems else "no cycles, no layer violations")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
