"""Static TensorRT compatibility check of ONNX graphs (no TensorRT needed).

Walks every node of every graph (subgraphs of If/Loop/Scan included) and checks it against the
rules of TensorRT's ONNX parser for the installed release (10.x or 11.x; ``trt_version``): the
operator table of onnx-tensorrt ``docs/operators.md`` (10.0 GA: opsets 9..20; 10.15: opsets 9..24)
and its ``docs/Changelog.md``. No 11.x table is recorded here: an 11.x release gets the rules of
the newest 10.x table (every 10.x relaxation included), which its parser keeps:

* supported operators (10.0's table; window ops from 10.4, STFT from 10.5, Attention,
  RMSNormalization, RotaryEmbedding and TensorScatter as documented in 10.15's table);
* TopK: ``sorted=1`` and ``K < 3840``; ``K`` may be computed at run time (dynamic K since 8.6);
* inputs that must be initializers (or Constant nodes): ``axes`` of Reduce*, Dropout's
  ``training_mode`` (and it must be False), STFT's ``frame_step`` and ``window``;
* inputs that must be build-time constants: OneHot ``depth``; ``axes`` of Squeeze/Unsqueeze until
  10.6 (run-time axes came with 10.7), CumSum ``axis`` until 10.7 (10.8), Slice ``axes`` until
  10.2 (10.3) and Pad ``axes`` until 10.3 (10.4);
* ScatterND without reduction; LayerNormalization and MaxPool: only their first output;
  pooling without dilations; LSTM ``input_forget=0``/``layout=0``; Resize modes; Constant
  without sparse or string values; Q/DQ zero points zero;
* no sequence / optional / string ops, no custom-domain ops.

What TensorRT 8 required and 10 no longer does is not flagged: int64 tensors (native since 9.0),
ArgMax/ArgMin ``select_last_index=1``, Einsum with an ellipsis, TopK with a run-time K, Clip with
tensor bounds (imported as elementwise min/max). float64 is cast down to float32 (warning).

Rules that depend on the 10.x release are errors when the installed TensorRT is known to be
older (``trt_version``), warnings when the version is unknown. ``error`` issues make
``ucofia export --trt`` fail; warnings are printed.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import numpy_helper

Severity = Literal["error", "warning"]
Version = tuple[int, int]

TRT_TABLE = "TensorRT 10.x/11.x ONNX parser (onnx-tensorrt docs/operators.md and Changelog.md)"
BASELINE: Version = (10, 0)
TRT_MIN_OPSET = 9
# Highest opset per release, from the operator tables (newest first).
MAX_OPSET_BY_VERSION: tuple[tuple[Version, int], ...] = (((10, 15), 24), ((10, 0), 20))
TOPK_MAX_K = 3840

SUPPORTED_OPS = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh",
    "AveragePool", "BatchNormalization", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat",
    "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DeformConv",
    "DepthToSpace", "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp",
    "Expand", "EyeLike", "Flatten", "Floor", "GRU", "Gather", "GatherElements", "GatherND", "Gelu",
    "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual",
    "GridSample", "GroupNormalization", "HardSigmoid", "HardSwish", "Hardmax", "Identity", "If",
    "ImageScaler", "InstanceNormalization", "IsInf", "IsNaN", "LRN", "LSTM", "LayerNormalization",
    "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop", "LpNormalization", "LpPool",
    "MatMul", "Max", "MaxPool", "Mean", "MeanVarianceNormalization", "Min", "Mish", "Mod", "Mul",
    "Neg", "NonMaxSuppression", "NonZero", "Not", "OneHot", "Or", "PRelu", "Pad",
    "ParametricSoftplus", "Pow", "QuantizeLinear", "RNN", "RandomNormal", "RandomNormalLike",
    "RandomUniform", "RandomUniformLike", "Range", "Reciprocal", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd",
    "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence", "RoiAlign",
    "Round", "ScaledTanh", "Scan", "Scatter", "ScatterElements", "ScatterND", "Selu", "Shape",
    "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign",
    "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu",
    "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor",
})
# Operators added after 10.0: the first release whose changelog or table lists them.
LATER_OPS: dict[str, Version] = {
    "BlackmanWindow": (10, 4), "HammingWindow": (10, 4), "HannWindow": (10, 4), "STFT": (10, 5),
    "Attention": (10, 15), "RMSNormalization": (10, 15), "RotaryEmbedding": (10, 15),
    "TensorScatter": (10, 15),
}
_REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
               "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")
# (input index, name) that must be an initializer or a Constant node's output.
INITIALIZER_INPUTS: dict[str, tuple[tuple[int, str], ...]] = {
    **dict.fromkeys(_REDUCE_OPS, ((1, "axes"),)),
    "Dropout": ((2, "training_mode"),),
    "STFT": ((1, "frame_step"), (2, "window")),
}
# (input index, name) that must be computable at build time (constants and shape arithmetic on them).
BUILD_CONSTANT_INPUTS: dict[str, tuple[int, str]] = {"OneHot": (1, "depth")}
# ... that must be build-time constants before the release that accepted run-time tensors there
# (onnx-tensorrt Changelog: Slice 10.3, Pad 10.4, Squeeze/Unsqueeze 10.7, CumSum 10.8).
VERSIONED_CONSTANT_INPUTS: dict[str, tuple[int, str, Version]] = {
    "Slice": (3, "axes", (10, 3)), "Pad": (3, "axes", (10, 4)), "Squeeze": (1, "axes", (10, 7)),
    "Unsqueeze": (1, "axes", (10, 7)), "CumSum": (1, "axis", (10, 8)),
}
RESIZE_COORDINATE_MODES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
RESIZE_MODES = {"nearest", "linear"}
RESIZE_NEAREST_MODES = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
# ops whose output is constant when all their inputs are (shape arithmetic on constants)
_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                     "Multinomial", "Bernoulli"}
_DEFAULT_DOMAINS = ("", "ai.onnx")


def parse_version(version: str | None) -> Version | None:
    """(major, minor) of a TensorRT version string such as "10.3.0.26" (None when unknown)."""
    match = re.match(r"^\s*(\d+)\.(\d+)", version or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def rules_for(version: Version | None) -> str:
    """Which rules a check for TensorRT ``version`` applies (recorded in the report)."""
    newest = MAX_OPSET_BY_VERSION[0][0]
    if version is None:
        return "any TensorRT 10.x/11.x (release-dependent rules are warnings)"
    if version < BASELINE:
        return f"TensorRT {version[0]}.{version[1]}: older than 10.0, not supported"
    if version[0] > BASELINE[0]:
        return (f"TensorRT {version[0]}.{version[1]}: the {newest[0]}.{newest[1]} table (the newest recorded) "
                "with every 10.x relaxation")
    return f"TensorRT {version[0]}.{version[1]}"


def max_opset(version: Version | None) -> int:
    """The highest opset the parser of ``version`` documents (10.0's when unknown)."""
    for since, opset in MAX_OPSET_BY_VERSION:
        if version is not None and version >= since:
            return opset
    return MAX_OPSET_BY_VERSION[-1][1]


@dataclass(frozen=True)
class Issue:
    """One finding: which graph and node, how bad, and why."""

    graph: str
    node: str
    op: str
    severity: Severity
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"graph": self.graph, "node": self.node, "op": self.op, "severity": self.severity,
                "message": self.message}

    def __str__(self) -> str:
        return f"[{self.severity}] {self.graph}: {self.op} node {self.node!r}: {self.message}"


@dataclass
class TrtCheckReport:
    """Issues found in a set of graphs, with per-graph op counts."""

    issues: list[Issue] = field(default_factory=list)
    op_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    tensorrt_version: str | None = None  # the release the rules were applied for (None: any 10.x/11.x)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, object]:
        return {"table": TRT_TABLE, "tensorrt_version": self.tensorrt_version,
                "rules": rules_for(parse_version(self.tensorrt_version)), "ok": self.ok,
                "errors": len(self.errors), "warnings": len(self.warnings),
                "issues": [i.to_dict() for i in self.issues], "op_counts": self.op_counts}


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"#{index} ({node.op_type} -> {', '.join(node.output)})"


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


class _GraphWalker:
    def __init__(self, graph_name: str, version: Version | None) -> None:
        self.graph_name = graph_name
        self.version = version
        self.issues: list[Issue] = []
        self.ops: Counter[str] = Counter()

    def add(self, node: str, op: str, severity: Severity, message: str) -> None:
        self.issues.append(Issue(self.graph_name, node, op, severity, message))

    def needs(self, since: Version, node: str, op: str, what: str) -> None:
        """``what`` works from TensorRT ``since`` on: error when the installed version is older,
        warning when it is unknown."""
        wanted = f"{since[0]}.{since[1]}"
        if self.version is None:
            self.add(node, op, "warning", f"{what} needs TensorRT >= {wanted}")
        elif self.version < since:
            self.add(node, op, "error", f"{what} needs TensorRT >= {wanted} "
                                        f"(installed: {self.version[0]}.{self.version[1]})")

    # ---- model level ---------------------------------------------------------------------
    def check_model(self, model: onnx.ModelProto) -> None:
        if self.version is not None and self.version < BASELINE:
            self.add("<model>", "version", "error", f"TensorRT {self.version[0]}.{self.version[1]} is not supported: "
                                                    "install TensorRT 10 or newer (`pip install 'tensorrt>=10'`)")
        top = max_opset(self.version)
        for opset in model.opset_import:
            if opset.domain in _DEFAULT_DOMAINS and not TRT_MIN_OPSET <= opset.version <= top:
                self.add("<model>", "opset", "error",
                         f"opset {opset.version} is outside the {TRT_MIN_OPSET}..{top} range "
                         f"TensorRT's parser supports; re-export with --opset {min(top, 20)} or lower")
        graph = model.graph
        for value in list(graph.input) + list(graph.output):
            self._check_io(value)
        self.check_graph(graph, outer_constants=set(), outer_initializers=set())

    def _check_io(self, value: onnx.ValueInfoProto) -> None:
        t = value.type
        if t.HasField("sequence_type") or t.HasField("optional_type") or t.HasField("map_type"):
            self.add(value.name, "io", "error", "sequence/optional/map graph I/O is not supported by TensorRT")
            return
        elem = t.tensor_type.elem_type
        if elem == onnx.TensorProto.DOUBLE:
            self.add(value.name, "io", "warning", f"graph I/O {value.name!r} is float64; TensorRT casts it to float32")
        elif elem == onnx.TensorProto.STRING:
            self.add(value.name, "io", "error", f"graph I/O {value.name!r} is a string tensor")
        for i, dim in enumerate(t.tensor_type.shape.dim):
            if not dim.HasField("dim_value") and not dim.dim_param:
                self.add(value.name, "io", "warning",
                         f"axis {i} of {value.name!r} is dynamic but unnamed; the optimisation profile "
                         "cannot be derived from the manifest")

    # ---- graph level ---------------------------------------------------------------------
    def check_graph(self, graph: onnx.GraphProto, outer_constants: set[str], outer_initializers: set[str]) -> None:
        constants = set(outer_constants)  # computable at build time
        initializers = set(outer_initializers)  # initializers and Constant outputs (weights to the parser)
        values: dict[str, np.ndarray] = {}
        for init in graph.initializer:
            constants.add(init.name)
            initializers.add(init.name)
            if init.data_type == onnx.TensorProto.DOUBLE:
                self.add(init.name, "initializer", "warning", "float64 weight; TensorRT casts it to float32")
            if _size(init) <= 16:
                values[init.name] = numpy_helper.to_array(init)
        for index, node in enumerate(graph.node):
            label = _node_label(node, index)
            self.ops[node.op_type] += 1
            self._check_node(node, label, constants, initializers, values)
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    self.check_graph(a.g, constants, initializers)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for g in a.graphs:
                        self.check_graph(g, constants, initializers)
            if node.op_type == "Constant":
                constants.update(node.output)
                initializers.update(node.output)
                tensor = _attr(node, "value")
                if isinstance(tensor, onnx.TensorProto) and _size(tensor) <= 16:
                    values[node.output[0]] = numpy_helper.to_array(tensor)
            elif (node.op_type not in _NONDETERMINISTIC and node.op_type not in ("If", "Loop", "Scan")
                  and node.input and all(not i or i in constants for i in node.input)):
                constants.update(node.output)

    def _check_node(self, node: onnx.NodeProto, label: str, constants: set[str], initializers: set[str],
                    values: dict[str, np.ndarray]) -> None:
        op = node.op_type
        if node.domain not in _DEFAULT_DOMAINS:
            self.add(label, op, "error", f"custom-domain op {node.domain}::{op} needs a TensorRT plugin")
            return
        if op.startswith(("Sequence", "Optional")) or op in ("SplitToSequence", "ConcatFromSequence"):
            self.add(label, op, "error", "sequence/optional ops are not supported by TensorRT")
            return
        if op in LATER_OPS:
            self.needs(LATER_OPS[op], label, op, op)
        elif op not in SUPPORTED_OPS:
            self.add(label, op, "error", f"{op} is not supported by the {TRT_TABLE}")
            return

        def given(index: int) -> str:
            return node.input[index] if len(node.input) > index else ""

        for index, what in INITIALIZER_INPUTS.get(op, ()):
            if given(index) and given(index) not in initializers:
                self.add(label, op, "error", f"input {what!r} ({given(index)}) must be an initializer (or a "
                                             "Constant node) for TensorRT, but it is computed in the graph")
        if op in BUILD_CONSTANT_INPUTS:
            index, what = BUILD_CONSTANT_INPUTS[op]
            if given(index) and given(index) not in constants:
                self.add(label, op, "error", f"input {what!r} ({given(index)}) must be a build-time constant "
                                             "for TensorRT, but it is computed at run time")
        if op in VERSIONED_CONSTANT_INPUTS:
            index, what, since = VERSIONED_CONSTANT_INPUTS[op]
            if given(index) and given(index) not in constants:
                self.needs(since, label, op, f"{op} with run-time {what!r} ({given(index)})")
        self._check_attributes(node, label, op, values, given)

    def _check_attributes(self, node: onnx.NodeProto, label: str, op: str, values: dict[str, np.ndarray],
                          given: Callable[[int], str]) -> None:
        if op == "TopK":
            if _attr(node, "sorted", 1) != 1:
                self.add(label, op, "error", "TopK needs sorted=1 in TensorRT")
            k = values.get(given(1))
            if k is not None and int(np.asarray(k).reshape(-1)[0]) >= TOPK_MAX_K:
                self.add(label, op, "error", f"TopK K={int(np.asarray(k).reshape(-1)[0])} must be < {TOPK_MAX_K}")
        elif op == "Dropout":
            mode = values.get(given(2))
            if mode is not None and bool(np.asarray(mode).reshape(-1)[0]):
                self.add(label, op, "error", "Dropout training_mode must be False for TensorRT")
        elif op == "ScatterND":
            if _text(_attr(node, "reduction", b"none")) != "none":
                self.add(label, op, "error",
                         f"ScatterND reduction={_text(_attr(node, 'reduction'))!r} is not supported")
        elif op in ("LayerNormalization", "MaxPool"):  # noqa: SIM102 - one branch per op, as above
            if any(node.output[1:]):
                self.add(label, op, "error", f"only the first output of {op} is supported by TensorRT")
        if op in ("AveragePool", "MaxPool", "LpPool"):
            dilations = _attr(node, "dilations", [])
            if any(int(d) != 1 for d in dilations or []):
                self.add(label, op, "error", f"{op} dilations must be empty or all ones, got {list(dilations)}")
        elif op == "LSTM":
            if _attr(node, "input_forget", 0) != 0 or _attr(node, "layout", 0) != 0:
                self.add(label, op, "error", "LSTM needs input_forget=0 and layout=0 in TensorRT")
        elif op == "Resize":
            self._check_resize(node, label)
        elif op == "Constant":
            bad = [a.name for a in node.attribute if a.name in ("sparse_value", "value_string", "value_strings")]
            if bad:
                self.add(label, op, "error", f"Constant with {bad[0]} is not supported by TensorRT")
        elif op in ("QuantizeLinear", "DequantizeLinear"):
            zero = values.get(given(2))
            if zero is not None and np.any(np.asarray(zero) != 0):
                self.add(label, op, "error", f"{op} needs a zero zero_point in TensorRT")
        elif op == "Cast" and _attr(node, "to") == onnx.TensorProto.DOUBLE:
            self.add(label, op, "warning", "cast to float64; TensorRT computes it in float32")

    def _check_resize(self, node: onnx.NodeProto, label: str) -> None:
        checks = (("coordinate_transformation_mode", "half_pixel", RESIZE_COORDINATE_MODES),
                  ("mode", "nearest", RESIZE_MODES), ("nearest_mode", "round_prefer_floor", RESIZE_NEAREST_MODES),
                  ("keep_aspect_ratio_policy", "stretch", {"stretch"}))
        for name, default, allowed in checks:
            value = _text(_attr(node, name, default.encode()))
            if value not in allowed:
                self.add(label, "Resize", "error", f"Resize {name}={value!r} is not supported by TensorRT "
                                                   f"(supported: {', '.join(sorted(allowed))})")
        if _attr(node, "antialias", 0):
            self.add(label, "Resize", "error", "Resize with antialias is not supported by TensorRT")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _size(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims)) if t.dims else 1


def check_model(model: onnx.ModelProto, graph_name: str,
                trt_version: str | None = None) -> tuple[list[Issue], dict[str, int]]:
    """Check one ONNX model for the TensorRT ``trt_version`` (None: any 10.x/11.x); return (issues, op counts)."""
    walker = _GraphWalker(graph_name, parse_version(trt_version))
    walker.check_model(model)
    return walker.issues, dict(sorted(walker.ops.items()))


def check_graphs(graphs: dict[str, Path | onnx.ModelProto], trt_version: str | None = None) -> TrtCheckReport:
    """Check several graphs ({name: path or model}) for the TensorRT ``trt_version`` and collect one report."""
    report = TrtCheckReport(tensorrt_version=trt_version)
    for name, graph in graphs.items():
        model = graph if isinstance(graph, onnx.ModelProto) else onnx.load(str(graph), load_external_data=False)
        issues, ops = check_model(model, name, trt_version)
        report.issues.extend(issues)
        report.op_counts[name] = ops
    return report
