"""The ``serve``, ``thumbnails`` and ``api-key`` commands of ``ucofia-run`` (thin: options here,
work in the modules they call). Only click is imported at module level."""
from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import click

from runtime.serve import settings as defaults


def register(main: click.Group, cli: ModuleType) -> None:
    """Add the commands to ``main``, with ``cli``'s shared options and error handling."""

    @main.command(epilog=cli.EXIT_CODES_HELP)
    @cli.index_option
    @cli.bundle_option
    @click.option("--host", default=defaults.DEFAULT_HOST, show_default=True,
                  help="Address to listen on. Anything but a loopback address needs --api-keys (or "
                       "--insecure-no-auth).")
    @click.option("--port", default=defaults.DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535),
                  help="TCP port (0: any free port; the address is printed at start).")
    @click.option("--api-keys", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Key file (`ucofia-run api-key create`): clients then send `Authorization: Bearer KEY`; "
                       "search needs the 'search' scope, /v1/admin/reload 'admin'. Re-read on reload.")
    @click.option("--insecure-no-auth", is_flag=True,
                  help="Listen on a non-loopback --host without API keys (anyone reaching the port can search "
                       "and reload).")
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
    @click.option("--preload-mb", default=defaults.DEFAULT_PRELOAD_MB, show_default=True,
                  type=click.FloatRange(min=0), help="Hold the index's features in memory when they fit in this "
                                                     "many MiB (0: always read the shard files per search).")
    @click.option("--watch", is_flag=True,
                  help="Reload the index by itself when `ucofia-run index` changed it (polls index.json).")
    @click.option("--watch-interval", default=defaults.DEFAULT_WATCH_INTERVAL_S, show_default=True,
                  type=click.FloatRange(defaults.MIN_WATCH_INTERVAL_S, defaults.MAX_WATCH_INTERVAL_S),
                  help="Seconds between two looks at index.json under --watch.")
    @click.option("--cors-origin", "cors_origins", multiple=True,
                  help="Allow browser pages from this origin (repeatable, e.g. https://app.example.org) to call "
                       "the API. Off by default.")
    @cli.backend_option
    @cli.memory_option
    @cli.threads_option
    @click.option("--log-level", default="info", show_default=True,
                  type=click.Choice(["critical", "error", "warning", "info", "debug"]), help="Server log level.")
    @click.option("--no-access-log", is_flag=True, help="Do not log every request.")
    @cli._user_errors
    def serve(index_dir: Path, bundle_dir: Path | None, host: str, port: int, api_keys: Path | None,
              insecure_no_auth: bool, max_batch: int, max_wait_ms: float, max_queue: int, request_timeout: float,
              two_stage: str, shortlist: int, max_top_k: int, preload_mb: float, watch: bool, watch_interval: float,
              cors_origins: tuple[str, ...], backend: str, memory_mb: float, threads: int | None, log_level: str,
              no_access_log: bool) -> None:
        """Serve text-to-video search over HTTP, with a search page at /.

        Loads the bundle's sessions and the index once and answers POST /v1/search (JSON; the same
        fields as `ucofia-run search`), video metadata, thumbnails and media (HTTP Range),
        /healthz, /readyz and /metrics (Prometheus); the OpenAPI schema is at /openapi.json.
        Concurrent queries are batched into one text-encoder call and one scoring pass.
        POST /v1/admin/reload (or --watch) re-opens the index after `ucofia-run index` changed it
        and swaps it in atomically. Needs `pip install 'ucofia[serve]'`.
        """
        from runtime.serve import require_serve_dependencies

        require_serve_dependencies()
        from runtime.serve.server import bind, check_exposure, make_server, url_of

        check_exposure(host, api_keys is not None, insecure_no_auth)
        settings = defaults.ServeSettings(
            index_dir=index_dir, bundle_dir=bundle_dir, backend=backend, threads=threads, memory_mb=memory_mb,
            preload_mb=preload_mb,
            max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, request_timeout_s=request_timeout,
            two_stage=two_stage, shortlist=shortlist, api_keys=api_keys, cors_origins=cors_origins, watch=watch,
            watch_interval_s=watch_interval, limits=defaults.Limits(max_top_k=max_top_k))
        from runtime.serve.app import create_app
        from runtime.serve.service import SearchService

        service = SearchService.open(settings)
        sock = bind(host, port)
        auth = f"API keys from {api_keys}" if api_keys else "no auth"
        click.echo(f"serving {service.snapshot.videos} videos from {index_dir} at {url_of(sock)} ({auth}; "
                   f"Ctrl+C stops)", err=True)
        server = make_server(create_app(service), log_level=log_level, access_log=not no_access_log)
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C after its graceful shutdown: a normal stop
            pass
        click.echo("stopped", err=True)

    @main.command(epilog=cli.EXIT_CODES_HELP)
    @cli.index_option
    @click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Decoding threads.")
    @click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
    @cli._user_errors
    def thumbnails(index_dir: Path, workers: int, quiet: bool) -> None:
        """Make the missing thumbnails of an index (INDEX/thumbnails/).

        One frame near the middle of each indexed source file, about 256 px on the long side, as
        JPEG. `ucofia-run index` makes them as it goes; this fills in an index built without them
        (--no-thumbnails, or before they existed). Videos indexed without their source path (index
        format 1) need re-indexing first.
        """
        from runtime.errors import EXIT_PARTIAL
        from runtime.index import GalleryIndex
        from runtime.thumbnails import backfill

        entries = GalleryIndex(index_dir).entries
        bar, update = cli._progress(len(entries), "video", "thumbnails", quiet)
        try:
            report = backfill(index_dir, entries, workers, update)
        finally:
            if bar is not None:
                bar.close()
        click.echo(f"{report.summary()} ({report.seconds:.1f} s)")
        if report.failed:
            for vid, error in report.failed[:10]:
                click.echo(f"failed: {vid}: {error}", err=True)
            sys.exit(EXIT_PARTIAL)

    @main.group("api-key")
    def api_key() -> None:
        """Create, list and revoke the API keys of `ucofia-run serve`.

        The key file stores only SHA-256 hashes of the keys; a key is shown once, when created.
        """

    key_file = click.option("--file", "path", required=True, type=click.Path(dir_okay=False, path_type=Path),
                            help="The key file given to `ucofia-run serve --api-keys`.")

    @api_key.command("create", epilog=cli.EXIT_CODES_HELP)
    @key_file
    @click.option("--name", required=True, help="Who or what uses the key (unique in the file).")
    @click.option("--scope", "scopes", multiple=True, default=("search",), show_default=True,
                  type=click.Choice(["search", "admin"]), help="What the key may do (repeatable).")
    @cli._user_errors
    def create(path: Path, name: str, scopes: tuple[str, ...]) -> None:
        """Add a key to the file (created when missing) and print it: it is not stored."""
        from runtime.serve.auth import create_key

        key = create_key(path, name, sorted(set(scopes)))
        click.echo(f"added key {name!r} ({', '.join(sorted(set(scopes)))}) to {path}; the key (shown only now):",
                   err=True)
        click.echo(key)

    @api_key.command("list", epilog=cli.EXIT_CODES_HELP)
    @key_file
    @cli._user_errors
    def list_keys(path: Path) -> None:
        """List the keys' names and scopes (the keys themselves are not stored)."""
        import time

        from runtime.serve.auth import KeyRing

        for key in KeyRing.load(path).keys:
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(key.created)) if key.created else "?"
            click.echo(f"{key.name}\t{','.join(sorted(key.scopes))}\t{created}")

    @api_key.command("revoke", epilog=cli.EXIT_CODES_HELP)
    @key_file
    @click.option("--name", required=True, help="The key to remove.")
    @cli._user_errors
    def revoke(path: Path, name: str) -> None:
        """Remove a key (a running server drops it at its next reload)."""
        from runtime.serve.auth import revoke_key

        revoke_key(path, name)
        click.echo(f"revoked {name!r} in {path}", err=True)
