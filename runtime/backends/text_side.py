"""The scorer's text side, cut out of the graph so that it runs once per search, not once per tile.

The patch-word level starts with work on the texts alone: the word features are normalised,
projected and divided by the ISA temperature (``ucofia.isa.patch_word``: ``w = normalise(words) @ A
/ tau``, [T, L, D]). The runtime scores in tiles of a few texts x 128-256 videos
(``runtime.scoring``), so every video tile of the same texts repeated it. On onnxruntime's CPU
backend the scorer graph is cut in two when its session opens (in memory; the bundle is not
touched):

* the text side: ``words`` -> ``w``, run once per scoring call on all its texts;
* the rest: the same graph in which ``words`` stands for ``w``. The nodes that read ``w`` read the
  input instead; the only other readers of ``words`` take its shape, which ``w`` shares.

The same operations run on the same values, so the scores are bit-identical
(tests/runtime/test_scorer_text_side.py); on 32 texts x 1000 videos (ViT-B/32 geometry, 2 cores)
the scorer took 3 % less time. A graph of another form than ``ucofia export`` writes is left whole
(``split_scorer`` returns None) and runs as before. The cut imports onnx (about 0.5 s, most of it
ml_dtypes), so sessions are cut only where scoring is long (``open_session(split_text_side=...)``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime.backends.precision import patch_word_products
from runtime.bundle.contract import GraphSpec, TensorSpec

# Role of the text side's output: the projected word features ``w`` (a runtime role, not the bundle's).
PROJECTED_WORDS = "projected_words"
# Ops that only move the projected words between the projection and the score product.
_LAYOUT_OPS = ("Reshape", "Transpose", "Identity")


@dataclass(frozen=True)
class ScorerSplit:
    """The two graphs (serialised ONNX) and the name of the projected-words tensor between them."""

    text_side: bytes
    rest: bytes
    projected: str


def split_scorer(model: bytes | Path, words: str, patches: str) -> ScorerSplit | None:
    """The scorer graph ``model`` cut after its text side, or None when it does not have the form
    ``ucofia export`` writes. ``words`` and ``patches``: the names of its word-feature and
    patch-token inputs."""
    import onnx
    from onnx.utils import Extractor

    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    proto = onnx.shape_inference.infer_shapes(proto)
    graph = proto.graph
    products = patch_word_products(graph, patches)
    if len(products) != 1:
        return None
    producer = {out: node for node in graph.node for out in node.output}
    text_operand = [name for name in products[0].input
                    if name in producer and patches not in _leaves(producer, name)]
    if len(text_operand) != 1:
        return None
    projected = text_operand[0]
    while producer[projected].op_type in _LAYOUT_OPS:
        projected = producer[projected].input[0]
        if projected not in producer:  # the words themselves, only reshaped: nothing to cut out
            return None
    constants = {init.name for init in graph.initializer}
    if _leaves(producer, projected) - constants != {words}:
        return None  # the cut tensor depends on more than the words: it is not the text side
    shape = _shape(graph, projected)
    if shape is None or shape != _shape(graph, words):
        return None  # the rest's readers of the words' shape would read another one
    text_side = Extractor(proto).extract_model([words], [projected])

    readers = set()
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == projected:
                node.input[i] = words
                readers.add(node.output[0])
    rest = Extractor(proto).extract_model([i.name for i in graph.input], [o.name for o in graph.output])
    for node in rest.graph.node:
        if words in node.input and node.op_type != "Shape" and node.output[0] not in readers:
            return None  # the rest reads the raw words for something else too
    return ScorerSplit(text_side.SerializeToString(), rest.SerializeToString(), projected)


def text_side_spec(scorer: GraphSpec, split: ScorerSplit, words_role: str) -> GraphSpec:
    """The spec of the text-side graph: the scorer's word input in, ``PROJECTED_WORDS`` out."""
    words = scorer.inputs[words_role]
    return GraphSpec(f"{scorer.key}_text_side", scorer.file, {words_role: words},
                     {PROJECTED_WORDS: TensorSpec(split.projected, words.dtype, words.shape)})


def _leaves(producer: dict, name: str) -> set[str]:
    """The graph inputs and initializers tensor ``name`` is computed from (Constant nodes have none)."""
    leaves, stack, seen = set(), [name], set()
    while stack:
        current = stack.pop()
        if current in seen or not current:
            continue
        seen.add(current)
        if current in producer:
            stack.extend(producer[current].input)
        else:
            leaves.add(current)
    return leaves


def _shape(graph, name: str) -> tuple | None:
    """Tensor ``name``'s shape as shape inference knows it (dim names or sizes), or None."""
    infos = [*graph.input, *graph.value_info, *graph.output]
    for info in infos:
        if info.name == name and info.type.tensor_type.HasField("shape"):
            dims = info.type.tensor_type.shape.dim
            shape = tuple(d.dim_param if d.HasField("dim_param") else d.dim_value if d.HasField("dim_value") else None
                          for d in dims)
            return None if None in shape else shape
    return None
