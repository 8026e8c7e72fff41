"""The bundle contract (runtime/bundle/contract.py) is single-sourced and both sides follow it: what an
export writes validates against it, the loader and the export take every name from it, nothing else
defines its types or constants, and the import directions around it hold (runtime never imports
export; no import cycle runs through the contract, the backends or the export)."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import onnx
import pytest
from data_paths import REPO_ROOT
from import_graph import cycles, import_graph, project_modules
from runtime_helpers import build_fake_bundle

from runtime.bundle import load_bundle
from runtime.bundle.contract import (
    BUNDLE_FORMAT,
    DYNAMIC_AXES,
    GRAPH_KEYS,
    GRAPH_ROLES,
    MANIFEST_FILE,
    REQUIRED_FIELDS,
    SCORER,
    graph_specs,
)
from runtime.errors import BundleError
from ucofia.config import LEVELS, tiny_config

REPO = REPO_ROOT
CONTRACT = REPO / "runtime" / "bundle" / "contract.py"
SOURCE_DIRS = ("runtime", "export", "ucofia", "evaluation", "benchmarks")
# Modules that read or write bundles by the contract: they must take its names from it.
CONTRACT_USERS = ("export", "runtime/bundle", "runtime/backends")
# String literals in CONTRACT_USERS equal to a contract name that mean something else.
NOT_CONTRACT_NAMES = {
    ("export/manifest.py", "frames"): "preprocessing.frames: the number of frames sampled per video",
    ("export/report.py", "frames"): "patch_selection[].frames: how many frames the check compared",
}
# The level names' one definition (the contract's scorer outputs import it).
LEVELS_HOME = "ucofia/config.py"


def _sources(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (REPO / d).rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _module_level_names(tree: ast.Module) -> dict[str, int]:
    """Classes, functions and variables a module defines at its top level -> line."""
    names = {}
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            names[node.name] = node.lineno
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    names[target.id] = node.lineno
    return names


def _contract_names() -> set[str]:
    """Every name the contract gives a graph, tensor role, axis or file."""
    roles = {role for inputs, outputs in GRAPH_ROLES.values() for role in inputs + outputs}
    return set(GRAPH_KEYS) | roles | set(DYNAMIC_AXES) | {MANIFEST_FILE, BUNDLE_FORMAT}


@pytest.fixture(scope="module")
def exported(tiny_export):
    """The session's tiny exported bundle (``tiny_export``, tests/conftest.py): this checks its contract."""
    return tiny_export.model.config, tiny_export.bundle


@pytest.mark.slow
def test_an_exported_manifest_validates_against_the_contract(exported):
    config, out = exported
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["format"] == BUNDLE_FORMAT and set(REQUIRED_FIELDS) <= set(manifest)
    assert manifest["dynamic_axes"] == DYNAMIC_AXES
    specs = graph_specs(config, manifest["dtype"])
    assert manifest["graphs"] == {key: spec.to_dict() for key, spec in specs.items()}
    bundle = load_bundle(out)
    for key, (inputs, outputs) in GRAPH_ROLES.items():
        loaded, spec = bundle.graphs[key], specs[key]
        assert tuple(loaded.inputs) == inputs and tuple(loaded.outputs) == outputs
        assert loaded.inputs == spec.inputs and loaded.outputs == spec.outputs
        assert loaded.file == out / spec.file
        graph = onnx.load(str(loaded.file)).graph  # the ONNX graph itself has the contract's interface
        assert [v.name for v in graph.input] == spec.input_names
        assert [v.name for v in graph.output] == spec.output_names


def test_graph_specs_follow_the_roles_and_levels():
    specs = graph_specs(tiny_config(), "float16")
    assert tuple(specs) == GRAPH_KEYS
    for key, (inputs, outputs) in GRAPH_ROLES.items():
        assert tuple(specs[key].inputs) == inputs and tuple(specs[key].outputs) == outputs
        assert all(t.name == role for role, t in (specs[key].inputs | specs[key].outputs).items())
    assert tuple(specs[SCORER].outputs) == LEVELS
    assert {t.dtype for t in specs[SCORER].tensors} == {"float16"}


def test_the_loader_maps_manifest_tensors_to_contract_roles(tmp_path):
    root = build_fake_bundle(tmp_path / "bundle")
    bundle = load_bundle(root)
    assert {key: (tuple(g.inputs), tuple(g.outputs)) for key, g in bundle.graphs.items()} == GRAPH_ROLES
    manifest = json.loads((root / MANIFEST_FILE).read_text())
    manifest["graphs"][SCORER]["outputs"].pop()
    (root / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=f"must list {len(LEVELS)} tensors \\({', '.join(LEVELS)}\\)"):
        load_bundle(root)


def test_no_literal_contract_names_where_bundles_are_read_or_written():
    names = _contract_names()
    found = []
    for path in _sources(*CONTRACT_USERS):
        if path == CONTRACT:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Constant) and node.value in names
                    and (_rel(path), node.value) not in NOT_CONTRACT_NAMES):
                found.append(f"{_rel(path)}:{node.lineno} {node.value!r}")
    assert not found, "use the runtime.bundle.contract constants instead of literals:\n" + "\n".join(found)


def test_nothing_else_defines_the_contract():
    """No module (re)defines a name the contract defines (TensorSpec, GraphSpec, BUNDLE_FORMAT, ...),
    the level names live in ucofia.config alone, and no module spells out a role tuple or the levels."""
    own = set(_module_level_names(ast.parse(CONTRACT.read_text())))
    assert {"TensorSpec", "GraphSpec", "BUNDLE_FORMAT", "GRAPH_ROLES", "MANIFEST_FILE"} <= own
    role_tuples = {names for pair in GRAPH_ROLES.values() for names in pair} | {LEVELS}
    found = []
    for path in _sources(*SOURCE_DIRS):
        if path == CONTRACT:
            continue
        tree = ast.parse(path.read_text())
        for name, line in _module_level_names(tree).items():
            if name in own or (name == "LEVELS" and _rel(path) != LEVELS_HOME):
                found.append(f"{_rel(path)}:{line} defines {name}")
        if _rel(path) == LEVELS_HOME:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Tuple, ast.List)) and node.elts and all(
                    isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                values = tuple(e.value for e in node.elts)
                if values in role_tuples:
                    found.append(f"{_rel(path)}:{node.lineno} spells out {values}")
    assert not found, "import these from runtime.bundle.contract (levels: ucofia.config):\n" + "\n".join(found)


def test_import_directions_around_the_contract():
    modules = project_modules()
    graph = {name: {dep for dep in deps if dep in modules} for name, deps in import_graph().items()}
    into_export = sorted(f"{name} imports {dep}" for name, deps in graph.items() if name.split(".")[0] == "runtime"
                         for dep in deps if dep.split(".")[0] == "export")
    assert not into_export, "the runtime must not import export:\n" + "\n".join(into_export)
    contract_deps = {dep.split(".")[0] for dep in graph["runtime.bundle.contract"]}
    assert contract_deps <= {"ucofia"}, f"the contract must stand alone (torch-free), imports {contract_deps}"
    ours = ("runtime.bundle", "runtime.backends", "export")
    around = [c for c in cycles(graph) if any(m == p or m.startswith(p + ".") for m in c for p in ours)]
    assert not around, f"import cycles: {around}"
