"""The typed index state (runtime/index/format.py) reads every readable format and writes the JSON
the writer always wrote; the index package keeps its private names and its dependencies to itself."""
from __future__ import annotations

import ast
import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from data_paths import REPO_ROOT
from import_graph import cycles
from runtime_helpers import synthetic_index

from runtime.bundle import load_bundle
from runtime.errors import GalleryIndexError
from runtime.index import (
    FEATURE_ROLES,
    READABLE_FORMATS,
    BiasesRecord,
    GalleryIndex,
    IndexState,
    IndexWriter,
    PendingChanges,
    ShardRecord,
)
from runtime.scoring import VIDEO_ROLES

REPO = REPO_ROOT
PACKAGE = REPO / "runtime" / "index"
CONFIG = {"clip": {"embed_dim": 8}, "max_frames": 2, "format": "ucofia.config/1"}
BIASES_1 = {"bank": {"path": "/data/bank.txt", "sha256": "ab" * 32, "captions": 5}, "sk_iterations": 4,
            "ids_sha256": "cd" * 32, "levels": ["video_sentence", "frame_sentence", "patch_word"]}

# index.json as each format's writer wrote it (key order included).
FORMAT_1 = {"format": "ucofia.index/1", "fingerprint": "f" * 64, "config": CONFIG,
            "shards": [{"name": "000000", "count": 3}, {"name": "000001", "count": 1}], "biases": BIASES_1,
            "created": 1700000000.5, "bundle": "/bundles/b", "updated": 1700000100.25}
FORMAT_2 = {**FORMAT_1, "format": "ucofia.index/2", "biases": None}
FORMAT_3 = {"format": "ucofia.index/3", "fingerprint": "f" * 64, "config": CONFIG, "store": "int8",
            "shards": [{"name": "000000", "count": 3, "store": "int8", "removed": [0, 2]},
                       {"name": "ray-0123456789abcdef01234567", "count": 2, "store": "int8"}],
            "biases": {"bank": {"path": "/data/bank.txt", "sha256": "ab" * 32, "captions": 5}, "sk_iterations": 4,
                       "file": "biases-0123456789abcdef.npy", "ids_sha256": "cd" * 32,
                       "levels": ["video_sentence", "frame_sentence", "patch_word"]},
            "created": 1700000000.5, "bundle": "/bundles/b", "next_shard": 2, "updated": 1700000100.25,
            "pending": {"shards": [{"name": "000001", "count": 4, "store": "int8", "removed": [1]}],
                        "removed": {"ray-0123456789abcdef01234567": [1]}}}


def _read_before(state: dict) -> dict:
    """What reading a state gave before it was typed: the raw JSON with the legacy store filled in."""
    out = copy.deepcopy(state)
    out.setdefault("store", "float32")
    for record in out["shards"]:
        record.setdefault("store", "float32")
    return out


@pytest.mark.parametrize("state", [FORMAT_1, FORMAT_2, FORMAT_3], ids=["format1", "format2", "format3"])
def test_every_readable_format_round_trips_to_the_same_json(state):
    typed = IndexState.from_dict(json.loads(json.dumps(state)))
    assert typed.format in READABLE_FORMATS
    assert typed.to_dict() == _read_before(state)
    assert IndexState.from_dict(typed.to_dict()) == typed


def test_format_3_is_written_byte_for_byte_as_before():
    text = json.dumps(FORMAT_3, indent=1)
    assert json.dumps(IndexState.from_dict(json.loads(text)).to_dict(), indent=1) == text


def test_records_are_typed():
    old = IndexState.from_dict(FORMAT_1)
    assert old.store == "float32" and old.next_shard is None and old.pending is None
    assert old.shards == [ShardRecord("000000", 3), ShardRecord("000001", 1)]
    assert old.biases.file is None and old.biases.file_name == "biases.npy"  # format 1/2 name
    assert old.biases.bank.captions == 5 and old.biases.levels == ("video_sentence", "frame_sentence", "patch_word")
    assert old.first_free_shard_number() == 2

    new = IndexState.from_dict(FORMAT_3)
    assert new.shards[0].removed == (0, 2) and new.shards[0].live_count == 1
    assert new.biases.file_name == "biases-0123456789abcdef.npy"
    assert new.pending == PendingChanges(shards=[ShardRecord("000001", 4, "int8", (1,))],
                                         removed={"ray-0123456789abcdef01234567": (1,)})


def test_fields_this_code_does_not_know_are_kept():
    state = {**FORMAT_3, "added_later": {"x": [1]},
             "shards": [{**FORMAT_3["shards"][0], "checksum": "c"}] + FORMAT_3["shards"][1:],
             "biases": {**FORMAT_3["biases"], "solver": "sk2", "bank": {**FORMAT_3["biases"]["bank"], "lang": "en"}}}
    assert IndexState.from_dict(state).to_dict() == state


def test_effective_shards_apply_pending_rows_and_removals():
    state = IndexState.from_dict(FORMAT_3)
    assert state.effective_shards(include_pending=False) == state.shards
    assert [r.to_dict() for r in state.effective_shards(include_pending=True)] == [
        {"name": "000000", "count": 3, "store": "int8", "removed": [0, 2]},
        {"name": "ray-0123456789abcdef01234567", "count": 2, "store": "int8", "removed": [1]},
        {"name": "000001", "count": 4, "store": "int8", "removed": [1]}]
    assert state.shard_names() == {"000000", "000001", "ray-0123456789abcdef01234567"}


def test_biases_record_keeps_the_key_order_of_stage_biases():
    record = BiasesRecord.from_dict({**BIASES_1, "file": "biases-1.npy"})
    assert list(record.to_dict()) == ["bank", "sk_iterations", "file", "ids_sha256", "levels"]
    assert list(BiasesRecord.from_dict(BIASES_1).to_dict()) == ["bank", "sk_iterations", "ids_sha256", "levels"]


def test_a_written_index_reads_back_as_the_file_says(fake_bundle, tmp_path):
    bundle = load_bundle(fake_bundle)
    root = synthetic_index(tmp_path / "index", bundle, 5, shard=2)
    with IndexWriter(root, bundle) as writer:
        writer.remove(["v1"])
        writer.set_biases(np.zeros((3, 4), np.float32), {"bank": {"path": "synthetic"}})
    text = (root / "index.json").read_text()
    state = GalleryIndex(root).state
    assert json.dumps(state.to_dict(), indent=1) == text
    assert state.shards[0].removed == (1,) and state.biases.bank.sha256 is None


@pytest.mark.parametrize("change", [lambda s: s.pop("shards"), lambda s: s.update(shards=[{"count": 1}]),
                                    lambda s: s.update(config=[])])
def test_a_malformed_state_is_a_clear_error(fake_bundle, tmp_path, change):
    bundle = load_bundle(fake_bundle)
    root = synthetic_index(tmp_path / "index", bundle, 2)
    state = json.loads((root / "index.json").read_text())
    change(state)
    (root / "index.json").write_text(json.dumps(state))
    with pytest.raises(GalleryIndexError, match="is corrupt.*rebuild the index"):
        GalleryIndex(root)


def test_the_index_stores_the_scorers_video_inputs():
    assert FEATURE_ROLES == VIDEO_ROLES


# ---- the package's boundary -----------------------------------------------------------------------
SCANNED = ("runtime", "evaluation", "benchmarks", "tests", "ucofia", "export")
# What runtime/index/* may import besides itself (runtime.bundle: for type hints only).
# runtime.bundle.contract: the names of the scorer's video inputs (constants; loads no bundle).
ALLOWED_IMPORTS = {"numpy", "ucofia.config", "ucofia.io_utils", "runtime.errors", "runtime.faults",
                   "runtime.bundle.contract"}


def _python_files(outside_package: bool) -> list[Path]:
    if not outside_package:
        return sorted(PACKAGE.glob("*.py"))
    files = [p for top in SCANNED for p in sorted((REPO / top).rglob("*.py"))]
    return [p for p in files if PACKAGE not in p.parents and ".venv" not in p.parts]


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _defined_private_names(path: Path) -> set[str]:
    """Private names a file defines: module and class members, and ``self._x`` attributes."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {name for name in names if _private(name)}


def _package_only_private_names() -> set[str]:
    """Private names of the index package that nothing outside it defines (an access to one of them
    from outside can only mean the package's)."""
    inside = set().union(*(_defined_private_names(p) for p in _python_files(outside_package=False)))
    outside = set().union(*(_defined_private_names(p) for p in _python_files(outside_package=True)))
    return inside - outside


def test_no_module_outside_the_index_package_uses_its_private_names():
    private = _package_only_private_names()
    assert {"_shards", "_offsets", "_bias_values", "_read_stored", "_layouts", "_locate", "_save_state"} <= private
    found = []
    for path in _python_files(outside_package=True):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in private:
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: .{node.attr}")
            elif (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("runtime.index")
                  and any(_private(alias.name) for alias in node.names)):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: from {node.module} import a private name")
    assert not found, "private names of runtime.index used outside it:\n" + "\n".join(found)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, only for type checking) of every import in a file, function-level ones included."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
                   for stmt in node.body for n in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, id(node) in typing_only) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.module, id(node) in typing_only))
    return found


def test_the_index_package_depends_on_nothing_of_the_model_side():
    bad = []
    for path in _python_files(outside_package=False):
        for module, typing_only in _imports(path):
            top = module.split(".")[0]
            allowed = (top in sys.stdlib_module_names or module in ALLOWED_IMPORTS
                       or module.startswith("runtime.index.") or (module == "runtime.bundle" and typing_only))
            if not allowed:
                bad.append(f"{path.name}: {module}")
    assert not bad, bad


def test_the_index_modules_import_each_other_without_cycles():
    graph = {}
    for path in _python_files(outside_package=False):
        if path.name == "__init__.py":
            continue
        name = f"runtime.index.{path.stem}"
        deps = {module for module, _ in _imports(path) if module.startswith("runtime.index")}
        assert "runtime.index" not in deps, f"{name} imports the package itself (a cycle through __init__)"
        graph[name] = deps
    assert cycles(graph) == [], "import cycles between the index modules"
