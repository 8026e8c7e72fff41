"""Prometheus metrics of the service (``prometheus-client``, in its own registry per app).

Every label value comes from a fixed set, so no request can add a series: the route is a route
template of the app (or ``/static``, ``/openapi.json``, ``other``), the method one of
``METHODS`` (else ``other``), the status one of ``STATUSES`` (else ``other``); the other labels
are names the code itself passes (error kinds, reload triggers, close reasons).
"""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
QUEUE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
OTHER = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "OPTIONS"})
# 499: a search whose client went away before its answer (nginx's "client closed request"; nobody receives it).
STATUSES = frozenset({200, 204, 206, 304, 400, 401, 403, 404, 405, 408, 409, 413, 415, 416, 421, 422, 499, 500, 503,
                      504})


def method_label(method: str) -> str:
    """The request's method if it is one the service answers, else ``other``."""
    return method if method in METHODS else OTHER


def status_label(status: int) -> str:
    """The status as a label if it is one the service answers, else ``other``."""
    return str(status) if status in STATUSES else OTHER


class Metrics:
    """Counters, histograms and gauges under the ``ucofia_`` prefix."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ucofia_http_requests", "HTTP requests by route template, method and status",
                                ("route", "method", "status"), registry=r)
        self.latency = Histogram("ucofia_http_request_duration_seconds", "HTTP request latency by route template",
                                 ("route",), buckets=LATENCY_BUCKETS, registry=r)
        self.batch_queries = Histogram("ucofia_batch_queries", "Queries per model call (dynamic batch size)",
                                       buckets=BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("ucofia_batch_requests", "Requests coalesced per model call",
                                        buckets=BATCH_BUCKETS, registry=r)
        self.queue_wait_seconds = Histogram("ucofia_queue_wait_seconds", "Time a request waited for its batch",
                                            buckets=QUEUE_BUCKETS, registry=r)
        self.queue_depth_gauge = Gauge("ucofia_queue_depth", "Requests waiting for the model", registry=r)
        self.stage_seconds = Histogram("ucofia_search_stage_seconds", "Model time per batch by stage",
                                       ("stage",), buckets=LATENCY_BUCKETS, registry=r)
        self.gallery_videos = Gauge("ucofia_gallery_videos", "Videos in the served index snapshot", registry=r)
        self.snapshot_version = Gauge("ucofia_snapshot_version", "Loads of the index since start", registry=r)
        self.errors = Counter("ucofia_errors", "Errors by kind (rejected, timeout, search, internal, reload, "
                              "thumbnail, shards)", ("kind",), registry=r)
        self.reloads = Counter("ucofia_reloads", "Index reloads by trigger and outcome", ("trigger", "outcome"),
                               registry=r)
        self.key_reloads = Counter("ucofia_key_file_reloads", "Re-reads of the API key file by outcome", ("outcome",),
                                   registry=r)
        self.dropped = Counter("ucofia_dropped_requests", "Searches dropped before the model ran them, by reason "
                               "(disconnected: the client had gone; timeout: --timeout passed)", ("reason",),
                               registry=r)
        self.connections_closed = Counter("ucofia_connections_closed", "Connections the server closed, by reason "
                                          "(header_timeout, body_timeout, keep_alive_timeout, surplus)", ("reason",),
                                          registry=r)
        self.open_connections = Gauge("ucofia_open_connections", "Open HTTP connections", registry=r)
        # a sharded gallery (`serve --ray`): every call of the ingress to a shard, and what each holds
        self.shard_seconds = Histogram("ucofia_shard_call_seconds", "Time of the ingress's calls to each shard, by "
                                       "shard and call (hits, shortlist, rerank)", ("shard", "call"), registry=r)
        self.shard_failures = Counter("ucofia_shard_call_failures", "Failed calls to a shard (retried until the "
                                      "request's deadline), by shard", ("shard",), registry=r)
        self.shard_hedges = Counter("ucofia_shard_hedged_calls", "Second calls to a shard whose first had not "
                                    "answered within the hedge delay (--shard-hedge-after), by shard", ("shard",),
                                    registry=r)
        self.shard_rows = Gauge("ucofia_shard_rows", "Gallery rows each shard owns", ("shard",), registry=r)
        self.shards_up = Gauge("ucofia_shards_up", "Shards that answered the last search", registry=r)

    # ---- BatchObserver ---------------------------------------------------------------------
    def batch_started(self, queries: int, requests: int) -> None:
        self.batch_queries.observe(queries)
        self.batch_requests.observe(requests)

    def queue_wait(self, seconds: float) -> None:
        self.queue_wait_seconds.observe(seconds)

    def queue_depth(self, requests: int) -> None:
        self.queue_depth_gauge.set(requests)

    def request_dropped(self, reason: str) -> None:
        self.dropped.labels(reason).inc()

    # ---- ConnectionObserver (runtime.serve.transport) -------------------------------------
    def connection_closed(self, reason: str) -> None:
        self.connections_closed.labels(reason).inc()

    def connections_open(self, count: int) -> None:
        self.open_connections.set(count)

    # ---- exposition ------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
