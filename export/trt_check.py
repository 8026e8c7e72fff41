"""Static TensorRT compatibility check of ONNX graphs (no TensorRT needed).

Walks every node of every graph (subgraphs of If/Loop/Scan included) and checks it against the
operator table of TensorRT 10's ONNX parser (onnx-tensorrt ``docs/operators.md``, 10.x release:
supported operators, opset 9..20) plus the restrictions that matter for our graphs:

* TopK: ``K`` must be a build-time constant (initializer or Constant), ``K < 3840``, ``sorted=1``;
* ArgMax/ArgMin: ``select_last_index=0``;
* Slice/Squeeze/Unsqueeze/Reduce*/Pad ``axes``, CumSum ``axis``, OneHot ``depth``: constant;
* Einsum without ellipsis; ScatterND without reduction; LayerNormalization: only output ``Y``;
* no sequence / optional / string ops, no custom-domain ops;
* int64: TensorRT casts int64 down to int32 where it can, so int64 graph inputs/outputs other
  than the token ids are flagged, and int64 weights outside the int32 range are warned about
  (except Slice bounds, where clamping keeps the meaning "to the end").

``error`` issues make ``ucofia export --trt`` fail; otherwise they are printed as warnings.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
import onnx
from onnx import numpy_helper

Severity = Literal["error", "warning"]

TRT_TABLE = "TensorRT 10.x ONNX parser (onnx-tensorrt docs/operators.md)"
TRT_MIN_OPSET = 9
TRT_MAX_OPSET = 20
TOPK_MAX_K = 3840
INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
# Graph inputs/outputs allowed to be int64 (token ids, by contract).
DEFAULT_INT64_IO = ("input_ids",)

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

# input index that must be a build-time constant, per op (when the input is present)
CONSTANT_INPUTS: dict[str, tuple[int, str]] = {
    "TopK": (1, "K"),
    "Slice": (3, "axes"),
    "Squeeze": (1, "axes"),
    "Unsqueeze": (1, "axes"),
    "Pad": (3, "axes"),
    "CumSum": (1, "axis"),
    "OneHot": (1, "depth"),
    **{op: (1, "axes") for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
                                  "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum",
                                  "ReduceSumSquare")},
}
# ops whose output is constant when all their inputs are (shape arithmetic on constants)
_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                     "Multinomial", "Bernoulli"}
_DEFAULT_DOMAINS = ("", "ai.onnx")


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
        return {"table": TRT_TABLE, "ok": self.ok, "errors": len(self.errors),
                "warnings": len(self.warnings), "issues": [i.to_dict() for i in self.issues],
                "op_counts": self.op_counts}


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"#{index} ({node.op_type} -> {', '.join(node.output)})"


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


class _GraphWalker:
    def __init__(self, graph_name: str, int64_io: Iterable[str]) -> None:
        self.graph_name = graph_name
        self.int64_io = set(int64_io)
        self.issues: list[Issue] = []
        self.ops: Counter[str] = Counter()

    def add(self, node: str, op: str, severity: Severity, message: str) -> None:
        self.issues.append(Issue(self.graph_name, node, op, severity, message))

    # ---- model level ---------------------------------------------------------------------
    def check_model(self, model: onnx.ModelProto) -> None:
        for opset in model.opset_import:
            if opset.domain in _DEFAULT_DOMAINS and not TRT_MIN_OPSET <= opset.version <= TRT_MAX_OPSET:
                self.add("<model>", "opset", "error",
                         f"opset {opset.version} is outside the {TRT_MIN_OPSET}..{TRT_MAX_OPSET} range "
                         f"TensorRT's parser supports; re-export with --opset {TRT_MAX_OPSET} or lower")
        graph = model.graph
        for value in list(graph.input) + list(graph.output):
            self._check_io(value)
        self.check_graph(graph, outer_constants=set())

    def _check_io(self, value: onnx.ValueInfoProto) -> None:
        t = value.type
        if t.HasField("sequence_type") or t.HasField("optional_type") or t.HasField("map_type"):
            self.add(value.name, "io", "error", "sequence/optional/map graph I/O is not supported by TensorRT")
            return
        elem = t.tensor_type.elem_type
        if elem == onnx.TensorProto.INT64 and value.name not in self.int64_io:
            self.add(value.name, "io", "error",
                     f"graph I/O {value.name!r} is int64; TensorRT casts int64 down to int32 — "
                     "only the token ids may be int64 (make it int32 or float)")
        elif elem == onnx.TensorProto.DOUBLE:
            self.add(value.name, "io", "warning", f"graph I/O {value.name!r} is float64; TensorRT casts it to float32")
        for i, dim in enumerate(t.tensor_type.shape.dim):
            if not dim.HasField("dim_value") and not dim.dim_param:
                self.add(value.name, "io", "warning",
                         f"axis {i} of {value.name!r} is dynamic but unnamed; the optimisation profile "
                         "cannot be derived from the manifest")

    # ---- graph level ---------------------------------------------------------------------
    def check_graph(self, graph: onnx.GraphProto, outer_constants: set[str]) -> None:
        constants = set(outer_constants)
        values: dict[str, np.ndarray] = {}
        slice_bounds = set()
        for node in graph.node:
            if node.op_type == "Slice":
                slice_bounds.update(node.input[1:3])
        for init in graph.initializer:
            constants.add(init.name)
            self._check_initializer(init, init.name in slice_bounds)
            if init.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and _size(init) <= 16:
                values[init.name] = numpy_helper.to_array(init)
        for index, node in enumerate(graph.node):
            label = _node_label(node, index)
            self.ops[node.op_type] += 1
            self._check_node(node, label, constants, values)
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    self.check_graph(a.g, constants)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for g in a.graphs:
                        self.check_graph(g, constants)
            if node.op_type == "Constant":
                constants.update(node.output)
                tensor = _attr(node, "value")
                if isinstance(tensor, onnx.TensorProto):
                    if tensor.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and _size(tensor) <= 16:
                        values[node.output[0]] = numpy_helper.to_array(tensor)
            elif (node.op_type not in _NONDETERMINISTIC and node.op_type not in ("If", "Loop", "Scan")
                  and node.input and all(not i or i in constants for i in node.input)):
                constants.update(node.output)

    def _check_initializer(self, init: onnx.TensorProto, is_slice_bound: bool) -> None:
        if init.data_type == onnx.TensorProto.INT64 and not is_slice_bound:
            arr = numpy_helper.to_array(init)
            if arr.size and (arr.min() < INT32_MIN or arr.max() > INT32_MAX):
                self.add(init.name, "initializer", "warning",
                         "int64 weight outside the int32 range; TensorRT clamps it when casting down")
        elif init.data_type == onnx.TensorProto.DOUBLE:
            self.add(init.name, "initializer", "warning", "float64 weight; TensorRT casts it to float32")

    def _check_node(self, node: onnx.NodeProto, label: str, constants: set[str],
                    values: dict[str, np.ndarray]) -> None:
        op = node.op_type
        if node.domain not in _DEFAULT_DOMAINS:
            self.add(label, op, "error", f"custom-domain op {node.domain}::{op} needs a TensorRT plugin")
            return
        if op.startswith("Sequence") or op in ("SplitToSequence", "ConcatFromSequence") or op.startswith("Optional"):
            self.add(label, op, "error", "sequence/optional ops are not supported by TensorRT")
            return
        if op not in SUPPORTED_OPS:
            self.add(label, op, "error", f"{op} is not supported by the {TRT_TABLE}")
            return
        if op in CONSTANT_INPUTS:
            index, what = CONSTANT_INPUTS[op]
            if len(node.input) > index and node.input[index] and node.input[index] not in constants:
                self.add(label, op, "error",
                         f"input {what!r} ({node.input[index]}) must be a build-time constant (initializer "
                         "or Constant) for TensorRT, but it is computed at run time")
        if op == "TopK":
            if _attr(node, "sorted", 1) != 1:
                self.add(label, op, "error", "TopK needs sorted=1 in TensorRT")
            k = values.get(node.input[1]) if len(node.input) > 1 else None
            if k is not None and int(np.asarray(k).reshape(-1)[0]) >= TOPK_MAX_K:
                self.add(label, op, "error", f"TopK K={int(np.asarray(k).reshape(-1)[0])} must be < {TOPK_MAX_K}")
        elif op in ("ArgMax", "ArgMin"):
            if _attr(node, "select_last_index", 0) != 0:
                self.add(label, op, "error", f"{op} with select_last_index=1 is not supported by TensorRT")
        elif op == "Einsum":
            equation = _attr(node, "equation", b"")
            equation = equation.decode() if isinstance(equation, bytes) else str(equation)
            if "..." in equation:
                self.add(label, op, "error", f"Einsum equation {equation!r} uses an ellipsis")
        elif op == "ScatterND":
            reduction = _attr(node, "reduction", b"none")
            reduction = reduction.decode() if isinstance(reduction, bytes) else str(reduction)
            if reduction != "none":
                self.add(label, op, "error", f"ScatterND reduction={reduction!r} is not supported")
        elif op == "LayerNormalization":
            if any(node.output[1:]):
                self.add(label, op, "error", "only output Y of LayerNormalization is supported")
        elif op == "Dropout":
            if len(node.input) > 2 and node.input[2] and node.input[2] not in constants:
                self.add(label, op, "error", "Dropout training_mode must be a constant False")
        elif op == "Cast" and _attr(node, "to") == onnx.TensorProto.DOUBLE:
            self.add(label, op, "warning", "cast to float64; TensorRT computes it in float32")


def _size(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims)) if t.dims else 1


def check_model(model: onnx.ModelProto, graph_name: str,
                int64_io: Iterable[str] = DEFAULT_INT64_IO) -> tuple[list[Issue], dict[str, int]]:
    """Check one ONNX model; return (issues, op counts)."""
    walker = _GraphWalker(graph_name, int64_io)
    walker.check_model(model)
    return walker.issues, dict(sorted(walker.ops.items()))


def check_graphs(graphs: dict[str, Path | onnx.ModelProto],
                 int64_io: Iterable[str] = DEFAULT_INT64_IO) -> TrtCheckReport:
    """Check several graphs ({name: path or model}) and collect one report."""
    report = TrtCheckReport()
    for name, graph in graphs.items():
        model = graph if isinstance(graph, onnx.ModelProto) else onnx.load(str(graph), load_external_data=False)
        issues, ops = check_model(model, name, int64_io)
        report.issues.extend(issues)
        report.op_counts[name] = ops
    return report
