"""Logs an operator can use, from a real `ucofia-run serve` process (issue 23, item 7).

Logging is configured at start: each line has a time, level and logger (`--log-format json`: one
JSON object per line); every line a request causes carries its request id, which the response's
X-Request-ID header repeats (a proxy's id is kept when it is a safe token). A failed search is
logged with its cause and answered with a generic message naming the request id, never a path.
Reloads, --watch events, key-file re-reads and refusals are logged.
"""
from __future__ import annotations

import json
import os
import re
import time

import pytest

pytest.importorskip("fastapi", reason="ucofia-run serve needs the 'serve' extra")
httpx = pytest.importorskip("httpx", reason="the log tests use httpx")

from runtime_helpers import run_cli  # noqa: E402
from serve_helpers import ServeProcess, build_index, private_keys  # noqa: E402

QUERY = {"queries": ["a red car"], "top_k": 2}
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) \[([^\]\s]+)\] "
                       r"[\w.]+: .+$")
ECHOED = ("serving ", "stopped")  # the command's own two lines (not log records)


@pytest.fixture
def index(fake_bundle, tmp_path):
    return build_index(tmp_path, clips=3, bundle=fake_bundle)[2]


def test_json_lines_with_request_ids_refusals_reloads_and_key_reads(index, tmp_path):
    keys = private_keys(tmp_path / "keys.json")
    admin = {"Authorization": f"Bearer {keys.both}"}
    with ServeProcess("--index", str(index), "--api-keys", str(keys.path), "--log-format", "json", "--watch",
                      "--watch-interval", "0.2") as proc, httpx.Client(base_url=proc.url, timeout=30) as client:
        ok = client.post("/v1/search", json=QUERY, headers=admin)
        refused = client.post("/v1/search", json=QUERY, headers={"Authorization": "Bearer ucofia_wrong"})
        kept = client.get("/healthz", headers={"X-Request-ID": "proxy-id.42"})
        replaced = client.get("/healthz", headers={"X-Request-ID": "not a safe id; DROP"})
        reload = client.post("/v1/admin/reload", json={}, headers=admin)
        assert (ok.status_code, refused.status_code, reload.status_code) == (200, 401, 200)
        assert kept.headers["x-request-id"] == "proxy-id.42"
        assert re.fullmatch(r"[0-9a-f]{16}", replaced.headers["x-request-id"])
        state = index / "index.json"
        os.utime(state, ns=(time.time_ns(), time.time_ns()))  # touched, the same rows: a watch event, no reload
        proc.wait_for_log(r"--watch: .* holds still; nothing to reload")
        assert run_cli("api-key", "create", "--file", str(keys.path), "--name", "later").returncode == 0
        proc.wait_for_log(r"re-read API key file .*added: later")
    records, echoed = [], []
    for line in proc.log.splitlines():
        if line.startswith(ECHOED):
            echoed.append(line)
            continue
        record = json.loads(line)  # every other line is one JSON object
        assert {"time", "level", "logger", "message"} <= set(record), record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
        records.append(record)
    assert len(echoed) == 2

    def by_request(rid: str) -> list[dict]:
        return [r for r in records if r.get("request_id") == rid]

    assert any(r["logger"] == "runtime.serve.access" and '"POST /v1/search" 200' in r["message"]
               for r in by_request(ok.headers["x-request-id"]))
    refusal = by_request(refused.headers["x-request-id"])
    assert any(r["level"] == "warning" and "refused POST /v1/search" in r["message"] and "(401)" in r["message"]
               for r in refusal), refusal
    assert by_request("proxy-id.42") and by_request(replaced.headers["x-request-id"])
    assert any("reloaded" in r["message"] and r.get("request_id") == reload.headers["x-request-id"] for r in records)
    assert any(r["logger"].startswith("uvicorn") for r in records)  # uvicorn's own lines, in the same form
    messages = [r["message"] for r in records]
    assert any("--watch:" in m and "changed" in m for m in messages)


def test_text_lines_and_a_failed_search_logged_with_its_cause(index):
    with ServeProcess("--index", str(index), "--preload-mb", "0") as proc, \
            httpx.Client(base_url=proc.url, timeout=30) as client:
        assert client.post("/v1/search", json=QUERY).status_code == 200
        shard = next(index.glob("shards/*/patches.npy"))
        data = shard.read_bytes()
        shard.write_bytes(data[: len(data) // 2])  # the search now fails reading it
        failed = client.post("/v1/search", json=QUERY)
        assert failed.status_code == 500
        rid = failed.headers["x-request-id"]
        assert failed.json() == {"error": f"the search failed; the server log has the cause under request id {rid}"}
        assert str(index) not in failed.text and ".npy" not in failed.text
        cause = proc.wait_for_log(rf"^.* ERROR \[{rid}\] runtime\.serve\.app: search failed: .*$").group(0)
        assert str(shard) in cause and "truncated" in cause
        proc.wait_for_log(rf'\[{rid}\] runtime\.serve\.access: 127\.0\.0\.1:\d+ "POST /v1/search" 500')
    lines = [line for line in proc.log.splitlines() if not line.startswith(ECHOED)]
    assert lines and all(TEXT_LINE.match(line) for line in lines), [x for x in lines if not TEXT_LINE.match(x)]
