"""Settings of a sharded service (``ucofia-run serve --ray``), kept free of Ray imports."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# How long the ingress keeps asking a shard that fails or is slow: above the ~15 s Ray takes to
# declare a lost node dead, until which even the other node's replicas stalled in our runs
# (docs/scaling.md, "Faults"), and below the request timeout (30 s).
DEFAULT_SHARD_DEADLINE_S = 20.0
# How long the ingress waits for every shard to open an index version (at start and on reload): a
# shard replica builds its part's stage 1 then (HNSW over 10^6 rows at efConstruction 200 took
# 28 minutes on 2 busy cores).
DEFAULT_LOAD_DEADLINE_S = 3600.0
RAY_SERVE_EXTRA_HINT = "pip install 'ucofia[ray-serve]'"
APP_NAME = "ucofia"
INGRESS = "ingress"
# Replicas' CPUs as Ray counts them (Ray Serve's own default): a shard replica's scoring uses
# --threads cores; lower it to pack replicas on a small machine.
DEFAULT_REPLICA_CPUS = 1.0
# Calls a shard replica takes at once: one per ingress batch in flight (a batch is one call).
DEFAULT_SHARD_ONGOING_REQUESTS = 16


def shard_name(shard: int) -> str:
    """The Ray Serve deployment name of shard ``shard``."""
    return f"shard-{shard}"


@dataclass(frozen=True)
class ClusterSettings:
    """How the gallery is spread: ``shards`` deployments of ``replicas`` replicas each (and as many
    ingress replicas), ``autoscaling`` (Ray Serve's ``autoscaling_config``: ``min_replicas``,
    ``max_replicas``, ``target_ongoing_requests``) in place of fixed replicas when given;
    ``max_replicas_per_node``: at most this many replicas of one deployment on a node (1: losing a
    node loses one replica of each deployment at most; Ray otherwise spreads on a best-effort basis);
    ``shard_hedge_after_s``: seconds a shard call waits before a second is sent beside it (None:
    adapted to the calls seen, 0: never; runtime/cluster/hedging.py)."""

    shards: int = 1
    replicas: int = 1
    replica_cpus: float = DEFAULT_REPLICA_CPUS
    ray_address: str | None = None
    shard_deadline_s: float = DEFAULT_SHARD_DEADLINE_S
    shard_load_timeout_s: float = DEFAULT_LOAD_DEADLINE_S
    autoscaling: dict[str, Any] | None = field(default=None)
    max_replicas_per_node: int | None = None
    shard_hedge_after_s: float | None = None

    def __post_init__(self) -> None:
        if self.shards < 1 or self.replicas < 1:
            raise ValueError(f"--shards and --replicas must be at least 1 (got {self.shards}, {self.replicas})")
        if self.replica_cpus < 0:
            raise ValueError(f"--replica-cpus must be at least 0, got {self.replica_cpus}")
        if self.max_replicas_per_node is not None and self.max_replicas_per_node < 1:
            raise ValueError(f"--max-replicas-per-node must be at least 1, got {self.max_replicas_per_node}")
        if self.shard_hedge_after_s is not None and not self.shard_hedge_after_s >= 0:
            raise ValueError(f"--shard-hedge-after must be auto, off or seconds at least 0, "
                             f"got {self.shard_hedge_after_s}")

    def deployment_options(self, max_ongoing_requests: int = DEFAULT_SHARD_ONGOING_REQUESTS) -> dict[str, Any]:
        """Ray Serve options of a deployment (replicas or autoscaling, CPUs per replica, and the
        requests a replica takes at once: Ray Serve's default of 5 would starve the ingress's
        batcher, whose own queue bounds what it holds)."""
        options: dict[str, Any] = {"ray_actor_options": {"num_cpus": self.replica_cpus},
                                   "max_ongoing_requests": max_ongoing_requests,
                                   "health_check_period_s": 2, "health_check_timeout_s": 10}
        if self.max_replicas_per_node is not None:
            options["max_replicas_per_node"] = self.max_replicas_per_node
        if self.autoscaling:
            options["autoscaling_config"] = dict(self.autoscaling)
        else:
            options["num_replicas"] = self.replicas
        return options
