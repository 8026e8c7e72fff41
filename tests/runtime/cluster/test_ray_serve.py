"""``ucofia-run serve --ray`` on a real Ray Serve, confined to a private network + PID namespace
(ray_helpers.py): one cluster runs every scenario (ray_serve_scenarios.py) and this module checks
its report: answers equal ``ucofia-run serve``'s on the same index, auth and limits through the
ingress, readyz and per-shard metrics, SIGKILLed replicas under load (2 replicas), a reload under
load, and a shard down with 1 replica (503 + Retry-After, or a partial answer, then recovery)."""
from __future__ import annotations

import json
import os
import sys

import pytest
from ray_helpers import run_confined
from runtime_helpers import synthetic_index

from runtime.bundle import load_bundle

pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install 'ucofia[ray-serve]'")

SCENARIOS = os.path.join(os.path.dirname(__file__), "..", "..", "helpers", "ray_serve_scenarios.py")


@pytest.fixture(scope="module")
def report(fake_bundle, tmp_path_factory):
    import shutil

    work = tmp_path_factory.mktemp("ray_serve")
    shutil.copytree(fake_bundle, work / "bundle")
    synthetic_index(work / "idx", load_bundle(work / "bundle"), 300, shard=100, seed=1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    run = run_confined([sys.executable, SCENARIOS, str(work), str(work / "report.json")], env=env, timeout=540)
    if not (work / "report.json").is_file():
        pytest.fail(f"the scenario wrote no report (exit {run.returncode}):\n{run.stderr[-4000:]}")
    data = json.loads((work / "report.json").read_text())
    data["_exit"], data["_stderr"] = run.returncode, run.stderr[-4000:]
    return data


def test_the_scenario_ran_to_the_end(report):
    assert report["_exit"] == 0, report["_stderr"]
    assert "one_replica_down" in report and "cli" in report


def test_answers_equal_the_one_process_service(report):
    equal = report["equal"]
    assert [case["status"] for case in equal] == [200] * len(equal)
    assert all(case["same"] for case in equal), equal
    assert max(case["max_score_diff"] for case in equal) <= 1e-6
    assert {case["mode"] for case in equal} == {"exhaustive", "two_stage"}


def test_auth_limits_readiness_and_metrics_through_the_ingress(report):
    assert report["no_key_status"] == 401 and report["top_k_over_limit_status"] == 422
    ready = report["readyz"]
    assert ready["ready"] and ready["checks"]["shards"] and ready["shards"] == {"up": 2, "total": 2}
    lines = report["metrics_lines"]
    assert 'ucofia_shard_rows{shard="0"} 150.0' in lines and 'ucofia_shard_rows{shard="1"} 150.0' in lines
    assert "ucofia_shards_up 2.0" in lines


def test_a_shard_replica_killed_under_load_loses_no_request(report):
    kill = report["kill_shard-1"]
    assert kill["replicas_before"] == 2 and len(kill["killed"]) == 1
    assert kill["answers"] == 48 and kill["statuses"] == [200] and kill["wrong"] == 0, kill
    assert kill["replicas_after"], "Ray did not bring the shard back to 2 replicas"


def test_an_ingress_replica_killed_under_load_loses_no_request(report):
    kill = report["kill_ingress"]
    assert kill["replicas_before"] == 2 and len(kill["killed"]) == 1
    # HAProxy resends the requests that were inside the killed replica to the other one (Ray's own
    # proxy answered them 500)
    assert kill["answers"] == 48 and kill["statuses"] == [200] and kill["wrong"] == 0, kill
    assert kill["replicas_after"], "Ray did not bring the ingress back to 2 replicas"


def test_a_reload_under_load_answers_each_request_from_one_version(report):
    reload = report["reload_under_load"]
    assert reload["reload_status"] == [200] and reload["statuses"] == [200] and reload["wrong"] == 0
    assert reload["states"] == 2 and reload["unknown_states"] == 0
    assert report["all_replicas_reloaded_seconds"] is not None
    assert all(report["after_reload_equal"]) and report["after_reload_videos"] == [320] * 5


def test_one_replica_per_shard_a_shard_down_is_503_or_partial_then_recovers(report):
    down = report["one_replica_down"]
    assert down["strict_status"] == 503 and down["retry_after"] == "1", down
    assert "allow_partial" in down["strict_error"]
    assert down["partial_status"] == 200 and down["partial"] is True and down["missing_shards"] == [1]
    # after the reload (320 rows) shard 0 owns rows 0..159 (v0..v159); shard 1 the rest and n0..n19
    assert down["partial_ids"] and all(i.startswith("v") and int(i[1:]) < 160 for i in down["partial_ids"])
    assert down["readyz_status_down"] == 503 and down["readyz_down"]["shards"] == {"up": 1, "total": 2}
    assert down["recovered"] and down["recovered_equal"] and down["readyz_after"] == 200



def test_the_command_line_serves_on_ray_and_stops_on_ctrl_c(report):
    cli = report["cli"]
    assert cli["ready"] and cli["status"] == 200 and cli["videos"] == 320, cli
    assert "2 shard(s), 1 replica(s) each, on Ray Serve behind haproxy at http://127.0.0.1:" in cli["started_line"]
    assert cli["exit"] == 0 and cli["stopped"]
