"""tools/mutate.py (docs/testing.md, "Mutation testing"): which mutants it plants and where, that
every mutant of the listed modules compiles and changes the code, and that its lists (areas, the
equivalent mutants) name modules, tests and mutants that exist. Nothing here runs a mutant."""
from __future__ import annotations

import ast
import importlib.util
import sys

import pytest
from data_paths import REPO_ROOT

TOOL = REPO_ROOT / "tools" / "mutate.py"


@pytest.fixture(scope="module")
def mutate():
    spec = importlib.util.spec_from_file_location("ucofia_mutate_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


SNIPPET = '''
"""Module docstring."""
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from x import y

__all__ = ["f"]
LIMIT = 3


def f(a, b):
    """Docstring."""
    logger.warning("value %d", a + 1)
    crash_point("f:before")
    total = 0
    total = total + a
    if a < b and not b:
        raise ValueError(f"bad {a + 1}")
    for x in b:
        if x is None:
            continue
        total += min(x, 2)
    out[a] = -total
    print(a)
    return total
'''


def test_mutants_of_a_snippet(mutate):
    found = [(m.scope, m.op) for m in mutate.find_mutants("m.py", SNIPPET)]
    assert found == [
        ("<module>", "3->4"),
        ("f", "0->1"),
        ("f", "remove-Assign"), ("f", "Add->Sub"),          # total = total + a (a re-assignment)
        ("f", "And->Or"), ("f", "Lt->LtE@0"), ("f", "drop-Not"),
        ("f", "remove-Raise"),
        ("f", "Is->IsNot@0"), ("f", "remove-Continue"),
        ("f", "AugAdd->Sub"), ("f", "remove-AugAssign"), ("f", "min->max"), ("f", "2->3"),
        ("f", "remove-Assign"), ("f", "drop-USub"),         # out[a] = -total (an item assignment)
        ("f", "remove-Expr"),                               # print(a): a call made for its effect
    ]
    # not mutated: docstrings, the TYPE_CHECKING import, __all__, logging, crash points, f-string text
    ids = [m.id for m in mutate.find_mutants("m.py", SNIPPET)]
    assert len(ids) == len(set(ids)) and ids[3] == "m.py:f:Add->Sub#1" and ids[14] == "m.py:f:remove-Assign#2"


def test_each_mutant_compiles_and_changes_one_thing(mutate):
    original = ast.unparse(ast.parse(SNIPPET))
    for mutant in mutate.find_mutants("m.py", SNIPPET):
        changed = mutate.mutated_source(SNIPPET, mutant)
        compile(changed, "m.py", "exec")
        lines = [a for a, b in zip(original.splitlines(), changed.splitlines()) if a != b]
        assert len(original.splitlines()) == len(changed.splitlines()) and len(lines) == 1, mutant.id
    removed = next(m for m in mutate.find_mutants("m.py", SNIPPET) if m.op == "remove-Raise")
    assert "raise" not in mutate.mutated_source(SNIPPET, removed)


def test_every_mutant_of_the_areas_compiles(mutate):
    for area in mutate.AREAS.values():
        for rel in area.modules:
            source = (REPO_ROOT / rel).read_text()
            original = ast.unparse(ast.parse(source))
            for mutant in mutate.find_mutants(rel, source)[::7]:  # a seventh of them: a few seconds
                changed = mutate.mutated_source(source, mutant)
                compile(changed, rel, "exec")
                assert changed.rstrip("\n") != original, mutant.id


def test_the_lists_name_what_exists(mutate):
    for name, area in mutate.AREAS.items():
        for path in area.modules + tuple(t.split("::")[0] for t in area.tests):
            assert (REPO_ROOT / path).is_file(), (name, path)
    planted = {m.id for area in mutate.AREAS.values() for rel in area.modules
               for m in mutate.find_mutants(rel, (REPO_ROOT / rel).read_text())}
    equivalent = mutate.load_equivalent()
    assert equivalent, "tools/mutate_equivalent.txt lists no mutant"
    for ident, reason in equivalent.items():
        assert ident in planted, f"{ident} is no mutant of the areas' modules (renamed? update the list)"
        assert len(reason) > 20, ident
