"""``ucofia-run serve --ray`` losing a whole worker node under load, inside a network + PID
namespace (ray_helpers.py): a two-node ``ray.cluster_utils.Cluster`` (both nodes on 127.0.0.1),
2 shards x 2 replicas at most one replica of a deployment per node, behind the HAProxy ingress the
CLI uses; the worker node is removed while 4 clients search. Then a new node joins and Ray brings
every deployment back to 2 replicas. Writes a JSON report.

    python ray_serve_node_loss.py WORK OUT.json

WORK holds ``bundle/`` and ``idx/``. Every request has a timeout and every loop a bound.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ray_serve_scenarios import BODIES, RAY_PORT, call, same, under_load, wait_until  # noqa: E402

DEPLOYMENTS = ("ingress", "shard-0", "shard-1")


def replicas_by_node() -> dict[str, dict[str, int]]:
    """Live replicas of each deployment, counted per node id."""
    from ray.util.state import list_actors

    out: dict[str, dict[str, int]] = {name: {} for name in DEPLOYMENTS}
    for actor in list_actors(filters=[("state", "=", "ALIVE")], limit=1000):
        for name in DEPLOYMENTS:
            if actor.class_name == f"ServeReplica:ucofia:{name}":
                out[name][actor.node_id] = out[name].get(actor.node_id, 0) + 1
    return out


def haproxy_processes() -> int:
    """HAProxy processes running (one per node that runs a proxy)."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            count += bool(argv and argv[0].endswith(b"/haproxy"))
    return count


def main(work: Path, out: Path) -> None:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from runtime.cluster import ray_app
    from runtime.cluster.ingress_proxy import proxy_environment
    from runtime.cluster.settings import ClusterSettings
    from runtime.serve.settings import ServeSettings

    os.environ.update(proxy_environment("haproxy"))  # before the nodes start: they inherit it
    report: dict = {}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    worker = cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        cluster.wait_for_nodes()
        # one proxy, on the head: the nodes share 127.0.0.1, so two proxies would want the same port
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": RAY_PORT})
        settings = ServeSettings(index_dir=work / "idx", threads=1, two_stage="auto", shortlist=40, max_wait_ms=1.0)
        serve.run(ray_app.build(settings, ClusterSettings(shards=2, replicas=2, replica_cpus=0.1,
                                                          max_replicas_per_node=1)),
                  name="ucofia", route_prefix="/", blocking=False)
        assert wait_until(lambda: call(RAY_PORT, "/readyz", timeout=5)[0] == 200, 180), "the service did not start"
        expected = [call(RAY_PORT, "/v1/search", body)[2] for body in BODIES]
        report["expected_statuses"] = [isinstance(e, dict) and "results" in e for e in expected]
        report["haproxy_processes"] = haproxy_processes()
        worker_id = worker.node_id
        before = replicas_by_node()
        report["worker_replicas_before"] = {name: nodes.get(worker_id, 0) for name, nodes in before.items()}
        report["replicas_before"] = {name: sum(nodes.values()) for name, nodes in before.items()}
        removed = []

        def remove_worker():
            cluster.remove_node(worker, allow_graceful=False)  # its raylet and every replica on it die
            removed.append(time.monotonic())

        done = under_load(RAY_PORT, None, remove_worker)
        report["under_load"] = {
            "removed": bool(removed), "answers": len(done), "statuses": sorted({s for _, s, _ in done}),
            "wrong": sum(1 for n, s, a in done if s == 200 and not same(a, expected[n])[0]),
            "failed": [str(a)[:200] for _, s, a in done if s != 200][:3],
            "non_200": sum(1 for _, s, _ in done if s != 200),
            "unanswered": sum(1 for _, s, a in done if s == -1 and "closed connection without response" in str(a))}
        # The GCS marks the node's actors dead once its health checks of the node fail (seconds).
        wait_until(lambda: not any(nodes.get(worker_id) for nodes in replicas_by_node().values()), 60, pause=1)
        after = replicas_by_node()
        report["worker_replicas_after_removal"] = {name: nodes.get(worker_id, 0) for name, nodes in after.items()}
        cluster.add_node(num_cpus=2)  # a new node: Ray places the missing replicas there
        restored = wait_until(lambda: all(sum(n.values()) >= 2 for n in replicas_by_node().values()), 180, pause=1)
        report["restored"] = bool(restored)
        answers = [call(RAY_PORT, "/v1/search", body) for body in BODIES]
        report["after_restore_equal"] = [s == 200 and same(a, e)[0] for (s, _, a), e in zip(answers, expected)]
        serve.delete("ucofia")
    finally:
        out.write_text(json.dumps(report, indent=1, default=str))
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
