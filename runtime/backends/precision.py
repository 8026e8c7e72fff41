"""Scorer precision (``--scorer-precision``): float32 (the default) or int8, an opt-in for CPUs with
int8 matrix units.

int8 rewrites one product of the bundle's float32 scorer graph when the session is opened (in
memory; the bundle is not touched): the patch-word score product, [v*P, D] patch tokens x [D, t*L]
word features, the GEMM that dominates the scorer (benchmarks/scoring.py). Its patch side is
quantised to uint8 per tensor at run time (``DynamicQuantizeLinear``, asymmetric), its word side to
int8 per tensor (symmetric, scale max|x| / 127); the int32 product is scaled back to float32.
onnxruntime fuses the pattern into one ``DynamicQuantizeMatMul`` / ``MatMulIntegerToFloat`` kernel
(uint8 x int8, on AMX-INT8 or AVX-512/AVX VNNI). Everything else (the other two levels, the
softmaxes of the ISA aggregation and their weight products) stays float32, as do the graph's
inputs and outputs, so tiling, top-k and fusion are unchanged.

Lossy: ``ucofia parity --scorer-precision int8`` measures what it changes (level differences,
top-1/top-10 agreement, metric deltas; benchmarks/results/parity_scorer_int8_*.json) and
benchmarks/scoring.py ``--precisions float32,int8`` what it saves.

Only on onnxruntime's CPU backend, with a float32 bundle, on a CPU with int8 dot-product
instructions: without VNNI (AVX2 only) onnxruntime's uint8 x int8 kernel adds pairs of products in
saturating int16, which full-range int8 word features would overflow (export/int8.py).
"""
from __future__ import annotations

from pathlib import Path

from runtime.bundle.contract import VIDEO_ROLES
from runtime.errors import BackendError

FLOAT32 = "float32"
INT8 = "int8"
SCORER_PRECISIONS = (FLOAT32, INT8)
DEFAULT_SCORER_PRECISION = FLOAT32
# /proc/cpuinfo flags of int8 dot-product units onnxruntime's uint8 x int8 kernels use
INT8_CPU_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
CPUINFO = Path("/proc/cpuinfo")
PATCHES = VIDEO_ROLES[-1]  # the scorer input role of the patch tokens
PRECISION_HELP = ("Precision of the scorer's patch-word product: float32 (default) or int8 (opt-in, lossy: "
                  "uint8 x int8 on the CPU's int8 matrix units, AMX or VNNI; CPU backend, float32 bundles). "
                  "See docs/search.md, 'Scorer precision'.")
_Q = "ucofia_int8"  # prefix of every name the rewrite adds


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (None where there is none: not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def int8_problem(backend: str, bundle_dtype: str, flags: set[str] | None) -> str | None:
    """None when the int8 scorer can run here, else why not, with the fix (one sentence)."""
    fix = "use --scorer-precision float32 (the default)"
    if backend != "cpu":
        return (f"--scorer-precision int8 runs on onnxruntime's CPU backend only, not {backend}; "
                f"use --backend cpu or {fix}")
    if bundle_dtype != FLOAT32:
        return (f"--scorer-precision int8 needs a float32 bundle (this one is {bundle_dtype}); "
                f"export one without --fp16 or {fix}")
    if flags is None:
        return f"--scorer-precision int8 could not read this CPU's features from {CPUINFO}; {fix}"
    if not flags & set(INT8_CPU_FLAGS):
        return (f"this CPU has no int8 dot-product units ({', '.join(INT8_CPU_FLAGS)}), on which the int8 scorer "
                f"would be slow or overflow; {fix}")
    return None


def check_scorer_precision(precision: str, backend: str, bundle_dtype: str) -> None:
    """BackendError unless ``precision`` is known and runs on ``backend`` with this bundle and CPU."""
    if precision not in SCORER_PRECISIONS:
        raise BackendError(f"unknown scorer precision {precision!r}; choose one of {', '.join(SCORER_PRECISIONS)}")
    if precision == INT8:
        problem = int8_problem(backend, bundle_dtype, cpu_flags())
        if problem:
            raise BackendError(problem)


def patch_word_products(graph, patches: str) -> list:
    """The MatMul nodes of the patch-word score product: one operand is the graph input ``patches``
    (its name), only reshaped or transposed."""
    producer = {out: node for node in graph.node for out in node.output}

    def from_patches(name: str) -> bool:
        while name != patches:
            node = producer.get(name)
            if node is None or node.op_type not in ("Reshape", "Transpose", "Identity"):
                return False
            name = node.input[0]
        return True

    return [node for node in graph.node if node.op_type == "MatMul" and any(from_patches(n) for n in node.input)]


def int8_scorer_model(path: Path, patches: str = PATCHES) -> bytes:
    """The scorer graph at ``path`` with its patch-word product in int8 (serialised ONNX);
    ``patches``: the name of its patch-token input (the manifest's)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    targets = patch_word_products(graph, patches)
    if len(targets) != 1:
        raise BackendError(f"{path}: found {len(targets)} patch-word products to quantise (expected one MatMul of "
                           f"the '{patches}' input, reshaped, by the word features); the graph is not one "
                           f"`ucofia export` writes: re-export the bundle, or use --scorer-precision float32")
    target = targets[0]
    graph.initializer.extend([numpy_helper.from_array(np.array(127.0, np.float32), f"{_Q}_max"),
                              numpy_helper.from_array(np.array(-127.0, np.float32), f"{_Q}_min"),
                              numpy_helper.from_array(np.array(1e-30, np.float32), f"{_Q}_tiny"),
                              numpy_helper.from_array(np.array(0, np.int8), f"{_Q}_zero")])
    a, b = target.input
    p = f"{_Q}{len(graph.node)}"
    nodes = [
        helper.make_node("DynamicQuantizeLinear", [a], [f"{p}_qa", f"{p}_sa", f"{p}_za"]),  # uint8, per tensor
        helper.make_node("Abs", [b], [f"{p}_abs"]),
        helper.make_node("ReduceMax", [f"{p}_abs"], [f"{p}_amax"], keepdims=0),
        helper.make_node("Max", [f"{p}_amax", f"{_Q}_tiny"], [f"{p}_range"]),  # all-zero words: no 0/0
        helper.make_node("Div", [f"{p}_range", f"{_Q}_max"], [f"{p}_sb"]),
        helper.make_node("Div", [b, f"{p}_sb"], [f"{p}_bs"]),
        helper.make_node("Round", [f"{p}_bs"], [f"{p}_br"]),
        helper.make_node("Clip", [f"{p}_br", f"{_Q}_min", f"{_Q}_max"], [f"{p}_bc"]),
        helper.make_node("Cast", [f"{p}_bc"], [f"{p}_qb"], to=TensorProto.INT8),
        helper.make_node("MatMulInteger", [f"{p}_qa", f"{p}_qb", f"{p}_za", f"{_Q}_zero"], [f"{p}_int"]),
        helper.make_node("Cast", [f"{p}_int"], [f"{p}_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{p}_sa", f"{p}_sb"], [f"{p}_scale"]),
        helper.make_node("Mul", [f"{p}_float", f"{p}_scale"], list(target.output)),
    ]
    at = list(graph.node).index(target)
    rebuilt = list(graph.node[:at]) + nodes + list(graph.node[at + 1:])
    del graph.node[:]
    graph.node.extend(rebuilt)
    return model.SerializeToString()
