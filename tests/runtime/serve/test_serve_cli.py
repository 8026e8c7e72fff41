"""The `serve` and `api-key` commands: a real `ucofia-run serve --port 0` process, refusal to listen
beyond loopback without keys, key files that hold only hashes, one-line errors, the demo's hint."""
from __future__ import annotations

import json
import os
import queue
import re
import shlex
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="ucofia-run serve needs the 'serve' extra")
httpx = pytest.importorskip("httpx", reason="the CLI tests use httpx")

from runtime_helpers import run_cli  # noqa: E402
from serve_helpers import build_index  # noqa: E402

from runtime.errors import RuntimeUserError  # noqa: E402
from runtime.serve.auth import KeyRing, hash_key  # noqa: E402
from runtime.serve.server import check_exposure, is_loopback  # noqa: E402

START_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def index(fake_bundle, tmp_path_factory):
    return build_index(tmp_path_factory.mktemp("serve_cli"), clips=3, bundle=fake_bundle)[2]


def _lines(stream, out: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        out.put(line)


def test_serve_process_answers_and_stops_on_sigint(index):
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "serve", "--index", str(index), "--port", "0",
                             "--backend", "cpu", "--no-access-log"], stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stderr, lines), daemon=True).start()
    try:
        url, deadline, seen = None, time.monotonic() + START_TIMEOUT_S, []
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                seen.append(lines.get(timeout=0.5))
            except queue.Empty:
                continue
            match = re.search(r"at (http://127\.0\.0\.1:\d+/)", seen[-1])
            url = match.group(1) if match else None
        assert url, "".join(seen)
        assert "serving 3 videos" in "".join(seen)
        with httpx.Client(base_url=url, timeout=30) as client:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:  # the socket is bound before uvicorn starts answering
                try:
                    ready = client.get("/readyz")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            assert ready.status_code == 200 and ready.json()["ready"] is True
            reply = client.post("/v1/search", json={"queries": ["a red car"], "top_k": 2})
            assert reply.status_code == 200 and len(reply.json()["results"][0]["results"]) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0


def test_refuses_a_public_address_without_keys(index):
    result = run_cli("serve", "--index", str(index), "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 1
    assert "refusing to listen on 0.0.0.0" in result.stderr and "--api-keys" in result.stderr
    assert "--insecure-no-auth" in result.stderr and "Traceback" not in result.stderr


def test_exposure_rules():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10") and not is_loopback("::")
    with pytest.raises(RuntimeUserError, match="refusing"):
        check_exposure("0.0.0.0", has_keys=False, insecure_no_auth=False)
    check_exposure("0.0.0.0", has_keys=True, insecure_no_auth=False)
    check_exposure("0.0.0.0", has_keys=False, insecure_no_auth=True)
    check_exposure("127.0.0.1", has_keys=False, insecure_no_auth=False)


@pytest.mark.parametrize("problem,setup,message", [
    ("no index", lambda tmp, index: (tmp / "none", None), "index directory not found"),
    ("missing key file", lambda tmp, index: (index, tmp / "nokeys.json"), "API key file not found"),
    ("corrupt key file", lambda tmp, index: (index, tmp / "bad.json"), "unreadable"),
])
def test_serve_errors_are_one_line(index, tmp_path, problem, setup, message):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad.json").chmod(0o600)
    index_dir, keys = setup(tmp_path, index)
    args = ["serve", "--index", str(index_dir), "--port", "0"] + (["--api-keys", str(keys)] if keys else [])
    result = run_cli(*args)
    assert result.returncode == 1 and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_api_key_create_list_revoke(tmp_path):
    path = tmp_path / "keys.json"
    made = run_cli("api-key", "create", "--file", str(path), "--name", "alice")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("ucofia_") and len(key) > 40 and "shown only now" in made.stderr
    admin = run_cli("api-key", "create", "--file", str(path), "--name", "ops", "--scope", "admin", "--scope", "search")
    assert admin.returncode == 0, admin.stderr
    text = path.read_text()
    assert key not in text and hash_key(key) in text  # only the hash is stored
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    ring = KeyRing.load(path)
    assert ring.match(key).name == "alice" and ring.match(key).scopes == {"search"}
    assert ring.match(key + "x") is None and ring.match(admin.stdout.strip()).scopes == {"admin", "search"}
    listed = run_cli("api-key", "list", "--file", str(path))
    assert listed.returncode == 0 and "alice\tsearch" in listed.stdout and "ops\tadmin,search" in listed.stdout
    again = run_cli("api-key", "create", "--file", str(path), "--name", "alice")
    assert again.returncode == 1 and "already has a key named 'alice'" in again.stderr
    assert run_cli("api-key", "revoke", "--file", str(path), "--name", "alice").returncode == 0
    assert [k["name"] for k in json.loads(path.read_text())["keys"]] == ["ops"]
    assert KeyRing.load(path).match(key) is None


def test_demo_prints_a_valid_serve_command(tmp_path):
    from runtime.cli import main
    from ucofia.commands.demo import serve_hint

    hint = serve_hint(tmp_path / "demo run" / "index")
    command = next(line.strip() for line in hint.splitlines() if line.strip().startswith("ucofia-run serve"))
    args = shlex.split(command)
    assert args[:2] == ["ucofia-run", "serve"]
    parsed = main.get_command(None, "serve").make_context("serve", args[2:])  # the options exist and parse
    assert parsed.params["index_dir"] == tmp_path / "demo run" / "index"
    assert "http://127.0.0.1:8080/" in hint
