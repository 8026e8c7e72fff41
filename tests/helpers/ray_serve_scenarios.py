"""Scenarios of ``ucofia-run serve --ray`` run inside a network + PID namespace (see
ray_helpers.py): one Ray cluster for all of them, results written as JSON for the test module.

    python ray_serve_scenarios.py WORK OUT.json

WORK holds ``bundle/`` and ``idx/`` (a synthetic whole-file index). Phases: (A) 2 shards x 2
replicas with API keys next to a one-process ``ucofia-run serve`` on the same index: the same
answers, auth and limits through the ingress, readyz and metrics, a shard replica and an ingress
replica SIGKILLed under load, a reload under load; (B) 2 shards x 1 replica: a shard killed, what
requests get while it restarts (503 + Retry-After, or partial with allow_partial), and recovery.
Every request has a timeout and every loop a bound.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
REQUEST_TIMEOUT_S = 60
RAY_PORT, SINGLE_PORT = 8123, 8124
BODIES = [{"queries": ["a dog runs", "people cooking"], "top_k": 5},
          {"queries": ["a red car"], "top_k": 4, "offset": 3},
          {"queries": ["music on stage"], "top_k": 6, "two_stage": True},
          {"queries": ["a cat"], "top_k": 5, "filter": {"id": {"$in": [f"v{i}" for i in range(0, 300, 3)]}}},
          {"queries": ["news report", "a child laughs", "sports"], "top_k": 3, "two_stage": True,
           "filter": {"id": {"$nin": [f"v{i}" for i in range(0, 300, 2)]}}}]


def call(port: int, path: str, body: dict | None = None, key: str | None = None, timeout: float = REQUEST_TIMEOUT_S):
    """(status, headers, JSON or text) of one request to 127.0.0.1:port."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            status, head, raw = reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as exc:
        status, head, raw = exc.code, dict(exc.headers), exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        return -1, {}, str(exc)
    try:
        return status, head, json.loads(raw)
    except ValueError:
        return status, head, raw.decode(errors="replace")


def ranked(answer: dict) -> list[list[tuple[str, int, float]]] | None:
    if not isinstance(answer, dict) or "results" not in answer:
        return None
    return [[(r["video_id"], r["rank"], r["score"]) for r in q["results"]] for q in answer["results"]]


def same(got: dict, want: dict) -> tuple[bool, float]:
    """Same ids and ranks; the largest score difference."""
    a, b = ranked(got), ranked(want)
    if a is None or b is None:
        return False, float("inf")
    if [[x[:2] for x in q] for q in a] != [[x[:2] for x in q] for q in b]:
        return False, float("inf")
    diffs = [abs(x[2] - y[2]) for qa, qb in zip(a, b) for x, y in zip(qa, qb)]
    return True, max(diffs, default=0.0)


def replica_pids(deployment: str) -> list[int]:
    """PIDs of the live replicas of ``deployment`` (their process title names it)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"ServeReplica:ucofia:{deployment}" in title and "ray::" in title:
            pids.append(int(entry))
    return sorted(pids)


def wait_until(check, seconds: float, pause: float = 0.5):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(pause)
    return None


def under_load(port: int, key: str, action, requests: int = 48, clients: int = 4, act_after: int = 6):
    """``requests`` searches from ``clients`` threads; ``action`` runs once ``act_after`` answered.
    Returns [(body number, status, answer)] in completion order."""
    done: list = []
    acted = []

    def one(number: int):
        body = BODIES[number % len(BODIES)]
        status, _, answer = call(port, "/v1/search", body, key)
        done.append((number % len(BODIES), status, answer))
        if len(done) >= act_after and not acted:
            acted.append(True)
            action()

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    return done


def main(work: Path, out: Path) -> None:
    import ray
    from ray import serve
    from runtime_helpers import random_rows

    from runtime.bundle import load_bundle
    from runtime.cluster import ray_app
    from runtime.cluster.settings import ClusterSettings
    from runtime.index import IndexWriter
    from runtime.serve.settings import Limits, ServeSettings

    report: dict = {}
    keys = work / "keys.json"
    made = {}
    for name, scope in (("searcher", "search"), ("admin", "admin")):
        run = subprocess.run([sys.executable, "-m", "runtime.cli", "api-key", "create", "--file", str(keys),
                              "--name", name, "--scope", scope, "--scope", "search"],
                             capture_output=True, text=True, timeout=60, check=True)
        made[name] = run.stdout.strip().splitlines()[-1].strip()
    key, admin = made["searcher"], made["admin"]
    settings = ServeSettings(index_dir=work / "idx", threads=1, two_stage="auto", shortlist=40, api_keys=keys,
                             limits=Limits(max_top_k=50), max_wait_ms=1.0)
    single_log = open(work / "single.log", "w")  # noqa: SIM115 - open while the server runs, closed at the end
    single = subprocess.Popen([sys.executable, "-m", "runtime.cli", "serve", "--index", str(work / "idx"),
                               "--port", str(SINGLE_PORT), "--api-keys", str(keys), "--two-stage", "auto",
                               "--shortlist", "40", "--threads", "1", "--max-top-k", "50", "--no-access-log"],
                              stdout=subprocess.DEVNULL, stderr=single_log)
    from runtime.cluster.ingress_proxy import proxy_environment

    os.environ.update(proxy_environment("haproxy"))  # as `ucofia-run serve --ray` starts its Ray
    ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": RAY_PORT})
        started = time.monotonic()
        serve.run(ray_app.build(settings, ClusterSettings(shards=2, replicas=2, replica_cpus=0.1, shard_deadline_s=8)),
                  name="ucofia", route_prefix="/", blocking=False)
        report["deploy_seconds"] = round(time.monotonic() - started, 1)
        assert wait_until(lambda: call(SINGLE_PORT, "/readyz", timeout=5)[0] == 200, 120), "one-process serve not up"
        expected = [call(SINGLE_PORT, "/v1/search", body, key)[2] for body in BODIES]

        # ---- the same answers, auth, limits, readyz, metrics ----
        answers = [call(RAY_PORT, "/v1/search", body, key) for body in BODIES]
        report["equal"] = [{"status": s, "mode": a.get("mode") if s == 200 else None,
                            **dict(zip(("same", "max_score_diff"), same(a, e) if s == 200 else (False, None)))}
                           for (s, _, a), e in zip(answers, expected)]
        report["no_key_status"] = call(RAY_PORT, "/v1/search", BODIES[0])[0]
        report["top_k_over_limit_status"] = call(RAY_PORT, "/v1/search", {"queries": ["x"], "top_k": 51}, key)[0]
        report["readyz"] = call(RAY_PORT, "/readyz")[2]
        metrics = call(RAY_PORT, "/metrics", key=admin)[2]
        report["metrics_lines"] = [line for line in str(metrics).splitlines()
                                   if line.startswith(("ucofia_shard_rows", "ucofia_shards_up",
                                                       "ucofia_shard_call_seconds_count"))]

        # ---- SIGKILL a shard replica, then an ingress replica, under load (2 replicas each) ----
        for deployment in ("shard-1", "ingress"):
            victims = replica_pids(deployment)
            killed = []

            def kill(victims=victims, killed=killed):
                if victims:
                    os.kill(victims[0], signal.SIGKILL)
                    killed.append(victims[0])

            done = under_load(RAY_PORT, key, kill)
            report[f"kill_{deployment}"] = {
                "replicas_before": len(victims), "killed": killed, "answers": len(done),
                "statuses": sorted({s for _, s, _ in done}),
                "wrong": sum(1 for n, s, a in done if s == 200 and not same(a, expected[n])[0]),
                "failed": [str(a)[:200] for _, s, a in done if s != 200][:3],
                "non_200": sum(1 for _, s, _ in done if s != 200),
                "unanswered": sum(1 for _, s, a in done if s == -1 and "without response" in str(a)),
                "replicas_after": wait_until(lambda d=deployment: len(replica_pids(d)) >= 2 and replica_pids(d), 90)}

        # ---- reload under load: 20 new videos, every answer from one version ----
        bundle = load_bundle(work / "bundle")
        cfg = bundle.config
        rng = np.random.default_rng(77)
        versions: list = []

        def add_and_reload():
            with IndexWriter(work / "idx", bundle) as writer:
                rows = random_rows(cfg, 20, rng)
                rows["video"] *= 3
                writer.add_batch([f"n{i}" for i in range(20)], rows)
            versions.append(call(RAY_PORT, "/v1/admin/reload", {}, admin)[0])

        done = under_load(RAY_PORT, key, add_and_reload, requests=40)
        call(SINGLE_PORT, "/v1/admin/reload", {}, admin)
        expected_new = [call(SINGLE_PORT, "/v1/search", body, key)[2] for body in BODIES]
        # a replica counts its own loads (`version`); `state` names the index version for all of them
        by_state = {expected[0]["snapshot"]["state"]: expected, expected_new[0]["snapshot"]["state"]: expected_new}
        report["reload_under_load"] = {
            "reload_status": versions, "answers": len(done), "statuses": sorted({s for _, s, _ in done}),
            "states": len({a["snapshot"]["state"] for _, s, a in done if s == 200}),
            "unknown_states": sum(1 for _, s, a in done if s == 200 and a["snapshot"]["state"] not in by_state),
            "wrong": sum(1 for n, s, a in done if s == 200 and a["snapshot"]["state"] in by_state
                         and not same(a, by_state[a["snapshot"]["state"]][n])[0])}
        started = time.monotonic()
        # a reload reaches one ingress replica; the other follows index.json (--watch)
        settled = wait_until(lambda: all(call(RAY_PORT, "/v1/search", BODIES[0], key)[2].get("snapshot", {})
                                         .get("videos") == 320 for _ in range(6)), 60)
        report["all_replicas_reloaded_seconds"] = round(time.monotonic() - started, 1) if settled else None
        after = [call(RAY_PORT, "/v1/search", body, key) for body in BODIES]
        report["after_reload_equal"] = [same(a, e)[0] for (_, _, a), e in zip(after, expected_new)]
        report["after_reload_statuses"] = [s for s, _, _ in after]
        report["after_reload_videos"] = [a["snapshot"]["videos"] if s == 200 else str(a)[:300] for s, _, a in after]
        report["single_after_reload_videos"] = [e.get("snapshot", {}).get("videos") if isinstance(e, dict) else None
                                                for e in expected_new]
        serve.delete("ucofia")

        # ---- one replica per shard: a shard down gets 503 + Retry-After, or a partial answer ----
        serve.run(ray_app.build(settings, ClusterSettings(shards=2, replicas=1, replica_cpus=0.1, shard_deadline_s=1)),
                  name="ucofia", route_prefix="/", blocking=False)
        wait_until(lambda: call(RAY_PORT, "/v1/search", BODIES[0], key)[0] == 200, 60)
        # Stopped, not killed, while the two requests run: Ray replaces a killed replica within a
        # second or two, which on a fast machine came back between them and answered in full.
        # A stopped replica misses the shard deadline every time; killing it afterwards shows Ray
        # bringing the shard back.
        down_pid = replica_pids("shard-1")[0]
        os.kill(down_pid, signal.SIGSTOP)
        try:
            strict = call(RAY_PORT, "/v1/search", BODIES[0], key)
            partial = call(RAY_PORT, "/v1/search", {**BODIES[0], "allow_partial": True}, key)
            ready_down = call(RAY_PORT, "/readyz")
        finally:
            os.kill(down_pid, signal.SIGKILL)
        report["one_replica_down"] = {
            "strict_status": strict[0], "retry_after": {k.lower(): v for k, v in strict[1].items()}.get("retry-after"),
            "strict_error": str(strict[2])[:300], "partial_status": partial[0],
            "partial": partial[2].get("partial") if partial[0] == 200 else None,
            "missing_shards": partial[2].get("missing_shards") if partial[0] == 200 else None,
            "partial_ids": [r["video_id"] for r in partial[2]["results"][0]["results"]] if partial[0] == 200 else None,
            "readyz_status_down": ready_down[0], "readyz_down": ready_down[2]}
        recovered = wait_until(lambda: call(RAY_PORT, "/v1/search", BODIES[0], key)[0] == 200, 90)
        full = call(RAY_PORT, "/v1/search", BODIES[0], key)
        report["one_replica_down"]["recovered"] = bool(recovered)
        report["one_replica_down"]["recovered_equal"] = full[0] == 200 and same(full[2], expected_new[0])[0]
        report["one_replica_down"]["readyz_after"] = call(RAY_PORT, "/readyz")[0]
        serve.delete("ucofia")
    finally:
        single.send_signal(signal.SIGINT)
        try:
            single.wait(timeout=20)
        except subprocess.TimeoutExpired:
            single.kill()
        single_log.close()
        out.write_text(json.dumps(report, indent=1, default=str))
        serve.shutdown()
        ray.shutdown()
    report["cli"] = cli_run(work, key)
    out.write_text(json.dumps(report, indent=1, default=str))


def cli_run(work: Path, key: str) -> dict:
    """``ucofia-run serve --ray`` as a user starts it (its own Ray): ready, one search, Ctrl+C."""
    log = work / "cli.log"
    with open(log, "w") as stderr:
        server = subprocess.Popen([sys.executable, "-m", "runtime.cli", "serve", "--index", str(work / "idx"), "--ray",
                                   "--shards", "2", "--replica-cpus", "0.1", "--port", str(RAY_PORT), "--threads", "1",
                                   "--api-keys", str(work / "keys.json"), "--no-access-log"],
                                  stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            ready = wait_until(lambda: call(RAY_PORT, "/readyz", timeout=5)[0] == 200, 120)
            status, _, answer = call(RAY_PORT, "/v1/search", BODIES[0], key)
        finally:
            server.send_signal(signal.SIGINT)
            try:
                code = server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                code = None
    text = log.read_text()
    return {"ready": bool(ready), "status": status, "videos": answer.get("snapshot", {}).get("videos")
            if isinstance(answer, dict) else None, "exit": code,
            "started_line": next((line for line in text.splitlines() if "on Ray Serve" in line), None),
            "stopped": "stopped" in text.splitlines()[-1] if text.strip() else False}


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
