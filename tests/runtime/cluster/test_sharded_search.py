"""runtime.cluster without Ray: the shard plan, and shards in this process (LocalShards) that
answer every search exactly as one process over the whole index does (1, 2 and 4 shards,
exhaustive and two-stage, filters, pages, windows grouped by file or not); a shard that fails is
asked again, one that stays down raises ShardsUnavailable with the others' answer; index versions."""
from __future__ import annotations

from concurrent.futures import Future

import numpy as np
import pytest
from runtime_helpers import random_biases, random_queries, random_rows, synthetic_index, synthetic_windows

from runtime.cluster.fanout import LocalShards, ShardedSearcher
from runtime.cluster.hedging import HedgePolicy
from runtime.cluster.merge import merge_shortlists
from runtime.cluster.partition import plan_parts
from runtime.cluster.shard import ShardInfo, ShardSearcher, StaleSnapshot
from runtime.errors import GalleryIndexError, ShardsUnavailable
from runtime.index import GalleryIndex, IndexChangedError, IndexWriter
from runtime.scoring import LEVELS
from runtime.search import Searcher, SearchOptions
from runtime.search.filters import FilterError
from runtime.serve.snapshot import state_digest

WINDOWS = {"a": 3, "b": 1, "c": 4, "d": 2, "e": 5, "f": 2, "g": 3, "h": 1}
N_QUERIES = 3


@pytest.fixture(scope="module")
def whole(bundle, tmp_path_factory):
    return random_biases(synthetic_index(tmp_path_factory.mktemp("cluster") / "whole", bundle, 37, shard=10, seed=3),
                   bundle, 37, seed=4)


@pytest.fixture(scope="module")
def windows(bundle, tmp_path_factory):
    root = synthetic_windows(tmp_path_factory.mktemp("cluster") / "windows", bundle, WINDOWS, seed=5, shard=6)
    return random_biases(root, bundle, sum(WINDOWS.values()), seed=6)


def _queries(cfg, seed=9):
    return random_queries(cfg, N_QUERIES, seed)


def _sharded(root, scorer, shards, **kwargs):
    gallery = GalleryIndex(root)
    local = LocalShards([ShardSearcher(root, s, shards, scorer=scorer) for s in range(shards)])
    return ShardedSearcher(scorer, gallery, local.clients(), state_digest(gallery.state.to_dict()), **kwargs), local


def _same(got, want):
    """Same ids, order and windows; scores and levels within 1e-6."""
    assert got.group_by == want.group_by and got.two_stage == want.two_stage
    assert len(got.results) == len(want.results)
    for g, w in zip(got.results, want.results):
        assert [r["video_id"] for r in g] == [r["video_id"] for r in w]
        assert [r["rank"] for r in g] == [r["rank"] for r in w]
        assert [r.get("file_id") for r in g] == [r.get("file_id") for r in w]
        assert np.allclose([r["score"] for r in g], [r["score"] for r in w], rtol=0, atol=1e-6)
        for rg, rw in zip(g, w):
            assert np.allclose([rg["levels"][lv] for lv in LEVELS], [rw["levels"][lv] for lv in LEVELS], atol=1e-6)
            assert [x["video_id"] for x in rg.get("windows", [])] == [x["video_id"] for x in rw.get("windows", [])]


# ---- the plan -------------------------------------------------------------------------------------
@pytest.mark.parametrize("shards", [1, 2, 3, 4, 37, 40])
def test_whole_file_shards_are_equal_contiguous_ranges(whole, shards):
    parts = plan_parts(GalleryIndex(whole), shards)
    assert len(parts) == shards
    assert np.array_equal(np.concatenate(parts), np.arange(37))  # disjoint, ascending, every row once
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    for p in parts:
        assert len(p) == 0 or np.array_equal(p, np.arange(p[0], p[0] + len(p)))


@pytest.mark.parametrize("shards", [2, 3, 4, 8, 12])
def test_windows_of_a_file_stay_in_one_shard(windows, shards):
    gallery = GalleryIndex(windows)
    parts = plan_parts(gallery, shards)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(gallery)))
    owner = {}
    for shard, rows in enumerate(parts):
        for row in rows:
            assert owner.setdefault(gallery.entries[row]["file_id"], shard) == shard
    # a share of the rows each, give or take the file that crosses its border
    share = len(gallery) / shards
    assert all(abs(len(p) - share) < max(WINDOWS.values()) for p in parts)
    with pytest.raises(ValueError, match="at least 1"):
        plan_parts(gallery, 0)


def test_merged_shortlist_is_the_global_best_handed_back_to_its_owners():
    a = (np.array([[5.0, 3.0, 1.0]], np.float32), np.array([[0, 2, 4]]))
    b = (np.array([[4.0, 3.0, -np.inf]], np.float32), np.array([[7, 1, -1]]))
    per_shard = merge_shortlists([a, b], wide=3)  # 5 (row 0), 4 (row 7), then the tie at 3: row 1 before row 2
    assert [x.tolist() for x in per_shard[0]] == [[0]] and [x.tolist() for x in per_shard[1]] == [[1, 7]]


# ---- same answers as one process -------------------------------------------------------------------
OPTIONS = [SearchOptions(top_k=5), SearchOptions(top_k=4, offset=3),
           SearchOptions(top_k=6, two_stage=True, shortlist=9, stage1="flat"),
           SearchOptions(top_k=3, offset=2, two_stage=True, shortlist=12, stage1="flat"),
           SearchOptions(top_k=4, where={"id": {"$in": [f"v{i}" for i in range(0, 37, 3)]}}),
           SearchOptions(top_k=4, two_stage=True, shortlist=8, stage1="flat",
                         where={"id": {"$nin": [f"v{i}" for i in range(0, 37, 2)]}})]


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_whole_file_answers_equal_one_process(whole, scorer, bundle, shards):
    sharded, _ = _sharded(whole, scorer, shards)
    one = Searcher(scorer, GalleryIndex(whole))
    queries = _queries(bundle.config)
    for options in OPTIONS:
        _same(sharded.search(queries, options), one.search(queries, options))
    assert sharded.shard_status() == {"up": shards, "total": shards}
    assert [info.rows for info in sharded.infos] == [len(p) for p in plan_parts(GalleryIndex(whole), shards)]


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_windowed_answers_equal_one_process_grouped_or_not(windows, scorer, bundle, shards):
    sharded, _ = _sharded(windows, scorer, shards)
    one = Searcher(scorer, GalleryIndex(windows))
    queries = _queries(bundle.config, seed=11)
    for options in [SearchOptions(top_k=4, windows_per_file=2), SearchOptions(top_k=3, offset=1),
                    SearchOptions(top_k=5, group_by="window"),
                    SearchOptions(top_k=3, two_stage=True, shortlist=10, stage1="flat"),
                    SearchOptions(top_k=4, group_by="window", two_stage=True, shortlist=7, stage1="flat"),
                    SearchOptions(top_k=3, where={"file_id": {"$in": ["a", "c", "e", "h"]}})]:
        got, want = sharded.search(queries, options), one.search(queries, options)
        assert got.results[0], options
        _same(got, want)


def test_a_bad_filter_fails_before_any_shard_is_asked(whole, scorer, bundle):
    sharded, _ = _sharded(whole, scorer, 2)
    asked = []
    for client in sharded.clients:
        real = client.call
        client.call = lambda method, *args, _real=real: (asked.append(method), _real(method, *args))[1]
    with pytest.raises(FilterError):
        sharded.search(_queries(bundle.config), SearchOptions(where={"id": {"$gt": 3}}))
    assert asked == []


# ---- faults ---------------------------------------------------------------------------------------
class Flaky:
    """A shard client whose first ``failures`` calls fail (or every call: failures=None)."""

    def __init__(self, client, failures):
        self.client, self.failures, self.shard, self.calls = client, failures, client.shard, 0

    def call(self, method, *args):
        self.calls += 1
        if method != "load" and (self.failures is None or self.calls <= self.failures):
            from concurrent.futures import Future

            future = Future()
            future.set_exception(ConnectionError("replica died"))
            return future
        return self.client.call(method, *args)


def test_a_shard_that_fails_once_is_asked_again(whole, scorer, bundle):
    sharded, _ = _sharded(whole, scorer, 2)
    sharded.clients[1] = Flaky(sharded.clients[1], failures=1)
    queries = _queries(bundle.config)
    for options in (SearchOptions(top_k=5), SearchOptions(top_k=5, two_stage=True, shortlist=9, stage1="flat")):
        sharded.clients[1].calls = 0
        _same(sharded.search(queries, options), Searcher(scorer, GalleryIndex(whole)).search(queries, options))
        assert sharded.clients[1].calls >= 2


@pytest.mark.parametrize("two_stage", [False, True])
def test_a_shard_that_stays_down_is_named_with_the_others_answer(whole, scorer, bundle, two_stage):
    sharded, _ = _sharded(whole, scorer, 3, deadline_s=0.5)
    sharded.clients[2] = Flaky(sharded.clients[2], failures=None)
    queries = _queries(bundle.config)
    options = SearchOptions(top_k=5, two_stage=two_stage, shortlist=9, stage1="flat")
    with pytest.raises(ShardsUnavailable) as caught:
        sharded.search(queries, options)
    assert caught.value.missing == [2]
    assert sharded.shard_status() == {"up": 2, "total": 3}
    gallery = GalleryIndex(whole)
    lost = set(plan_parts(gallery, 3)[2].tolist())
    kept = [f"v{r}" for r in range(37) if r not in lost]
    partial = caught.value.partial
    # the answer of the shards left: the one-process answer over their rows
    want = Searcher(scorer, gallery).search(queries, SearchOptions(top_k=5, two_stage=two_stage, shortlist=9,
                                                                   stage1="flat", where={"id": {"$in": kept}}))
    _same(partial, want)


# ---- versions ---------------------------------------------------------------------------------------
def test_shards_keep_the_version_a_request_names_while_the_index_changes(bundle, scorer, tmp_path):
    root = synthetic_index(tmp_path / "idx", bundle, 12, shard=6, seed=7)
    old, _ = _sharded(root, scorer, 2)
    queries = _queries(bundle.config)
    before = old.search(queries, SearchOptions(top_k=3))
    rng = np.random.default_rng(8)
    cfg = bundle.config
    with IndexWriter(root, bundle) as writer:  # 4 more videos, far better than any other for every query
        writer.add_batch([f"n{i}" for i in range(4)], random_rows(cfg, 4, rng))
    new = ShardedSearcher(scorer, GalleryIndex(root), old.clients, state_digest(GalleryIndex(root).state.to_dict()))
    assert sum(info.rows for info in new.infos) == 16
    # the old version is still answered, by the same shard processes, as before
    _same(old.search(queries, SearchOptions(top_k=3)), before)
    _same(new.search(queries, SearchOptions(top_k=3)), Searcher(scorer, GalleryIndex(root)).search(
        queries, SearchOptions(top_k=3)))
    shard = ShardSearcher(root, 0, 2, scorer=scorer)
    with pytest.raises(StaleSnapshot, match="not on disk any more"):
        shard.hits(old.digest, queries, SearchOptions(top_k=3))
    assert issubclass(StaleSnapshot, IndexChangedError)


# ---- edges: empty and one-row shards, short answers, a shard's own checks ------------------------------
@pytest.mark.parametrize("shards", [37, 40])
def test_one_row_and_empty_shards_answer_as_one_process(whole, scorer, bundle, shards):
    sharded, _ = _sharded(whole, scorer, shards)
    assert sorted({info.rows for info in sharded.infos}) == ([1] if shards == 37 else [0, 1])
    one = Searcher(scorer, GalleryIndex(whole))
    queries = _queries(bundle.config)
    for options in OPTIONS[:3]:
        _same(sharded.search(queries, options), one.search(queries, options))


@pytest.mark.parametrize("two_stage", [False, True])
def test_fewer_matches_than_asked_end_the_list(whole, scorer, bundle, two_stage):
    sharded, _ = _sharded(whole, scorer, 3)
    options = SearchOptions(top_k=6, two_stage=two_stage, shortlist=8, stage1="flat",
                            where={"id": {"$in": ["v1", "v20", "v33"]}})
    got = sharded.search(_queries(bundle.config), options)
    assert all(sorted(r["video_id"] for r in q) == ["v1", "v20", "v33"] for q in got.results)
    _same(got, Searcher(scorer, GalleryIndex(whole)).search(_queries(bundle.config), options))


def test_a_part_maps_its_positions_to_gallery_rows_and_refuses_others(whole):
    from runtime.cluster.partition import IndexPart

    gallery = GalleryIndex(whole)
    part = IndexPart(gallery, plan_parts(gallery, 3)[1])
    first = int(part.rows[0])
    assert part.global_rows(np.array([0, 2, -1])).tolist() == [first, first + 2, -1]
    assert part.local_rows(np.array([first + 1, first])).tolist() == [1, 0]
    for outside in ([0], [int(part.rows[-1]) + 1], [36]):
        with pytest.raises(ValueError, match="outside this shard"):
            part.local_rows(np.array(outside))
    assert part.ids == gallery.ids[first:first + len(part)] and part.ids_digest != gallery.ids_digest
    assert np.array_equal(part.biases()["patch_word"], gallery.biases()["patch_word"][part.rows])


def test_a_shard_loads_its_own_scorer_checks_its_number_and_the_index(whole, bundle, tmp_path):
    shard = ShardSearcher(whole, 1, 2, backend="cpu", preload_mb=1024, two_stage_for=lambda videos: videos == 37)
    info = shard.info()
    assert (info.shard, info.shards, info.rows) == (1, 2, 18) and info.digest == state_digest(
        GalleryIndex(whole).state.to_dict())
    searcher, part = shard._version(info.digest)
    # the part's features are held in memory (they fit --preload-mb) and its stage 1 is built at load
    assert len(searcher.source) == 18 and not isinstance(searcher.source, type(part))
    assert searcher._two_stage and next(iter(searcher._two_stage.values())).stage1_index.ntotal == 18
    # held in memory exactly when the part's float32 features fit --preload-mb (not the whole gallery's)
    from runtime.serve.snapshot import feature_bytes

    part_mib = feature_bytes(GalleryIndex(whole)) * 18 / 37 / 2**20
    for budget, held in ((part_mib, True), (part_mib * 0.999, False)):
        sized = ShardSearcher(whole, 1, 2, scorer=shard.scorer, preload_mb=budget)._version(info.digest)
        assert (sized[0].source is not sized[1]) == held, budget
    lean = ShardSearcher(whole, 1, 2, scorer=shard.scorer)
    lean_searcher, lean_part = lean._version(info.digest)
    assert lean_searcher.source is lean_part and not lean_searcher._two_stage
    for number, total in ((2, 2), (-1, 2)):
        with pytest.raises(ValueError, match="is not one of"):
            ShardSearcher(whole, number, total, scorer=shard.scorer)
    empty = tmp_path / "empty"
    with IndexWriter(empty, bundle):
        pass
    with pytest.raises(Exception, match="holds no videos"):
        ShardSearcher(empty, 0, 1, scorer=shard.scorer)


def test_a_shard_opens_a_newer_version_when_asked_and_keeps_two(bundle, scorer, tmp_path):
    root = synthetic_index(tmp_path / "idx", bundle, 10, shard=5, seed=12)
    shard = ShardSearcher(root, 0, 1, scorer=scorer)
    digests = [shard.info().digest]
    cfg = bundle.config
    rng = np.random.default_rng(13)
    for round_ in range(2):
        with IndexWriter(root, bundle) as writer:
            writer.add_batch([f"x{round_}"], random_rows(cfg, 1, rng))
        digests.append(state_digest(GalleryIndex(root).state.to_dict()))
        # asked for the version on disk it does not hold yet: opened on demand
        hits = shard.hits(digests[-1], _queries(cfg), SearchOptions(top_k=20))
        assert (hits.top.indices[0] >= 0).sum() == 11 + round_
    assert shard.info(digests[1]).rows == 11 and shard.info(digests[2]).rows == 12
    with pytest.raises(KeyError):  # only the newest two are kept
        shard.info(digests[0])


# ---- the fan-out's own rules -------------------------------------------------------------------------------
class RaiseNow:
    """A scripted call that cannot even be sent: ``call`` raises ``error``."""

    def __init__(self, error):
        self.error = error


class Scripted:
    """A shard client that answers each method from ``script`` (a callable, an exception, "hang",
    ``RaiseNow`` or a list of those, one per call, then the real one) or the real one."""

    def __init__(self, client, **script):
        self.client, self.script, self.shard, self.calls, self.futures = client, script, client.shard, [], []

    def call(self, method, *args):
        self.calls.append(method)
        action = self.script.get(method)
        if isinstance(action, list):
            action = action.pop(0) if action else None
        if action is None:
            return self.client.call(method, *args)
        if isinstance(action, RaiseNow):
            raise action.error
        future = Future()
        self.futures.append(future)
        if action == "hang":
            return future  # never answers
        if isinstance(action, BaseException):
            future.set_exception(action)
        else:
            future.set_result(action(*args))
        return future


class Wrapped(Exception):
    """As Ray raises a remote error: the original is ``cause``."""

    def __init__(self, cause):
        super().__init__(str(cause))
        self.cause = cause


def _clients(root, scorer, shards, **scripts):
    local = LocalShards([ShardSearcher(root, s, shards, scorer=scorer) for s in range(shards)])
    return [Scripted(c, **scripts.get(f"s{c.shard}", {})) for c in local.clients()]


@pytest.mark.parametrize("shards", [1, 2])
def test_two_stage_takes_one_call_of_a_single_shard_and_two_of_each_of_several(whole, scorer, bundle, shards):
    gallery = GalleryIndex(whole)
    clients = _clients(whole, scorer, shards)
    sharded = ShardedSearcher(scorer, gallery, clients, state_digest(gallery.state.to_dict()))
    options = SearchOptions(top_k=4, two_stage=True, shortlist=9, stage1="flat")
    for c in clients:
        c.calls.clear()
    queries = _queries(bundle.config)
    _same(sharded.search(queries, options), Searcher(scorer, gallery).search(queries, options))
    expected = ["hits"] if shards == 1 else ["shortlist", "rerank"]
    assert [c.calls for c in clients] == [expected] * shards


def test_loading_checks_every_shard_answered_the_same_version_and_all_rows(whole, scorer):
    gallery = GalleryIndex(whole)
    digest = state_digest(gallery.state.to_dict())
    hung = _clients(whole, scorer, 2, s1={"load": "hang"})
    with pytest.raises(GalleryIndexError, match=r"shards \[1\] did not open the index within 0.3 s"):
        ShardedSearcher(scorer, gallery, hung, digest, deadline_s=0.1, load_deadline_s=0.3,
                        hedge=HedgePolicy(0.01))
    assert hung[1].calls == ["load"]  # opening builds a shard's stage 1: never asked twice at once
    other = lambda: ShardInfo(1, 2, 18, "f" * 64, 0.0)  # noqa: E731
    with pytest.raises(IndexChangedError, match="opened another version"):
        ShardedSearcher(scorer, gallery, _clients(whole, scorer, 2, s1={"load": other}), digest)
    short = lambda: ShardInfo(1, 2, 17, digest, 0.0)  # noqa: E731
    with pytest.raises(GalleryIndexError, match="the shards own 36 rows, the index has 37"):
        ShardedSearcher(scorer, gallery, _clients(whole, scorer, 2, s1={"load": short}), digest)


def test_errors_of_the_request_are_raised_at_once_and_a_stale_version_reloads(whole, scorer, bundle):
    gallery = GalleryIndex(whole)
    digest = state_digest(gallery.state.to_dict())
    queries = _queries(bundle.config)
    for error, expected in ((Wrapped(ValueError("bad request")), ValueError),
                            (Wrapped(StaleSnapshot("gone")), IndexChangedError),
                            (FilterError("wrong type"), FilterError)):
        clients = _clients(whole, scorer, 2, s1={"hits": error})
        sharded = ShardedSearcher(scorer, gallery, clients, digest, deadline_s=5)
        with pytest.raises(expected):
            sharded.search(queries, SearchOptions(top_k=3))
        assert clients[1].calls.count("hits") == 1  # not retried


def test_a_hung_shard_is_given_up_at_the_deadline_and_retries_are_paced(whole, scorer, bundle):
    import time

    gallery = GalleryIndex(whole)
    digest = state_digest(gallery.state.to_dict())
    queries = _queries(bundle.config)
    hung = ShardedSearcher(scorer, gallery, _clients(whole, scorer, 2, s0={"hits": "hang"}), digest, deadline_s=0.4)
    start = time.monotonic()
    with pytest.raises(ShardsUnavailable) as caught:
        hung.search(queries, SearchOptions(top_k=3))
    assert caught.value.missing == [0] and time.monotonic() - start < 5
    failing = _clients(whole, scorer, 2, s1={"hits": ConnectionError("down")})
    down = ShardedSearcher(scorer, gallery, failing, digest, deadline_s=0.5)
    with pytest.raises(ShardsUnavailable):
        down.search(queries, SearchOptions(top_k=3))
    # tried at once and again every RETRY_PAUSE_S (0.2 s) while another try fits before the deadline
    assert 2 <= failing[1].calls.count("hits") <= 3


@pytest.mark.parametrize("two_stage", [False, True])
def test_a_call_that_hangs_is_asked_again_beside_it_and_the_first_answer_wins(whole, scorer, bundle, two_stage):
    from runtime.serve.metrics import Metrics

    gallery = GalleryIndex(whole)
    digest = state_digest(gallery.state.to_dict())
    queries = _queries(bundle.config)
    options = SearchOptions(top_k=4, two_stage=two_stage, shortlist=9, stage1="flat")
    method = "rerank" if two_stage else "hits"
    clients = _clients(whole, scorer, 2, s1={method: ["hang"]})  # the first call hangs, the next answers
    metrics = Metrics()
    sharded = ShardedSearcher(scorer, gallery, clients, digest, deadline_s=10, hedge=HedgePolicy(0.1), observer=metrics)
    for c in clients:
        c.calls.clear()
    _same(sharded.search(queries, options), Searcher(scorer, gallery).search(queries, options))
    assert clients[1].calls.count(method) == 2 and clients[0].calls.count(method) == 1
    assert clients[1].futures[0].cancelled()  # the call still waiting is dropped once the other answered
    assert metrics.shard_hedges.labels("1")._value.get() == 1 and metrics.shard_hedges.labels("0")._value.get() == 0
    assert metrics.shards_up._value.get() == 2
    observed = metrics.shard_seconds.labels("1", method)
    assert 0 < observed._sum.get() < 60  # the answered call's time, once
    assert sharded.hedge.delay(method, 10) == 0.1  # a fixed delay learns nothing
    learning = ShardedSearcher(scorer, gallery, _clients(whole, scorer, 2), digest, deadline_s=10)
    for _ in range(8):
        learning.search(queries, options)
    assert learning.hedge.delay(method, 10) < 2.5  # learnt from 8 answered calls: under a quarter of the deadline
    assert sharded.shard_status() == {"up": 2, "total": 2}
    # without hedging the same hang costs the request its shard
    clients = _clients(whole, scorer, 2, s1={method: ["hang"]})
    off = ShardedSearcher(scorer, gallery, clients, digest, deadline_s=0.5, hedge=HedgePolicy(0))
    with pytest.raises(ShardsUnavailable) as caught:
        off.search(queries, options)
    assert caught.value.missing == [1] and clients[1].calls.count(method) == 1


class AnswersTogether:
    """A shard client whose first call answers only when the second is made, with the same
    answer: both calls finish in the same wait of the fan-out."""

    def __init__(self, client):
        self.client, self.shard, self.calls, self.first = client, client.shard, [], None

    def call(self, method, *args):
        self.calls.append(method)
        if method != "hits":
            return self.client.call(method, *args)
        if self.first is None:
            self.first = Future()
            return self.first
        answer = self.client.call(method, *args).result()
        done = Future()
        done.set_result(answer)
        self.first.set_result(answer)
        return done


def test_two_calls_of_a_shard_answering_at_once_give_one_answer(whole, scorer, bundle):
    gallery = GalleryIndex(whole)
    digest = state_digest(gallery.state.to_dict())
    local = LocalShards([ShardSearcher(whole, s, 2, scorer=scorer) for s in range(2)]).clients()
    clients = [local[0], AnswersTogether(local[1])]
    sharded = ShardedSearcher(scorer, gallery, clients, digest, deadline_s=10, hedge=HedgePolicy(0.05))
    queries, options = _queries(bundle.config), SearchOptions(top_k=5)
    _same(sharded.search(queries, options), Searcher(scorer, gallery).search(queries, options))
    assert clients[1].calls == ["load", "hits", "hits"]


def test_the_calls_left_waiting_are_cancelled_as_soon_as_their_shard_has_answered(whole, scorer, bundle):
    import contextlib
    import threading
    from concurrent.futures import InvalidStateError

    gallery = GalleryIndex(whole)
    digest = state_digest(gallery.state.to_dict())
    local = LocalShards([ShardSearcher(whole, s, 2, scorer=scorer) for s in range(2)]).clients()
    hedged = Scripted(local[1], hits=["hang"])
    seen_cancelled = []

    def slow_shard_0(*args):
        # shard 0 answers only once shard 1's hung call is cancelled (or after 5 s): that call is
        # dropped when shard 1 answers, not when the whole gather ends
        answer, done = local[0].call("hits", *args).result(), Future()

        def answer_later():
            for _ in range(500):
                if hedged.futures and hedged.futures[0].cancelled():
                    seen_cancelled.append(True)
                    break
                threading.Event().wait(0.01)
            with contextlib.suppress(InvalidStateError):  # shard 0 is slow too: its hedged calls are dropped
                done.set_result(answer)

        threading.Thread(target=answer_later, daemon=True).start()
        return done

    class Deferred(Scripted):
        def call(self, method, *args):
            if method == "hits":
                self.calls.append(method)
                return slow_shard_0(*args)
            return super().call(method, *args)

    clients = [Deferred(local[0]), hedged]
    sharded = ShardedSearcher(scorer, gallery, clients, digest, deadline_s=10, hedge=HedgePolicy(0.05))
    queries, options = _queries(bundle.config), SearchOptions(top_k=5)
    _same(sharded.search(queries, options), Searcher(scorer, gallery).search(queries, options))
    assert seen_cancelled and all(seen_cancelled)


def test_while_a_hedged_call_waits_the_next_follow_at_half_the_delay(whole, scorer, bundle):
    import time

    from runtime.cluster.hedging import MAX_CALLS_IN_FLIGHT

    gallery = GalleryIndex(whole)
    digest = state_digest(gallery.state.to_dict())
    sent: list[float] = []

    class Stamped(Scripted):
        def call(self, method, *args):
            if method == "hits":
                sent.append(time.monotonic())
            return super().call(method, *args)

    local = LocalShards([ShardSearcher(whole, s, 2, scorer=scorer) for s in range(2)]).clients()
    clients = [local[0], Stamped(local[1], hits="hang")]
    sharded = ShardedSearcher(scorer, gallery, clients, digest, deadline_s=3.0, hedge=HedgePolicy(0.6))
    with pytest.raises(ShardsUnavailable):
        sharded.search(_queries(bundle.config), SearchOptions(top_k=5))
    # the first call, a hedged one after 0.6 s, then one every 0.3 s: the cap is reached at 1.8 s,
    # 1.2 s before the deadline (at 0.6 s apart, only 5 calls fit)
    assert len(sent) == MAX_CALLS_IN_FLIGHT
    gaps = np.diff(sent)
    assert gaps[0] >= 0.6 and all(gaps[1:] >= 0.3)  # lower bounds only: a busy machine stretches gaps


def test_hedged_calls_in_flight_are_capped_and_a_call_that_cannot_be_sent_is_made_again(whole, scorer, bundle):
    from runtime.cluster.hedging import MAX_CALLS_IN_FLIGHT
    from runtime.serve.metrics import Metrics

    gallery = GalleryIndex(whole)
    digest = state_digest(gallery.state.to_dict())
    queries = _queries(bundle.config)
    clients = _clients(whole, scorer, 2, s0={"hits": "hang"})
    hung = ShardedSearcher(scorer, gallery, clients, digest, deadline_s=0.8, hedge=HedgePolicy(0.05))
    with pytest.raises(ShardsUnavailable):
        hung.search(queries, SearchOptions(top_k=3))
    assert clients[0].calls.count("hits") == MAX_CALLS_IN_FLIGHT
    assert all(f.cancelled() for f in clients[0].futures)  # given up at the deadline: none left waiting
    # the request's own error ends it at once: the other shard's call still waiting is cancelled
    clients = _clients(whole, scorer, 2, s0={"hits": "hang"}, s1={"hits": FilterError("wrong type")})
    with pytest.raises(FilterError):
        ShardedSearcher(scorer, gallery, clients, digest, deadline_s=5).search(queries, SearchOptions(top_k=3))
    assert clients[0].futures[0].cancelled()
    clients = _clients(whole, scorer, 2, s1={"hits": [RaiseNow(ConnectionError("no route"))]})
    metrics = Metrics()
    sharded = ShardedSearcher(scorer, gallery, clients, digest, deadline_s=5, observer=metrics)
    options = SearchOptions(top_k=3)
    _same(sharded.search(queries, options), Searcher(scorer, gallery).search(queries, options))
    assert clients[1].calls.count("hits") == 2
    assert metrics.shard_failures.labels("1")._value.get() == 1 and metrics.shard_failures.labels("0")._value.get() == 0


def test_a_shard_lost_between_the_stages_of_two_stage_search_is_named(whole, scorer, bundle):
    gallery = GalleryIndex(whole)
    digest = state_digest(gallery.state.to_dict())
    clients = _clients(whole, scorer, 3, s2={"shortlist": ConnectionError("down")},
                       s1={"rerank": ConnectionError("down")})
    sharded = ShardedSearcher(scorer, gallery, clients, digest, deadline_s=0.3)
    with pytest.raises(ShardsUnavailable) as caught:
        sharded.search(_queries(bundle.config), SearchOptions(top_k=4, two_stage=True, shortlist=9, stage1="flat"))
    assert caught.value.missing == [1, 2]
    assert {r["video_id"] for q in caught.value.partial.results for r in q} <= {f"v{i}" for i in range(13)}


def test_a_shard_loads_its_scorer_at_the_service_precision(whole, monkeypatch):
    from runtime.backends import precision
    from runtime.errors import BackendError

    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: {"avx2", "amx_int8"})  # a CPU that can
    # the stand-in bundle's scorer has no patch-word product to quantise: asking for int8 reaches the rewrite
    with pytest.raises(BackendError, match="patch-word products to quantise"):
        ShardSearcher(whole, 0, 2, backend="cpu", scorer_precision="int8")
    assert ShardSearcher(whole, 0, 2, backend="cpu").scorer.session.precision == "float32"
