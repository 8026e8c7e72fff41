"""The indexing use case: build or resume an index from a list of videos (``ucofia-run index``).

:func:`build_index` takes an :class:`IndexRequest` and returns an :class:`IndexOutcome` (counts,
failures, timings, what happened to the biases and thumbnails). It plans what is left to encode,
runs one of three engines over it, then makes thumbnails and the SK biases:

* ``files``   -- whole files decoded by a local pool of threads or processes (``local``);
* ``windows`` -- time windows, each file decoded once (``windows``);
* ``ray``     -- whole files on a Ray cluster (``runtime.distributed``), the same index as ``files``.

Resumable: a rerun of the same request skips what is indexed and finishes what a killed run left.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runtime.backends import resolve_backend
from runtime.bundle import Bundle, load_bundle
from runtime.errors import OptionsError, RuntimeUserError
from runtime.index import GalleryIndex, IndexWriter
from runtime.ingest.biases import BiasScoring, ComputeBiases, update_biases
from runtime.ingest.files import plan_ingest
from runtime.ingest.local import DEFAULT_BATCH, default_workers, encode_videos
from runtime.ingest.report import IngestReport
from runtime.ingest.windows import encode_windows, plan_windows
from runtime.remote import Source, is_url
from runtime.remote import require as require_protocols
from runtime.scoring import DEFAULT_MEMORY_MB
from runtime.sources import read_captions
from runtime.thumbnails import ThumbnailReport, ThumbnailWriter
from runtime.video_list import read_video_list
from runtime.vocabulary import check_tokenized_text_fits
from runtime.windows import WindowSetting
from runtime.windows import check_setting as check_window_setting
from ucofia.progress import Update, progress_bar

logger = logging.getLogger(__name__)

DEFAULT_RAY_DECODE_BATCH = 8
DEFAULT_RAY_COMMIT_EVERY_S = 5.0


@dataclass(frozen=True)
class RaySettings:
    """How ``--ray`` runs (see ``ucofia-run index --help``): the cluster address (None: a new local
    Ray for the job), CPUs of a local Ray, encoder actors, videos per decode task, commit period."""

    address: str | None = None
    cpus: int | None = None
    encoders: int | None = None
    decode_batch: int = DEFAULT_RAY_DECODE_BATCH
    commit_every_s: float = DEFAULT_RAY_COMMIT_EVERY_S


@dataclass(frozen=True)
class IndexRequest:
    """Everything one indexing run is asked to do (the options of ``ucofia-run index``)."""

    bundle: Path
    videos: Path
    out: Path
    bank: Path | None = None
    batch_size: int = DEFAULT_BATCH
    workers: int | None = None          # decoders (None: CPU count, at most 8)
    process_pool: bool = False
    window: float | None = None         # seconds; None: whole files
    stride: float | None = None
    store: str | None = None
    ray: RaySettings | None = None
    thumbnails: bool = True
    backend: str = "auto"
    memory_mb: float = DEFAULT_MEMORY_MB
    threads: int | None = None


@dataclass
class IndexOutcome:
    """What :func:`build_index` did. ``unit`` is what a row is: ``video`` or ``window``."""

    out: Path
    unit: str
    backend: str
    report: IngestReport
    rows_in_index: int
    thumbnails: ThumbnailReport | None = None
    ray: Any = None                     # runtime.distributed.pipeline.StageTimes of a --ray run
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[tuple[str, str]]:
        """(id, error) of every video or window that could not be indexed (also in failed.jsonl)."""
        return self.report.failed

    def to_dict(self) -> dict[str, Any]:
        """The outcome as JSON-ready data (for scripts and benchmarks: no parsing of messages)."""
        r = self.report
        return {"out": str(self.out), "unit": self.unit, "backend": self.backend, "rows_in_index": self.rows_in_index,
                "total": r.total, "skipped": r.skipped, "replaced": r.replaced, "indexed": r.indexed,
                "failed": [{"id": vid, "error": error} for vid, error in r.failed], "seconds": r.seconds,
                "per_second": r.videos_per_second, "biases": r.biases,
                "thumbnails": None if self.thumbnails is None else asdict(self.thumbnails),
                "ray": None if self.ray is None else asdict(self.ray)}

    def summary(self) -> str:
        """One line: what was indexed, how fast, what was skipped or failed, and the biases."""
        r, unit = self.report, self.unit
        replaced = (f"{r.replaced} of them replacing changed files" if unit == "video" else
                    f"{r.replaced} changed files re-indexed")
        return (f"indexed {r.indexed} new {unit}s ({r.videos_per_second:.2f} {unit}s/s, backend {self.backend}), "
                f"{replaced}, {r.skipped} already present, {len(r.failed)} failed; {self.rows_in_index} {unit}s in "
                f"{self.out}; biases: {r.biases}")


@dataclass
class _Work:
    """What is left to encode: (id, path) pairs and the rows each replaces, or window plans."""

    todo: list[tuple[str, Source]] = field(default_factory=list)
    replaces: dict[str, list[str]] = field(default_factory=dict)
    plans: list[Any] = field(default_factory=list)
    count: int = 0                      # videos or windows to encode
    changed: int = 0                    # indexed files whose content changed


class _Engine(Protocol):
    """Encodes planned work into the writer's index."""

    def encode(self, work: _Work, update: Update) -> None: ...

    def bias_compute(self) -> ComputeBiases | None: ...

    def close(self) -> None: ...


def check_request(request: IndexRequest) -> WindowSetting | None:
    """The request's window setting; OptionsError for options that cannot go together."""
    setting = WindowSetting.from_options(request.window, request.stride)
    ray = request.ray
    if ray is None:
        return setting
    if setting is not None:
        raise OptionsError("--window is not supported with --ray yet: index windows without --ray")
    if request.workers or request.process_pool:
        raise OptionsError("--workers/--process-pool size the local decoder pool; with --ray, Ray schedules "
                           "decode tasks on every CPU of the cluster (size a local Ray with --ray-cpus)")
    if ray.address and ray.cpus:
        raise OptionsError("--ray-cpus sizes a local Ray; a cluster at --ray-address has its own CPUs")
    return setting


def check_sources(pairs: list[tuple[str, Source]], setting: WindowSetting | None) -> None:
    """URL sources are indexed as whole files (OptionsError for --window) and need their
    protocol's extra (RuntimeUserError naming it), checked before any work."""
    urls = [str(source) for _, source in pairs if is_url(source)]
    if not urls:
        return
    if setting is not None:
        raise OptionsError(f"--window does not take URL sources yet ({urls[0]}): index URLs without --window, "
                           f"or download them first")
    require_protocols(urls)


def check_bank(bank: Path | None, bundle: Bundle) -> None:
    """A bad caption bank fails before hours of encoding, not after."""
    if bank is None:
        return
    if not bank.is_file():
        raise RuntimeUserError(f"--bank {bank}: file not found")
    read_captions(bank, "bank captions")
    check_tokenized_text_fits(bundle, "bank caption")


def build_index(request: IndexRequest) -> IndexOutcome:
    """Encode the listed videos into ``request.out`` (created, or resumed), then make thumbnails
    and recompute the SK biases when the bank or the videos changed."""
    setting = check_request(request)
    if request.ray is not None:
        from runtime.distributed import require_ray

        require_ray()  # fails now, with how to install it
    bundle = load_bundle(request.bundle)
    backend = resolve_backend(request.backend, bundle)
    listed = read_video_list(request.videos)
    pairs = listed.pairs
    check_sources(pairs, setting)
    check_bank(request.bank, bundle)
    report = IngestReport(total=len(pairs))
    unit = "video" if setting is None else "window"
    outcome = IndexOutcome(request.out, unit, backend, report, 0)
    with IndexWriter(request.out, bundle, request.store) as writer:
        writer.publish_later = request.bank is not None  # new rows appear with the biases computed at the end
        check_window_setting(writer.root, GalleryIndex(writer.root).entries, setting)
        thumbnails = ThumbnailWriter(request.out) if request.thumbnails else None  # made while the encoder works
        work = _plan(writer, pairs, setting, report)
        if report.skipped:
            logger.info("resuming %s: %d of %d %ss already indexed", request.out, report.skipped, report.total, unit)
        if work.changed:
            logger.info("%d indexed files changed content; their rows will be replaced", work.changed)
        engine = _engine(request, setting, writer, bundle, backend, report, thumbnails, listed.metadata)
        try:
            start = time.perf_counter()
            try:
                with progress_bar(work.count, "encoding" + (" (ray)" if request.ray else ""), unit) as update:
                    engine.encode(work, update)
            except BaseException:
                if thumbnails is not None:
                    thumbnails.abort()
                raise
            finally:
                report.seconds = time.perf_counter() - start
            if thumbnails is not None:
                outcome.thumbnails = _finish_thumbnails(thumbnails, request.out, unit)
            scoring = BiasScoring(backend, request.memory_mb, request.threads, engine.bias_compute())
            report.biases = update_biases(writer, bundle, request.bank, scoring)
        finally:
            engine.close()
        outcome.rows_in_index = len(writer.indexed)
    outcome.ray = getattr(engine, "times", None)
    return outcome


def _plan(writer: IndexWriter, pairs: list[tuple[str, Source]], setting: WindowSetting | None,
          report: IngestReport) -> _Work:
    if setting is None:
        todo, replaces, report.skipped = plan_ingest(writer, pairs)
        return _Work(todo=todo, replaces=replaces, count=len(todo), changed=len(replaces))
    plans = plan_windows(pairs, setting, writer, report)
    return _Work(plans=plans, count=sum(len(p.spans) for p in plans), changed=sum(bool(p.replaces) for p in plans))


def _finish_thumbnails(thumbnails: ThumbnailWriter, root: Path, unit: str) -> ThumbnailReport:
    """Wait for the thumbnails made during encoding and backfill missing ones (pending rows too:
    they are published with the biases)."""
    entries = GalleryIndex(root, include_pending=True).entries
    with progress_bar(len(entries), "thumbnails", unit) as update:
        made = thumbnails.close(entries, update)
    if made.failed:
        logger.warning("thumbnails: %s", made.summary())
    else:
        logger.info("thumbnails: %s", made.summary())
    return made


def _engine(request: IndexRequest, setting: WindowSetting | None, writer: IndexWriter, bundle: Bundle, backend: str,
            report: IngestReport, thumbnails: ThumbnailWriter | None, metadata: dict[str, dict[str, Any]]) -> _Engine:
    if request.ray is not None:
        from runtime.distributed.engine import RayEngine

        return RayEngine(request.ray, writer, bundle, request.backend, request.batch_size, request.threads, report,
                         thumbnails=thumbnails is not None, metadata=metadata)
    workers = request.workers or default_workers()
    if setting is None:
        return _LocalFiles(writer, bundle, backend, request, workers, report, thumbnails, metadata)
    return _LocalWindows(writer, bundle, backend, request, workers, report, setting, metadata)


class _LocalFiles:
    """Whole files on this machine: a decoder pool feeding the video encoder."""

    def __init__(self, writer: IndexWriter, bundle: Bundle, backend: str, request: IndexRequest, workers: int,
                 report: IngestReport, thumbnails: ThumbnailWriter | None, metadata: dict[str, dict[str, Any]]) -> None:
        self.writer, self.bundle, self.backend, self.request = writer, bundle, backend, request
        self.workers, self.report, self.thumbnails, self.metadata = workers, report, thumbnails, metadata

    def encode(self, work: _Work, update: Update) -> None:
        r = self.request
        encode_videos(self.writer, self.bundle, work.todo, backend=self.backend, batch_size=r.batch_size,
                      workers=self.workers, processes=r.process_pool, threads=r.threads, report=self.report,
                      progress=update, replaces=work.replaces,
                      on_stored=self.thumbnails.submit if self.thumbnails else None, metadata=self.metadata,
                      url_thumbnails=self.thumbnails is not None)

    def bias_compute(self) -> ComputeBiases | None:
        return None

    def close(self) -> None:
        pass


class _LocalWindows:
    """Time windows on this machine: each file decoded once, windows encoded in batches."""

    def __init__(self, writer: IndexWriter, bundle: Bundle, backend: str, request: IndexRequest, workers: int,
                 report: IngestReport, setting: WindowSetting, metadata: dict[str, dict[str, Any]]) -> None:
        self.writer, self.bundle, self.backend, self.request = writer, bundle, backend, request
        self.workers, self.report, self.setting, self.metadata = workers, report, setting, metadata

    def encode(self, work: _Work, update: Update) -> None:
        encode_windows(self.writer, self.bundle, work.plans, self.setting, backend=self.backend,
                       batch_size=self.request.batch_size, workers=self.workers, threads=self.request.threads,
                       report=self.report, progress=update, metadata=self.metadata)

    def bias_compute(self) -> ComputeBiases | None:
        return None

    def close(self) -> None:
        pass
