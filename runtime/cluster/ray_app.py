"""The sharded search service on Ray Serve (``ucofia-run serve --ray``; the ``ray-serve`` extra).

One application, two kinds of deployment:

* ``shard-N`` (:class:`ShardReplica`): a :class:`runtime.cluster.shard.ShardSearcher` over its part
  of the index (shared storage; every replica of a shard opens the same rows);
* ``ingress`` (:class:`SearchIngress`): the same FastAPI app as ``ucofia-run serve`` (routes, page,
  auth, limits, metrics, batching, reload and ``--watch``) whose snapshots search through
  :class:`runtime.cluster.fanout.ShardedSearcher`, calling the shards through Ray Serve handles.

``build_app`` is the entry point for Ray's own tools::

    serve run runtime.cluster.ray_app:build_app index_dir=INDEX shards=2 replicas=2

This module imports Ray; everything else in ``runtime.cluster`` works without it.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import threading
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from ray import serve

from runtime.cluster.fanout import ShardedSearcher
from runtime.cluster.hedging import AUTO, HedgePolicy, parse_hedge
from runtime.cluster.settings import APP_NAME, INGRESS, ClusterSettings, shard_name
from runtime.cluster.shard import ShardSearcher
from runtime.serve.settings import ServeSettings
from runtime.serve.snapshot import state_digest

logger = logging.getLogger(__name__)


def _configure_logs(level: str, fmt: str) -> None:
    """A replica logs as ``ucofia-run serve`` does (level, text or JSON lines)."""
    from ucofia import logs

    logs.configure(logs.QUIET, level=level.upper(), fmt=fmt)


class ShardReplica:
    """One replica of one shard: answers the ingress's ``hits``, ``shortlist``, ``rerank``, ``load``."""

    def __init__(self, settings: ServeSettings, shard: int, shards: int, log_level: str = "info",
                 log_format: str = "text") -> None:
        _configure_logs(log_level, log_format)
        from runtime.serve.engine import two_stage_by_default

        self.searcher = ShardSearcher(settings.index_dir, shard, shards, bundle_dir=settings.bundle_dir,
                                      backend=settings.backend, threads=settings.threads,
                                      memory_mb=settings.memory_mb, preload_mb=settings.preload_mb,
                                      two_stage_for=partial(two_stage_by_default, settings),
                                      scorer_precision=settings.scorer_precision)

    def load(self):
        return self.searcher.load()

    def hits(self, digest, queries, options):
        return self.searcher.hits(digest, queries, options)

    def shortlist(self, digest, queries, options):
        return self.searcher.shortlist(digest, queries, options)

    def rerank(self, digest, queries, options, candidates):
        return self.searcher.rerank(digest, queries, options, candidates)


class _HandleClient:
    """A shard's deployment handle as a ``ShardClient`` (``call`` starts a method on a replica)."""

    def __init__(self, shard: int, handle: Any) -> None:
        self.shard, self.handle = shard, handle

    def call(self, method: str, *args: Any) -> _Pending:
        return _Pending(getattr(self.handle, method).remote(*args))


class _Pending:
    def __init__(self, response: Any) -> None:
        self.response = response

    def result(self, timeout: float | None = None) -> Any:
        return self.response.result(timeout_s=timeout)

    def cancel(self) -> None:
        self.response.cancel()


@serve.ingress()
class SearchIngress:
    """The HTTP side: ``ucofia-run serve``'s app over a searcher that asks the shards."""

    async def __init__(self, settings: ServeSettings, cluster: ClusterSettings, *shards: Any, log_level: str = "info",
                       log_format: str = "text") -> None:
        _configure_logs(log_level, log_format)
        from runtime.serve import require_serve_dependencies
        from runtime.serve.metrics import Metrics
        from runtime.serve.service import SearchService

        require_serve_dependencies()
        # every ingress replica follows index.json: a reload request reaches one replica, the
        # others (and replicas Ray restarts) swap to the new version within --watch-interval
        settings = replace(settings, watch=True)
        clients = [_HandleClient(number, handle) for number, handle in enumerate(shards)]
        metrics = Metrics()
        hedge = HedgePolicy(cluster.shard_hedge_after_s)  # one per replica: what it learns outlives reloads

        def sharded(scorer, gallery, *, memory_mb, source, probe):
            return ShardedSearcher(scorer, gallery, clients, state_digest(gallery.state.to_dict()),
                                   memory_mb=memory_mb, deadline_s=cluster.shard_deadline_s,
                                   load_deadline_s=cluster.shard_load_timeout_s, observer=metrics, hedge=hedge)

        # off the replica's event loop: opening asks every shard (blocking handle calls)
        self.service = await asyncio.to_thread(SearchService.open, settings, metrics, make_searcher=sharded)

    def __serve_build_asgi_app__(self):
        from runtime.serve.app import create_app

        return create_app(self.service)


def build(settings: ServeSettings, cluster: ClusterSettings, log_level: str = "info", log_format: str = "text"):
    """The Ray Serve application: ``cluster.shards`` shard deployments bound into the ingress."""
    shards = [serve.deployment(ShardReplica, name=shard_name(n)).options(**cluster.deployment_options()).bind(
        settings, n, cluster.shards, log_level, log_format) for n in range(cluster.shards)]
    # the ingress takes every request its batcher may hold (queue + a running batch), like one process
    ingress = cluster.deployment_options(max_ongoing_requests=settings.max_queue + settings.max_batch)
    return serve.deployment(SearchIngress, name=INGRESS).options(**ingress).bind(
        settings, cluster, *shards, log_level=log_level, log_format=log_format)


def build_app(args: dict[str, str]):
    """``serve run runtime.cluster.ray_app:build_app index_dir=DIR [bundle_dir=DIR] [shards=N]
    [replicas=R] [replica_cpus=C] [max_replicas_per_node=N] [two_stage=auto|on|off] [shortlist=N]
    [threads=N] [scorer_precision=float32|int8] [shard_hedge_after=auto|off|SECONDS]``: the
    application for Ray's CLI and ``serve deploy`` config files (``args``: the config's ``args``)."""
    known = {"index_dir", "bundle_dir", "shards", "replicas", "replica_cpus", "max_replicas_per_node", "two_stage",
             "shortlist", "threads", "api_keys", "preload_mb", "watch", "scorer_precision", "shard_hedge_after"}
    unknown = sorted(set(args) - known)
    if unknown or "index_dir" not in args:
        raise ValueError(f"build_app needs index_dir=DIR; unknown arguments: {unknown}; known: {sorted(known)}")
    settings = ServeSettings(index_dir=Path(args["index_dir"]),
                             bundle_dir=Path(args["bundle_dir"]) if args.get("bundle_dir") else None,
                             two_stage=args.get("two_stage", ServeSettings.two_stage),
                             shortlist=int(args.get("shortlist", ServeSettings.shortlist)),
                             threads=int(args["threads"]) if args.get("threads") else None,
                             api_keys=Path(args["api_keys"]) if args.get("api_keys") else None,
                             preload_mb=float(args.get("preload_mb", ServeSettings.preload_mb)),
                             watch=str(args.get("watch", "")).lower() in ("1", "true", "yes"),
                             scorer_precision=args.get("scorer_precision", ServeSettings.scorer_precision))
    cluster = ClusterSettings(shards=int(args.get("shards", 1)), replicas=int(args.get("replicas", 1)),
                              replica_cpus=float(args.get("replica_cpus", ClusterSettings.replica_cpus)),
                              max_replicas_per_node=int(args["max_replicas_per_node"])
                              if args.get("max_replicas_per_node") else None,
                              shard_hedge_after_s=parse_hedge(args.get("shard_hedge_after", AUTO)))
    return build(settings, cluster)


def run(settings: ServeSettings, cluster: ClusterSettings, port: int, *, log_level: str = "info",
        log_format: str = "text", ready: Any = None) -> None:
    """Start (or join, with ``cluster.ray_address``) Ray, deploy the application on
    ``settings.host:port`` and serve until SIGINT or SIGTERM; then take the application down.
    ``ready``: called with the URL once every replica is up."""
    import ray

    ray.init(address=cluster.ray_address, include_dashboard=False, log_to_driver=True,
             **({} if cluster.ray_address else {"_node_ip_address": "127.0.0.1"}))
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": port})
        serve.run(build(settings, cluster, log_level, log_format), name=APP_NAME, route_prefix="/",
                  blocking=False)
        if ready is not None:
            ready(f"http://{settings.host}:{port}/")
        stop.wait()
    finally:
        try:
            serve.delete(APP_NAME)
            serve.shutdown()
        finally:
            ray.shutdown()


__all__ = ["SearchIngress", "ShardReplica", "build", "build_app", "run"]
