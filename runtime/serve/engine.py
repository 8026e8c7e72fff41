"""The model side of the service: one text-encoder call and one search per batch of requests.

Runs in the batcher's worker thread, never on the event loop. Requests of a batch may ask for
different ``top_k``, pages, search modes, filters and groupings: all queries are encoded together,
the queries of requests whose options agree (``SearchOptions.batch_key``: the filter included) are
searched together for the largest ``offset + top_k`` asked, and every request gets its ranks
``offset + 1`` to ``offset + top_k`` (the ranking is by fused score, then gallery row, so a shorter
list is a prefix of a longer one). The search itself is
``runtime.search.Searcher``'s, the same as ``ucofia-run search``.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from runtime.bundle import Bundle
from runtime.errors import QueryError, RuntimeUserError, ShardsUnavailable
from runtime.index import IndexChangedError
from runtime.scoring import Scorer, TextFeatures
from runtime.search import SearchOptions
from runtime.search.filters import Filter
from runtime.search.searcher import DEFAULT_WINDOWS_PER_FILE
from runtime.serve.settings import PROBE_QUERY, ZERO_WIDTH, ServeSettings
from runtime.serve.snapshot import Snapshot
from runtime.text import TextEncoder

EXHAUSTIVE = "exhaustive"
TWO_STAGE = "two_stage"
# Videos scored once at start to warm the scorer session up.
WARM_UP_VIDEOS = 64
_ZERO_WIDTH_TABLE = dict.fromkeys(map(ord, ZERO_WIDTH))
# Characters through which the cleaning can remove text (HTML entities, terminal escapes): a query
# with a letter or digit and none of them keeps its text whatever the cleaning does.
_CLEANING_MARKS = ("&", "\x1b", "\x9b")
NO_TEXT_RULE = ("no text is left after cleaning (only whitespace, control, zero-width or escaped blank characters "
                "such as &nbsp;); give it some text")


def has_text(text: str) -> bool:
    """Whether ``text`` keeps some text after the tokenizer's cleaning (every character it keeps
    but white space is a token), zero-width characters aside; a letter or digit and no entity or
    escape decide it without cleaning."""
    if any(c.isalnum() for c in text) and not any(mark in text for mark in _CLEANING_MARKS):
        return True
    from ucofia.data.tokenizer import clean_text

    return bool(clean_text(text).translate(_ZERO_WIDTH_TABLE).strip())


def two_stage_by_default(settings: ServeSettings, videos: int) -> bool:
    """Whether a server with ``settings`` searches a gallery of ``videos`` two-stage when a request
    does not say (``--two-stage on``, or ``auto`` from ``two_stage_min_videos`` on)."""
    return settings.two_stage == "on" or (settings.two_stage == "auto" and videos >= settings.two_stage_min_videos)


@dataclass
class SearchJob:
    """One request waiting for the model."""

    queries: list[str]
    top_k: int
    two_stage: bool | None = None  # None: the server's choice for the gallery size
    group_by: str | None = None  # None: the index's default (by file on time windows)
    windows_per_file: int = DEFAULT_WINDOWS_PER_FILE
    offset: int = 0
    where: Filter | None = None  # parsed (runtime.search.filters.parse_filter)
    allow_partial: bool = False  # sharded gallery: answer from the shards that answered
    enqueued: float = field(default_factory=time.monotonic)
    started: float | None = None
    future: asyncio.Future | None = None
    abandoned: bool = False  # its client gave up or went away: skip it if not started
    abandoned_because: str | None = None  # "timeout" or "disconnected"

    @property
    def size(self) -> int:
        return len(self.queries)

    def abandon(self, reason: str) -> None:
        """Nobody waits for this job's answer any more (``reason``: timeout, disconnected)."""
        if not self.abandoned:
            self.abandoned, self.abandoned_because = True, reason


@dataclass
class JobResult:
    """What one request gets back: per query its ranked hits, plus how the batch went."""

    queries: list[dict[str, Any]]
    mode: str
    group_by: str | None
    snapshot: Snapshot
    encode_s: float
    score_s: float
    batch_queries: int
    batch_requests: int
    missing_shards: list[int] = field(default_factory=list)  # shards left out of a partial answer


class SearchEngine:
    """Tokenizer + text encoder + scorer of one bundle, and the search settings."""

    def __init__(self, bundle: Bundle, text: TextEncoder, scorer: Scorer, settings: ServeSettings) -> None:
        self.bundle = bundle
        self.text = text
        self.scorer = scorer
        self.settings = settings
        self.probe: TextFeatures = text.encode([PROBE_QUERY])

    def warm_up(self, snapshot: Snapshot) -> None:
        """One small scorer call, so that the first request does not pay onnxruntime's first-run
        set-up (hundreds of milliseconds)."""
        rows = snapshot.index.features(0, min(snapshot.videos, WARM_UP_VIDEOS))
        self.scorer.score_tile(self.probe, self.scorer.prepare(rows))

    def mode(self, videos: int, requested: bool | None) -> str:
        """The search mode of a request on a gallery of ``videos``: its own choice, else the server's."""
        if requested is not None:
            return TWO_STAGE if requested else EXHAUSTIVE
        return TWO_STAGE if two_stage_by_default(self.settings, videos) else EXHAUSTIVE

    def run_batch(self, jobs: list[SearchJob], snapshot: Snapshot) -> list[JobResult | Exception]:
        """Results (or the exception) of every job; a job with a query that has no text left after
        cleaning gets its QueryError without running; an error in a shared call is retried job by
        job so that it is reported to the request that caused it only. ``IndexChangedError`` (the
        snapshot's shards were compacted away) propagates: the caller reloads and retries."""
        refused = {id(job): error for job in jobs if (error := self.check_queries(job.queries)) is not None}
        if refused:
            rest = [job for job in jobs if id(job) not in refused]
            answers = dict(zip(map(id, rest), self.run_batch(rest, snapshot) if rest else []))
            return [refused.get(id(job)) or answers[id(job)] for job in jobs]
        try:
            return list(self._run(jobs, snapshot))
        except IndexChangedError:
            raise
        except RuntimeUserError as exc:
            if len(jobs) == 1:
                return [exc]
        results: list[JobResult | Exception] = []
        for job in jobs:
            try:
                results.extend(self._run([job], snapshot))
            except IndexChangedError:
                raise
            except RuntimeUserError as exc:
                results.append(exc)
        return results

    def check_queries(self, queries: list[str]) -> QueryError | None:
        """A QueryError naming the first query with no text left after the tokenizer's cleaning
        (zero-width characters count as blank), else None."""
        for number, text in enumerate(queries):
            if not has_text(text):
                return QueryError(f"queries.{number}: {NO_TEXT_RULE}")
        return None

    def options(self, job: SearchJob, videos: int) -> SearchOptions:
        """The search options of ``job`` on a gallery of ``videos``."""
        return SearchOptions(top_k=job.top_k, two_stage=self.mode(videos, job.two_stage) == TWO_STAGE,
                             shortlist=self.settings.shortlist, group_by=job.group_by,
                             windows_per_file=job.windows_per_file, offset=job.offset, where=job.where)

    def _run(self, jobs: list[SearchJob], snapshot: Snapshot) -> list[JobResult | Exception]:
        texts = [q for job in jobs for q in job.queries]
        start = time.perf_counter()
        tokens = self.text.tokenize(texts, "query")
        truncated = set(tokens.truncated)  # 1-based numbers over the whole batch
        features = self.text.encode_ids(tokens.ids)
        encoded = time.perf_counter()

        offsets = np.cumsum([0] + [job.size for job in jobs])
        options = [self.options(job, snapshot.videos) for job in jobs]
        answers: dict[int, list[list[dict[str, Any]]]] = {}
        group_by: dict[int, str | None] = {}
        missing: dict[int, list[int]] = {}
        failed: dict[int, Exception] = {}
        for key in dict.fromkeys(o.batch_key() for o in options):
            members = [i for i, o in enumerate(options) if o.batch_key() == key]
            rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in members])
            queries = TextFeatures(features.sentence[rows], features.words[rows])
            widest = max(members, key=lambda i: options[i].depth)
            try:
                answer = snapshot.searcher.search(queries, replace(options[widest], top_k=options[widest].depth,
                                                                   offset=0))
            except ShardsUnavailable as exc:  # a shard is down: a partial answer for those that accept one
                for i in members:
                    if not jobs[i].allow_partial or exc.partial is None:
                        failed[i] = exc
                    else:
                        missing[i] = exc.missing
                if exc.partial is None or not any(i in missing for i in members):
                    continue
                answer = exc.partial
            position = 0
            for i in members:
                page = slice(jobs[i].offset, jobs[i].offset + jobs[i].top_k)
                answers[i] = [records[page] for records in answer.results[position:position + jobs[i].size]]
                group_by[i] = answer.group_by
                position += jobs[i].size
        scored = time.perf_counter()

        out: list[JobResult | Exception] = []
        for i, job in enumerate(jobs):
            if i in failed:
                out.append(failed[i])
                continue
            per_query = [{"query": text, "truncated": int(offsets[i]) + q + 1 in truncated, "results": answers[i][q]}
                         for q, text in enumerate(job.queries)]
            mode = TWO_STAGE if options[i].two_stage else EXHAUSTIVE
            out.append(JobResult(per_query, mode, group_by[i], snapshot, encoded - start, scored - encoded,
                                 len(texts), len(jobs), missing.get(i, [])))
        return out
