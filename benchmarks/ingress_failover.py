"""Requests lost when an ingress replica dies, by the proxy in front of the replicas (issue 25).

    python benchmarks/ingress_failover.py [--runs 2] [--rounds 4] -o OUT.json

Each configuration runs in its own network + PID namespace (only loopback up) with a fresh Ray: a
Ray Serve app of 2 replicas whose POST sleeps ``--work-s`` (a stand-in for a search, so the kill
finds requests inside the replica), 12 clients posting JSON for ``--round-s`` seconds, and one
replica SIGKILLed 1 s into each of ``--rounds`` rounds (Ray restarts it before the next). Lost = a
request that got no 200 (an error status or a connection closed unanswered). Configurations:

* ``ray``: Ray Serve's own proxy (``--ray-proxy ray``);
* ``haproxy_retry_on``: Ray Serve's HAProxy ingress resending on ``conn-failure empty-response``;
* ``haproxy_retry_on_retries``: and ``retries 10``;
* ``haproxy_retry_on_buffered``: retry-on, HAProxy run through ``ucofia-haproxy`` (which adds
  ``option http-buffer-request``), Ray's retries;
* ``haproxy_default``: what ``ucofia-run serve --ray`` sets (runtime.cluster.ingress_proxy: the
  above and HAProxy run through ``ucofia-haproxy``, which adds ``option http-buffer-request``).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import common

NAMESPACE = ('ip link set lo up || exit 97; mkdir -p /tmp/ray /tmp/haproxy-serve && '
             'mount -t tmpfs ucofia-ray /tmp/ray && mount -t tmpfs ucofia-haproxy /tmp/haproxy-serve || exit 96; "$@"')
PORT = 8123
CLIENTS = 12
REQUEST_TIMEOUT_S = 60


def configurations() -> dict[str, dict[str, str]]:
    from runtime.cluster.ingress_proxy import (
        BINARY_VARIABLE,
        ENABLE_VARIABLE,
        RETRIES_VARIABLE,
        RETRY_ON,
        RETRY_ON_VARIABLE,
        proxy_environment,
    )

    default = proxy_environment("haproxy")
    retry_on = {ENABLE_VARIABLE: "1", RETRY_ON_VARIABLE: RETRY_ON}
    return {"ray": proxy_environment("ray"), "haproxy_retry_on": retry_on,
            "haproxy_retry_on_retries": {**retry_on, RETRIES_VARIABLE: default[RETRIES_VARIABLE]},
            "haproxy_retry_on_buffered": {**retry_on, BINARY_VARIABLE: default[BINARY_VARIABLE]},
            "haproxy_default": default}


def replica_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                title = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"ServeReplica:failover:Stand" in title:
                pids.append(int(entry))
    return sorted(pids)


def inner(spec: dict) -> None:
    """One configuration inside the namespace: the app, the rounds, a JSON line on stdout."""
    import ray
    from fastapi import FastAPI
    from ray import serve

    app = FastAPI()
    work_s = spec["work_s"]

    @serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
    @serve.ingress(app)
    class StandIn:
        @app.post("/work")
        async def work(self, body: dict) -> dict:
            import asyncio

            await asyncio.sleep(work_s)
            return {"echo": body}

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    serve.run(StandIn.bind(), name="failover", route_prefix="/")
    rounds = []
    for _ in range(spec["rounds"]):
        deadline = time.monotonic() + 120
        while len(replica_pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)
        outcomes: list = []
        stop = time.monotonic() + spec["round_s"]

        def client(number: int) -> None:
            for i in range(200):  # bounded: a round is a few seconds
                if time.monotonic() >= stop:
                    return
                request = urllib.request.Request(f"http://127.0.0.1:{PORT}/work",
                                                 data=json.dumps({"client": number, "i": i}).encode(),
                                                 headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as reply:
                        outcomes.append(reply.status)
                except urllib.error.HTTPError as exc:
                    outcomes.append(exc.code)
                except Exception as exc:  # a connection closed unanswered is what is counted
                    outcomes.append(type(exc).__name__)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        victims = replica_pids()
        if victims:
            os.kill(victims[0], signal.SIGKILL)
        for thread in threads:
            thread.join()
        lost = [o for o in outcomes if o != 200]
        rounds.append({"requests": len(outcomes), "lost": len(lost), "how": sorted({str(o) for o in lost})})
    print(json.dumps(rounds), flush=True)
    serve.shutdown()
    ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inner", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=2, help="fresh Ray clusters per configuration")
    parser.add_argument("--rounds", type=int, default=4, help="replica kills per run")
    parser.add_argument("--round-s", type=float, default=4.0)
    parser.add_argument("--work-s", type=float, default=0.3)
    parser.add_argument("--only", nargs="+", default=None, help="configurations to run (default: all)")
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()
    if args.inner:
        inner(json.loads(args.inner))
        return
    machine = common.machine()
    monitor = common.CpuMonitor()
    results = {}
    for name, env_extra in configurations().items():
        if args.only and name not in args.only:
            continue
        runs = []
        for run in range(args.runs):
            spec = {"rounds": args.rounds, "round_s": args.round_s, "work_s": args.work_s}
            env = {**os.environ, **env_extra, "PYTHONPATH": str(common.REPO)}
            cmd = ["unshare", "-n", "-p", "-f", "--mount-proc", "sh", "-c", NAMESPACE, "sh", sys.executable,
                   str(Path(__file__).resolve()), "--inner", json.dumps(spec)]
            done = subprocess.run(cmd, env=env, cwd=common.REPO, capture_output=True, text=True, timeout=900)
            lines = [line for line in done.stdout.splitlines() if line.startswith("[")]
            rounds = json.loads(lines[-1]) if lines else None
            runs.append({"rounds": rounds, "exit": done.returncode,
                         "lost": sum(r["lost"] for r in rounds) if rounds else None,
                         "requests": sum(r["requests"] for r in rounds) if rounds else None,
                         "error": None if rounds else done.stderr[-600:]})
            print(f"[failover] {name} run {run}: {runs[-1]['lost']} lost of {runs[-1]['requests']}",
                  file=sys.stderr, flush=True)
        results[name] = {"environment": env_extra, "runs": runs}
    result = {"benchmark": "ingress_failover", "machine": machine, "clients": CLIENTS,
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "configurations": results, "contention": common.contention(monitor, 2),
              "load_average_after": common.load_average()}
    common.write_result(args.output, result)
    print(json.dumps({name: [r["lost"] for r in entry["runs"]] for name, entry in results.items()}, indent=1))


if __name__ == "__main__":
    main()
