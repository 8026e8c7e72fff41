"""The ingress side of a sharded gallery: a searcher that asks every shard and merges.

:class:`ShardedSearcher` is a ``runtime.search.Searcher`` over the whole index (ids, entries and
metadata for the records, filters checked here) whose searches run on the shards: exhaustive
search asks every shard for its best ``offset + top_k`` and merges them; two-stage search asks
every shard for its stage-1 shortlist, keeps the global best ``shortlist`` rows (as one process
would), and has each shard re-rank its part of them (a single shard does both in one call).
Every call names the index version (state digest) this searcher was made for, so a request is
answered from one version.

A shard that fails is asked again (another replica, once Ray routes around a dead one), and a
shard slow to answer is asked a second time beside the first (hedging.py: a replica on a node that
has just died can hold a call without failing it), until the request's shard deadline; a shard
still missing then raises ``ShardsUnavailable``, which carries the other shards' answer for
requests that accept a partial one.
"""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Protocol

from runtime.cluster.hedging import MAX_CALLS_IN_FLIGHT, HedgePolicy
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

    # optional: ``cancel()`` drops a call whose answer is no longer needed


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


# Threads that each wait on one shard call (a gather of S shards holds at most S x MAX_CALLS_IN_FLIGHT).
WAITER_THREADS = 64


@functools.cache
def _waiters() -> ThreadPoolExecutor:
    """The process's threads that wait on shard calls (made on first use)."""
    return ThreadPoolExecutor(max_workers=WAITER_THREADS, thread_name_prefix="ucofia-shard-wait")


class _ShardCalls:
    """The calls to one shard for one gather: those still waiting (``live``: waiter -> the call and
    when it began), when the latest started, and when a failed one is to be made again."""

    def __init__(self) -> None:
        self.live: dict[Future, tuple[Pending, float]] = {}
        self.last_start = 0.0
        self.retry_at: float | None = None

    def add(self, waiter: Future, pending: Pending, began: float) -> None:
        self.live[waiter] = (pending, began)
        self.last_start = time.monotonic()

    def remove(self, waiter: Future) -> tuple[Pending, float] | None:
        """Forget a finished waiter; returns its call and when it began (``time.perf_counter``), or
        None when the shard's calls were already settled (another answered in the same wait)."""
        return self.live.pop(waiter, None)

    def alive(self) -> bool:
        """Whether a call is still waiting or another is to be made."""
        return bool(self.live) or self.retry_at is not None

    def cancel(self) -> None:
        """Cancel the calls still waiting (Ray drops them; the first answer has been taken)."""
        for pending, _ in self.live.values():
            _cancel(pending)
        self.live.clear()


def _cancel(pending: Pending) -> None:
    cancel = getattr(pending, "cancel", None)
    if cancel is not None:
        cancel()


class ShardedSearcher(Searcher):
    """The whole index's searcher whose searches run on ``clients`` (one per shard, in order),
    all at index version ``digest``. Made by the ingress on start and on every reload, after every
    shard has said it holds ``digest`` (``ShardInfo`` from ``load``)."""

    def __init__(self, scorer: Scorer, index: GalleryIndex, clients: Sequence[ShardClient], digest: str, *,
                 memory_mb: float = DEFAULT_MEMORY_MB, deadline_s: float = DEFAULT_SHARD_DEADLINE_S,
                 load_deadline_s: float = DEFAULT_LOAD_DEADLINE_S, observer: Any = None,
                 hedge: HedgePolicy | None = None) -> None:
        super().__init__(scorer, index, memory_mb=memory_mb)
        self.hedge = hedge if hedge is not None else HedgePolicy()
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
        """``method`` on every shard (or ``only`` these) at once; a failed call is made again, and a
        call unanswered past the hedge delay gets a second one beside it (hedging.py), until the
        deadline. Returns the answers by shard (a shard that never answered is left out). A user
        error (bad filter, ...) or a stale version raises at once."""
        budget = self.deadline_s if deadline_s is None else deadline_s
        deadline = time.monotonic() + budget
        # opening an index builds a shard's stage 1 (minutes): never sent twice
        hedge_after = None if method == "load" else self.hedge.delay(method, budget)
        shards = list(range(len(self.clients))) if only is None else list(only)
        calls = {shard: _ShardCalls() for shard in shards}
        answers: dict[int, Any] = {}
        try:
            for shard in shards:
                self._launch(calls[shard], method, shard, args_of, deadline)
            while True:
                waiting = [shard for shard in shards if shard not in answers and calls[shard].alive()]
                now = time.monotonic()
                if not waiting or now >= deadline:
                    break
                wake = deadline
                for shard in waiting:
                    wake = min(wake, self._start_due(calls[shard], method, shard, args_of, deadline, hedge_after))
                owner = {waiter: shard for shard in waiting for waiter in calls[shard].live}
                if not owner:
                    time.sleep(max(wake - time.monotonic(), 0.0))
                    continue
                finished, _ = wait(owner, timeout=max(wake - time.monotonic(), 0.001), return_when=FIRST_COMPLETED)
                for waiter in finished:
                    self._settle(waiter, owner[waiter], calls[owner[waiter]], answers, method, deadline)
        finally:
            for shard_calls in calls.values():
                shard_calls.cancel()
        self.up = set(answers) if only is None else (self.up - set(shards)) | set(answers)
        if self.observer is not None:
            self.observer.shards_up.set(len(self.up))
        return answers

    def _launch(self, calls: _ShardCalls, method: str, shard: int, args_of: Callable[[int], tuple],
                deadline: float) -> None:
        """Start a call of ``method`` on ``shard``; a waiter thread holds it until the deadline. A call
        that cannot even be sent counts as a failed one."""
        try:
            pending, began = self._start(method, shard, args_of)
        except Exception as exc:
            self._failed(calls, shard, method, exc, deadline)
            return
        waiter = _waiters().submit(pending.result, max(deadline - time.monotonic(), 0.001))
        calls.add(waiter, pending, began)

    def _start_due(self, calls: _ShardCalls, method: str, shard: int, args_of: Callable[[int], tuple],
                   deadline: float, hedge_after: float | None) -> float:
        """Start the retry or the hedged call of ``shard`` that is due; returns when the next is."""
        now = time.monotonic()
        if not calls.live:
            if calls.retry_at is not None and now >= calls.retry_at:
                calls.retry_at = None
                self._launch(calls, method, shard, args_of, deadline)
                return deadline
            return calls.retry_at if calls.retry_at is not None else deadline
        if hedge_after is None or len(calls.live) >= MAX_CALLS_IN_FLIGHT:
            return deadline
        due = calls.last_start + self.hedge.gap(hedge_after, len(calls.live))
        if now < due:
            return due
        logger.info("shard %d: %s unanswered after %.2f s, asked again", shard, method, now - calls.last_start)
        if self.observer is not None:
            self.observer.shard_hedges.labels(str(shard)).inc()
        self._launch(calls, method, shard, args_of, deadline)
        return min(deadline, time.monotonic() + self.hedge.gap(hedge_after, len(calls.live)))

    def _settle(self, waiter: Future, shard: int, shard_calls: _ShardCalls, answers: dict[int, Any], method: str,
                deadline: float) -> None:
        """Take the outcome of a finished call: the shard's answer, or a failure to retry after a
        pause (when no other call of that shard is still waiting and the pause fits the deadline)."""
        call = shard_calls.remove(waiter)
        if call is None:  # the shard has answered: its calls were cancelled and forgotten
            return
        pending, began = call
        try:
            answer = waiter.result()
        except Exception as exc:
            _cancel(pending)  # a wait that timed out leaves the call running
            self._failed(shard_calls, shard, method, exc, deadline)
            return
        answers[shard] = answer
        seconds = time.perf_counter() - began
        self.hedge.record(method, seconds)
        self._observe(shard, method, seconds)
        shard_calls.cancel()

    def _failed(self, calls: _ShardCalls, shard: int, method: str, exc: Exception, deadline: float) -> None:
        """A call of ``shard`` failed: raise the request's own errors, else note it and, when no
        other call of that shard is still waiting, make it again after a pause that fits."""
        cause = _cause(exc)
        # the request's own error (a bad filter), or a stale index version (an
        # IndexChangedError: the service reloads and retries): not the shard's fault
        if isinstance(cause, (RuntimeUserError, ValueError)) and not isinstance(cause, ShardsUnavailable):
            raise cause from None
        logger.warning("shard %d: %s failed (%s: %s)", shard, method, type(cause).__name__, cause)
        if self.observer is not None:
            self.observer.shard_failures.labels(str(shard)).inc()
        if not calls.live and time.monotonic() + RETRY_PAUSE_S < deadline:
            calls.retry_at = time.monotonic() + RETRY_PAUSE_S

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
