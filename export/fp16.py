"""float32 -> float16 ONNX conversion with float32 islands (no extra dependency).

Every float tensor becomes float16 except inside "islands" that stay float32 for accuracy:
nodes whose op type is listed (LayerNormalization, Softmax, norms, ...) and nodes of listed
module scopes (the torchscript exporter names nodes after module paths, e.g.
``/visual_token_selector/...``; the dynamo exporter keeps them in a ``namespace`` property).
Casts are inserted at island borders; float graph inputs and outputs become float16 (the
manifest lists them so; the runtime casts to what it lists).

Float constants are clamped into float16's range first (``FP16_MAX_FINITE``): the temporal
encoder's additive key mask (-1e6) would otherwise become -inf and then 0 * -inf = NaN.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.bundle.contract import SCORER, TEXT_ENCODER, VIDEO_ENCODER

FP16_MAX_FINITE = 1e4
FP16_MIN_POSITIVE = 1e-7
_FLOAT = TensorProto.FLOAT
_HALF = TensorProto.FLOAT16
# inputs that must stay float32 whatever the node's precision (op -> input indices)
_FIXED_FP32_INPUTS = {"Resize": {1, 2}}


@dataclass(frozen=True)
class Fp32Islands:
    """What stays float32 in one graph: op types and module-scope substrings of node names."""

    ops: frozenset[str] = frozenset()
    scopes: tuple[str, ...] = ()
    everything_but: frozenset[str] | None = None  # if set: only these ops run in float16

    def keeps(self, node: onnx.NodeProto) -> bool:
        if self.everything_but is not None:
            return node.op_type not in self.everything_but
        if node.op_type in self.ops:
            return True
        # torchscript names nodes after module paths; dynamo records them in a "namespace" property
        where = node.name + "".join(p.value for p in node.metadata_props if p.key == "namespace")
        return any(s in where for s in self.scopes)

    def to_dict(self) -> dict[str, object]:
        return {"ops": sorted(self.ops), "scopes": list(self.scopes),
                "fp16_only": None if self.everything_but is None else sorted(self.everything_but)}


_NORM_OPS = frozenset({"LayerNormalization", "Softmax"})
# Per graph: LayerNorm and softmax everywhere; in the video encoder also the feature norms, the
# patch scorer (so top-k sees float32 scores of the float16 tokens) and the small temporal
# encoder (additive -1e6 masks). The scorer computes in float32 throughout (float16 I/O only):
# the ISA divides the einsum/matmul scores by its 0.01 temperature, and float16 einsums there
# raised the patch_word error from 9e-3 to 5e-2 of scale on the reference fixture eval_l2.
DEFAULT_ISLANDS: dict[str, Fp32Islands] = {
    TEXT_ENCODER: Fp32Islands(ops=_NORM_OPS),
    VIDEO_ENCODER: Fp32Islands(ops=_NORM_OPS | {"ReduceL2", "ReduceSum"},
                               scopes=("visual_token_selector", "transformerClip")),
    SCORER: Fp32Islands(everything_but=frozenset()),
}


@dataclass
class Fp16Stats:
    """What the conversion did (for the manifest)."""

    fp16_nodes: int = 0
    fp32_nodes: int = 0
    casts_inserted: int = 0
    fp32_ops: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"fp16_nodes": self.fp16_nodes, "fp32_nodes": self.fp32_nodes,
                "casts_inserted": self.casts_inserted, "fp32_ops": self.fp32_ops}


def _half_array(arr: np.ndarray) -> np.ndarray:
    arr = np.clip(arr, -FP16_MAX_FINITE, FP16_MAX_FINITE)
    tiny = (arr != 0) & (np.abs(arr) < FP16_MIN_POSITIVE)
    arr = np.where(tiny, np.sign(arr) * FP16_MIN_POSITIVE, arr)
    return arr.astype(np.float16)


def _half_tensor(t: TensorProto, name: str) -> TensorProto:
    return numpy_helper.from_array(_half_array(numpy_helper.to_array(t)), name)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({i.name: i.data_type for i in g.initializer})
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = a.t.data_type
    return types


def convert_to_fp16(model: onnx.ModelProto, islands: Fp32Islands) -> tuple[onnx.ModelProto, Fp16Stats]:
    """Return a float16 copy of ``model`` (float I/O in float16) and conversion statistics."""
    model = _strip_identities(model)
    types = _elem_types(model)
    g = model.graph
    stats = Fp16Stats()
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    del graph.node[:]
    del graph.value_info[:]

    inits = {i.name: i for i in g.initializer}
    const_nodes = {n.output[0]: n for n in g.node if n.op_type == "Constant"
                   and types.get(n.output[0]) == _FLOAT}
    current: dict[str, int] = {}  # float tensor name -> its new elem type
    for value in g.input:
        if types.get(value.name) == _FLOAT:
            current[value.name] = _HALF
            value_type = next(v for v in graph.input if v.name == value.name)
            value_type.type.tensor_type.elem_type = _HALF
    for name, init in inits.items():
        if init.data_type == _FLOAT:
            current[name] = _FLOAT
    cast_cache: dict[tuple[str, int], str] = {}
    half_consts: dict[str, str] = {}
    new_inits: list[TensorProto] = []
    new_nodes: list[onnx.NodeProto] = []

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in cast_cache:
            target = f"{name}__to_{'fp16' if to == _HALF else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [target], to=to, name=f"{target}__cast"))
            cast_cache[key] = target
            current[target] = to
            stats.casts_inserted += 1
        return cast_cache[key]

    def half_const(name: str) -> str:
        if name not in half_consts:
            target = f"{name}__fp16"
            if name in inits:
                new_inits.append(_half_tensor(inits[name], target))
            else:
                value = next(a.t for a in const_nodes[name].attribute if a.name == "value")
                new_nodes.append(helper.make_node("Constant", [], [target], value=_half_tensor(value, target),
                                                  name=f"{target}__const"))
            half_consts[name] = target
            current[target] = _HALF
        return half_consts[name]

    for node in g.node:
        if node.op_type == "Constant" and node.output[0] in const_nodes:
            # float constants are materialised per consumer precision (fp32 as is, fp16 on demand)
            new_nodes.append(node)
            current[node.output[0]] = _FLOAT
            continue
        keep32 = islands.keeps(node)
        want = _FLOAT if keep32 else _HALF
        if keep32:
            stats.fp32_nodes += 1
            stats.fp32_ops[node.op_type] = stats.fp32_ops.get(node.op_type, 0) + 1
        else:
            stats.fp16_nodes += 1
        fixed = _FIXED_FP32_INPUTS.get(node.op_type, set())
        if node.op_type != "Cast":
            for i, name in enumerate(node.input):
                if not name or types.get(name) != _FLOAT:
                    continue
                target_type = _FLOAT if i in fixed else want
                if target_type == _HALF and (name in inits or name in const_nodes):
                    node.input[i] = half_const(name)
                elif current.get(name, _FLOAT) != target_type:
                    node.input[i] = cast(name, target_type)
        else:
            to = next(a for a in node.attribute if a.name == "to")
            if to.i == _FLOAT and not keep32:
                to.i = _HALF
        for a in node.attribute:
            if node.op_type == "ConstantOfShape" and a.name == "value" and a.t.data_type == _FLOAT and not keep32:
                a.t.CopyFrom(_half_tensor(a.t, a.t.name))
        new_nodes.append(node)
        for name in node.output:
            if types.get(name) == _FLOAT:
                current[name] = want if node.op_type != "Cast" else next(
                    a.i for a in node.attribute if a.name == "to")

    # float graph outputs are float16
    for value in graph.output:
        if types.get(value.name) != _FLOAT:
            continue
        if current.get(value.name) == _FLOAT:
            inner = f"{value.name}__fp32"
            for n in new_nodes:
                for i, name in enumerate(n.output):
                    if name == value.name:
                        n.output[i] = inner
                for i, name in enumerate(n.input):
                    if name == value.name:
                        n.input[i] = inner
            new_nodes.append(helper.make_node("Cast", [inner], [value.name], to=_HALF, name=f"{value.name}__cast"))
            stats.casts_inserted += 1
        value.type.tensor_type.elem_type = _HALF

    # float initializers used only in fp16 are dropped in favour of their fp16 copies
    used = {i for n in new_nodes for i in n.input}
    kept = [i for i in g.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    graph.node.extend(_drop_unused_constants(new_nodes, graph))
    onnx.checker.check_model(out, full_check=True)
    return out, stats


def _drop_unused_constants(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    used = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
    return [n for n in nodes if n.op_type != "Constant" or n.output[0] in used]


def _strip_identities(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` without Identity nodes (the torchscript exporter adds them for shared weights)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    outputs = {o.name for o in g.output}
    rename: dict[str, str] = {}
    keep = []
    for node in g.node:
        if node.op_type == "Identity" and node.output[0] not in outputs:
            rename[node.output[0]] = rename.get(node.input[0], node.input[0])
            continue
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    del g.value_info[:]
    return out
