"""The text encoder's vocabulary: how many token ids a bundle can embed, and the check of every id.

A model whose text tower has fewer token embeddings than the CLIP BPE tokenizer has ids (only
exported with ``ucofia export --allow-small-vocab``) cannot encode tokenized text; fed such an id,
onnxruntime would fail with a raw "indices element out of data bounds" error. The runtime checks
ids first and raises a one-line error instead.

The size comes from the manifest (``tokenizer.model_vocab_size``). Bundles written before that
field existed get it from the text encoder graph: the row count of the embedding initializer that
a ``Gather`` node indexes with the ``input_ids`` input.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.bundle import Bundle
from runtime.errors import BundleError, QueryError

# Ids the CLIP BPE tokenizer produces (SOT 49406 and EOT 49407 are the largest).
CLIP_BPE_IDS = 49408
# Nodes that hand their first input on unchanged in value (followed when reading the graph).
PASS_THROUGH = ("Cast", "Identity")


def embedding_rows(graph_file: Path, input_name: str) -> int | None:
    """Rows of the embedding table that a Gather node indexes with graph input ``input_name``
    (None when there is no such lookup). ``Cast`` / ``Identity`` nodes in between are followed on
    both sides (exporters cast the ids and alias shared weights); the table must be an
    initializer or a Constant."""
    import onnx

    graph = onnx.load(str(graph_file), load_external_data=False).graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    alias: dict[str, str] = {}  # output of a pass-through node -> its input
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = list(attr.t.dims)
        elif node.op_type in PASS_THROUGH and node.input:
            alias[node.output[0]] = node.input[0]

    def source(name: str) -> str:
        seen = set()
        while name in alias and name not in seen:
            seen.add(name)
            name = alias[name]
        return name

    for node in graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and source(node.input[1]) == input_name:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            dims = shapes.get(source(node.input[0]))
            if dims and axis == 0:
                return int(dims[0])
    return None


def text_vocab_size(bundle: Bundle) -> int:
    """Token embeddings of the bundle's text encoder (manifest field, else read from the graph).

    Raises BundleError when neither tells it.
    """
    if bundle.tokenizer.model_vocab_size is not None:
        return bundle.tokenizer.model_vocab_size
    graph = bundle.graphs["text_encoder"]
    try:
        rows = embedding_rows(graph.file, graph.inputs["input_ids"].name)
    except Exception as exc:  # an unreadable graph: onnx raises several types
        raise BundleError(f"{graph.file} is unreadable ({exc}); re-export the bundle with `ucofia export`") from None
    if rows is None:
        raise BundleError(f"{bundle.root}/manifest.json has no tokenizer.model_vocab_size and the text encoder "
                          f"{graph.file.name} has no token-embedding lookup on its input_ids to read it from; "
                          f"re-export the bundle with `ucofia export`")
    return rows


def check_token_ids(ids: np.ndarray, vocab_size: int, bundle_root: Path, what: str = "query",
                    first_number: int = 1) -> None:
    """Raise a one-line error unless every id in ``ids`` [T, L] lies in ``0 .. vocab_size - 1``.

    BundleError when the bundle's vocabulary is smaller than the CLIP BPE tokenizer's (it cannot
    encode tokenized text at all), QueryError for ids from elsewhere that do not fit.
    """
    bad_rows = np.flatnonzero(((ids < 0) | (ids >= vocab_size)).any(axis=1))
    if not len(bad_rows):
        return
    row = int(bad_rows[0])
    value = int(ids[row][(ids[row] < 0) | (ids[row] >= vocab_size)][0])
    number = first_number + row
    if vocab_size < CLIP_BPE_IDS:
        raise BundleError(
            f"bundle {bundle_root}: its text encoder has {vocab_size:,} token embeddings but {what} {number} has "
            f"token id {value:,} (the CLIP BPE tokenizer uses {CLIP_BPE_IDS:,}); this bundle was exported with "
            f"--allow-small-vocab and cannot encode tokenized text: export a checkpoint with the full vocabulary")
    raise QueryError(f"{what} {number}: token id {value:,} is outside the text encoder's vocabulary "
                     f"(ids 0..{vocab_size - 1:,} of bundle {bundle_root})")


def check_tokenized_text_fits(bundle: Bundle, what: str = "text") -> None:
    """Fail fast (before any video is encoded) when the bundle cannot encode tokenized text at all:
    every text carries the tokenizer's SOT and EOT ids, which must lie inside the vocabulary."""
    ends = np.array([[bundle.tokenizer.sot_id, bundle.tokenizer.eot_id]], dtype=np.int64)
    check_token_ids(ends, text_vocab_size(bundle), bundle.root, what)
