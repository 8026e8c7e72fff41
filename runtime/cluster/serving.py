"""``ucofia-run serve --ray``: checks what Ray Serve's proxy cannot honour, then runs the app."""
from __future__ import annotations

import click

from runtime.cluster.ingress_proxy import apply_proxy_environment, joined_cluster_note
from runtime.cluster.settings import RAY_SERVE_EXTRA_HINT, ClusterSettings
from runtime.errors import OptionsError, RuntimeUserError
from runtime.serve.settings import HttpSettings, ServeSettings


def require_ray_serve() -> None:
    """RuntimeUserError naming the install command when Ray Serve is missing."""
    import importlib

    try:
        importlib.import_module("ray.serve")
    except ImportError as exc:
        raise RuntimeUserError(f"`ucofia-run serve --ray` needs Ray Serve ({exc}): {RAY_SERVE_EXTRA_HINT}") from None


def check_http_for_ray(http: HttpSettings) -> None:
    """Ray Serve's own proxy takes the connections: refuse what only our server does."""
    unsupported = [name for name, given in (("--tls-cert/--tls-key", http.tls_cert is not None),
                                            ("--root-path", bool(http.root_path)),
                                            ("--proxy-headers", http.proxy_headers)) if given]
    if unsupported:
        raise OptionsError(f"{', '.join(unsupported)} cannot be used with --ray (Ray Serve's proxy serves the "
                           f"connections): put a TLS-terminating reverse proxy in front of it instead")


def serve_on_ray(settings: ServeSettings, port: int, *, shards: int, replicas: int, replica_cpus: float,
                 max_replicas_per_node: int | None,
                 ray_address: str | None, ray_proxy: str, shard_deadline_s: float, shard_load_timeout_s: float,
                 shard_hedge_after_s: float | None,
                 autoscale: tuple[int, int, float] | None,
                 http: HttpSettings, log_level: str, log_format: str) -> None:
    """Deploy the sharded service and serve until Ctrl+C (errors: RuntimeUserError)."""
    check_http_for_ray(http)
    require_ray_serve()
    autoscaling = None if autoscale is None else {"min_replicas": autoscale[0], "max_replicas": autoscale[1],
                                                  "target_ongoing_requests": autoscale[2]}
    if autoscale is not None and autoscale[0] > autoscale[1]:
        raise OptionsError(f"--autoscale: min_replicas {autoscale[0]} is above max_replicas {autoscale[1]}")
    if ray_address:
        click.echo(f"note: {joined_cluster_note(ray_proxy)}", err=True)
    else:
        apply_proxy_environment(ray_proxy)  # before Ray starts: its processes inherit it
    cluster = ClusterSettings(shards=shards, replicas=replicas, replica_cpus=replica_cpus, ray_address=ray_address,
                              shard_deadline_s=shard_deadline_s, shard_load_timeout_s=shard_load_timeout_s,
                              shard_hedge_after_s=shard_hedge_after_s,
                              autoscaling=autoscaling, max_replicas_per_node=max_replicas_per_node)
    from runtime.cluster import ray_app

    def ready(url: str) -> None:
        replicas_text = "autoscaled" if autoscaling else f"{replicas} replica(s) each"
        proxy_text = "" if ray_address else f" behind {ray_proxy}"
        click.echo(f"serving {settings.index_dir} in {shards} shard(s), {replicas_text}, on Ray Serve{proxy_text} "
                   f"at {url} (Ctrl+C stops)", err=True)

    ray_app.run(settings, cluster, port, log_level=log_level, log_format=log_format, ready=ready)
    click.echo("stopped", err=True)
