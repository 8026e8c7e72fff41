"""Benchmark: a large gallery on one machine, measured end to end (issue 26: 10^6 videos).

``--videos N --queries Q --work DIR -o OUT.json`` builds (or reuses) a gallery of N synthetic
ViT-B/32-geometry videos in ``DIR`` through the project's index writer (``--store``, default
int8), starts ``ucofia-run serve`` on it (127.0.0.1, two-stage on, one server per
``--shortlists`` value), and measures through HTTP:

* one query at a time (``--single-requests`` requests, bounded in count and time): p50 / p99;
* 32 concurrent clients (``benchmarks/serve.py``'s bounded load loop): QPS, p50 / p99;
* the server's anonymous RSS (RssAnon: not the page cache of the shard files) after the load;
* agreement with the exhaustive top-10: the exhaustive fused top-10 of the Q sample queries is
  computed once, offline, with every query scored together in one pass over the gallery
  (``search.exhaustive``), kept in ``DIR`` as ground truth, and compared with the service's
  answer (same top-10 set; same order; mean overlap).

Beside the service it measures the parts (``--parts``):

* ``stage1``: every stage-1 index kind over the gallery's [video, bias] rows -- flat, FAISS
  scalar-quantised flat scans (int8 ``sq8``, ``fp16``), IVF (nlist x nprobe swept), HNSW (M x
  efSearch swept): build seconds, index bytes, per-query p50 / p99, recall of the exact stage-1
  shortlist and of the exhaustive fused top-10 (``--stage1-rows`` > N: video rows generated in
  memory, without the fused top-10, which needs the whole gallery on disk);
* ``rerank``: two-stage search in process (runtime.search.TwoStage, exact flat stage 1) per
  shortlist: stage 1 alone, and the whole query warm and cold (the index's shard files dropped
  from the page cache with posix_fadvise(DONTNEED) before each query), so the re-rank's share is
  measured, not modelled;
* ``hnsw``: the runtime's HNSW stage 1 (as the service builds and caches it) per efSearch and
  shortlist, against the exact stage-1 shortlist computed with numpy;
* ``layouts``: an HNSW graph by inner product against the runtime's graph over the rows made
  equal length (same M, efConstruction, rows and queries): build seconds, recall of the exact
  shortlist, queries that keep the whole exact stage-1 top-10 and, with the ground truth, the
  whole exhaustive fused top-10.

Synthetic features, calibrated on a trained model (``--calibrate RUN`` measures the statistics
of a trained demo run -- its bundle, index and test captions -- and of the generator, side by
side; ``CALIBRATION`` holds the numbers the generator uses and where they came from):

* topics of log-normal size (mean ``TOPIC_MEAN``), centres = a common direction (trained CLIP
  features share one: mean pairwise cosine well above 0) + a Gaussian with a power-law spectrum
  (eigenvalue k ~ k^-SPECTRUM_POWER) in a random basis;
* a video's vector = unit(centre + SPREAD x its own offset u); its frames and patches = centre +
  SPREAD x (RHO u + sqrt(1 - RHO^2) w) + per-frame / per-patch noise, w a fine-level offset of
  its own: RHO sets how much the fine levels agree with the video level, i.e. the correlation of
  the video-sentence level (stage 1) with the fused score;
* one topic per sample query is centred on that query's stage-1 direction (coloured like the
  others), so each query has a graded neighbourhood and a long tail, as in retrieval.

    .venv/bin/python benchmarks/million.py --videos 20000 --queries 20 --work /tmp/m2e4 \
        -o benchmarks/results/million_2e4.json
    .venv/bin/python benchmarks/million.py --calibrate /path/to/demo_run --work /tmp/mcal \
        -o benchmarks/results/million_calibration.json
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from large_gallery import NOISE_BANK_ROWS, _agreement, _one_at_a_time, _percentiles, evict

from runtime.scoring import LEVELS

SHARD = 5000
TOP_K = 10
CLIENTS = 32
FIRST_SEARCH_S = 3600  # the first search through the service may build the stage-1 index (HNSW at 10^6)


@dataclass(frozen=True)
class GeneratorParams:
    """The synthetic gallery's structure (see the module docstring)."""

    topic_mean: float = 10.0        # mean videos per topic
    topic_sigma: float = 1.0        # log-normal sigma of the topic sizes
    common: float = 0.8             # weight of the common direction in a topic centre
    spectrum_power: float = 1.0     # eigenvalue k of the centres' / offsets' Gaussian ~ k^-power
    spread: float = 0.5             # within-topic offset (relative to the centre's Gaussian part)
    rho: float = 0.8                # share of the video-level offset in the fine levels
    frame_noise: float = 0.8        # per-frame noise
    patch_noise: float = 1.5        # per-patch noise
    patch_scale: float = 2.0        # patches' norm relative to frames
    # SK video biases per level (video_sentence, frame_sentence, patch_word): standard deviation over
    # the gallery relative to the per-query standard deviation of the video-sentence level, and
    # their correlations (vs-fs, vs-pw, fs-pw); measured on the trained demo index
    bias_ratio: tuple[float, float, float] = (0.177, 0.091, 0.166)
    bias_corr: tuple[float, float, float] = (0.042, -0.432, 0.309)


# The generator's numbers and their source: `--calibrate` prints the trained model's statistics and
# the generator's side by side (benchmarks/results/million_calibration.json).
CALIBRATION = GeneratorParams()


class Generator:
    """Deterministic synthetic features for rows [start, stop) of an ``n``-video gallery of
    ``dim``-wide vectors with ``frames`` frames and ``patches`` patches a video."""

    def __init__(self, n: int, dim: int, frames: int, patches: int, params: GeneratorParams, seed: int,
                 anchors: np.ndarray | None = None) -> None:
        self.n, self.d, self.f, self.p, self.params, self.seed = n, dim, frames, patches, params, seed
        rng = np.random.default_rng([seed, 1])
        sizes = np.maximum(1, np.rint(rng.lognormal(np.log(params.topic_mean) - params.topic_sigma ** 2 / 2,
                                                    params.topic_sigma, n))).astype(np.int64)
        sizes = sizes[:int(np.searchsorted(np.cumsum(sizes), n)) + 1]
        sizes[-1] -= sizes.sum() - n
        self.topic_of_row = np.repeat(np.arange(len(sizes)), sizes)
        self.topic_start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.topic_sizes = sizes
        basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        lam = np.arange(1, dim + 1, dtype=np.float64) ** -params.spectrum_power
        self.colour = (np.sqrt(lam / lam.sum())[:, None] * basis.T).astype(np.float32)  # g [.., D] @ colour
        self.mean = _unit(rng.standard_normal(dim)).astype(np.float32)
        gauss = rng.standard_normal((len(sizes), dim), dtype=np.float32)
        if anchors is not None and len(anchors):
            # anchored topics, spread over the gallery: the anchor's direction in the basis, coloured
            where = np.linspace(0, len(sizes) - 1, len(anchors)).astype(np.int64)
            self.anchor_topics = where
            gauss[where] = (_unit(anchors.astype(np.float64)) @ basis * np.sqrt(dim)).astype(np.float32)
        else:
            self.anchor_topics = np.zeros(0, np.int64)
        self.centres = _unit(params.common * self.mean + gauss @ self.colour).astype(np.float32)
        bank = np.random.default_rng([seed, 2])
        unit = np.float32(dim ** -0.5)  # noise vectors of norm ~1
        self.frame_bank = bank.standard_normal((NOISE_BANK_ROWS, frames, dim), dtype=np.float32) * unit
        self.patch_bank = bank.standard_normal((NOISE_BANK_ROWS, patches, dim), dtype=np.float32) * unit

    def biases(self, start: int, stop: int, vs_std: float) -> np.ndarray:
        """SK video biases [3, stop - start] of rows [start, stop) (``vs_std``: the per-query
        standard deviation of the video-sentence level they are scaled to)."""
        a, b, c = self.params.bias_corr
        chol = np.linalg.cholesky(np.array([[1, a, b], [a, 1, c], [b, c, 1]], np.float64))
        z = np.random.default_rng([self.seed, 4, start]).standard_normal((3, stop - start))
        return ((np.asarray(self.params.bias_ratio)[:, None] * vs_std) * (chol @ z)).astype(np.float32)

    def _draws(self, start: int, stop: int) -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, 3, start])
        n = stop - start
        u = rng.standard_normal((n, self.d), dtype=np.float32) @ self.colour
        return rng, self.centres[self.topic_of_row[start:stop]], u

    def video(self, start: int, stop: int) -> np.ndarray:
        """The ``video`` vectors of rows [start, stop) (the same draws as :meth:`shard`)."""
        _, c, u = self._draws(start, stop)
        return _unit(c + self.params.spread * u).astype(np.float32)

    def shard(self, start: int, stop: int) -> dict[str, np.ndarray]:
        p = self.params
        rng, c, u = self._draws(start, stop)
        n = stop - start
        video = _unit(c + p.spread * u).astype(np.float32)
        w = rng.standard_normal((2, n, self.d), dtype=np.float32) @ self.colour
        mix = np.float32(np.sqrt(max(0.0, 1 - p.rho ** 2)))
        base_f = c + np.float32(p.spread) * (np.float32(p.rho) * u + mix * w[0])
        base_p = c + np.float32(p.spread) * (np.float32(p.rho) * u + mix * w[1])
        pick = rng.integers(0, NOISE_BANK_ROWS, (2, n))
        frames = self.frame_bank[pick[0]]
        frames *= np.float32(p.frame_noise)
        frames += base_f[:, None, :]
        patches = self.patch_bank[pick[1]]
        patches *= np.float32(p.patch_noise)
        patches += base_p[:, None, :]
        patches *= np.float32(p.patch_scale)
        return {"video": video, "frame_features": frames, "patches": patches,
                "video_mask": np.ones((n, self.f), np.float32)}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ---- the model, queries, gallery --------------------------------------------------------------
def sample_texts(n: int, seed: int) -> list[str]:
    from serve import queries

    return queries(n, seed)


def open_model(bundle_dir: Path, threads: int):
    from runtime.backends import open_session
    from runtime.bundle import load_bundle
    from runtime.scoring import Scorer
    from runtime.text import TextEncoder

    bundle = load_bundle(bundle_dir)
    return bundle, Scorer(open_session(bundle, "scorer", "cpu", threads), bundle.config), TextEncoder(bundle, "cpu",
                                                                                                     threads)


def stage1_vectors(kernel: np.ndarray, sentence: np.ndarray) -> np.ndarray:
    """[s_hat K, 1] per query, as runtime.search.TwoStage sends them to FAISS."""
    s = sentence.astype(np.float64)
    q = (s / np.linalg.norm(s, axis=1, keepdims=True)) @ kernel
    return np.concatenate([q, np.ones((len(q), 1))], axis=1).astype(np.float32)


def build_gallery(root: Path, bundle, gen: Generator, store: str, tag: str, vs_std: float) -> dict:
    """Write the gallery through runtime.index.IndexWriter, with synthetic SK biases scaled to
    ``vs_std`` (reused when ``root`` holds this one)."""
    from runtime.index import GalleryIndex, IndexWriter

    marker = root / "million.json"
    if marker.is_file() and marker.read_text() == tag and len(GalleryIndex(root)) == gen.n:
        return {"reused": True, "bytes_on_disk": _bytes(root), "bytes_per_video": round(_bytes(root) / gen.n, 1)}
    if root.exists():
        shutil.rmtree(root)
    start = time.perf_counter()
    with IndexWriter(root, bundle, store) as writer:
        for s0 in range(0, gen.n, SHARD):
            s1 = min(s0 + SHARD, gen.n)
            writer.add_batch([f"v{i:07d}" for i in range(s0, s1)], gen.shard(s0, s1))
            if (s1 // SHARD) % 10 == 0 or s1 == gen.n:
                print(f"[million] index: {s1}/{gen.n} ({time.perf_counter() - start:.0f} s)", file=sys.stderr,
                      flush=True)
        writer.set_biases(np.concatenate([gen.biases(s0, min(s0 + SHARD, gen.n), vs_std)
                                          for s0 in range(0, gen.n, SHARD)], axis=1),
                          {"synthetic": "benchmarks/million.py"})
    seconds = time.perf_counter() - start
    from ucofia.io_utils import atomic_write_text

    atomic_write_text(marker, tag)
    return {"reused": False, "seconds": round(seconds, 1), "bytes_on_disk": _bytes(root),
            "bytes_per_video": round(_bytes(root) / gen.n, 1)}


def _bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / "shards").rglob("*") if p.is_file())


GROUND_TRUTH_PID = "ground_truth.pid"


def wait_for_ground_truth(work: Path) -> None:
    """Wait while an ``--only-ground-truth`` process is computing the ground truth in ``work``."""
    pid_file = work / GROUND_TRUTH_PID
    while pid_file.is_file():
        try:
            os.kill(int(pid_file.read_text()), 0)
        except (ProcessLookupError, ValueError):
            return  # it died: this process computes the ground truth itself
        print("[million] waiting for the --only-ground-truth process ...", file=sys.stderr, flush=True)
        time.sleep(30)


def ground_truth(work: Path, scorer, index, text, tag: str, memory_mb: float) -> tuple[np.ndarray, dict]:
    """The exhaustive fused top-10 of every sample query, all scored together in one pass over the
    gallery (cached in ``work``)."""
    from runtime import search

    path = work / "ground_truth.npz"
    if path.is_file():
        cached = np.load(path)
        if str(cached["tag"]) == tag:
            return cached["indices"], {"reused": True, "seconds": float(cached["seconds"])}
    start = time.perf_counter()
    top = search.exhaustive(scorer, index, text, TOP_K, memory_mb)
    seconds = time.perf_counter() - start
    with open(path.with_suffix(".tmp.npz"), "wb") as fh:
        np.savez(fh, indices=top.indices, tag=tag, seconds=seconds)
    os.replace(path.with_suffix(".tmp.npz"), path)
    return top.indices, {"reused": False, "seconds": round(seconds, 1),
                         "pairs_per_second": round(len(text) * len(index) / seconds)}


# ---- stage 1 ----------------------------------------------------------------------------------
def stage1_kinds(rows: int, args) -> list[tuple[str, dict]]:
    """(name, settings) of every stage-1 index measured; build settings first, search ones swept."""
    out = [("flat", {}), ("sq8", {}), ("fp16", {})]
    for nlist in args.nlists:  # FAISS wants >= 39 training rows a list
        if nlist * 39 <= rows:
            out.append(("ivf", {"nlist": nlist}))
    if rows <= args.hnsw_max_rows:
        for m in args.hnsw_m:
            out.append(("hnsw", {"m": m}))
    return out


def _runtime_graph(index, params) -> tuple:
    """The runtime's stage-1 index of ``params`` over the gallery ``index``, cached in it as
    two-stage search caches it (read from there when the service built it earlier, and read by a
    service started later): (FAISS index, whether it was read from the cache)."""
    from runtime.index import STAGE1_PREFIX
    from runtime.search.two_stage import faiss_index

    def cached() -> set:
        return set(index.root.glob(f"{STAGE1_PREFIX}*.faiss"))

    before = cached()
    built = faiss_index(index, params)[0]
    return built, not (cached() - before)


def _faiss_build(kind: str, settings: dict, dim: int, chunks, rows: int, index=None) -> tuple:
    """A FAISS index of ``kind`` and whether it was read from the gallery's cache: the runtime's
    own kinds are built by runtime.search.stage1, and an HNSW over the gallery ``index`` is the
    runtime's graph (:func:`_runtime_graph`)."""
    import faiss

    from runtime.search import stage1

    if kind in ("flat", "ivf", "hnsw"):
        params = stage1.Stage1Params(kind=kind, **{k: v for k, v in settings.items() if k in ("nlist", "m")})
        if kind == "hnsw" and index is not None:
            return _runtime_graph(index, params)
        return stage1.build(params, dim, chunks, rows), False
    qtype = {"sq8": faiss.ScalarQuantizer.QT_8bit, "fp16": faiss.ScalarQuantizer.QT_fp16}[kind]
    index = faiss.IndexScalarQuantizer(dim, qtype, faiss.METRIC_INNER_PRODUCT)
    if kind == "sq8":  # per-dimension ranges from an evenly spread sample of about 10^5 rows
        step = max(1, rows // 100_000)
        index.train(np.ascontiguousarray(np.concatenate([chunk[::step] for chunk in chunks()]), dtype=np.float32))
    for chunk in chunks():
        index.add(np.ascontiguousarray(chunk, dtype=np.float32))
    return index, False


def _recall(found: list[np.ndarray], exact: np.ndarray, shortlist: int) -> float:
    """Mean share of each query's exact shortlist of ``shortlist`` rows that was found."""
    return round(float(np.mean([len(set(f) & set(t[:shortlist])) / shortlist for f, t in zip(found, exact)])), 4)


def measure_stage1(chunks, rows: int, dim: int, q: np.ndarray, found_ids: dict | None, args,
                   index=None) -> dict:
    """Every stage-1 kind over ``rows`` rows that ``chunks()`` yields (those of ``index`` when
    given), queried with ``q``."""
    import faiss

    from runtime.search import stage1

    widest = max(args.shortlists)
    out: dict = {"rows": rows, "dim": dim, "queries": len(q), "kinds": {}}
    exact = None
    for kind, settings in stage1_kinds(rows, args):
        name = kind + "".join(f" {k}={v}" for k, v in settings.items())
        print(f"[million] stage 1 at {rows}: {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        fidx, from_cache = _faiss_build(kind, settings, dim, chunks, rows, index)
        build_s = time.perf_counter() - start
        entry = {"build_seconds": round(build_s, 1), "index_bytes": stage1.index_bytes(fidx),
                 "search": {}}
        if from_cache:
            entry["read_from_cache"] = True  # built earlier (e.g. by the service): build_seconds is the read
        sweep = ({"ivf": [{"nprobe": p} for p in args.nprobes],
                  "hnsw": [{"ef_search": e} for e in args.ef_searches]}.get(kind) or [{}])
        for extra in sweep:
            per = {}
            for shortlist in args.shortlists:
                if kind == "ivf":
                    faiss.extract_index_ivf(fidx).nprobe = extra["nprobe"]
                elif kind == "hnsw":
                    fidx.hnsw.efSearch = max(extra["ef_search"], shortlist)
                times, found = _one_at_a_time(fidx, q, shortlist)
                stats = _percentiles(times)
                if exact is not None:
                    stats["recall_of_exact_shortlist"] = _recall(found, exact, shortlist)
                if found_ids is not None:  # scored against the exhaustive top-10 once it is computed
                    found_ids[(name, json.dumps(extra) if extra else "", str(shortlist))] = np.stack(found)
                per[str(shortlist)] = stats
            entry["search"][json.dumps(extra) if extra else "exact" if kind == "flat" else "scan"] = per
        if kind == "flat":
            exact = np.stack([fidx.search(q[i:i + 1], widest)[1][0] for i in range(len(q))])
            # the flat pass above ran before the exact shortlist existed: fill its recall in
            for stats in entry["search"]["exact"].values():
                stats["recall_of_exact_shortlist"] = 1.0
        out["kinds"][name] = entry
        del fidx
        gc.collect()
    return out


def measure_hnsw(index, q: np.ndarray, found_ids: dict, args) -> dict:
    """The runtime's HNSW stage 1 (``auto`` above 5 x 10^4 rows: M 32, read from the index's cache
    when the service built it) against the exact shortlist computed with numpy in one pass: per
    efSearch and shortlist, p50 / p99 and recall of the exact shortlist (without the flat FAISS
    index, whose single-query scans take ~1 s each at 10^6)."""
    from runtime.search import stage1
    from runtime.search.two_stage import _faiss_rows

    biases = index.biases()
    widest = max(args.shortlists)
    start = time.perf_counter()
    scores = np.concatenate([chunk @ q.T for chunk in _faiss_rows(
        index, None if biases is None else biases["video_sentence"])]).T  # [queries, rows]
    exact = np.argsort(-scores, axis=1, kind="stable")[:, :widest]
    exact_s = time.perf_counter() - start
    del scores
    params = stage1.choose("hnsw", len(index))
    start = time.perf_counter()
    fidx, from_cache = _runtime_graph(index, params)
    out = {"rows": len(index), "params": params.to_dict(), "exact_shortlist_seconds": round(exact_s, 1),
           "index_seconds": round(time.perf_counter() - start, 1), "read_from_cache": from_cache, "search": {}}
    name = f"hnsw m={params.m}"
    exact_entry = {"search": {"exact": {}}}
    for shortlist in args.shortlists:  # what an exact stage 1 would keep, for comparison
        exact_entry["search"]["exact"][str(shortlist)] = {"recall_of_exact_shortlist": 1.0}
        found_ids[("exact (numpy)", "", str(shortlist))] = exact[:, :shortlist]
    for ef in args.ef_searches:
        per = {}
        for shortlist in args.shortlists:
            fidx.hnsw.efSearch = max(ef, shortlist)
            times, found = _one_at_a_time(fidx, q, shortlist)
            per[str(shortlist)] = {**_percentiles(times), "recall_of_exact_shortlist": _recall(found, exact, shortlist)}
            found_ids[(name, json.dumps({"ef_search": ef}), str(shortlist))] = np.stack(found)
            print(f"[million] {name} ef {ef} shortlist {shortlist}: {per[str(shortlist)]}", file=sys.stderr,
                  flush=True)
        out["search"][json.dumps({"ef_search": ef})] = per
    return {"rows": len(index), "kinds": {name: out, "exact (numpy)": exact_entry}}


def measure_layouts(index, q: np.ndarray, found_ids: dict, args) -> dict:
    """The HNSW graph by inner product over the stage-1 rows against the runtime's graph over the
    rows made equal length (runtime.search.stage1), same M and efConstruction, same rows and
    queries: build time and, per efSearch and shortlist, recall of the exact shortlist."""
    import faiss

    from runtime.search import stage1
    from runtime.search.two_stage import _faiss_rows

    biases = index.biases()

    def chunks():
        return _faiss_rows(index, None if biases is None else biases["video_sentence"])

    widest = max(args.shortlists)
    scores = np.concatenate([chunk @ q.T for chunk in chunks()]).T
    exact = np.argsort(-scores, axis=1, kind="stable")[:, :widest]
    del scores
    params = stage1.choose("hnsw", len(index))
    out: dict = {"rows": len(index), "m": params.m, "ef_construction": params.ef_construction, "kinds": {}}
    for layout in ("inner product", "equal length (l2)"):
        print(f"[million] HNSW layout {layout} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        if layout == "inner product":
            graph = faiss.IndexHNSWFlat(len(q[0]), params.m, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = params.ef_construction
            for chunk in chunks():
                graph.add(np.ascontiguousarray(chunk, dtype=np.float32))
            from_cache = False
        else:
            graph, from_cache = _runtime_graph(index, params)
        entry: dict = {"build_seconds": round(time.perf_counter() - start, 1), "search": {}}
        if from_cache:
            entry["read_from_cache"] = True  # built earlier (e.g. by the service): build_seconds is the read
        for ef in args.ef_searches:
            per = {}
            for shortlist in args.shortlists:
                graph.hnsw.efSearch = max(ef, shortlist)
                times, found = _one_at_a_time(graph, q, shortlist)
                per[str(shortlist)] = {**_percentiles(times),
                                       "recall_of_exact_shortlist": _recall(found, exact, shortlist),
                                       "queries_with_the_exact_stage1_top10": int(sum(
                                           set(t[:TOP_K]) <= set(f) for f, t in zip(found, exact)))}
                found_ids[(f"hnsw {layout}", json.dumps({"ef_search": ef}), str(shortlist))] = np.stack(found)
            entry["search"][json.dumps({"ef_search": ef})] = per
            print(f"[million] {layout} ef {ef}: {per}", file=sys.stderr, flush=True)
        out["kinds"][f"hnsw {layout}"] = entry
        del graph
        gc.collect()
    return out


def stage1_in_memory(gen: Generator, q: np.ndarray, args) -> dict:
    """The stage-1 kinds over ``gen``'s video rows generated in memory (no gallery on disk)."""
    chunk = 65536

    def chunks():
        for s0 in range(0, gen.n, chunk):
            s1 = min(s0 + chunk, gen.n)
            yield np.concatenate([gen.video(s0, s1), np.zeros((s1 - s0, 1), np.float32)], axis=1)

    return measure_stage1(chunks, gen.n, gen.d + 1, q, None, args)


def measure_rerank(scorer, index, text, q1: np.ndarray, args, memory_mb: float) -> dict:
    """Two-stage search in process (flat stage 1) per shortlist: stage 1 alone, the whole query warm,
    and cold (the shard files dropped from the page cache first) with the shortlisted rows read by
    parallel positioned reads (runtime.index.reader.READ_THREADS files at a time) and one after another,
    alternating query by query."""
    from runtime.index import reader
    from runtime.search import TwoStage, stage1

    engine = TwoStage(scorer, index, memory_mb, stage1.choose("flat", len(index)))
    n = min(len(text), args.rerank_queries)
    parallel_min_rows = reader.PARALLEL_MIN_ROWS
    out = {"queries": n, "read_threads": reader.READ_THREADS, "shortlists": {}}

    def cold(i: int, shortlist: int, parallel: bool) -> float:
        reader.PARALLEL_MIN_ROWS = parallel_min_rows if parallel else 1 << 62
        try:
            evict(index.root)
            t0 = time.perf_counter()
            engine.search(text.rows(i, i + 1), TOP_K, shortlist)
            return time.perf_counter() - t0
        finally:
            reader.PARALLEL_MIN_ROWS = parallel_min_rows

    for shortlist in args.shortlists:
        s1, warm, cold_parallel, cold_sequential = [], [], [], []
        for i in range(n):
            t0 = time.perf_counter()
            engine.stage1_index.search(q1[i:i + 1], shortlist)
            s1.append(time.perf_counter() - t0)
        for i in range(n):
            engine.search(text.rows(i, i + 1), TOP_K, shortlist)  # warm the shortlisted rows' pages
            t0 = time.perf_counter()
            engine.search(text.rows(i, i + 1), TOP_K, shortlist)
            warm.append(time.perf_counter() - t0)
            for parallel in ((True, False) if i % 2 == 0 else (False, True)):
                (cold_parallel if parallel else cold_sequential).append(cold(i, shortlist, parallel))
        stage1_p50 = _percentiles(s1)["p50_ms"]
        entry = {"stage1": _percentiles(s1), "two_stage_warm": _percentiles(warm),
                 "two_stage_cold_parallel_reads": _percentiles(cold_parallel),
                 "two_stage_cold_sequential_reads": _percentiles(cold_sequential)}
        for name, key in (("warm", "two_stage_warm"), ("cold_parallel_reads", "two_stage_cold_parallel_reads"),
                          ("cold_sequential_reads", "two_stage_cold_sequential_reads")):
            entry[f"rerank_{name}_p50_ms"] = round(entry[key]["p50_ms"] - stage1_p50, 2)
        entry["cold_sequential_over_parallel_p50"] = round(
            entry["two_stage_cold_sequential_reads"]["p50_ms"] / entry["two_stage_cold_parallel_reads"]["p50_ms"], 2)
        out["shortlists"][str(shortlist)] = entry
        print(f"[million] re-rank shortlist {shortlist}: " + ", ".join(
            f"{k} {v}" for k, v in entry.items() if k.startswith(("rerank", "cold"))), file=sys.stderr, flush=True)
    return out


# ---- the service ------------------------------------------------------------------------------
def single_queries(url: str, texts: list[str], requests: int, deadline_s: float) -> tuple[list[float], list]:
    """One request at a time (bounded in count and time): latencies and each text's returned ids."""
    import httpx

    times, answers = [], {}
    stop_at = time.monotonic() + deadline_s
    with httpx.Client(base_url=url, timeout=120) as client:
        for i in range(requests):
            if time.monotonic() > stop_at:
                break
            text = texts[i % len(texts)]
            t0 = time.perf_counter()
            reply = client.post("/v1/search", json={"queries": [text], "top_k": TOP_K})
            times.append(time.perf_counter() - t0)
            reply.raise_for_status()
            answers.setdefault(i % len(texts), [hit["video_id"] for hit in reply.json()["results"][0]["results"]])
    return times, [answers.get(i) for i in range(len(texts))]


def stage_totals(url: str) -> dict[str, float]:
    """The service's cumulative model seconds per stage (encode, score), queue wait and batches."""
    import re

    import httpx

    text = httpx.get(url + "/metrics", timeout=60).text
    out = {}
    for name, pattern in (("encode_s", r'^ucofia_search_stage_seconds_sum\{stage="encode"\} ([0-9.e+-]+)$'),
                          ("score_s", r'^ucofia_search_stage_seconds_sum\{stage="score"\} ([0-9.e+-]+)$'),
                          ("batches", r'^ucofia_search_stage_seconds_count\{stage="score"\} ([0-9.e+-]+)$'),
                          ("queue_wait_s", r"^ucofia_queue_wait_seconds_sum ([0-9.e+-]+)$")):
        found = re.search(pattern, text, re.M)
        out[name] = float(found.group(1)) if found else 0.0
    return out


def per_request_ms(before: dict, after: dict, requests: int) -> dict:
    """Mean milliseconds per request of each stage between two :func:`stage_totals`."""
    return {k.removesuffix("_s") + "_ms_per_request": round(1000 * (after[k] - before[k]) / max(requests, 1), 2)
            for k in ("encode_s", "score_s", "queue_wait_s")} | {
        "requests_per_batch": round(requests / max(after["batches"] - before["batches"], 1), 2)}


def stage1_recall_of_top10(result: dict, found_ids: dict, truth: np.ndarray) -> None:
    """Fill in each stage-1 setting's recall of the exhaustive fused top-10."""
    for (name, extra, shortlist), found in found_ids.items():
        entry = result["kinds"][name]["search"]
        key = extra or ("exact" if name in ("flat", "exact (numpy)") else "scan")
        entry[key][shortlist]["recall_of_exhaustive_top10"] = round(float(np.mean(
            [len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)])), 4)
        entry[key][shortlist]["queries_with_the_whole_exhaustive_top10"] = int(sum(
            set(t) <= set(f) for f, t in zip(found, truth)))


def service_agreement(run: dict, truth: np.ndarray) -> None:
    """Fill in a service run's agreement with the exhaustive top-10 (from the rows it answered)."""
    answers = run["answers"] if "answers" in run else run["answers_rows"]
    answered = [i for i, a in enumerate(answers) if a is not None]
    agree = _agreement(np.stack([answers[i] for i in answered]), truth[answered])
    run["top10_agreement"] = {**agree, "queries": len(answered)}


def finish(result: dict, truth: np.ndarray | None) -> None:
    """The headline figures of the served shortlist; agreement with ``truth`` (the exhaustive top-10
    rows of the sample queries; None: not computed, agreement left null and the shortlist the first)."""
    if "services" not in result:
        return
    runs = result["services"]
    for run in runs:
        if truth is not None:
            service_agreement(run, truth)
        run["answers_rows"] = run.pop("answers") if "answers" in run else run["answers_rows"]
    # the served shortlist: the shortest of those that agree best with the exhaustive top-10 sets
    # (without the ground truth: the first one run)
    if truth is None:
        best = runs[0]
    else:
        top = max(r["top10_agreement"]["same_top_k_set"] for r in runs)
        best = min((r for r in runs if r["top10_agreement"]["same_top_k_set"] == top), key=lambda r: r["shortlist"])
    agreement = best["top10_agreement"]["same_top_k_set"] if truth is not None else None
    result.update({"serve_shortlist": best["shortlist"], "single_query": best["single_query"],
                   "clients_32": best["clients_32"], "anon_rss_mib": best["anon_rss_mib"],
                   "top10_agreement": agreement})
    result["targets"] = {
        "single_query_p50_ms_below": 100, "single_query_p99_ms_below": 250, "clients_32_qps_at_least": 20,
        "anon_rss_mib_below": 4096, "top10_agreement_at_least": 0.99,
        "met": {"p50": best["single_query"]["p50_ms"] < 100, "p99": best["single_query"]["p99_ms"] < 250,
                "qps": best["clients_32"]["qps"] >= 20, "rss": (best["anon_rss_mib"] or 0) < 4096,
                "agreement": None if agreement is None else agreement >= 0.99}}


def measure_service(index_dir: Path, bundle_dir: Path, shortlist: int, texts: list[str], ids: list[str],
                    args) -> dict:
    from serve import Server, load, percentiles, proc_rss_mib

    print(f"[million] serve, shortlist {shortlist}: starting ...", file=sys.stderr, flush=True)
    import serve

    serve.START_TIMEOUT_S = FIRST_SEARCH_S  # the service builds its stage-1 index (HNSW at 10^6) before /readyz
    t0 = time.perf_counter()
    server = Server(index_dir, bundle_dir, ["--two-stage", "on", "--shortlist", str(shortlist)], args.threads)
    try:
        ready_s = time.perf_counter() - t0
        # the first search builds (or reads) the stage-1 index and the kernel: not measured; until it is
        # built a search is answered 504 (--timeout), so it is retried, for at most FIRST_SEARCH_S
        t0 = time.perf_counter()
        while True:
            try:
                single_queries(server.url, texts[:1], 1, 600)
                break
            except Exception as exc:  # httpx errors: 504 while the stage-1 index is being built, timeouts
                if time.perf_counter() - t0 > FIRST_SEARCH_S:
                    raise SystemExit(f"the first search did not succeed in {FIRST_SEARCH_S} s: {exc}") from None
                time.sleep(5)
        first_s = time.perf_counter() - t0
        before = stage_totals(server.url)
        times, answers = single_queries(server.url, texts, args.single_requests, args.single_deadline_s)
        single_stages = per_request_ms(before, stage_totals(server.url), len(times))
        row = {vid: i for i, vid in enumerate(ids)}
        rows = [None if a is None else [row[v] for v in a] for a in answers]
        single = {**percentiles(times), "mean_ms": round(1000 * float(np.mean(times)), 2), "requests": len(times),
                  "stages": single_stages}
        print(f"[million]   single query: {single}", file=sys.stderr, flush=True)
        rss_single = proc_rss_mib(server.proc.pid)
        load(server.url, CLIENTS, min(5.0, args.duration_s), texts)  # warm-up, not measured
        before = stage_totals(server.url)
        many = load(server.url, CLIENTS, args.duration_s, texts)
        many["stages"] = per_request_ms(before, stage_totals(server.url), many["requests"])
        rss = proc_rss_mib(server.proc.pid)
        print(f"[million]   {CLIENTS} clients: {many['qps']} QPS, p50 {many['p50_ms']} ms, p99 {many['p99_ms']} ms, "
              f"RSS {rss}", file=sys.stderr, flush=True)
    finally:
        server.stop()
    return {"shortlist": shortlist, "server_ready_s": round(ready_s, 1), "first_search_s": round(first_s, 1),
            "single_query": single, "clients_32": many, "answers": rows, "rss_after_single_mib": rss_single,
            "rss_after_load_mib": rss, "anon_rss_mib": rss.get("RssAnon")}


# ---- calibration ------------------------------------------------------------------------------
def feature_stats(video: np.ndarray, frames: np.ndarray) -> dict:
    """Structure of video-level features: common direction, spectrum, neighbourhoods, frames."""
    v = _unit(video.astype(np.float64))
    n, d = v.shape
    sims = v @ v.T
    off = sims[~np.eye(n, dtype=bool)]
    np.fill_diagonal(sims, -np.inf)
    centred = v - v.mean(0)
    eig = np.sort(np.linalg.eigvalsh(centred.T @ centred / n))[::-1].clip(0)
    top = max(1, int(round(0.1 * min(n, d))))
    fmean = _unit(frames.astype(np.float64).mean(1))
    return {"videos": n, "dim": d, "mean_pair_cosine": round(float(off.mean()), 4),
            "nearest_neighbour_cosine_mean": round(float(sims.max(1).mean()), 4),
            "participation_ratio_over_min_n_d": round(float(eig.sum() ** 2 / (eig ** 2).sum() / min(n, d)), 4),
            "variance_in_top_10pct_components": round(float(eig[:top].sum() / eig.sum()), 4),
            "frame_mean_to_video_cosine": round(float((fmean * v).sum(1).mean()), 4)}


def score_stats(levels: dict, biases: dict | None) -> dict:
    """How the video-sentence level (stage 1) tracks the fused score over (query, video) pairs."""
    from runtime.scoring import fuse

    vs = levels["video_sentence"] + (0 if biases is None else biases["video_sentence"][None, :])
    fused = fuse(levels, biases)
    n = vs.shape[1]

    def ranks(x):
        return np.argsort(np.argsort(-x, axis=1), axis=1)

    rv, rf = ranks(vs), ranks(fused)
    spearman = [float(np.corrcoef(rv[i], rf[i])[0, 1]) for i in range(len(vs))]
    capture = {}
    k = min(TOP_K, max(1, n // 10))
    for frac in (0.02, 0.05, 0.1, 0.2, 0.5):
        s = max(k, int(round(frac * n)))
        capture[f"{frac:g}"] = round(float(np.mean([(rv[i][rf[i] < k] < s).mean() for i in range(len(vs))])), 4)
    return {"pairs": int(vs.size), "pearson_vs_fused": round(float(np.corrcoef(vs.ravel(), fused.ravel())[0, 1]), 4),
            "spearman_vs_fused_per_query_mean": round(float(np.mean(spearman)), 4), "top_k": k,
            "fused_top_k_within_vs_top_fraction": capture}


def bias_stats(levels: dict, biases: dict | None) -> dict | None:
    """Each level's per-query standard deviation, and the SK biases' relative to the video-sentence one."""
    vs_std = float(levels["video_sentence"].std(1).mean())
    out = {"level_std_per_query": {lv: round(float(levels[lv].std(1).mean()), 4) for lv in LEVELS}}
    if biases is not None:
        b = np.stack([biases[lv] for lv in LEVELS])
        out["bias_std_over_vs_std"] = [round(float(x) / vs_std, 4) for x in b.std(1)]
        c = np.corrcoef(b)
        out["bias_corr_vs_fs_vs_pw_fs_pw"] = [round(float(c[0, 1]), 3), round(float(c[0, 2]), 3),
                                              round(float(c[1, 2]), 3)]
    return out


def vs_level_std(q1: np.ndarray, video: np.ndarray) -> float:
    """Per-query standard deviation of the video-sentence level (``s_hat K v``) over ``video`` rows."""
    return float((q1[:, :-1] @ video.T).std(1).mean())


def calibrate(args) -> None:
    """The trained run's statistics and the generator's, side by side, over a grid of RHO."""
    import csv

    from runtime.index import GalleryIndex
    from runtime.scoring import ArrayVideos, score_matrix
    from runtime.search import probe_level1_kernel

    run = args.calibrate
    bundle, scorer, encoder = open_model(run / "bundle", args.threads)
    index = GalleryIndex(run / "index")
    with open(run / "data" / "MSRVTT_JSFUSION_test.csv", newline="") as fh:
        captions = [row["sentence"] for row in csv.DictReader(fh)]
    text = encoder.encode(captions)
    feats = index.features(0, len(index))
    levels = score_matrix(scorer, text, index)
    trained = {"run": str(run), "config": bundle.config.clip_model_name,
               "features": feature_stats(feats["video"], feats["frame_features"]),
               "scores": score_stats(levels, index.biases()), "biases": bias_stats(levels, index.biases())}
    print(json.dumps(trained, indent=1), file=sys.stderr, flush=True)
    del scorer, encoder

    bundle_dir = ensure_bundle(args)
    bundle, scorer, encoder = open_model(bundle_dir, args.threads)
    cfg = bundle.config
    texts = sample_texts(args.queries, args.seed)
    qtext = encoder.encode(texts)
    kernel = probe_level1_kernel(scorer, args.memory_mb)
    q1 = stage1_vectors(kernel, qtext.sentence)
    synthetic = []
    for rho in args.rhos:
        params = GeneratorParams(**{**asdict(CALIBRATION), "rho": rho})
        gen = Generator(args.calibrate_videos, cfg.embed_dim, cfg.max_frames, cfg.num_pixels, params, args.seed,
                        anchors=q1[:, :-1])
        shard = gen.shard(0, gen.n)
        levels = score_matrix(scorer, qtext, ArrayVideos(shard), args.memory_mb)
        biases = dict(zip(LEVELS, gen.biases(0, gen.n, vs_level_std(q1, shard["video"]))))
        entry = {"params": asdict(params), "features": feature_stats(shard["video"], shard["frame_features"]),
                 "scores": score_stats(levels, biases), "scores_without_biases": score_stats(levels, None),
                 "biases": bias_stats(levels, biases)}
        print(json.dumps(entry), file=sys.stderr, flush=True)
        synthetic.append(entry)
    common.write_result(args.output, {"benchmark": "million (calibration)", "machine": common.machine(),
                                      "trained": trained, "synthetic_vit_b32_random_scorer": synthetic})


def ensure_bundle(args) -> Path:
    """The ViT-B/32-geometry bundle (random weights) the service runs (exported once into --work)."""
    from serve import export_bundle

    if args.bundle:
        return args.bundle
    out = args.work / "bundle_vit_b32"
    print(f"[million] bundle: {export_bundle('vit_b32', out)}", file=sys.stderr, flush=True)
    return out


# ---- main -------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=50, help="sample queries (exhaustive ground truth)")
    parser.add_argument("--work", type=Path, required=True, help="gallery, bundle and ground truth (reused)")
    parser.add_argument("-o", "--output", type=Path, default=None)
    parser.add_argument("--store", default="int8")
    parser.add_argument("--bundle", type=Path, default=None, help="a ViT-B/32 bundle to reuse")
    parser.add_argument("--parts", nargs="+", default=["service", "stage1", "rerank"],
                        choices=["service", "stage1", "hnsw", "rerank", "layouts"],
                        help="what to measure, in this order (hnsw: the runtime's HNSW stage 1 only, against an "
                             "exact shortlist computed with numpy; layouts: an HNSW graph by inner product against "
                             "the runtime's graph over rows made equal length, both built here)")
    parser.add_argument("--shortlists", type=int, nargs="+", default=[100, 200, 500, 1000])
    parser.add_argument("--serve-shortlists", type=int, nargs="+", default=[200],
                        help="one server per value (the served --shortlist)")
    parser.add_argument("--single-requests", type=int, default=200)
    parser.add_argument("--single-deadline-s", type=float, default=120)
    parser.add_argument("--duration-s", type=float, default=20.0, help="seconds of the 32-client load")
    parser.add_argument("--rerank-queries", type=int, default=10)
    parser.add_argument("--stage1-rows", type=int, default=0,
                        help="also measure stage 1 over this many video rows generated in memory")
    parser.add_argument("--nlists", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--nprobes", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--hnsw-m", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--ef-searches", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--hnsw-max-rows", type=int, default=200_000, help="HNSW is built up to this many rows")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--memory-mb", type=float, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only-ground-truth", action="store_true",
                        help="build or reuse the gallery, compute the exhaustive ground truth into --work, and stop")
    parser.add_argument("--finish-partial", type=Path, default=None, metavar="PARTIAL",
                        help="write OUT from a run's .partial.json (stopped before its ground truth)")
    parser.add_argument("--skip-ground-truth", action="store_true", help="measure without the exhaustive ground truth")
    parser.add_argument("--why", default=None, help="why there is no ground truth (with the two options above)")
    parser.add_argument("--calibrate", type=Path, default=None, help="a trained demo run directory")
    parser.add_argument("--calibrate-videos", type=int, default=2000)
    parser.add_argument("--rhos", type=float, nargs="+", default=[0.0, 0.5, 0.8, 0.95])
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.finish_partial:  # a run without its ground truth: agreement from --work's, when it is there now
        result = json.loads(args.finish_partial.read_text())
        path = args.work / "ground_truth.npz"
        if path.is_file():  # computed by --only-ground-truth for the same gallery and queries
            saved = np.load(path)
            truth = saved["indices"]
            if len(truth) != result["queries"]:
                raise SystemExit(f"{path} holds {len(truth)} queries, the run {result['queries']}")
            finish(result, truth)
            result["ground_truth"] = {"computed": True, "seconds": round(float(saved["seconds"]), 1),
                                      "by": "--only-ground-truth beside the run", "tag": str(saved["tag"])}
            for key in ("stage1", "stage1_hnsw", "stage1_layouts"):
                if key in result:
                    result[key]["recall_of_exhaustive_top10"] = "not kept in the JSON (per-query ids)"
        else:
            finish(result, None)
            result["ground_truth"] = {"computed": False, "why": args.why or "stopped before the ground truth"}
        common.write_result(args.output, result)
        return
    if args.calibrate:
        calibrate(args)
        return

    machine = common.machine({"server_threads": args.threads})
    monitor = common.CpuMonitor()
    started = time.perf_counter()
    bundle_dir = ensure_bundle(args)
    bundle, scorer, encoder = open_model(bundle_dir, args.threads or common.available_cpus())
    cfg = bundle.config
    from runtime.index import GalleryIndex
    from runtime.search import cached_kernel, probe_level1_kernel

    texts = sample_texts(args.queries, args.seed)
    text = encoder.encode(texts)
    kernel = probe_level1_kernel(scorer, args.memory_mb)
    q1 = stage1_vectors(kernel, text.sentence)
    gen = Generator(args.videos, cfg.embed_dim, cfg.max_frames, cfg.num_pixels, CALIBRATION, args.seed,
                    anchors=q1[:, :-1])
    root = args.work / f"index_{args.videos}_{args.store}"
    tag = json.dumps({"videos": args.videos, "store": args.store, "seed": args.seed, "queries": args.queries,
                      "params": asdict(CALIBRATION), "bundle": bundle.fingerprint})
    vs_std = vs_level_std(q1, gen.video(0, min(args.videos, SHARD)))
    built = build_gallery(root, bundle, gen, args.store, tag, vs_std)
    index = GalleryIndex(root)
    kernel = cached_kernel(scorer, index, args.memory_mb)
    if args.only_ground_truth:  # e.g. at nice 19 beside the measuring run, which waits for it at its end
        pid_file = args.work / GROUND_TRUTH_PID
        pid_file.write_text(str(os.getpid()))
        try:
            print(ground_truth(args.work, scorer, index, text, tag, args.memory_mb)[1], file=sys.stderr)
        finally:
            pid_file.unlink()
        return
    result: dict = {"benchmark": "million", "measured": True, "videos": args.videos, "queries": args.queries,
                    "store": args.store, "config": "vit_b32 (random weights)", "machine": machine,
                    "generator": {"params": asdict(CALIBRATION), "topics": int(len(gen.topic_sizes)),
                                  "anchored_topics": int(len(gen.anchor_topics)),
                                  "anchored_topic_sizes": gen.topic_sizes[gen.anchor_topics].tolist()},
                    "index": built, "parts_order": args.parts}
    found_ids: dict = {}

    def part_stage1() -> None:
        biases = index.biases()

        def chunks():
            from runtime.search.two_stage import _faiss_rows

            return _faiss_rows(index, None if biases is None else biases["video_sentence"])

        result["stage1"] = measure_stage1(chunks, len(index), cfg.embed_dim + 1, q1, found_ids, args, index)
        if args.stage1_rows > args.videos:
            big = Generator(args.stage1_rows, cfg.embed_dim, cfg.max_frames, cfg.num_pixels, CALIBRATION, args.seed,
                            anchors=q1[:, :-1])
            result["stage1_in_memory"] = stage1_in_memory(big, q1, args)

    def part_rerank() -> None:
        result["rerank"] = measure_rerank(scorer, index, text, q1, args, args.memory_mb)

    def part_service() -> None:
        result["services"] = [measure_service(root, bundle_dir, s, texts, index.ids, args)
                              for s in args.serve_shortlists]

    def part_hnsw() -> None:
        result["stage1_hnsw"] = measure_hnsw(index, q1, found_ids, args)

    def part_layouts() -> None:
        result["stage1_layouts"] = measure_layouts(index, q1, found_ids, args)

    parts = {"stage1": part_stage1, "rerank": part_rerank, "service": part_service, "hnsw": part_hnsw,
             "layouts": part_layouts}
    for name in args.parts:  # in the order given; what is measured survives a run stopped later
        parts[name]()
        result["contention"] = common.contention(monitor, common.available_cpus())  # so far
        if args.output:
            common.write_result(args.output.with_suffix(".partial.json"), result)
    if args.skip_ground_truth:  # e.g. at 10^6 on a machine too busy for 5 x 10^7 fused scores in the time
        finish(result, None)
        result["ground_truth"] = {"computed": False, "why": args.why or "--skip-ground-truth"}
    else:  # the ground truth last (the longest part at 10^6): the answers above are scored against it now
        wait_for_ground_truth(args.work)
        print("[million] exhaustive ground truth ...", file=sys.stderr, flush=True)
        truth, result["ground_truth"] = ground_truth(args.work, scorer, index, text, tag, args.memory_mb)
        for key in ("stage1", "stage1_hnsw", "stage1_layouts"):
            if key in result:
                stage1_recall_of_top10(result[key], {k: v for k, v in found_ids.items()
                                                     if k[0] in result[key]["kinds"]}, truth)
        finish(result, truth)
    result["contention"] = common.contention(monitor, common.available_cpus())
    result["load_average_after"] = common.load_average()
    result["seconds_total"] = round(time.perf_counter() - started, 1)
    common.write_result(args.output, result)


if __name__ == "__main__":
    main()
