"""Stage 1 of two-stage search: a FAISS index over rows ``[v, bias_vs(v)]`` (the video_sentence
level plus its SK bias as one inner product), of one of three kinds:

* ``flat``: exact inner product over every row (IndexFlatIP); memory 4 (D+1) bytes a row, time
  linear in the gallery (memory-bound: about 2 GB read per query at 10^6 videos of D=512).
* ``ivf``: inverted lists (IndexIVFFlat, inner product) over ``nlist`` k-means cells; a query
  scans the ``nprobe`` nearest cells. Approximate.
* ``hnsw``: a navigable small-world graph (IndexHNSWFlat, inner product) with ``M`` links a row,
  built with ``ef_construction`` and searched with ``ef_search`` (raised to the shortlist when
  smaller). Approximate.

``auto`` picks by gallery size what benchmarks/large_gallery.py and benchmarks/million.py measured
(``benchmarks/results/large_gallery_1e6_vit_b32.json``, ``million_1e5.json``): flat up to
``AUTO_FLAT_MAX_ROWS`` rows (exact; at 10^5 rows a flat query took 65-115 ms p50 on the loaded
2-core machine, the whole 100 ms budget of a query, and at 10^6 about 1 s), HNSW above: at 10^5
calibrated rows (M 32) it kept 99-100 % of the exact shortlist and 99.6-100 % of the exhaustive
fused top-10 at efSearch 128-512 in 0.2-0.5 ms p50 (built in 27 s; at 10^6 rows 96.8-97.4 %, built
in 862 s: ``million_1e6_stage1.json``), whereas IVF at 10^6 rows (1024
lists) of the earlier, uncalibrated features kept only 11 % of the shortlist at nprobe 32, and the
FAISS scalar-quantised flat scans (int8, fp16) were no faster than flat for one query. The
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
HNSW_EF_CONSTRUCTION = 80
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
        index = faiss.IndexHNSWFlat(dim, params.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
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


def describe(params: Stage1Params) -> str:
    return json.dumps(params.to_dict(), sort_keys=True)
