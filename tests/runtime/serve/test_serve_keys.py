"""API keys that take effect now, and links replicas agree on (issue 23, items 3 and 4), against real
`ucofia-run serve` processes on 127.0.0.1.

* `api-key revoke` and `create` apply to a running server within 2 s, without a reload or restart;
  links signed before a revocation die with their key; a thumbnail link does not open the media.
* The key file (and the link secret) must be private: refused, with the chmod to run, otherwise.
* `api-key` commands lock the file: concurrent creates lose nothing.
* Two servers with the same key file (and so the same link secret next to it, or one given with
  --link-secret) accept each other's links; a link stays the same for its bucket of time.
"""
from __future__ import annotations

import os
import stat
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest

pytest.importorskip("fastapi", reason="ucofia-run serve needs the 'serve' extra")
httpx = pytest.importorskip("httpx", reason="the key tests use httpx")

from runtime_helpers import run_cli  # noqa: E402
from serve_helpers import ServeProcess, build_index, private_keys, serve_refusal  # noqa: E402

from runtime.serve import auth  # noqa: E402
from runtime.serve.settings import MEDIA_URL_BUCKET_S, MEDIA_URL_TTL_S  # noqa: E402

APPLY_WITHIN_S = 2.0
QUERY = {"queries": ["a red car"], "top_k": 2}


@pytest.fixture(scope="module")
def index(fake_bundle, tmp_path_factory):
    return build_index(tmp_path_factory.mktemp("serve_keys"), clips=3, bundle=fake_bundle)[2]


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _status_within(client, seconds: float, expected: int, method: str, url: str, **kwargs) -> float:
    """Seconds until ``url`` answers ``expected`` (asserting it does within ``seconds``)."""
    start = time.monotonic()
    while True:
        reply = client.request(method, url, **kwargs)
        if reply.status_code == expected:
            return time.monotonic() - start
        assert time.monotonic() - start < seconds, (reply.status_code, reply.text)
        time.sleep(0.05)


def test_revoke_and_create_apply_within_two_seconds_and_links_die_with_their_key(index, tmp_path):
    keys = private_keys(tmp_path / "keys.json")
    with ServeProcess("--index", str(index), "--api-keys", str(keys.path)) as proc, \
            httpx.Client(base_url=proc.url, timeout=10) as client:
        hit = client.post("/v1/search", json=QUERY, headers=_bearer(keys.search)).json()["results"][0]["results"][0]
        thumbnail, media = hit["links"]["thumbnail"], hit["links"]["media"]
        assert client.get(thumbnail).status_code == 200 and client.get(media).status_code == 200
        # a link opens its kind of resource only
        swapped = media.split("?")[0] + "?" + thumbnail.split("?")[1]
        assert client.get(swapped).status_code == 403
        assert client.get(thumbnail.split("?")[0] + "?" + media.split("?")[1]).status_code == 403
        # the link names its key (by id), not the key itself
        kid = parse_qs(urlsplit(media).query)["kid"][0]
        assert kid == auth.KeyRing.load(keys.path).match(keys.search).kid and keys.search not in media

        assert run_cli("api-key", "revoke", "--file", str(keys.path), "--name", "searcher").returncode == 0
        took = _status_within(client, APPLY_WITHIN_S, 401, "POST", "/v1/search", json=QUERY,
                              headers=_bearer(keys.search))
        assert client.get(thumbnail).status_code == 403 and client.get(media).status_code == 403
        assert client.post("/v1/search", json=QUERY, headers=_bearer(keys.both)).status_code == 200  # others stay

        made = run_cli("api-key", "create", "--file", str(keys.path), "--name", "newcomer")
        assert made.returncode == 0, made.stderr
        _status_within(client, APPLY_WITHIN_S, 200, "POST", "/v1/search", json=QUERY,
                       headers=_bearer(made.stdout.strip()))
        proc.wait_for_log(r"re-read API key file .*removed: searcher")
        proc.wait_for_log(r"re-read API key file .*added: newcomer")
        metrics = client.get("/metrics").text
    assert took <= APPLY_WITHIN_S
    assert 'ucofia_key_file_reloads_total{outcome="ok"}' in metrics


def test_a_key_file_open_to_others_is_refused_with_the_chmod_to_run(index, tmp_path):
    keys = private_keys(tmp_path / "keys.json")
    os.chmod(keys.path, 0o644)
    result = serve_refusal("--index", str(index), "--api-keys", str(keys.path))
    assert result.returncode == 1, result.stderr
    assert f"chmod 600 {keys.path}" in result.stderr and "Traceback" not in result.stderr
    added = run_cli("api-key", "create", "--file", str(keys.path), "--name", "more")
    assert added.returncode == 1 and "chmod 600" in added.stderr
    # a key file made by the command is private from its first byte
    fresh = tmp_path / "fresh.json"
    assert run_cli("api-key", "create", "--file", str(fresh), "--name", "a").returncode == 0
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


@pytest.mark.slow  # servers of its own
def test_a_key_file_opened_to_others_while_serving_fails_closed(index, tmp_path):
    keys = private_keys(tmp_path / "keys.json")
    with ServeProcess("--index", str(index), "--api-keys", str(keys.path)) as proc, \
            httpx.Client(base_url=proc.url, timeout=10) as client:
        assert client.post("/v1/search", json=QUERY, headers=_bearer(keys.search)).status_code == 200
        os.chmod(keys.path, 0o644)
        _status_within(client, APPLY_WITHIN_S, 401, "POST", "/v1/search", json=QUERY, headers=_bearer(keys.search))
        proc.wait_for_log(r"ERROR .*API key file .* is unusable, every key is refused.*chmod 600")
        os.chmod(keys.path, 0o600)
        _status_within(client, APPLY_WITHIN_S, 200, "POST", "/v1/search", json=QUERY, headers=_bearer(keys.search))


def test_api_key_commands_lock_the_file(tmp_path, monkeypatch):
    """Six creates at once, each slowed between reading and writing the file: all six keys are in it
    (without the lock each would write back what it read, and all but one would be lost)."""
    path = tmp_path / "keys.json"
    real_write = auth._write_keys

    def slow_write(target, keys):
        time.sleep(0.2)
        real_write(target, keys)

    monkeypatch.setattr(auth, "_write_keys", slow_write)
    errors: list[BaseException] = []

    def create(number: int) -> None:
        try:
            auth.create_key(path, f"key{number}", ["search"])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert sorted(k.name for k in auth.KeyRing.load(path).keys) == [f"key{i}" for i in range(6)]
    assert (tmp_path / "keys.json.lock").exists()


@pytest.mark.slow  # servers of its own
def test_replicas_accept_each_others_links_and_links_are_stable(index, tmp_path):
    keys = private_keys(tmp_path / "keys.json")
    args = ("--index", str(index), "--api-keys", str(keys.path))
    with ServeProcess(*args) as one, ServeProcess(*args) as two, \
            httpx.Client(base_url=one.url, timeout=10) as first, httpx.Client(base_url=two.url, timeout=10) as second:
        secret = keys.path.with_name("keys.json.link-secret")
        assert secret.is_file() and stat.S_IMODE(secret.stat().st_mode) == 0o600
        for maker, other in ((first, second), (second, first)):
            hit = maker.post("/v1/search", json=QUERY, headers=_bearer(keys.search)).json()["results"][0]["results"][0]
            assert other.get(hit["links"]["thumbnail"]).status_code == 200
            assert other.get(hit["links"]["media"], headers={"Range": "bytes=0-9"}).status_code == 206
        # the same link for a bucket of time: a browser's cache hits
        answers = [first.post("/v1/search", json=QUERY, headers=_bearer(keys.search)).json() for _ in range(2)]
        links = [[h["links"] for h in a["results"][0]["results"]] for a in answers]
        assert links[0] == links[1]
        expires = int(parse_qs(urlsplit(links[0][0]["media"]).query)["exp"][0])
        assert expires % MEDIA_URL_BUCKET_S == 0
        assert time.time() + MEDIA_URL_TTL_S - 5 <= expires <= time.time() + MEDIA_URL_TTL_S + MEDIA_URL_BUCKET_S + 5


@pytest.mark.slow  # servers of its own
def test_a_link_secret_given_with_an_option_is_shared(index, tmp_path):
    keys_a, keys_b = tmp_path / "a" / "keys.json", tmp_path / "b" / "keys.json"
    keys = private_keys(keys_a)
    keys_b.parent.mkdir()
    keys_b.write_bytes(keys_a.read_bytes())
    os.chmod(keys_b, 0o600)
    secret = tmp_path / "shared.secret"
    with ServeProcess("--index", str(index), "--api-keys", str(keys_a), "--link-secret", str(secret)) as one, \
            ServeProcess("--index", str(index), "--api-keys", str(keys_b), "--link-secret", str(secret)) as two, \
            httpx.Client(base_url=one.url, timeout=10) as first, httpx.Client(base_url=two.url, timeout=10) as second:
        hit = first.post("/v1/search", json=QUERY, headers=_bearer(keys.search)).json()["results"][0]["results"][0]
        assert second.get(hit["links"]["thumbnail"]).status_code == 200
    assert not keys_a.with_name("keys.json.link-secret").exists()
    os.chmod(secret, 0o640)
    refused = serve_refusal("--index", str(index), "--api-keys", str(keys_a), "--link-secret", str(secret))
    assert refused.returncode == 1 and f"chmod 600 {secret}" in refused.stderr
