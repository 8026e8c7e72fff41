"""Settings of ``ucofia-run serve`` and the limits every request is checked against."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runtime.backends.precision import DEFAULT_SCORER_PRECISION
from runtime.scoring import DEFAULT_MEMORY_MB

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
# Queries per model call (text encoder + one scoring pass) and how long a batch waits to fill.
# Requests that arrive while a batch runs form the next one without any wait; the wait only helps
# requests that arrive a little apart, and it is paid by a lone request: with the tiny test model
# (~10 ms per query) 5 ms halved the throughput of 4 clients, with ViT-B/32 it is noise.
DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_WAIT_MS = 2.0
# Requests waiting for the model; one more is answered 503 with Retry-After.
DEFAULT_MAX_QUEUE = 256
RETRY_AFTER_S = 1
DEFAULT_REQUEST_TIMEOUT_S = 30.0
# Galleries of at least this many videos are searched two-stage (FAISS shortlist + fused re-rank)
# under --two-stage auto: at 10^4 ViT-B/32 videos exhaustive search costs ~160 ms per query on two
# cores, a shortlist of 1000 about a tenth of that (benchmarks/large_gallery.py).
TWO_STAGE_AUTO_MIN_VIDEOS = 5000
# The service's shortlist (`serve --shortlist`; the search CLI keeps runtime.search's 1000): the
# re-rank costs about 0.1-0.3 ms a shortlisted row (benchmarks/results/million_2e4.json: 20 / 29 /
# 69 / 121 ms at 100 / 200 / 500 / 1000 rows warm), so 1000 alone spent a 100 ms query budget. 100
# kept 100 % of the exhaustive top-10 sets on the trained demo model (1440 videos,
# trained_agreement_demo.json), at 10^5 calibrated videos (million_1e5.json) and at 10^6
# (million.json: 50 of 50 queries, 29 QPS at 32 clients); 200 did not meet 20 QPS at 10^6
# (million_1e6_efc80.json: 16 QPS).
DEFAULT_SHORTLIST = 100
TWO_STAGE_MODES = ("auto", "on", "off")
# --watch polls index.json this often (bounded), and reloads once a change has held for one poll.
DEFAULT_WATCH_INTERVAL_S = 2.0
MIN_WATCH_INTERVAL_S = 0.1
MAX_WATCH_INTERVAL_S = 60.0
# Thumbnails made on demand at once (decoding competes with search for the cores).
THUMBNAIL_CONCURRENCY = 2
# Lifetime of the signed thumbnail/media URLs handed out in results when auth is on: at least this
# long; the expiry is rounded up to a multiple of the bucket, so that a video's link stays the same
# for a bucket's time (browser caches hit) and lives between TTL and TTL + bucket.
MEDIA_URL_TTL_S = 3600
MEDIA_URL_BUCKET_S = 600
# The API key file is looked at this often (stat) and re-read when it changed.
KEY_CHECK_INTERVAL_S = 1.0
# ---- the connection layer (runtime.serve.transport; uvicorn's settings where it has them) ----------
# A request head must arrive within this of a connection's opening (or of the first byte of the next
# request on a kept-alive connection), its body within BODY of the end of the head.
DEFAULT_HEADER_TIMEOUT_S = 5.0
DEFAULT_BODY_TIMEOUT_S = 10.0
# uvicorn's timeout_keep_alive: an idle kept-alive connection is closed after this.
DEFAULT_KEEP_ALIVE_TIMEOUT_S = 5.0
# Open connections; one more is closed as soon as it is accepted (the queue bounds the model's work).
DEFAULT_MAX_CONNECTIONS = 1024
# uvicorn's h11_max_incomplete_event_size: a longer request head is answered 400 (h11's default).
MAX_HEAD_BYTES = 16 * 1024
# Host names answered when no key is required (DNS rebinding: any other Host gets 421).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
ANY_HOST = "*"
LOG_FORMATS = ("text", "json")
# How often the GIL changes hands in the server process (Python's default: 5 ms). Measured on two
# busy cores with 32 clients asking for 64 x 100 results: /healthz p50 13 -> 5 ms, p99 ~100 -> ~70 ms,
# the same throughput.
SWITCH_INTERVAL_S = 0.001
# Galleries whose features fit in this many MiB are held in memory (exhaustive search then reads
# no shard pages per request); 1024 MiB is ~8,000 ViT-B/32 videos.
DEFAULT_PRELOAD_MB = 1024
# Characters that carry no text though neither str.strip() nor the tokenizer's cleaning removes
# them (zero-width space, joiners, word joiner, Mongolian vowel separator): a query made only of
# them and blanks is refused like a blank one (runtime.serve.contract's pattern, the engine's check).
ZERO_WIDTH = "\u180e\u200b\u200c\u200d\u2060"
# Text encoded once at start to check the two-stage kernel against the scorer graph.
PROBE_QUERY = "a video"


# JSON may write any character as a \uXXXX escape, one outside the Basic Multilingual Plane as two
# (a UTF-16 surrogate pair): 12 bytes per character at most.
JSON_BYTES_PER_CHAR = 12
# Room for the search request's other fields and white space.
SEARCH_BODY_SLACK = 4096


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; larger requests get a 4xx naming the limit.

    The body limit must admit every request the search schema allows (however its JSON is
    written), or a valid request would be refused with 413: 64 queries of 1,000 characters take
    up to ~770 KB, hence 1 MiB.
    """

    max_queries: int = 64
    max_query_chars: int = 1000
    max_top_k: int = 100
    max_windows_per_file: int = 20
    max_body_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_body_bytes < self.largest_search_body():
            raise ValueError(f"max_body_bytes ({self.max_body_bytes}) is below the largest valid search body "
                             f"({self.largest_search_body()} bytes for {self.max_queries} queries of "
                             f"{self.max_query_chars} characters)")

    def largest_search_body(self) -> int:
        """Bytes of the longest JSON body of a valid search request (every character escaped)."""
        return self.max_queries * (self.max_query_chars * JSON_BYTES_PER_CHAR + 4) + SEARCH_BODY_SLACK


# The largest clip or image POST /v1/search/by-video takes: a few minutes of web video. A larger
# upload also needs a --body-timeout long enough to send it.
DEFAULT_MAX_UPLOAD_MB = 50.0


@dataclass
class ServeSettings:
    """Everything ``ucofia-run serve`` was started with."""

    index_dir: Path
    bundle_dir: Path | None = None
    backend: str = "auto"
    threads: int | None = None
    scorer_precision: str = DEFAULT_SCORER_PRECISION
    memory_mb: float = DEFAULT_MEMORY_MB
    preload_mb: float = DEFAULT_PRELOAD_MB
    max_batch: int = DEFAULT_MAX_BATCH
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    max_queue: int = DEFAULT_MAX_QUEUE
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    two_stage: str = "auto"
    two_stage_min_videos: int = TWO_STAGE_AUTO_MIN_VIDEOS
    shortlist: int = DEFAULT_SHORTLIST
    api_keys: Path | None = None
    link_secret: Path | None = None  # None: <key file>.link-secret (created on first use)
    cors_origins: tuple[str, ...] = ()
    host: str = DEFAULT_HOST  # the address served on: the default allowed Host with keys
    allowed_hosts: tuple[str, ...] = ()  # empty: the default (see allowed_host_names)
    watch: bool = False
    watch_interval_s: float = DEFAULT_WATCH_INTERVAL_S
    key_check_interval_s: float = KEY_CHECK_INTERVAL_S
    access_log: bool = True
    limits: Limits = field(default_factory=Limits)
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB  # POST /v1/search/by-video: the largest file taken

    def __post_init__(self) -> None:
        if self.two_stage not in TWO_STAGE_MODES:
            raise ValueError(f"two_stage must be one of {TWO_STAGE_MODES}, got {self.two_stage!r}")
        self.watch_interval_s = min(max(self.watch_interval_s, MIN_WATCH_INTERVAL_S), MAX_WATCH_INTERVAL_S)

    def allowed_host_names(self) -> frozenset[str] | None:
        """The Host names answered (lower case, no port); None: any. Given ones (``*``: any), else
        the loopback names without keys, else the served address (any for a wildcard address, plus
        the loopback names for a loopback one)."""
        import ipaddress

        if self.allowed_hosts:
            names = {_host_name(h) for h in self.allowed_hosts}
            return None if ANY_HOST in names else frozenset(names)
        if self.api_keys is None:
            return frozenset(LOOPBACK_HOSTS)
        name = _host_name(self.host)
        if name in LOOPBACK_HOSTS:
            return frozenset(LOOPBACK_HOSTS)
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return frozenset({name})
        if address.is_unspecified:
            return None
        return frozenset({name, *LOOPBACK_HOSTS}) if address.is_loopback else frozenset({name})


def _host_name(host: str) -> str:
    """``host`` as compared with a Host header's name: lower case, without brackets."""
    return host.strip().strip("[]").lower()


@dataclass(frozen=True)
class HttpSettings:
    """How the server takes connections (runtime.serve.server.make_server): the connection layer's
    deadlines and bound, the path prefix of a reverse proxy, trusted proxies, TLS."""

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    keep_alive_timeout_s: float = DEFAULT_KEEP_ALIVE_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    root_path: str = ""
    proxy_headers: bool = False
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1",)
    tls_cert: Path | None = None
    tls_key: Path | None = None
