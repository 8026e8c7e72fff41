"""The ingress side of a sharded gallery: a searcher that asks every shard and merges.

:class:`ShardedSearcher` is a ``runtime.search.Searcher`` over the whole index (ids, entries and
metadata for the records, filters checked here) whose searches run on the shards: exhaustive
search asks every shard for its best ``offset + top_k`` and merges them; two-stage search asks
every shard for its stage-1 shortlist, keeps the global best ``shortlist`` rows (as one process
would), and has each shard re-rank its part of them (a single shard does both in one call).
Every call names the index version (state digest) this searcher was made for, so a request is
answered from one version.

A shard that fails is asked again (another replica, once Ray routes around a dead one) until the
request's shard deadline; a shard still missing then raises ``ShardsUnavailable``, which carries
the other shards' answer for requests that accept a partial one.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from runtime.cluster.merge import merge_hits, merge_shortlists
from runtime.cluster.settings import DEFAULT_LOAD_DEADLINE_S, DEFAULT_SHARD_DEADLINE_S
from runtime.cluster.shard import ShardInfo, ShardSearcher
from runtime.errors import GalleryIndexError, RuntimeUserError, ShardsUnavailable
from runtime.index import GalleryIndex, IndexChangedError
from runtime.scoring import DEFAULT_MEMORY_MB, Scorer, TextFeatures
from runtime.search import SearchAnswer, Searcher, SearchOptions
from runtime.search.searcher import Hits

logger = logging.getLogger(__name__)

RETRY_PAUSE_S = 0.2


class Pending(Protocol):
    def result(self, timeout: float | None = None) -> Any: ...


class ShardClient(Protocol):
    """How the ingress reaches one shard (all its replicas): ``call`` starts a method of
    :class:`ShardSearcher` there and returns something to wait on."""

    shard: int

    def call(self, method: str, *args: Any) -> Pending: ...


class LocalShards:
    """Shards in this process, called on a thread pool (tests, and the model of what Ray does)."""

    def __init__(self, shards: Sequence[ShardSearcher]) -> None:
        self.shards = list(shards)
        self.pool = ThreadPoolExecutor(max_workers=max(1, len(shards)), thread_name_prefix="ucofia-shard")

    def clients(self) -> list[ShardClient]:
        return [_LocalClient(number, shard, self.pool) for number, shard in enumerate(self.shards)]


class _LocalClient:
    def __init__(self, shard: int, searcher: ShardSearcher, pool: ThreadPoolExecutor) -> None:
        self.shard, self.searcher, self.pool = shard, searcher, pool

    def call(self, method: str, *args: Any) -> Future:
        return self.pool.submit(getattr(self.searcher, method), *args)


def _cause(exc: BaseException) -> BaseException:
    """The exception a remote call raised (Ray wraps it; its ``cause`` is the original)."""
    return getattr(exc, "cause", None) or exc


class ShardedSearcher(Searcher):
    """The whole index's searcher whose searches run on ``clients`` (one per shard, in order),
    all at index version ``digest``. Made by the ingress on start and on every reload, after every
    shard has said it holds ``digest`` (``ShardInfo`` from ``load``)."""

    def __init__(self, scorer: Scorer, index: GalleryIndex, clients: Sequence[ShardClient], digest: str, *,
                 memory_mb: float = DEFAULT_MEMORY_MB, deadline_s: float = DEFAULT_SHARD_DEADLINE_S,
                 load_deadline_s: float = DEFAULT_LOAD_DEADLINE_S, observer: Any = None) -> None:
        super().__init__(scorer, index, memory_mb=memory_mb)
        self.clients = list(clients)
        self.digest = digest
        self.deadline_s = deadline_s
        self.load_deadline_s = load_deadline_s
        self.observer = observer
        self.up: set[int] = set(range(len(self.clients)))
        self.infos = self._load_all()

    def _load_all(self) -> list[ShardInfo]:
        """Have every shard open the index at ``digest`` (each keeps its previous version too)."""
        infos = self._gather("load", lambda shard: (), deadline_s=self.load_deadline_s)
        if len(infos) < len(self.clients):
            missing = sorted(set(range(len(self.clients))) - set(infos))
            raise GalleryIndexError(f"shards {missing} did not open the index within {self.load_deadline_s:g} s "
                                    f"(--shard-load-timeout)")
        for shard, info in sorted(infos.items()):
            if info.digest != self.digest:
                raise IndexChangedError(f"shard {shard} opened another version of the index "
                                        f"({info.digest[:12]}, not {self.digest[:12]}): it changed during the load")
            if self.observer is not None:
                self.observer.shard_rows.labels(str(shard)).set(info.rows)
        total = sum(info.rows for info in infos.values())
        if total != len(self.index):
            raise GalleryIndexError(f"the shards own {total} rows, the index has {len(self.index)}")
        return [infos[shard] for shard in range(len(self.clients))]

    @property
    def shards(self) -> int:
        return len(self.clients)

    def shard_status(self) -> dict[str, int]:
        """Shards that answered their last call, of all."""
        return {"up": len(self.up), "total": len(self.clients)}

    # ---- calls ----------------------------------------------------------------------------------
    def _gather(self, method: str, args_of: Callable[[int], tuple], only: Sequence[int] | None = None,
                deadline_s: float | None = None) -> dict[int, Any]:
        """``method`` on every shard (or ``only`` these) at once; failed calls are made again until
        the deadline. Returns the answers by shard (a shard that never answered is left out).
        A user error (bad filter, ...) or a stale version raises at once."""
        deadline = time.monotonic() + (self.deadline_s if deadline_s is None else deadline_s)
        shards = list(range(len(self.clients))) if only is None else list(only)
        started = {s: self._start(method, s, args_of) for s in shards}
        answers: dict[int, Any] = {}
        while started:
            retry: list[int] = []
            for shard, (pending, began) in started.items():
                try:
                    answers[shard] = pending.result(timeout=max(deadline - time.monotonic(), 0.001))
                    self._observe(shard, method, time.perf_counter() - began)
                except Exception as exc:
                    cause = _cause(exc)
                    # the request's own error (a bad filter), or a stale index version (an
                    # IndexChangedError: the service reloads and retries): not the shard's fault
                    if isinstance(cause, (RuntimeUserError, ValueError)) and not isinstance(cause, ShardsUnavailable):
                        raise cause from None
                    logger.warning("shard %d: %s failed (%s: %s)", shard, method, type(cause).__name__, cause)
                    if self.observer is not None:
                        self.observer.shard_failures.labels(str(shard)).inc()
                    retry.append(shard)
            started = {}
            if retry and time.monotonic() + RETRY_PAUSE_S < deadline:
                time.sleep(RETRY_PAUSE_S)
                started = {s: self._start(method, s, args_of) for s in retry}
        self.up = set(answers) if only is None else (self.up - set(shards)) | set(answers)
        if self.observer is not None:
            self.observer.shards_up.set(len(self.up))
        return answers

    def _start(self, method: str, shard: int, args_of: Callable[[int], tuple]) -> tuple[Pending, float]:
        """Call ``method`` on ``shard``: searches name this searcher's index version first."""
        versioned = () if method == "load" else (self.digest,)
        return self.clients[shard].call(method, *versioned, *args_of(shard)), time.perf_counter()

    def _observe(self, shard: int, method: str, seconds: float) -> None:
        if self.observer is not None:
            self.observer.shard_seconds.labels(str(shard), method).observe(seconds)

    # ---- searching --------------------------------------------------------------------------------
    def search(self, queries: TextFeatures, options: SearchOptions) -> SearchAnswer:
        """As ``Searcher.search``, from the shards; ``ShardsUnavailable`` (with the other shards'
        answer as ``partial``) when a shard does not answer by the deadline."""
        return self.records(self.hits(queries, options), options.offset)

    def hits(self, queries: TextFeatures, options: SearchOptions) -> Hits:
        self.matching(options.where)  # a filter of the wrong type fails here, before any shard is asked
        # One shard's shortlist is the global one: it answers a two-stage search in one call, as
        # one process would, saving the second round trip.
        if options.two_stage and len(self.clients) > 1:
            shortlists = self._gather("shortlist", lambda shard: (queries, options))
            self._check_complete(shortlists, options, queries, stage="stage 1")
            candidates = merge_shortlists([shortlists[s] for s in range(len(self.clients))], options.wide)
            parts = self._gather("rerank", lambda shard: (queries, options, candidates[shard]))
        else:
            parts = self._gather("hits", lambda shard: (queries, options))
        self._check_complete(parts, options, queries, stage="search")
        return merge_hits([parts[s] for s in sorted(parts)], options.depth)

    def _check_complete(self, answers: dict[int, Any], options: SearchOptions, queries: TextFeatures,
                        stage: str) -> None:
        """Raise ShardsUnavailable when a shard is missing from ``answers``, with the answer of the
        others as its ``partial`` (stage 1: the shortlist of the others, re-ranked)."""
        missing = sorted(set(range(len(self.clients))) - set(answers))
        if not missing:
            return
        partial, parts = None, answers
        if answers and stage == "stage 1":
            present = sorted(answers)
            candidates = merge_shortlists([answers[s] for s in present], options.wide)
            parts = self._gather("rerank", lambda shard: (queries, options, candidates[present.index(shard)]),
                                 only=present)
            missing = sorted(set(range(len(self.clients))) - set(parts))
        if parts:
            partial = self.records(merge_hits([parts[s] for s in sorted(parts)], options.depth), options.offset)
        raise ShardsUnavailable(f"shards {missing} of {len(self.clients)} did not answer within "
                                f"{self.deadline_s:g} s ({stage})", missing, partial)
