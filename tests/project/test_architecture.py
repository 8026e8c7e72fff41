"""The import rules of docs/architecture.md, checked on the source: every import statement of the
four packages, function-level ones included, read with ``ast`` (nothing is imported or run).

* no import cycles between modules;
* the command-line modules (``ucofia.cli``, ``ucofia.commands.*``, ``runtime.cli``,
  ``runtime.commands.*``) are the composition root: no other module imports them;
* each layer imports only what its row of the table allows.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]  # not data_paths: this file also runs as a script (see the end)
PACKAGES = ("ucofia", "export", "runtime", "evaluation")
CLI_MODULES = ("ucofia.cli", "ucofia.commands", "runtime.cli", "runtime.commands")
# Torch-free leaves of ucofia that every package may use.
UCOFIA_LEAVES = ("ucofia.config", "ucofia.io_utils", "ucofia.data", "ucofia.progress", "ucofia.logs",
                 "ucofia.cli_support")
EVALUATION_LEAVES = ("evaluation.metrics", "evaluation.compare", "evaluation.moments")
TORCH = ("torch", "torchvision", "open_clip")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    """Module name -> file of every module of the four packages."""
    return {_module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an imported dotted name refers to (the longest prefix that is a module)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every name ``module`` imports (project modules resolved; others kept as written)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` names the submodule when there is one
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for name in names:
            found.add(_resolve(name, modules) or name)
    found.discard(module)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_reads_the_imports(graph):
    assert "runtime.search.searcher" in graph["runtime.search"]
    assert "runtime.ingest.job" in graph["runtime.commands.index"]  # a function-level import
    assert "runtime.search.grouping" in graph["runtime.search.searcher"]  # `from runtime.search import grouping`


def test_cycle_finder_finds_a_planted_cycle():
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(planted) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles(graph):
    assert cycles(graph) == [], "modules that import each other (directly or around a circle)"


def test_no_library_module_imports_a_command_line_module(graph):
    wrong = sorted(f"{src} -> {dst}" for src, targets in graph.items() if not _within(src, CLI_MODULES)
                   for dst in targets if _within(dst, CLI_MODULES))
    assert wrong == []


def _violations(graph: dict[str, set[str]], sources: tuple[str, ...], allowed: tuple[str, ...],
                exempt: tuple[str, ...] = CLI_MODULES, project: set[str] | None = None) -> list[str]:
    """Imports from modules under ``sources`` (but not ``exempt``) of project modules outside ``allowed``."""
    project = set(project_modules()) if project is None else project
    bad = []
    for src, targets in graph.items():
        if not _within(src, sources) or _within(src, exempt):
            continue
        for dst in targets:
            if dst in project and not _within(dst, allowed):
                bad.append(f"{src} -> {dst}")
    return sorted(bad)


def test_runtime_imports_only_runtime_and_torch_free_leaves(graph):
    assert _violations(graph, ("runtime",), ("runtime", *UCOFIA_LEAVES, *EVALUATION_LEAVES)) == []
    torch_users = sorted(src for src, targets in graph.items() if _within(src, ("runtime",))
                         for dst in targets if _within(dst, TORCH))
    assert torch_users == []


def test_the_torch_free_leaves_stay_leaves(graph):
    assert _violations(graph, UCOFIA_LEAVES, UCOFIA_LEAVES) == []
    assert _violations(graph, EVALUATION_LEAVES, ("ucofia.config", *EVALUATION_LEAVES)) == []
    leaves_with_torch = sorted(src for src, targets in graph.items() if _within(src, UCOFIA_LEAVES + EVALUATION_LEAVES)
                               for dst in targets if _within(dst, TORCH))
    assert leaves_with_torch == []


def test_the_model_side_does_not_reach_into_deployment(graph):
    assert _violations(graph, ("ucofia",), ("ucofia", *EVALUATION_LEAVES)) == []


def test_export_uses_the_model_and_the_runtime_contract_only(graph):
    assert _violations(graph, ("export",), ("export", "ucofia", "runtime.bundle", "runtime.backends", "runtime.errors",
                                            *EVALUATION_LEAVES)) == []


def test_planted_violations_are_reported():
    planted = {"runtime.scoring": {"export.bundle", "numpy", "runtime.index"}, "export.bundle": set(),
               "runtime.index": set(), "runtime.commands.x": {"export.bundle"}}
    bad = _violations(planted, ("runtime",), ("runtime",), project=set(planted))
    assert bad == ["runtime.scoring -> export.bundle"]  # numpy is not a project module; the CLI may


def summary(graph: dict[str, set[str]]) -> str:
    """The figures docs/architecture.md quotes: modules, imports between them, cycles, imports of
    CLI modules by library modules, and the imports between packages."""
    modules = set(graph)
    edges = [(src, dst) for src, targets in graph.items() for dst in targets if dst in modules]
    between: dict[tuple[str, str], int] = {}
    for src, dst in edges:
        pair = (src.split(".")[0], dst.split(".")[0])
        if pair[0] != pair[1]:
            between[pair] = between.get(pair, 0) + 1
    into_cli = [f"{s} -> {d}" for s, d in edges if not _within(s, CLI_MODULES) and _within(d, CLI_MODULES)]
    lines = [f"modules {len(modules)}, imports between them {len(edges)}",
             f"import cycles: {cycles(graph) or 'none'}",
             f"library modules importing a CLI module: {into_cli or 'none'}",
             "imports between packages: " + ", ".join(f"{a} -> {b} {n}" for (a, b), n in sorted(between.items()))]
    return "\n".join(lines)


if __name__ == "__main__":
    _modules = project_modules()
    print(summary({name: imports_of(name, path, _modules) for name, path in _modules.items()}))
