#!/usr/bin/env python3
"""Mutation testing of chosen runtime modules: plant one small bug at a time, run the tests of its
area, and report the mutants no test noticed (docs/testing.md, "Mutation testing").

    python tools/mutate.py                         # every area (about an hour on 2 cores)
    python tools/mutate.py --area stage1 --area windows
    python tools/mutate.py --area index --sample 40 --seed 1   # 40 mutants of the area, drawn at random
    python tools/mutate.py --area updates --list   # the mutants, without running anything
    python tools/mutate.py --only 'runtime/index/updates.py:_winners:Eq->NotEq#1'   # one mutant
    python tools/mutate.py --jobs 2 --json out.json

Mutants (planted with ``ast``, one per run): arithmetic operators (``+``/``-``, ``*``/``/``, ``//``,
``%``), comparisons (``<``/``<=``, ``>``/``>=``, ``==``/``!=``, ``in``/``not in``, ``is``/``is not``),
``and``/``or``, a dropped ``not`` or unary minus, ``min``/``max`` swapped, constants (a number n
becomes n + 1, ``True``/``False`` swapped) and removed statements (a call made for its effect, an
augmented assignment, a re-assignment, an assignment to an attribute or item, ``raise``,
``continue``, ``break``). Not mutated: docstrings, f-strings and other message text, type
annotations, decorators, ``if TYPE_CHECKING:`` blocks, ``__all__`` and logging calls.

Each mutant runs in a temporary copy of the checkout (the files git knows, plus untracked ones it
does not ignore): the working tree is never written, so no mutant can be left behind or committed,
whatever stops the run (Ctrl+C included); the copies are deleted at the end. Tests run with
``-x -m "not slow"`` (``--slow``: the slow ones too) and no bytecode cache, so each run compiles the
mutated module afresh. A mutant is *killed* when a test fails (or the run exceeds its time limit:
``--timeout-factor`` x the area's baseline, at least 20 s), *survives* when the tests pass.

Mutants judged equivalent (no test can tell them from the original) are listed with the reason in
``tools/mutate_equivalent.txt`` and left out of the score; docs/testing.md explains each one.
A mutant's id is ``file:function:mutation#n`` (n-th such mutation in that function), stable while
the function's code is.

The tool uses the standard library only; it runs pytest with the interpreter that runs it
(``/path/to/.venv/bin/python tools/mutate.py``).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT_FILE = ROOT / "tools" / "mutate_equivalent.txt"


@dataclass(frozen=True)
class Area:
    """Modules mutated together and the tests that should notice (fastest-killing first)."""

    modules: tuple[str, ...]
    tests: tuple[str, ...]
    scopes: tuple[str, ...] = ()  # only mutants in these functions or classes (qualified names); () = all


RT = "tests/runtime/"
UPDATES = RT + "test_runtime_updates.py"
AREAS: dict[str, Area] = {
    "index": Area(
        ("runtime/index/reader.py", "runtime/index/writer.py", "runtime/index/shards.py",
         "runtime/index/compaction.py", "runtime/index/format.py", "runtime/index/state.py",
         "runtime/index/entries.py"),
        (RT + "test_runtime_index_format.py", RT + "test_runtime_index.py", UPDATES, RT + "test_runtime_windows.py")),
    "updates": Area(("runtime/index/updates.py",), (UPDATES,)),
    "store": Area(
        ("runtime/index/store.py",),
        (UPDATES + "::test_store_encode_decode_bounds", UPDATES + "::test_store_limits_and_sizes",
         RT + "test_runtime_non_finite.py", UPDATES + "::test_each_store_round_trips_through_search_and_evaluate",
         UPDATES + "::test_existing_index_keeps_its_store",
         UPDATES + "::test_merge_converts_the_store_and_refuses_other_bundles")),
    "search": Area(
        ("runtime/search/searcher.py", "runtime/search/grouping.py", "runtime/search/two_stage.py",
         "runtime/search/records.py"),
        (RT + "test_runtime_search.py", RT + "test_runtime_index.py", RT + "test_runtime_windows.py",
         RT + "test_runtime_stage1.py::test_searcher_two_stage_recall_against_flat", RT + "test_runtime_filters.py")),
    "filters": Area(("runtime/search/filters.py",),
                    (RT + "test_runtime_filter_grammar.py", RT + "test_runtime_filters.py")),
    "examples": Area(("runtime/search/similar.py", "runtime/describe.py"),
                     (RT + "test_runtime_similar.py", RT + "test_runtime_describe.py")),
    "stage1": Area(
        ("runtime/search/stage1.py",),
        (RT + "test_runtime_stage1.py", UPDATES + "::test_stage1_kinds_are_recorded_and_exact_with_a_full_shortlist")),
    "windows": Area(("runtime/windows.py",), (RT + "test_runtime_windows.py",)),
    "scorer-precision": Area(("runtime/backends/precision.py",), (RT + "test_scorer_precision.py",)),
    "scorer-split": Area(("runtime/backends/text_side.py", "runtime/backends/base.py"),
                         (RT + "test_scorer_text_side.py", RT + "test_runtime_backends.py")),
    "evaluation": Area(
        ("runtime/evaluate.py", "evaluation/moments.py"),
        ("tests/evaluation/test_moments.py", RT + "test_runtime_evaluate.py",
         RT + "test_runtime_windows.py::test_evaluate_on_windows_scores_files_by_their_best_window_and_moments",
         RT + "test_runtime_windows.py::test_evaluate_whole_file_index_is_the_moment_baseline")),
    # signed links and key files; the request guard (hosts, origins, body limits, HEAD); the
    # batcher. Their tests run in process (ServerThread), so a mutant costs seconds, not a server.
    "serve-auth": Area(("runtime/serve/auth.py",),
                       (RT + "serve/test_serve_auth.py", RT + "serve/test_serve_cli.py",
                        RT + "serve/test_serve_keys.py::test_api_key_commands_lock_the_file")),
    "serve-guard": Area(("runtime/serve/guard.py",),
                        (RT + "serve/test_serve_guard.py", RT + "serve/test_serve_http.py",
                         RT + "serve/test_serve_logs.py")),
    "serve-batching": Area(("runtime/serve/batching.py",),
                           (RT + "serve/test_serve_batcher_rules.py", RT + "serve/test_serve_batching.py")),
    # serve --ray without Ray: the shard plan, a shard's searcher, the merge and the fan-out (the
    # Ray Serve deployments themselves run in the namespace test, minutes a run)
    "cluster": Area(("runtime/cluster/partition.py", "runtime/cluster/shard.py", "runtime/cluster/merge.py",
                     "runtime/cluster/fanout.py"),
                    (RT + "cluster/test_sharded_search.py", RT + "cluster/test_sharded_service.py")),
    # hedged shard calls: when a second call is sent, and the fan-out's waiting on several calls
    "cluster-hedging": Area(("runtime/cluster/hedging.py", "runtime/cluster/fanout.py"),
                            (RT + "cluster/test_hedging.py", RT + "cluster/test_sharded_search.py"),
                            scopes=("HedgePolicy", "parse_hedge", "_ShardCalls", "_cancel", "ShardedSearcher._gather",
                                    "ShardedSearcher._launch", "ShardedSearcher._start_due",
                                    "ShardedSearcher._settle", "ShardedSearcher._failed")),
    # serve --ray's proxy settings and the HAProxy shim (the kill tests that need them run in the
    # namespace scenarios, minutes a run; these check the environment and the configuration)
    "ray-proxy": Area(("runtime/cluster/ingress_proxy.py", "runtime/cluster/haproxy_shim.py"),
                      (RT + "cluster/test_serve_ray_options.py",)),
    # the driver's own logic; building the Ray Data pipeline (_dataset, connect) runs on a Ray
    # cluster only, which the slow Ray tests start (minutes a run: too slow for one per mutant)
    "ray-driver": Area(("runtime/distributed/pipeline.py",), (RT + "test_ray_index.py",),
                       scopes=("_Arrivals", "actor_resources", "cluster_shape", "RayIndexRun._receive",
                               "RayIndexRun._commit", "RayIndexRun._run_once", "RayIndexRun.run")),
}

# ---- planting mutants -----------------------------------------------------------------------------
BINOPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult,
          ast.Mod: ast.FloorDiv, ast.BitOr: ast.BitAnd, ast.BitAnd: ast.BitOr, ast.LShift: ast.RShift,
          ast.RShift: ast.LShift}
CMPOPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
          ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
BOOLOPS = {ast.And: ast.Or, ast.Or: ast.And}
SWAPPED_CALLS = {"min": "max", "max": "min"}
LOGGERS = {"logger", "logging", "log"}
# Fault-injection hooks (runtime.faults): removing one changes only a run that injects a fault.
HOOKS = {"crash_point", "crash_once"}


@dataclass
class Mutant:
    file: str        # relative to the checkout
    scope: str       # qualified name of the enclosing function or class ("<module>" at top level)
    op: str          # what the mutation does, e.g. "Lt->LtE"
    number: int      # n-th mutation of this op in this scope (from 1)
    line: int
    path: tuple[int, ...] = field(repr=False)  # where the node is: child positions from the module

    @property
    def id(self) -> str:
        return f"{self.file}:{self.scope}:{self.op}#{self.number}"


def _children(node: ast.AST) -> list[tuple[str, int | None, ast.AST]]:
    """(field, position in a list or None, child) in a fixed order."""
    out = []
    for name, value in ast.iter_fields(node):
        if isinstance(value, list):
            out.extend((name, i, v) for i, v in enumerate(value) if isinstance(v, ast.AST))
        elif isinstance(value, ast.AST):
            out.append((name, None, value))
    return out


def _is_docstring(node: ast.AST, parent: ast.AST | None) -> bool:
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            and parent is not None and getattr(parent, "body", [None])[0] is node)


def _is_logging_or_hook(call: ast.AST) -> bool:
    """A call such as ``logger.warning(...)`` or ``crash_point(...)``."""
    if not isinstance(call, ast.Call):
        return False
    if isinstance(call.func, ast.Name) and call.func.id in HOOKS:
        return True
    func = call.func
    while isinstance(func, ast.Attribute):
        func = func.value
    return isinstance(func, ast.Name) and func.id in LOGGERS


def _skipped(node: ast.AST) -> bool:
    """Subtrees never mutated: message text, annotations, decorators, TYPE_CHECKING imports, __all__."""
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
        return True
    if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
        return True
    return isinstance(node, ast.Expr) and _is_logging_or_hook(node.value)


def _operations(node: ast.AST, parent: ast.AST | None, assigned: set[str]) -> list[str]:
    """The mutations that apply to ``node`` itself (``assigned``: names bound earlier in its scope)."""
    ops: list[str] = []
    if isinstance(node, ast.BinOp) and type(node.op) in BINOPS:
        if not (isinstance(node.op, ast.Mod) and isinstance(node.left, ast.Constant)
                and isinstance(node.left.value, str)):
            ops.append(f"{type(node.op).__name__}->{BINOPS[type(node.op)].__name__}")
    elif isinstance(node, ast.AugAssign) and type(node.op) in BINOPS:
        ops.append(f"Aug{type(node.op).__name__}->{BINOPS[type(node.op)].__name__}")
    elif isinstance(node, ast.Compare):
        ops.extend(f"{type(op).__name__}->{CMPOPS[type(op)].__name__}@{i}"
                   for i, op in enumerate(node.ops) if type(op) in CMPOPS)
    elif isinstance(node, ast.BoolOp):
        ops.append(f"{type(node.op).__name__}->{BOOLOPS[type(node.op)].__name__}")
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
        ops.append(f"drop-{type(node.op).__name__}")
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in SWAPPED_CALLS:
        ops.append(f"{node.func.id}->{SWAPPED_CALLS[node.func.id]}")
    elif isinstance(node, ast.Constant) and not isinstance(parent, ast.JoinedStr):
        if isinstance(node.value, bool):
            ops.append(f"{node.value}->{not node.value}")
        elif isinstance(node.value, (int, float)):
            ops.append(f"{node.value!r}->{node.value + 1!r}")
    if isinstance(node, ast.stmt) and not _is_docstring(node, parent):
        removable = isinstance(node, (ast.AugAssign, ast.Raise, ast.Continue, ast.Break))
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            removable = True
        if isinstance(node, ast.Assign):
            removable = any(isinstance(t, (ast.Attribute, ast.Subscript)) or
                            (isinstance(t, ast.Name) and t.id in assigned) for t in node.targets)
        if removable:
            ops.append("remove-" + type(node).__name__)
    return ops


def find_mutants(rel: str, source: str) -> list[Mutant]:
    """Every mutant of one module, in source order."""
    tree = ast.parse(source)
    found: list[Mutant] = []
    counts: Counter[tuple[str, str]] = Counter()

    def visit(node: ast.AST, parent: ast.AST | None, path: tuple[int, ...], scope: str, seen: set[str]) -> None:
        if _skipped(node):
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            scope = node.name if scope == "<module>" else f"{scope}.{node.name}"
            seen = set()
        ops = _operations(node, parent, seen)
        for op in ops:
            base = op.split("@")[0]
            counts[(scope, base)] += 1
            found.append(Mutant(rel, scope, op, counts[(scope, base)], getattr(node, "lineno", 0), path))
        for position, (name, _, child) in enumerate(_children(node)):
            if name in ("annotation", "returns", "decorator_list", "type_comment"):
                continue
            if isinstance(node, ast.arg):
                continue
            visit(child, node, path + (position,), scope, seen)
        if isinstance(node, ast.stmt):  # names bound so far in this scope: re-assigning them is removable
            seen.update(n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))

    visit(tree, None, (), "<module>", set())
    return found


def _node_at(tree: ast.AST, path: tuple[int, ...]) -> tuple[ast.AST, ast.AST | None, str, int | None]:
    node, parent, where, index = tree, None, "", None
    for position in path:
        where, index, child = _children(node)[position]
        parent, node = node, child
    return node, parent, where, index


def mutated_source(source: str, mutant: Mutant) -> str:
    """``source`` with ``mutant`` planted (the module re-written by ast.unparse)."""
    tree = ast.parse(source)
    node, parent, where, index = _node_at(tree, mutant.path)
    op = mutant.op
    if op.startswith("remove-"):
        replacement = ast.Pass()
        siblings = getattr(parent, where)
        siblings[index] = ast.copy_location(replacement, node)
    elif isinstance(node, (ast.AugAssign, ast.BinOp)):
        node.op = BINOPS[type(node.op)]()
    elif isinstance(node, ast.Compare):
        i = int(op.split("@")[1])
        node.ops[i] = CMPOPS[type(node.ops[i])]()
    elif isinstance(node, ast.BoolOp):
        node.op = BOOLOPS[type(node.op)]()
    elif isinstance(node, ast.UnaryOp):
        new = node.operand
        if index is None:
            setattr(parent, where, new)
        else:
            getattr(parent, where)[index] = new
    elif isinstance(node, ast.Call):
        node.func = ast.Name(SWAPPED_CALLS[node.func.id], ast.Load())
    elif isinstance(node, ast.Constant):
        node.value = (not node.value) if isinstance(node.value, bool) else node.value + 1
    else:
        raise ValueError(f"cannot plant {mutant.id}")
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def describe(source: str, mutant: Mutant) -> str:
    """The original line and what the mutant does to it."""
    line = source.splitlines()[mutant.line - 1].strip() if mutant.line else ""
    return f"{mutant.file}:{mutant.line}: {mutant.op} in `{line[:100]}`"


# ---- running --------------------------------------------------------------------------------------
def checkout_files() -> list[str]:
    """The files of the working tree git knows of, plus untracked ones it does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def copy_tree(files: list[str], dest: Path) -> Path:
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    return dest


def pytest_command(area: Area, slow: bool) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
           "--no-header", "-W", "ignore"]
    if not slow:
        cmd += ["-m", "not slow"]
    return cmd + [t for t in area.tests if (ROOT / t.split("::")[0]).exists()]


RUNNING: set[subprocess.Popen] = set()  # test runs in progress (killed on Ctrl+C)
RUNNING_LOCK = threading.Lock()


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # pytest and whatever it started (its own session)
        proc.wait()


def run_tests(tree: Path, area: Area, slow: bool, timeout: float | None) -> tuple[str, float, str]:
    """('passed' | 'failed' | 'timeout' | 'error N', seconds, output tail) of the area's tests in ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(pytest_command(area, slow), cwd=tree, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    with RUNNING_LOCK:
        RUNNING.add(proc)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        return "timeout", time.perf_counter() - start, ""
    finally:
        _kill(proc)
        with RUNNING_LOCK:
            RUNNING.discard(proc)
    seconds = time.perf_counter() - start
    tail = output.decode(errors="replace")[-3000:]
    if proc.returncode == 0:
        return "passed", seconds, tail
    if proc.returncode == 5:
        raise SystemExit(f"no tests collected for {area.tests}")
    return ("failed" if proc.returncode == 1 else f"error {proc.returncode}"), seconds, tail


def load_equivalent() -> dict[str, str]:
    """Mutant id -> why it is equivalent (tools/mutate_equivalent.txt: ``id  # reason`` lines)."""
    out = {}
    if EQUIVALENT_FILE.is_file():
        for line in EQUIVALENT_FILE.read_text().splitlines():
            text = line.strip()
            if text and not text.startswith("#"):
                ident, _, reason = text.partition(" # ")
                out[ident.strip()] = reason.strip()
    return out


class Workers:
    """Temporary copies of the checkout, one per job; a mutant is planted in one, tested, and the
    pristine module is written back before the copy takes the next mutant."""

    def __init__(self, jobs: int, base: Path) -> None:
        files = checkout_files()
        self.trees = [copy_tree(files, base / f"tree{i}") for i in range(jobs)]
        self.free = list(self.trees)
        self.lock = threading.Lock()

    def take(self) -> Path:
        with self.lock:
            return self.free.pop()

    def give(self, tree: Path) -> None:
        with self.lock:
            self.free.append(tree)


def run_mutant(workers: Workers, area: Area, mutant: Mutant, source: str, slow: bool,
               timeout: float) -> tuple[str, float]:
    tree = workers.take()
    target = tree / mutant.file
    try:
        target.write_text(mutated_source(source, mutant))
        outcome, seconds, _ = run_tests(tree, area, slow, timeout)
        return outcome, seconds
    finally:
        target.write_text(source)
        workers.give(tree)


def baseline(tree: Path, name: str, area: Area, slow: bool) -> float:
    """Seconds the area's tests take with its modules re-written by ast.unparse but not mutated
    (so that a difference of the re-written source never counts as a kill); exits when they fail."""
    sources = {rel: (tree / rel).read_text() for rel in area.modules}
    try:
        for rel, source in sources.items():
            (tree / rel).write_text(ast.unparse(ast.parse(source)) + "\n")
        outcome, seconds, tail = run_tests(tree, area, slow, None)
    finally:
        for rel, source in sources.items():
            (tree / rel).write_text(source)
    if outcome != "passed":
        raise SystemExit(f"{name}: the tests fail without any mutant ({outcome}); fix them first:\n{tail}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--area", action="append", choices=sorted(AREAS), help="areas to mutate (default: all)")
    parser.add_argument("--sample", type=int, help="at most this many mutants per area, drawn at random")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample")
    parser.add_argument("--only", action="append", help="run only this mutant id (repeatable)")
    parser.add_argument("--again", type=Path, metavar="JSON",
                        help="run only the mutants that survived in this earlier --json output")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--jobs", type=int, default=1, help="mutants tested at once (each in its own copy)")
    parser.add_argument("--slow", action="store_true", help="run the slow tests too")
    parser.add_argument("--timeout-factor", type=float, default=3.0)
    parser.add_argument("--json", type=Path, help="write every mutant's outcome here")
    args = parser.parse_args(argv)

    equivalent = load_equivalent()
    if args.again:
        again = [r["id"] for r in json.loads(args.again.read_text()) if r["status"] == "survived"]
        if not again:
            print(f"no mutant survived in {args.again}")
            return 0
        args.only = (args.only or []) + again
        args.area = args.area or sorted({r["area"] for r in json.loads(args.again.read_text())})
    areas = args.area or list(AREAS)
    plan: list[tuple[str, Mutant, str]] = []
    for name in areas:
        mutants = []
        area = AREAS[name]
        for rel in area.modules:
            source = (ROOT / rel).read_text()
            mutants.extend((name, m, source) for m in find_mutants(rel, source)
                           if not area.scopes or any(m.scope == s or m.scope.startswith(s + ".") for s in area.scopes))
        if args.only:
            mutants = [x for x in mutants if x[1].id in args.only]
        if args.sample and len(mutants) > args.sample:
            mutants = sorted(random.Random(f"{args.seed}:{name}").sample(mutants, args.sample),
                             key=lambda x: (x[1].file, x[1].line))
        plan.extend(mutants)
    if args.list:
        for name, mutant, source in plan:
            mark = "  (equivalent)" if mutant.id in equivalent else ""
            print(f"{name:10} {mutant.id}{mark}\n           {describe(source, mutant)}")
        print(f"{len(plan)} mutants")
        return 0
    if not plan:
        print("no mutants selected")
        return 1

    def stop(signum, frame):  # `kill` stops a run like Ctrl+C (a background job may ignore SIGINT)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, stop)
    started = time.perf_counter()
    results: list[dict] = []
    base = Path(tempfile.mkdtemp(prefix="ucofia-mutate-"))
    pool = ThreadPoolExecutor(max_workers=max(1, args.jobs))
    try:
        workers = Workers(max(1, args.jobs), base)
        limits: dict[str, float] = {}
        for name in dict.fromkeys(n for n, _, _ in plan):
            seconds = baseline(workers.trees[0], name, AREAS[name], args.slow)
            limits[name] = max(20.0, args.timeout_factor * seconds)
            print(f"{name}: baseline {seconds:.1f}s, {sum(n == name for n, _, _ in plan)} mutants", flush=True)

        def one(item: tuple[str, Mutant, str]) -> dict:
            name, mutant, source = item
            outcome, seconds = run_mutant(workers, AREAS[name], mutant, source, args.slow, limits[name])
            status = {"passed": "survived", "failed": "killed", "timeout": "killed (timeout)"}.get(outcome, outcome)
            if mutant.id in equivalent:
                status = "equivalent" if outcome == "passed" else f"{status} (listed as equivalent!)"
            record = {"area": name, "id": mutant.id, "line": mutant.line, "status": status,
                      "seconds": round(seconds, 1), "what": describe(source, mutant)}
            print(f"[{status:16}] {seconds:5.1f}s {describe(source, mutant)}", flush=True)
            return record

        results = list(pool.map(one, plan))
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        with RUNNING_LOCK:
            running = list(RUNNING)
        for proc in running:
            _kill(proc)
        pool.shutdown(wait=True)  # each worker writes its pristine module back before it ends
        print("interrupted: the working tree was never changed; the temporary copies are deleted", file=sys.stderr)
        return 130
    finally:
        pool.shutdown(wait=True)
        shutil.rmtree(base, ignore_errors=True)

    print(f"\n{'area':12} {'killed':>7} {'survived':>9} {'equivalent':>11} {'score':>7}")
    for name in dict.fromkeys(r["area"] for r in results):
        mine = [r for r in results if r["area"] == name]
        killed = sum(r["status"].startswith("killed") for r in mine)
        survived = [r for r in mine if r["status"] == "survived"]
        equiv = sum(r["status"] == "equivalent" for r in mine)
        scored = killed + len(survived)
        score = 100.0 * killed / scored if scored else 100.0
        print(f"{name:12} {killed:7} {len(survived):9} {equiv:11} {score:6.1f}%")
    survivors = [r for r in results if r["status"] == "survived" or "error" in r["status"]]
    if survivors:
        print("\nsurvivors (no test failed):")
        for r in survivors:
            print(f"  {r['id']}\n      {r['what']}" + ("" if r["status"] == "survived" else f"\n      {r['status']}"))
    print(f"\n{len(results)} mutants in {time.perf_counter() - started:.0f}s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
