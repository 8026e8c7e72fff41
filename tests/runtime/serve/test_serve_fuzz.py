"""Schemathesis, a fuzzer no one here wrote, against a real ``ucofia-run serve`` (issue 29).

It reads ``/openapi.json``, generates requests for every operation (examples, boundary values,
fuzzing and stateful sequences that follow the ids in search results to the video routes) and
runs all its checks: no 5xx, every status and content type and body as the schema says,
schema-valid requests accepted, schema-invalid ones rejected, and -- with keys -- every route
refusing a missing or wrong credential. One run per auth mode, on 127.0.0.1, with a fixed seed,
a bounded number of examples per operation and a time limit; the admin reload is fuzzed too and
the server must still be serving afterwards. Any finding fails the test with Schemathesis' report.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="ucofia-run serve needs the 'serve' extra")
httpx = pytest.importorskip("httpx", reason="the fuzz test checks the server with httpx")
pytest.importorskip("schemathesis", reason="the fuzz test needs Schemathesis (the 'test' extra)")

pytestmark = pytest.mark.slow  # a live server per auth mode

from serve_helpers import ServerThread, build_index, make_keys, open_app  # noqa: E402

HELPERS = Path(__file__).resolve().parents[2] / "helpers"
CLIPS = 3
SEED = 29
EXAMPLES = 40  # per operation and phase
RUN_TIMEOUT_S = 150  # one Schemathesis run; ~10 s on two cores
REQUEST_TIMEOUT_S = 30
OPERATIONS = 12
# Statuses a schema-valid request may get (Schemathesis' default, plus 416: whether a range is
# satisfiable depends on the file's size, which no schema states). In its coverage phase only, the
# media route also allows 422 for valid data: Schemathesis 4.32's coverage phase fills an optional
# header whose pattern needs characters outside [A-Za-z0-9] (our Range) with an invalid value and
# labels the request valid. Its fuzzing and stateful phases hold media to the list above.
CONFIG = """\
[cache]
enabled = false

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "416", "429", "5xx"]

[[operations]]
include-operation-id = "media"
phases.coverage.checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409",
                                                                     "416", "422", "429", "5xx"]
"""


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return build_index(tmp_path_factory.mktemp("serve_fuzz"), CLIPS)[2]


def run_schemathesis(url: str, config: str, workdir) -> tuple[int, str]:
    """(exit code, report) of ``st run`` over every operation of the server at ``url``."""
    (workdir / "schemathesis.toml").write_text(config)
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(workdir / "schemathesis.toml"),
               "--no-color", "run", f"{url}/openapi.json", "--checks", "all", "--seed", str(SEED),
               "--max-examples", str(EXAMPLES), "--workers", "1", "--generation-database", "none",
               "--request-timeout", str(REQUEST_TIMEOUT_S), "--suppress-health-check", "too_slow"]
    # offset + top_k <= --max-top-k is the one rule of a valid search that no schema can state: the hooks drop
    # the 422 it gets (tests/helpers/schemathesis_hooks.py), and only that one
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HELPERS), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("mode", ["no keys", "keys"])
def test_schemathesis_finds_nothing(index, tmp_path, mode):
    config, headers, settings = CONFIG, {}, {}
    if mode == "keys":
        keys = make_keys(tmp_path / "keys.json")
        settings["api_keys"] = keys.path
        config += f'\n[auth.openapi.HTTPBearer]\nbearer = "{keys.both}"\n'  # search and admin: reload is fuzzed
        headers["Authorization"] = f"Bearer {keys.both}"
    service, app = open_app(index, **settings)
    with ServerThread(app) as server:
        code, report = run_schemathesis(server.url, config, tmp_path)
        assert code == 0, report[-12000:]
        assert re.search(rf"Selected: {OPERATIONS}/{OPERATIONS}\s+Tested: {OPERATIONS}\b", report), report[-3000:]
        generated = re.search(r"(\d+) generated, (\d+) passed", report)
        assert generated and generated[1] == generated[2] and int(generated[1]) > 30 * OPERATIONS, report[-3000:]
        with httpx.Client(base_url=server.url, headers=headers, timeout=REQUEST_TIMEOUT_S) as client:
            assert client.get("/readyz").json()["ready"] is True
            reply = client.post("/v1/search", json={"queries": ["a red car"], "top_k": CLIPS})
            assert reply.status_code == 200 and len(reply.json()["results"][0]["results"]) == CLIPS
    if mode == "keys":
        assert service.snapshot.version > 1  # the fuzzer reloaded the index, and it kept serving
