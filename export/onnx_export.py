"""torch -> ONNX for one bundle graph, with dynamic batch axes and contract names and shapes.

Two exporters are supported:

* ``torchscript`` (default): ``torch.onnx.export(..., dynamo=False)`` with ``dynamic_axes``.
  Deprecated upstream but still shipped in torch 2.14; fast (about 1 s per graph for the tiny
  model; ViT-B/32 about 15 s for the text and 45 s for the video encoder on 2 busy cores), and
  its graphs pass the static TensorRT check (``export.trt_check``).
* ``dynamo``: the torch.export-based exporter (torch's default since 2.9) with
  ``dynamic_shapes``. Leaner graphs (no shape-arithmetic clutter), but several times slower to
  export (the tiny bundle: ~20 s instead of ~6 s); opset >= 18.

Either way the graph's inputs and outputs are then stamped with the contract shapes (dynamic
axes named "T"/"V", static sizes from the config) and the model passes ``onnx.checker``.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import onnx
import torch
from torch import nn

from runtime.bundle.contract import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, GraphSpec

Exporter = Literal["torchscript", "dynamo"]
EXPORTERS: tuple[str, ...] = ("torchscript", "dynamo")
DYNAMO_MIN_OPSET = 18


class ExportError(RuntimeError):
    """The ONNX export of a graph failed or produced an invalid graph."""


def check_opset(opset: int, exporter: str = "torchscript") -> int:
    """Return ``opset`` if supported, else raise ExportError saying which range is."""
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; use one of {EXPORTERS}")
    low = DYNAMO_MIN_OPSET if exporter == "dynamo" else MIN_OPSET
    if not isinstance(opset, int) or not low <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset!r} is not supported with the {exporter} exporter; use "
                          f"{low}..{MAX_OPSET} (--opset)")
    return opset


@contextlib.contextmanager
def _export_mode() -> Iterator[None]:
    """No grad, no chatter (tracer/deprecation warnings, exporter stdout), and no fused MHA.

    ``nn.MultiheadAttention``'s inference fast path (``aten::_native_multi_head_attention``) has
    no ONNX symbolic; it is switched off while tracing and restored afterwards.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def export_graph(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, spec: GraphSpec,
                 opset: int = DEFAULT_OPSET, exporter: Exporter = "torchscript") -> onnx.ModelProto:
    """Export ``module(*args)`` to ``path`` as ``spec`` describes; return the written model."""
    check_opset(opset, exporter)
    path = Path(path)
    try:
        with _export_mode():
            if exporter == "dynamo":
                _export_dynamo(module, args, path, spec, opset)
            else:
                torch.onnx.export(
                    module, args, str(path), dynamo=False, opset_version=opset,
                    input_names=spec.input_names, output_names=spec.output_names,
                    dynamic_axes=spec.dynamic_axes(), do_constant_folding=True)
    except Exception as exc:  # the exporters raise many types
        raise ExportError(f"ONNX export of {spec.key} failed ({exporter} exporter, opset {opset}): "
                          f"{type(exc).__name__}: {exc}") from exc
    proto = onnx.load(str(path))
    stamp_io_shapes(proto, spec)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path.name} fails the ONNX checker: {exc}") from None
    onnx.save(proto, str(path))
    return proto


def _export_dynamo(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, spec: GraphSpec,
                   opset: int) -> None:
    dims = {name: torch.export.Dim(name) for t in spec.inputs.values() for name in t.dynamic_axes.values()}
    dynamic_shapes = tuple({axis: dims[name] for axis, name in t.dynamic_axes.items()} for t in spec.inputs.values())
    program = torch.onnx.export(
        module, args, None, dynamo=True, opset_version=opset, input_names=spec.input_names,
        output_names=spec.output_names, dynamic_shapes=dynamic_shapes, external_data=False,
        verbose=False)
    program.save(str(path), external_data=False)


def stamp_io_shapes(proto: onnx.ModelProto, spec: GraphSpec) -> None:
    """Set every graph input/output to the contract shape (named dynamic axes, static sizes)."""
    by_name = {t.name: t for t in spec.tensors}
    found = set()
    for value in list(proto.graph.input) + list(proto.graph.output):
        tensor = by_name.get(value.name)
        if tensor is None:
            continue
        found.add(value.name)
        shape = value.type.tensor_type.shape
        del shape.dim[:]
        for d in tensor.shape:
            dim = shape.dim.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = d
    missing = sorted(set(by_name) - found)
    if missing:
        raise ExportError(f"exported {spec.key} graph lacks the contract tensors {missing}")
