"""Ray scenarios the tests run inside a private namespace (tests/helpers/ray_helpers.py): a simulated
two-node cluster (``ray.cluster_utils.Cluster``) indexing with the Python API, optionally losing
its worker node mid-run. Prints one JSON line: node addresses, what was indexed, pipeline runs.

    python tests/helpers/ray_scenarios.py --bundle B --videos DIR --bank BANK -o INDEX [--remove-node-after N]
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--videos", required=True, type=Path)
    parser.add_argument("--bank", type=Path)
    parser.add_argument("-o", "--out", required=True, type=Path)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--remove-node-after", type=int, default=0,
                        help="remove the worker node once this many videos came back")
    parser.add_argument("--bank-tile", type=int, default=2, help="gallery rows per bank scoring tile")
    args = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    from runtime.bundle import load_bundle
    from runtime.distributed.bank import ray_bank_biases
    from runtime.distributed.pipeline import RayIndexRun, RayOptions, actor_resources
    from runtime.index import IndexWriter
    from runtime.ingest import IngestReport
    from runtime.ingest.biases import BiasScoring, update_biases
    from runtime.ingest.files import plan_ingest
    from runtime.sources import list_videos

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    worker = cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    addresses = sorted({n["NodeManagerAddress"] for n in ray.nodes()})
    nodes = sum(1 for n in ray.nodes() if n["Alive"])

    bundle = load_bundle(args.bundle)
    report = IngestReport()
    arrived = [0]
    removed = threading.Event()

    def progress(n: int) -> None:
        arrived[0] += n
        if args.remove_node_after and arrived[0] >= args.remove_node_after and not removed.is_set():
            removed.set()
            cluster.remove_node(worker)  # kills its raylet and every task and actor on it

    options = RayOptions(address=cluster.address, commit_every_s=0.0, encoders=2, decode_batch=2)
    with IndexWriter(args.out, bundle) as writer:
        writer.publish_later = args.bank is not None
        todo, replaces, _ = plan_ingest(writer, list_videos(args.videos))
        times = RayIndexRun(writer, bundle, backend="cpu", batch_size=args.batch_size, threads=1, options=options,
                            report=report, replaces=replaces, progress=progress).run(todo)
        actors, resources = actor_resources(ray, "cpu", options)
        compute = ray_bank_biases(ray, bundle_dir=args.bundle.resolve(), index_root=args.out.resolve(), backend="cpu",
                                  actors=actors, actor_options=resources, tile_videos=args.bank_tile)
        biases = update_biases(writer, bundle, args.bank, BiasScoring("cpu", 64, 1, compute))
    print(json.dumps({"addresses": addresses, "nodes": nodes, "node_removed": removed.is_set(),
                      "indexed": report.indexed, "failed": [vid for vid, _ in report.failed],
                      "attempts": times.attempts, "biases": biases}))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main()
