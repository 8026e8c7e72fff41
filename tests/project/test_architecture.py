"""The import rules of docs/architecture.md, checked on the source: every import statement of the
four packages, function-level ones included, read with ``ast`` (nothing is imported or run).

* no import cycles between modules;
* the command-line modules (``ucofia.cli``, ``ucofia.commands.*``, ``runtime.cli``,
  ``runtime.commands.*``) are the composition root: no other module imports them;
* each layer imports only what its row of the table allows.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

if __name__ == "__main__":  # run as a script: the helpers are not on the path pytest gives them
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))

from import_graph import cycles, import_graph, project_modules

CLI_MODULES = ("ucofia.cli", "ucofia.commands", "runtime.cli", "runtime.commands")
# Torch-free leaves of ucofia that every package may use.
UCOFIA_LEAVES = ("ucofia.config", "ucofia.io_utils", "ucofia.data", "ucofia.progress", "ucofia.logs",
                 "ucofia.cli_support")
EVALUATION_LEAVES = ("evaluation.metrics", "evaluation.compare", "evaluation.moments")
TORCH = ("torch", "torchvision", "open_clip")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


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


def test_the_cluster_builds_on_the_service_not_the_other_way(graph):
    """``runtime.cluster`` (``serve --ray``) uses search and the service; only the CLI reaches it,
    and only its Ray module and the indexing engine import Ray."""
    users = sorted(f"{src} -> {dst}" for src, targets in graph.items()
                   if not _within(src, ("runtime.cluster", *CLI_MODULES))
                   for dst in targets if _within(dst, ("runtime.cluster",)))
    assert users == []
    ray_users = sorted(src for src, targets in graph.items() if _within(src, ("runtime",))
                       and any(_within(dst, ("ray",)) for dst in targets))
    assert ray_users and all(_within(src, ("runtime.distributed", "runtime.cluster.ray_app", "runtime.cluster.serving"))
                             for src in ray_users), ray_users


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
    print(summary(import_graph()))
