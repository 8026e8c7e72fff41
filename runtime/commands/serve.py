"""``ucofia-run serve``: options and messages; the service is ``runtime.serve`` (FastAPI on
uvicorn, imported only when the command runs)."""
from __future__ import annotations

from pathlib import Path

import click

from runtime.cluster.hedging import parse_hedge
from runtime.cluster.settings import DEFAULT_LOAD_DEADLINE_S, DEFAULT_SHARD_DEADLINE_S
from runtime.commands.common import (
    EXIT_CODES_HELP,
    backend_option,
    bundle_option,
    index_option,
    memory_option,
    scorer_precision_option,
    threads_option,
    user_errors,
)
from runtime.serve import settings as defaults


def _hedge_option(ctx: click.Context, param: click.Parameter, value: str) -> float | None:
    try:
        return parse_hedge(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(epilog=EXIT_CODES_HELP)
@index_option
@bundle_option
@click.option("--host", default=defaults.DEFAULT_HOST, show_default=True,
              help="Address to listen on. Anything but a loopback address needs --api-keys (or "
                   "--insecure-no-auth).")
@click.option("--port", default=defaults.DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0: any free port; the address is printed at start).")
@click.option("--api-keys", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Key file (`ucofia-run api-key create`; mode 0600): clients then send `Authorization: Bearer "
                   "KEY`; search needs the 'search' scope, /v1/admin/reload 'admin'. Re-read within a second of "
                   "every change (create and revoke apply without a restart).")
@click.option("--link-secret", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File of the secret that signs thumbnail and media links (created 0600 on first use; default: "
                   "KEYFILE.link-secret next to --api-keys). Replicas given the same file accept each other's links.")
@click.option("--insecure-no-auth", is_flag=True,
              help="Listen on a non-loopback --host without API keys (anyone reaching the port can search "
                   "and reload).")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="A host name clients reach the server by (repeatable; '*': any): a request whose Host header "
                   "names another gets 421. Default: the loopback names without --api-keys, else the --host "
                   "address (any for 0.0.0.0 or ::).")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Serve HTTPS with this certificate chain (PEM; with --tls-key).")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="The private key of --tls-cert (PEM).")
@click.option("--root-path", default="", metavar="PREFIX",
              help="The path prefix a reverse proxy serves the service under (e.g. /search; the proxy strips it): "
                   "links in answers carry it.")
@click.option("--proxy-headers", is_flag=True,
              help="Take the client address and scheme from X-Forwarded-For / X-Forwarded-Proto of requests from "
                   "--forwarded-allow-ips (the access log then shows the real client).")
@click.option("--forwarded-allow-ips", default="127.0.0.1", show_default=True, metavar="IPS",
              help="Comma-separated addresses or networks of the trusted proxies ('*': any) for --proxy-headers.")
@click.option("--header-timeout", default=defaults.DEFAULT_HEADER_TIMEOUT_S, show_default=True,
              type=click.FloatRange(min=0.1), help="Seconds a connection may take to send a complete request head "
                                                   "(then 408 and closed; before any authentication).")
@click.option("--body-timeout", default=defaults.DEFAULT_BODY_TIMEOUT_S, show_default=True,
              type=click.FloatRange(min=0.1), help="Seconds a request may take to send its whole body after its "
                                                   "head (then 408 and closed).")
@click.option("--keep-alive-timeout", default=defaults.DEFAULT_KEEP_ALIVE_TIMEOUT_S, show_default=True,
              type=click.FloatRange(min=0.1), help="Seconds an idle kept-alive connection stays open.")
@click.option("--max-connections", default=defaults.DEFAULT_MAX_CONNECTIONS, show_default=True,
              type=click.IntRange(min=1), help="Open connections at most; one more is closed as soon as it is "
                                               "accepted.")
@click.option("--max-batch", default=defaults.DEFAULT_MAX_BATCH, show_default=True,
              type=click.IntRange(min=1), help="Queries per model call: concurrent requests are coalesced "
                                               "up to this (a larger request runs alone).")
@click.option("--max-wait-ms", default=defaults.DEFAULT_MAX_WAIT_MS, show_default=True,
              type=click.FloatRange(0, 1000), help="How long a batch waits for more requests to fill it.")
@click.option("--max-queue", default=defaults.DEFAULT_MAX_QUEUE, show_default=True, type=click.IntRange(min=1),
              help="Requests waiting for the model; more are answered 503 with Retry-After.")
@click.option("--timeout", "request_timeout", default=defaults.DEFAULT_REQUEST_TIMEOUT_S, show_default=True,
              type=click.FloatRange(min=0.1), help="Seconds a search may take, queue included (then 504).")
@click.option("--two-stage", default="auto", show_default=True, type=click.Choice(defaults.TWO_STAGE_MODES),
              help=f"auto: FAISS two-stage search from {defaults.TWO_STAGE_AUTO_MIN_VIDEOS} videos on, "
                   f"exhaustive below; on / off: always / never. A request may override it "
                   f"(\"two_stage\": true/false) unless off.")
@click.option("--shortlist", default=defaults.DEFAULT_SHORTLIST, show_default=True, type=click.IntRange(min=1),
              help="Videos per query kept by the first stage of two-stage search.")
@click.option("--max-top-k", default=defaults.Limits.max_top_k, show_default=True, type=click.IntRange(1, 10000),
              help="Largest top_k a request may ask for.")
@click.option("--max-upload-mb", default=defaults.DEFAULT_MAX_UPLOAD_MB, show_default=True,
              type=click.FloatRange(min=0.001),
              help="Largest clip or image POST /v1/search/by-video takes (413 above it); a large upload also "
                   "needs a long enough --body-timeout.")
@click.option("--preload-mb", default=defaults.DEFAULT_PRELOAD_MB, show_default=True,
              type=click.FloatRange(min=0), help="Hold the index's features in memory when they fit in this "
                                                 "many MiB (0: always read them from the shard files).")
@click.option("--watch", is_flag=True,
              help="Reload the index by itself when `ucofia-run index` changed it (polls index.json).")
@click.option("--watch-interval", default=defaults.DEFAULT_WATCH_INTERVAL_S, show_default=True,
              type=click.FloatRange(defaults.MIN_WATCH_INTERVAL_S, defaults.MAX_WATCH_INTERVAL_S),
              help="Seconds between two looks at index.json under --watch.")
@click.option("--cors-origin", "cors_origins", multiple=True,
              help="Allow browser pages from this origin (repeatable, e.g. https://app.example.org) to call "
                   "the API. Off by default.")
@backend_option
@scorer_precision_option
@memory_option
@threads_option
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]), help="Server log level.")
@click.option("--log-format", default="text", show_default=True, type=click.Choice(defaults.LOG_FORMATS),
              help="text: a line per record (time, level, request id, logger, message); json: one JSON object per "
                   "line.")
@click.option("--no-access-log", is_flag=True, help="Do not log every request.")
@click.option("--ray", "use_ray", is_flag=True,
              help="Serve on Ray Serve: the gallery cut into --shards parts searched by their own replicas, "
                   "merged by an ingress that serves this same API (answers equal one process's). Needs "
                   "`pip install 'ucofia[ray-serve]'`; docs/scaling.md.")
@click.option("--shards", default=1, show_default=True, type=click.IntRange(min=1),
              help="With --ray: parts the gallery is cut into (whole files each), one deployment each.")
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(min=1),
              help="With --ray: replicas of the ingress and of every shard (2 or more: a replica lost is "
                   "routed around, no request lost).")
@click.option("--replica-cpus", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="With --ray: CPUs Ray reserves per replica (lower it to pack replicas on a small machine).")
@click.option("--max-replicas-per-node", default=None, type=click.IntRange(min=1), metavar="N",
              help="With --ray: at most N replicas of one deployment on a node (1: a node lost takes at most one "
                   "replica of the ingress and of each shard; default: Ray spreads them as best it can).")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="With --ray: join this Ray cluster (e.g. ray://head:10001 or auto) instead of starting one here.")
@click.option("--ray-proxy", default="haproxy", show_default=True, type=click.Choice(["haproxy", "ray"]),
              help="With --ray: the HTTP proxy in front of the ingress replicas. haproxy resends a request whose "
                   "ingress replica died before answering to another replica (no request lost); ray is Ray "
                   "Serve's own proxy, which answers such a request 500. With --ray-address the cluster's "
                   "own setting applies (docs/scaling.md).")
@click.option("--shard-deadline", default=DEFAULT_SHARD_DEADLINE_S, show_default=True, type=click.FloatRange(min=0.1),
              help="With --ray: seconds the ingress keeps asking a shard that fails before the request gets 503 "
                   "(or, with \"allow_partial\": true, the other shards' answer).")
@click.option("--shard-hedge-after", "shard_hedge_after", default="auto", show_default=True, metavar="auto|off|SECONDS",
              callback=_hedge_option,
              help="With --ray: a shard call unanswered this long gets a second one beside it, which Ray routes "
                   "to the least-busy replica; the first answer wins (one stuck replica then no longer holds a "
                   "request until --shard-deadline). auto: 3x the recent 90th percentile of such calls, at least "
                   "0.2 s and at most half of --shard-deadline; off: never.")
@click.option("--shard-load-timeout", default=DEFAULT_LOAD_DEADLINE_S, show_default=True, type=click.FloatRange(min=1),
              help="With --ray: seconds the ingress waits for every shard to open the index, at start and on a "
                   "reload (a shard builds its part's FAISS stage 1 then: minutes for 10^6 rows).")
@click.option("--autoscale", nargs=3, type=(click.IntRange(min=1), click.IntRange(min=1), click.FloatRange(min=0.1)),
              default=None, metavar="MIN MAX TARGET",
              help="With --ray: Ray Serve autoscaling of every deployment instead of --replicas: min_replicas, "
                   "max_replicas, target_ongoing_requests.")
@user_errors
def serve(index_dir: Path, bundle_dir: Path | None, host: str, port: int, api_keys: Path | None,
          link_secret: Path | None, insecure_no_auth: bool, allowed_hosts: tuple[str, ...], tls_cert: Path | None,
          tls_key: Path | None, root_path: str, proxy_headers: bool, forwarded_allow_ips: str, header_timeout: float,
          body_timeout: float, keep_alive_timeout: float, max_connections: int, max_batch: int, max_wait_ms: float,
          max_queue: int, request_timeout: float, two_stage: str, shortlist: int, max_top_k: int,
          max_upload_mb: float, preload_mb: float, watch: bool, watch_interval: float, cors_origins: tuple[str, ...],
          backend: str, scorer_precision: str, memory_mb: float,
          threads: int | None, log_level: str, log_format: str, no_access_log: bool, use_ray: bool, shards: int,
          replicas: int, replica_cpus: float, max_replicas_per_node: int | None, ray_address: str | None,
          ray_proxy: str, shard_deadline: float, shard_hedge_after: float | None,
          shard_load_timeout: float, autoscale: tuple[int, int, float] | None) -> None:
    """Serve text-to-video search over HTTP, with a search page at /.

    Loads the bundle's sessions and the index once and answers POST /v1/search (JSON; the same
    fields as `ucofia-run search`), video metadata, thumbnails and media (HTTP Range),
    /healthz, /readyz and /metrics (Prometheus); the OpenAPI schema is at /openapi.json.
    Concurrent queries are batched into one text-encoder call and one scoring pass.
    POST /v1/admin/reload (or --watch) re-opens the index after `ucofia-run index` changed it
    and swaps it in atomically. Needs `pip install 'ucofia[serve]'`.

    Exposing it (docs/serve.md, "Exposing the service"): directly with --api-keys, --tls-cert/--tls-key
    and --allowed-host, or behind a reverse proxy with --root-path, --proxy-headers and
    --forwarded-allow-ips. Slow or idle clients are cut off by --header-timeout, --body-timeout and
    --keep-alive-timeout, and at most --max-connections connections are held.
    """
    from runtime.serve import require_serve_dependencies
    from ucofia import logs

    logs.configure(logs.QUIET, level=log_level.upper(), fmt=log_format)  # no progress bars in a server
    require_serve_dependencies()
    from runtime.serve.server import (
        bind,
        check_exposure,
        check_tls,
        make_server,
        prepare_process,
        raise_file_limit,
        url_of,
    )

    check_exposure(host, api_keys is not None, insecure_no_auth)
    if root_path and (not root_path.startswith("/") or root_path.endswith("/")):
        raise click.BadParameter("a path that starts with / and does not end with one, e.g. /search",
                                 param_hint="--root-path")
    http = defaults.HttpSettings(
        header_timeout_s=header_timeout, body_timeout_s=body_timeout, keep_alive_timeout_s=keep_alive_timeout,
        max_connections=max_connections, root_path=root_path, proxy_headers=proxy_headers,
        forwarded_allow_ips=tuple(ip.strip() for ip in forwarded_allow_ips.split(",") if ip.strip()),
        tls_cert=tls_cert, tls_key=tls_key)
    check_tls(http)
    settings = defaults.ServeSettings(
        index_dir=index_dir, bundle_dir=bundle_dir, backend=backend, threads=threads, memory_mb=memory_mb,
        scorer_precision=scorer_precision,
        preload_mb=preload_mb,
        max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, request_timeout_s=request_timeout,
        two_stage=two_stage, shortlist=shortlist, api_keys=api_keys, link_secret=link_secret,
        cors_origins=cors_origins, host=host, allowed_hosts=allowed_hosts, watch=watch,
        watch_interval_s=watch_interval, access_log=not no_access_log, limits=defaults.Limits(max_top_k=max_top_k),
        max_upload_mb=max_upload_mb)
    if use_ray:
        from runtime.cluster.serving import serve_on_ray

        serve_on_ray(settings, port, shards=shards, replicas=replicas, replica_cpus=replica_cpus,
                     max_replicas_per_node=max_replicas_per_node,
                     ray_address=ray_address, ray_proxy=ray_proxy, shard_deadline_s=shard_deadline,
                     shard_hedge_after_s=shard_hedge_after, shard_load_timeout_s=shard_load_timeout,
                     autoscale=autoscale, http=http, log_level=log_level, log_format=log_format)
        return
    from runtime.serve.app import create_app
    from runtime.serve.service import SearchService

    service = SearchService.open(settings)
    raise_file_limit(max_connections)
    sock = bind(host, port)
    auth = f"API keys from {api_keys}" if api_keys else "no auth"
    names = settings.allowed_host_names()
    hosts = "any Host" if names is None else "Host " + ", ".join(sorted(names))
    behind = f"; a proxy serves it under {root_path}/" if root_path else ""
    click.echo(f"serving {service.snapshot.videos} videos from {index_dir} at {url_of(sock, tls=tls_cert is not None)} "
               f"({auth}; {hosts}{behind}; Ctrl+C stops)", err=True)
    server = make_server(create_app(service), http, log_level=log_level)
    prepare_process()
    with logs.routed("uvicorn", "asyncio"):
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C after its graceful shutdown: a normal stop
            pass
    click.echo("stopped", err=True)
