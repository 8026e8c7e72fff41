"""Stage 1 of two-stage search: a FAISS index over rows ``[v, bias_vs(v)]`` (the video_sentence
level plus its SK bias as one inner product), of one of three kinds:

* ``flat``: exact inner product over every row (IndexFlatIP); memory 4 (D+1) bytes a row, time
  linear in the gallery (memory-bound: about 2 GB read per query at 10^6 videos of D=512).
* ``ivf``: inverted lists (IndexIVFFlat, inner product) over ``nlist`` k-means cells; a query
  scans the ``nprobe`` nearest cells. Approximate.
* ``hnsw``: a navigable small-world graph with ``M`` links a row, built with ``ef_construction``
  and searched with ``ef_search`` (raised to the shortlist when smaller). Approximate. The rows
  are not of one length (the unit video feature and its SK bias in one row), and a graph
  walked by inner product loses rows that no neighbour's inner product leads to; so the graph is
  built by Euclidean distance over rows made the same length, ``[x, sqrt(R^2 - |x|^2)]`` with
  ``R`` the longest row, queried with ``[q, 0]``: the nearest rows are then exactly the rows of
  largest inner product (``|q' - x'|^2 = |q|^2 + R^2 - 2 q.x``). Measured on the rows the model
  writes (unit video features and an SK bias) at 10^6 calibrated rows, M 32, efConstruction 200:
  it kept 99.8-100 % of the exact shortlist of 100-200 and every exhaustive top-10 row, the graph
  by inner product 99.85-99.88 % (``benchmarks/results/million.json``, ``stage1_layouts``); at
  efConstruction 80 the gap was wider (99.8-99.9 % against 96.5-97 %, an in-memory probe over
  the same rows). Rows of widely different lengths, which the model does not write, do worse
  (5000 random Gaussian rows: 91 % against 100 % at efSearch 256). Scores are the stored rows'
  exact inner products with ``q``.

``auto`` picks by gallery size what benchmarks/large_gallery.py and benchmarks/million.py measured
(``benchmarks/results/large_gallery_1e6_vit_b32.json``, ``million_1e5.json``): flat up to
``AUTO_FLAT_MAX_ROWS`` rows (exact; at 10^5 rows a flat query took 65-115 ms p50 on the loaded
2-core machine, the whole 100 ms budget of a query, and at 10^6 350-380 ms), HNSW above: at 10^5
calibrated rows (M 32, a graph by inner product) it kept 99-100 % of the exact shortlist and
99.6-100 % of the exhaustive fused top-10 at efSearch 128-512 in 0.2-0.5 ms p50 (built in 27 s; at
10^6 rows, efConstruction 80: 96.8-97.4 %, built in 862 s, ``million_1e6_stage1.json``; the
equal-length graph at efConstruction 200: 100 %, ``million.json``), whereas IVF at 10^6 rows (1024
lists) of the earlier, uncalibrated features kept only 11 % of the shortlist at nprobe 32, and the
FAISS scalar-quantised flat scans (int8, fp16) were no faster than flat for one query. At 10^6
calibrated rows (``million_1e6_stage1_sweep.json``) HNSW found every exhaustive top-10 row in
1-3 ms; IVF (1024 or 4096 lists, nprobe 16-256) 84-99 % in 1-41 ms; the sq8 and fp16 scans all
of them, in 550-760 ms (slower than flat's 350-380 ms); an HNSW of M 16 missed one row of one
query at efSearch 128 (``million_1e6_stage1_sweep_m16.json``), so M stays 32. The
kind and its parameters are recorded next to the cached index (``stage1-HASH.json`` in the index
directory) and in the search result's provenance.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np

STAGE1_KINDS = ("auto", "flat", "ivf", "hnsw")
# Galleries up to this many rows use the exact flat index under ``auto`` (a flat query scans 4 (D+1)
# bytes a row: 100 MB here, ~16 ms measured at 2 x 10^4 rows; HNSW's build is not worth it below).
AUTO_FLAT_MAX_ROWS = 50_000
IVF_ROWS_PER_LIST = 1024  # nlist = rows / this, rounded to a power of two (k-means cells)
IVF_MIN_LISTS = 64
IVF_TRAIN_ROWS_PER_LIST = 40  # k-means training sample per cell (FAISS warns below 39)
IVF_DEFAULT_NPROBE = 32
HNSW_M = 32
# At 10^6 calibrated rows (the equal-length graph, M 32): efConstruction 80 left one of 50 queries
# one row short of its exact stage-1 top-10 at every efSearch (49/50); 200 kept all 50 (and 99.9-100 %
# of the shortlist of 100-200), for a build 2.8x as long (1667 s against 588 s on 2 busy cores), and
# the service then answered all 50 with the exhaustive top-10 (benchmarks/results/million.json).
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 256


@dataclass(frozen=True)
class Stage1Params:
    """A stage-1 index kind with its parameters (unused ones are ignored by that kind)."""

    kind: str = "flat"
    nlist: int = 0
    nprobe: int = IVF_DEFAULT_NPROBE
    m: int = HNSW_M
    ef_construction: int = HNSW_EF_CONSTRUCTION
    ef_search: int = HNSW_EF_SEARCH

    def to_dict(self) -> dict:
        keep = {"flat": (), "ivf": ("nlist", "nprobe"), "hnsw": ("m", "ef_construction", "ef_search")}[self.kind]
        return {"kind": self.kind, **{k: v for k, v in asdict(self).items() if k in keep}}

    @staticmethod
    def from_dict(values: dict) -> Stage1Params:
        return Stage1Params(**values)


def choose(kind: str, rows: int, **overrides: int) -> Stage1Params:
    """The parameters of ``kind`` (``auto``: by gallery size) for a gallery of ``rows`` rows."""
    if kind not in STAGE1_KINDS:
        raise ValueError(f"unknown stage-1 kind {kind!r}; choose one of {', '.join(STAGE1_KINDS)}")
    if kind == "auto":
        kind = "flat" if rows <= AUTO_FLAT_MAX_ROWS else "hnsw"
    cells = max(1, int(round(np.log2(max(rows, 1) / IVF_ROWS_PER_LIST)))) if rows > IVF_ROWS_PER_LIST else 0
    nlist = max(IVF_MIN_LISTS, 1 << cells) if kind == "ivf" else 0
    values = {"kind": kind, "nlist": nlist, **{k: v for k, v in overrides.items() if v is not None}}
    return Stage1Params(**values)


def build(params: Stage1Params, dim: int, chunks: Callable[[], Iterable[np.ndarray]], rows: int):
    """A FAISS index of ``params`` over the float32 rows that ``chunks()`` yields (``rows`` in all,
    ``dim`` wide; IVF reads them twice: a training sample, then every row)."""
    import faiss

    if params.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif params.kind == "hnsw":
        return _build_equal_length_hnsw(params, dim, chunks)
    elif params.kind == "ivf":
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, min(params.nlist, max(rows, 1)), faiss.METRIC_INNER_PRODUCT)
        quantizer.this.disown()  # the IVF index owns and frees its quantizer
        index.own_fields = True
        want = min(rows, index.nlist * IVF_TRAIN_ROWS_PER_LIST)
        step = max(1, rows // max(want, 1))
        sample, seen = [], 0
        for chunk in chunks():  # an evenly spread training sample
            sample.append(chunk[np.arange((-seen) % step, len(chunk), step)])
            seen += len(chunk)
        index.train(np.ascontiguousarray(np.concatenate(sample)[:want], dtype=np.float32))
    else:
        raise ValueError(f"unknown stage-1 kind {params.kind!r}")
    for chunk in chunks():
        index.add(np.ascontiguousarray(chunk, dtype=np.float32))
    return index


def _norms(chunk: np.ndarray) -> np.ndarray:
    return np.linalg.norm(chunk.astype(np.float64), axis=1)


def _build_equal_length_hnsw(params: Stage1Params, dim: int, chunks: Callable[[], Iterable[np.ndarray]]):
    """The HNSW graph by Euclidean distance over the rows made ``R`` long (two reads of the rows:
    the longest one, then every row with its length-completing column)."""
    import faiss

    longest = max((float(_norms(chunk).max()) for chunk in chunks() if len(chunk)), default=1.0)
    graph = faiss.IndexHNSWFlat(dim + 1, params.m, faiss.METRIC_L2)
    graph.hnsw.efConstruction = params.ef_construction
    for chunk in chunks():
        rest = np.sqrt(np.maximum(longest ** 2 - _norms(chunk) ** 2, 0.0))
        graph.add(np.ascontiguousarray(np.concatenate([chunk, rest[:, None]], axis=1), dtype=np.float32))
    return InnerProductHnsw(graph)


class InnerProductHnsw:
    """An HNSW graph over equal-length rows ``[x, sqrt(R^2 - |x|^2)]`` searched for the rows of
    largest inner product with ``q``: ``search`` answers as an inner-product FAISS index would
    (scores descending, -1 / -inf where fewer were found), scores recomputed from the stored rows."""

    def __init__(self, graph) -> None:
        self.graph = graph

    @property
    def hnsw(self):
        return self.graph.hnsw

    @property
    def ntotal(self) -> int:
        return int(self.graph.ntotal)

    def search(self, queries: np.ndarray, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        padded = np.concatenate([q, np.zeros((len(q), 1), np.float32)], axis=1)
        _, found = self.graph.search(padded, k, params=params)
        scores = np.full(found.shape, -np.inf, np.float32)
        hit = found >= 0
        if hit.any():
            stored = self.graph.reconstruct_batch(found[hit].astype(np.int64))[:, :-1]
            scores[hit] = np.einsum("nd,nd->n", stored, np.repeat(q, hit.sum(1), axis=0))
        order = np.argsort(-scores, axis=1, kind="stable")  # exact scores may reorder near-equal rows
        return np.take_along_axis(scores, order, 1), np.take_along_axis(found, order, 1)


def save(index, path: str) -> None:
    """Write a stage-1 index built by :func:`build` to ``path``."""
    import faiss

    faiss.write_index(index.graph if isinstance(index, InnerProductHnsw) else index, path)


def load(path: str, params: Stage1Params):
    """Read a stage-1 index of ``params`` that :func:`save` wrote."""
    import faiss

    index = faiss.read_index(path)
    return InnerProductHnsw(index) if params.kind == "hnsw" else index


def index_bytes(index) -> int:
    """Bytes of the stage-1 index serialised."""
    import faiss

    return int(faiss.serialize_index(index.graph if isinstance(index, InnerProductHnsw) else index).size)


def configure(index, params: Stage1Params, shortlist: int) -> None:
    """Set the search-time parameters (nprobe, ef_search) for a shortlist of ``shortlist`` rows."""
    import faiss

    if params.kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = params.nprobe
    elif params.kind == "hnsw":
        index.hnsw.efSearch = max(params.ef_search, shortlist)


def search_parameters(params: Stage1Params, shortlist: int, mask: np.ndarray):
    """FAISS search parameters that restrict a search to the rows where ``mask`` (bool [rows]) is
    true (an ``IDSelectorBitmap``: FAISS then returns the best matching rows only, so a flat stage 1
    shortlists exactly as one built over the matching rows alone), with the kind's search-time
    parameters (nprobe, ef_search) for a shortlist of ``shortlist`` rows."""
    import faiss

    selector = faiss.IDSelectorBitmap(np.packbits(mask, bitorder="little"))
    if params.kind == "ivf":
        out = faiss.SearchParametersIVF(sel=selector, nprobe=params.nprobe)
    elif params.kind == "hnsw":
        out = faiss.SearchParametersHNSW(sel=selector, efSearch=max(params.ef_search, shortlist))
    else:
        out = faiss.SearchParameters(sel=selector)
    out.selector_ref = selector  # the parameters hold a raw pointer: keep the selector alive with them
    return out


# Part of an HNSW index's cache key: a graph of another layout (e.g. one by inner product, cached
# by an earlier release) is built again rather than read.
HNSW_LAYOUT = "l2 over rows made equal length"


def describe(params: Stage1Params) -> str:
    values = params.to_dict()
    if params.kind == "hnsw":
        values["layout"] = HNSW_LAYOUT
    return json.dumps(values, sort_keys=True)
