"""``ucofia-run serve --ray`` losing a worker node of a two-node Ray cluster under load
(ray_serve_node_loss.py, confined to a private network + PID namespace): with 2 replicas of the
ingress and of every shard, one per node, no request is lost and every answer is right; Ray
brings the replicas back once a node joins."""
from __future__ import annotations

import json
import os
import sys

import pytest
from ray_helpers import run_confined
from runtime_helpers import synthetic_index

from runtime.bundle import load_bundle

pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install 'ucofia[ray-serve]'")

SCENARIO = os.path.join(os.path.dirname(__file__), "..", "..", "helpers", "ray_serve_node_loss.py")


@pytest.fixture(scope="module")
def report(fake_bundle, tmp_path_factory):
    import shutil

    work = tmp_path_factory.mktemp("ray_serve_node_loss")
    shutil.copytree(fake_bundle, work / "bundle")
    synthetic_index(work / "idx", load_bundle(work / "bundle"), 300, shard=100, seed=1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    run = run_confined([sys.executable, SCENARIO, str(work), str(work / "report.json")], env=env, timeout=540)
    if not (work / "report.json").is_file():
        pytest.fail(f"the scenario wrote no report (exit {run.returncode}):\n{run.stderr[-4000:]}")
    data = json.loads((work / "report.json").read_text())
    data["_exit"], data["_stderr"] = run.returncode, run.stderr[-4000:]
    return data


def test_every_deployment_had_one_replica_on_the_node_that_goes(report):
    assert report["_exit"] == 0, report["_stderr"]
    assert all(report["expected_statuses"])
    assert report["replicas_before"] == {"ingress": 2, "shard-0": 2, "shard-1": 2}
    assert report["worker_replicas_before"] == {"ingress": 1, "shard-0": 1, "shard-1": 1}


def test_a_worker_node_removed_under_load_loses_no_request(report):
    load = report["under_load"]
    assert load["removed"] and load["answers"] == 48
    assert load["statuses"] == [200] and load["wrong"] == 0, (load["failed"], load)
    assert report["worker_replicas_after_removal"] == {"ingress": 0, "shard-0": 0, "shard-1": 0}


def test_replicas_come_back_on_a_new_node_with_the_same_answers(report):
    assert report["restored"] and all(report["after_restore_equal"]), report
