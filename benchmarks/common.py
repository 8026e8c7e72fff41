"""Helpers shared by the benchmark scripts: machine description, timing, memory, matmul rate.

Benchmarks are scripts (``.venv/bin/python benchmarks/<name>.py``), not tests. Each measures the
things it compares side by side in one run and writes a JSON result that describes the machine
(CPU model, cores, library versions, thread settings, load average before and after).
This module imports neither torch nor onnxruntime at import time.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# The optional data folder kept outside the repository (MSR-VTT sample, more real clips); the
# same lookup as tests/helpers/data_paths.py: $UCOFIA_SHARED_DIR, else the folder "shared" beside the checkout.
SHARED = Path(os.environ.get("UCOFIA_SHARED_DIR") or REPO.parent / "shared").expanduser()
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "UCOFIA_RUN_THREADS")


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


class CpuMonitor:
    """How busy OTHER processes kept the cores while a benchmark ran: the machine's non-idle CPU
    time (/proc/stat) minus this process's and its waited-for children's (getrusage), over the
    wall time. Unlike the load average it does not lag and does not count this benchmark."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        try:
            fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
            ticks = os.sysconf("SC_CLK_TCK")
            busy = (sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0.0)) / ticks  # minus idle, iowait
        except (OSError, ValueError, IndexError):
            busy = float("nan")
        own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                  for f in ("ru_utime", "ru_stime"))
        return time.perf_counter(), busy, own

    def others_cores(self) -> float:
        """Average number of cores other processes kept busy since this monitor started."""
        wall0, busy0, own0 = self.start
        wall1, busy1, own1 = self._sample()
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-9))


def contention(monitor: CpuMonitor, threads: int) -> dict[str, Any]:
    """Whether other processes competed for the cores while a benchmark ran (see CpuMonitor).

    When they did, torch with several threads loses disproportionately (its OpenMP threads wait
    for one another at every op), so ratios against multi-threaded torch overstate; single-
    threaded sides interleaved in time stay comparable.
    """
    cpus = available_cpus()
    others = round(monitor.others_cores(), 2)
    contended = others + threads > cpus + 0.25 if threads < cpus else others > 0.25
    note = (f"other processes kept {others} of {cpus} cores busy on average during this run ({threads} "
            "thread(s) per side): " + ("ratios against torch with several threads overstate the speed-up; prefer "
                                       "the --threads 1 run" if threads > 1 else
                                       "both sides single-threaded and interleaved, so the ratio stays comparable")
            ) if contended else (f"other processes used {others} of {cpus} cores on average: enough cores were left "
                                 f"for the {threads} thread(s) of the side running at any time")
    return {"contended": contended, "other_processes_cores_busy": others, "note": note}


def versions() -> dict[str, str]:
    """Versions of the libraries the benchmarks use (those importable here)."""
    out = {"python": platform.python_version()}
    for name in ("numpy", "torch", "onnxruntime", "onnx", "faiss", "av"):
        try:
            module = __import__(name)
            out[name] = str(getattr(module, "__version__", "?"))
        except Exception:  # not installed, or fails to import: say so
            out[name] = "not importable"
    return out


def machine(extra_threads: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a result depends on: CPU, cores, memory, versions, thread settings, load."""
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        mem_gib = None
    threads = {k: os.environ.get(k) for k in THREAD_ENV}
    try:
        import torch

        threads["torch_num_threads"] = torch.get_num_threads()
    except Exception:
        pass
    threads.update(extra_threads or {})
    return {
        "cpu_model": cpu_model(), "cpus_available": available_cpus(), "cpu_count": os.cpu_count(),
        "memory_gib": mem_gib, "platform": platform.platform(), "versions": versions(),
        "threads": threads, "load_average_1_5_15": load_average(),
    }


def _proc_status_mib(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mib() -> float:
    """Current resident set size of this process (MiB)."""
    value = _proc_status_mib("VmRSS")
    return float("nan") if value is None else value


def rss_breakdown_mib() -> dict[str, float | None]:
    """Current RSS split into anonymous (private) memory and mapped files (e.g. memory-mapped
    index shards, which the page cache can drop) -- MiB."""
    return {k: (None if (v := _proc_status_mib(k)) is None else round(v, 1)) for k in ("RssAnon", "RssFile")}


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB).

    VmHWM, the high-water mark of this process image: ``ru_maxrss`` would also count the parent's
    RSS at fork time (Linux keeps it across exec), which inflates a subprocess's figure.
    """
    value = _proc_status_mib("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if value is None else value


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Run ``fn`` ``warmup`` + ``repeats`` times; wall seconds (best, median) of the timed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"best_s": min(times), "median_s": statistics.median(times), "runs": repeats}


def matmul_session(intra_threads: int):
    """An onnxruntime CPU session of a single float32 MatMul ``c = a @ b`` (dynamic shapes).

    Its idle intra-op threads sleep instead of spinning: a spinning pool keeps the cores busy after
    its run and slows whatever is timed next in the process (measured: 2 concurrent single-threaded
    products ran at 154 instead of 290 GFLOP/s right after a spinning two-thread run).
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [None, None]) for x in "ab"],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [None, None])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])


def matmul_rates(threads: int, n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Measured float32 GEMM rate (GFLOP/s) of an n x n x n product: numpy (its BLAS) and
    onnxruntime's MatMul with ``threads`` intra-op threads, and onnxruntime with ``threads``
    concurrent single-threaded runs (the runtime scorer's arrangement). Best of ``repeats``."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flops = 2.0 * n ** 3
    out = {"n": n, "numpy_gflops": flops / timed(lambda: a @ b, repeats)["best_s"] / 1e9}
    try:
        multi = matmul_session(threads)
    except ImportError:
        return out
    out["onnxruntime_gflops"] = flops / timed(lambda: multi.run(None, {"a": a, "b": b}), repeats)["best_s"] / 1e9
    if threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        single = matmul_session(1)
        with ThreadPoolExecutor(threads) as pool:
            def parallel() -> None:
                list(pool.map(lambda _: single.run(None, {"a": a, "b": b}), range(threads)))
            best = timed(parallel, repeats)["best_s"]
        out["onnxruntime_concurrent_gflops"] = threads * flops / best / 1e9
    out = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in out.items()}
    out["best_gflops"] = max(v for k, v in out.items() if k.endswith("_gflops"))
    return out


def tile_product_shape(cfg, tile: tuple[int, int], concurrent: int) -> tuple[int, int, int]:
    """(m, k, n) whose split into ``concurrent`` column blocks is the runtime scorer's own tile
    product, [v * P, D] x [D, t * L] per concurrent call, for a ``tile`` of (t texts, v videos):
    that shape may run faster than the level's whole product."""
    t, v = tile
    return v * cfg.num_pixels, cfg.embed_dim, concurrent * t * cfg.max_words


# How long each method of a MatmulProbe keeps repeating its product per run(): long enough that a
# core woken from idle or a BLAS pool still spinning from the previous method weighs little (one
# product per dose measured the floor up to 25 % low on a 2-vCPU VM).
PROBE_DOSE_S = 0.25


class MatmulProbe:
    """The sustained float32 GEMM rate, measured in doses interleaved with other work so that it
    sees the same load.

    Each ``run()`` gives every method, on every shape ([m, k] x [k, n]; default n^3 with
    n = 2048), one dose: one untimed product, then the product repeated for ``dose_s`` seconds.
    Methods: numpy (its BLAS, threads via the environment); onnxruntime's MatMul with ``threads``
    intra-op threads; and, for threads > 1, ``threads`` threads each running its own
    single-threaded onnxruntime session on its share of the n columns, back to back without
    waiting for each other (the runtime scorer's arrangement: concurrent single-threaded calls).
    ``rates()`` gives GFLOP/s per shape and method over all runs, and the best of them all: the
    floor a benchmark sets its GEMM-bound work against.
    """

    def __init__(self, threads: int, n: int = 2048, shape: tuple[int, int, int] | None = None,
                 extra_shapes: tuple[tuple[int, int, int], ...] = (), dose_s: float = PROBE_DOSE_S) -> None:
        import numpy as np

        rng = np.random.default_rng(0)
        self.dose_s = dose_s
        self.shapes = [shape or (n, n, n), *extra_shapes]
        multi = matmul_session(threads)
        self.pool = None
        if threads > 1:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(threads)
            singles = [matmul_session(1) for _ in range(threads)]
        self.methods: dict[tuple[int, int, int], dict[str, Callable[[float], float]]] = {}
        for m, k, n_cols in self.shapes:
            a = rng.standard_normal((m, k), dtype=np.float32)
            b = rng.standard_normal((k, n_cols), dtype=np.float32)
            flops = 2.0 * m * k * n_cols
            methods = {"numpy": self._repeat(lambda a=a, b=b: a @ b, flops),
                       "onnxruntime": self._repeat(lambda a=a, b=b: multi.run(None, {"a": a, "b": b}), flops)}
            if self.pool is not None:
                # contiguous column blocks, made once: the split itself is not part of the product
                parts = [np.ascontiguousarray(p) for p in np.array_split(b, threads, axis=1)]
                methods["onnxruntime_concurrent"] = self._concurrent(a, parts, singles)
            self.methods[(m, k, n_cols)] = methods
        self.flops = {(shape, name): 0.0 for shape, methods in self.methods.items() for name in methods}
        self.seconds = dict.fromkeys(self.flops, 0.0)
        self.runs = 0

    def _repeat(self, product: Callable[[], Any], flops: float) -> Callable[[float], float]:
        """A dose of one product repeated until ``deadline``; returns the FLOPs done."""

        def dose(deadline: float) -> float:
            done = 0
            while True:
                product()
                done += 1
                if time.perf_counter() >= deadline:
                    return done * flops
        return dose

    def _concurrent(self, a, parts: list, sessions: list) -> Callable[[float], float]:
        """A dose of every column block on its own session and thread at once, each repeated
        until ``deadline``; returns the FLOPs done by all."""
        m, k = a.shape
        doses = [self._repeat(lambda s=session, b=part: s.run(None, {"a": a, "b": b}), 2.0 * m * k * part.shape[1])
                 for session, part in zip(sessions, parts)]
        return lambda deadline: sum(self.pool.map(lambda dose: dose(deadline), doses))

    def run(self) -> None:
        for shape, methods in self.methods.items():
            for name, dose in methods.items():
                dose(0.0)  # untimed: wakes the cores, lets the previous method's threads settle
                start = time.perf_counter()
                done = dose(start + self.dose_s)
                self.seconds[(shape, name)] += time.perf_counter() - start
                self.flops[(shape, name)] += done
        self.runs += 1

    def rates(self) -> dict[str, Any]:
        by_shape: dict[str, dict[str, float]] = {}
        best = (0.0, "", "")
        for (shape, name), seconds in self.seconds.items():
            if seconds <= 0:
                continue
            rate = round(self.flops[(shape, name)] / seconds / 1e9, 1)
            key = "x".join(map(str, shape))
            by_shape.setdefault(key, {})[f"{name}_gflops"] = rate
            best = max(best, (rate, name, key))
        first = "x".join(map(str, self.shapes[0]))
        return {"shape_m_k_n": list(self.shapes[0]), "runs": self.runs, "dose_s": self.dose_s,
                **by_shape.get(first, {}), "by_shape_m_k_n": by_shape,
                "best_gflops": best[0], "best_method": best[1], "best_shape_m_k_n": best[2]}


def write_result(path: Path | None, result: dict[str, Any]) -> None:
    """Print ``result`` as JSON and write it (atomically) to ``path`` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if path is not None:
        from ucofia.io_utils import atomic_write_text

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text + "\n")
        print(f"wrote {path}", file=sys.stderr)


def write_summarised(path: Path | None, result: dict[str, Any]) -> None:
    """:func:`write_result` for a result with a ``summary`` (lines) and a ``contention`` entry: a
    contended run's note joins the summary, which is printed last, on stderr."""
    if result["contention"]["contended"]:
        result["summary"].append("NOTE: " + result["contention"]["note"])
    write_result(path, result)
    print("\n".join(result["summary"]), file=sys.stderr)


# ---- models and bundles for the scorer benchmarks ------------------------------------------
ISA_WEIGHTS = ("word_mat_weight", "word_mat_weight2", "pixel_mat_weight", "pixel_mat_weight2",
               "frame_logit_weight", "local_mat_weight", "global_mat_weight", "global_mat_weight_1")
ISA_PERTURBATION = 0.05


def config(name: str):
    """``tiny`` or ``vit_b32`` (the published geometry) from ucofia.config."""
    from ucofia.config import tiny_config, vit_b32_config

    return {"tiny": tiny_config, "vit_b32": vit_b32_config}[name]()


def random_model(cfg, seed: int = 0):
    """The project model with random weights; its ISA matrices (identity at init) get
    N(0, 0.05^2) added so that every parameter of the scorer matters."""
    import torch

    import ucofia

    model = ucofia.build_model(cfg, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name in ISA_WEIGHTS:
            param = getattr(model, name)
            param.add_(ISA_PERTURBATION * torch.randn(param.shape, generator=gen))
    return model


def export_scorer(model, path: Path, module=None) -> None:
    """Export the model's scorer graph (or ``module`` with the scorer's signature) to ``path``
    with the bundle's contract names and dynamic axes (export.onnx_export)."""
    import torch

    from export.graphs import ScorerGraph
    from export.onnx_export import export_graph
    from runtime.bundle.contract import SCORER, graph_specs

    cfg = model.config
    d, l, f, p = cfg.embed_dim, cfg.max_words, cfg.max_frames, cfg.num_pixels
    sample = (torch.randn(2, d), torch.randn(2, l, d), torch.randn(3, d), torch.randn(3, f, d), torch.randn(3, p, d))
    export_graph((module or ScorerGraph(model)).eval(), sample, Path(path), graph_specs(cfg)[SCORER])


def scorer_bundle(root: Path, cfg, scorer_file: str = "scorer.onnx", fingerprint: str = "0" * 64):
    """A runtime Bundle holding only a scorer graph (torch-free): enough for runtime.scoring,
    runtime.index and runtime.search, which use no encoder."""
    from dataclasses import replace

    from runtime.bundle import Bundle, TokenizerSpec
    from runtime.bundle.contract import SCORER, graph_specs

    graph = replace(graph_specs(cfg)[SCORER], file=Path(root) / scorer_file)
    return Bundle(root=Path(root), manifest={}, config=cfg, fingerprint=fingerprint, dtype="float32",
                  graphs={SCORER: graph}, tokenizer=TokenizerSpec(Path(root) / "none", cfg.max_words, 0, 0))


def shared_clips() -> list[Path]:
    """The 30 real clips of the shared data folder: the 24 MSR-VTT 1k-A clips, then data/real_clips
    (SystemExit naming the folder when it is absent)."""
    data = SHARED / "data"
    clips = sorted((data / "msrvtt_1ka_sample" / "videos").glob("*.mp4")) + sorted((data / "real_clips").glob("*.mp4"))
    if not clips:
        raise SystemExit(f"no clips under {data}: this benchmark needs the shared data folder (set UCOFIA_SHARED_DIR "
                         f"to the folder holding data/msrvtt_1ka_sample and data/real_clips)")
    return clips


def show_library_output() -> None:
    """Print the library's notes and progress bars (export steps, indexing) as the CLIs do."""
    from ucofia import logs

    logs.configure(logs.NORMAL)
