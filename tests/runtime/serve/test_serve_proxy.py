"""Behind a reverse proxy at a sub-path, and exposed directly with TLS (issue 23, item 6).

A real `ucofia-run serve --root-path /search --proxy-headers --forwarded-allow-ips 127.0.0.2` sits
behind a small reverse proxy on loopback (tests/helpers/reverse_proxy.py, connecting from 127.0.0.2)
that mounts it under /search/. Without a browser: the page is fetched through the proxy and every
relative URL it uses -- its static files, the API calls in its script, the links in a search
answer -- resolves under /search/ and answers 200. With Chromium (skipped without it): the page
searches, shows thumbnails and plays a clip through the proxy. The access log shows the client
address the trusted proxy reports, and ignores the same header from anyone else. With
--tls-cert/--tls-key the service answers HTTPS (and not plain HTTP).
"""
from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
from urllib.parse import urljoin, urlsplit

import pytest

pytest.importorskip("fastapi", reason="ucofia-run serve needs the 'serve' extra")
httpx = pytest.importorskip("httpx", reason="the proxy tests use httpx")

from reverse_proxy import ReverseProxy  # noqa: E402
from serve_helpers import ServeProcess, build_index, private_keys, serve_refusal  # noqa: E402

PREFIX = "/search"
PROXY_SOURCE = "127.0.0.2"  # the proxy connects from here: the one trusted address
CLIENT = "203.0.113.7"  # the client address the proxy reports (a documentation address)
FORGED = "198.51.100.9"  # what a client that is not the proxy claims to be
TIMEOUT_S = 30
CLIPS = 3
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 30_000


def _loopback_alias_works() -> bool:
    try:
        with socket.socket() as sock:
            sock.bind((PROXY_SOURCE, 0))
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _loopback_alias_works(), reason=f"cannot bind {PROXY_SOURCE} (loopback alias)")


@pytest.fixture(scope="module")
def served(fake_bundle, tmp_path_factory):
    """(index, keys) of the servers below."""
    root = tmp_path_factory.mktemp("serve_proxy")
    return build_index(root, clips=CLIPS, bundle=fake_bundle)[2], private_keys(root / "keys.json")


@pytest.fixture(scope="module")
def proxied(served):
    index, keys = served
    with ServeProcess("--index", str(index), "--api-keys", str(keys.path), "--root-path", PREFIX, "--proxy-headers",
                      "--forwarded-allow-ips", PROXY_SOURCE) as server, \
            ReverseProxy(server.address, PREFIX, source=PROXY_SOURCE, forwarded_for=CLIENT) as proxy:
        yield server, proxy, keys


def _refs(html: str) -> list[str]:
    return re.findall(r'\b(?:href|src)="([^"]+)"', html)


def test_the_page_and_every_link_resolve_under_the_prefix(proxied):
    _server, proxy, keys = proxied
    page_url = proxy.url
    auth = {"Authorization": f"Bearer {keys.search}"}
    with httpx.Client(timeout=TIMEOUT_S) as client:
        bare = client.get(page_url.rstrip("/"), follow_redirects=False)  # /search -> /search/ (the proxy's job)
        assert bare.status_code == 301 and bare.headers["location"] == PREFIX + "/"
        page = client.get(page_url)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        refs = _refs(page.text)
        assert refs and all(not ref.startswith("/") for ref in refs), refs  # relative: under any prefix
        scripts: dict[str, str] = {}
        for ref in refs:
            url = urljoin(page_url, ref)
            assert urlsplit(url).path.startswith(PREFIX + "/"), url
            reply = client.get(url)
            assert reply.status_code == 200, (url, reply.status_code)
            if ref.endswith(".js"):
                scripts[url] = reply.text
        # the modules the page's script imports, relative to it: under the prefix too
        pending = list(scripts.items())
        while pending:
            script_url, text = pending.pop()
            for ref in re.findall(r'^import .* from "([^"]+)";$', text, re.M):
                assert ref.startswith("./"), ref
                url = urljoin(script_url, ref)
                if url not in scripts:
                    assert urlsplit(url).path.startswith(PREFIX + "/static/"), url
                    reply = client.get(url)
                    assert reply.status_code == 200 and "javascript" in reply.headers["content-type"], url
                    scripts[url] = reply.text
                    pending.append((url, reply.text))
        assert len(scripts) >= 5, sorted(scripts)
        # the API calls of the page's scripts
        calls = [call for text in scripts.values() for call in re.findall(r'\b(?:fetch|api)\("([^"]+)"', text)]
        assert sorted(calls) == ["v1/fields", "v1/info", "v1/search", "v1/search/by-video"], calls
        resolved = {call: urljoin(page_url, call) for call in calls}
        assert all(urlsplit(url).path.startswith(PREFIX + "/v1/") for url in resolved.values())
        assert client.get(resolved["v1/info"]).json()["snapshot"]["videos"] == CLIPS
        answer = client.post(resolved["v1/search"], json={"queries": ["a red car"], "top_k": CLIPS}, headers=auth)
        assert answer.status_code == 200, answer.text
        hits = answer.json()["results"][0]["results"]
        assert len(hits) == CLIPS
        # every link of the answer: under the prefix, and answered through the proxy (media and
        # thumbnails by their signed URL alone, as <img> and <video> fetch them)
        for hit in hits:
            for name, link in hit["links"].items():
                assert link.startswith(PREFIX + "/v1/videos/"), link
                reply = client.get(urljoin(page_url, link), headers=auth if name == "video" else {})
                assert reply.status_code == 200, (link, reply.status_code)
            video = client.get(urljoin(page_url, hit["links"]["video"]), headers=auth).json()
            assert video["links"] == {**hit["links"], "media": video["links"]["media"]}
    assert proxy.requests >= 2 * CLIPS + 4


def test_the_access_log_trusts_only_the_proxy(proxied):
    server, proxy, _keys = proxied
    with httpx.Client(timeout=TIMEOUT_S) as client:
        assert client.get(proxy.url + "v1/info").status_code == 200
        direct = client.get(server.url + "v1/info", headers={"X-Forwarded-For": FORGED})  # not from the proxy
        assert direct.status_code == 200
        rid = direct.headers["x-request-id"]
    server.wait_for_log(rf'{re.escape(CLIENT)}:\d+ "GET {PREFIX}/v1/info" 200')
    line = server.wait_for_log(rf"^.*\[{rid}\].*$").group(0)
    assert "127.0.0.1:" in line and FORGED not in server.log


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable (Debian package `chromium`; .ci/run installs it)")
def test_the_page_in_chromium_through_the_proxy(proxied):
    playwright_api = pytest.importorskip("playwright.sync_api", reason="the page test drives Chromium with playwright")
    _server, proxy, keys = proxied
    problems: list[str] = []
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS)
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            requested: list[str] = []
            page.on("request", lambda r: requested.append(r.url))
            page.goto(proxy.url)
            page.wait_for_selector("#key-dialog[open]")
            page.fill("#key", keys.search)
            page.press("#key", "Enter")
            page.fill("#q", "a red car")
            page.press("#q", "Enter")
            page.wait_for_function(f"() => document.querySelectorAll('#results .card').length === {CLIPS}")
            page.wait_for_function("() => [...document.querySelectorAll('.card img.thumb')]"
                                   ".every(img => img.complete && img.naturalWidth > 0)")
            page.click(".card .play")
            page.wait_for_function("() => { const v = document.querySelector('.card video');"
                                   " return v && v.readyState >= 2; }")
            assert requested and all(urlsplit(u).path.startswith(PREFIX + "/") for u in requested), requested
            assert "q=" in page.url and urlsplit(page.url).path == PREFIX + "/"
        finally:
            browser.close()
    assert problems == []


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (openssl), and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    result = subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                             str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
                             "subjectAltName=IP:127.0.0.1"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return cert, key


def test_tls_for_direct_exposure(served, certificate):
    cert, key = certificate
    index, keys = served
    with ServeProcess("--index", str(index), "--api-keys", str(keys.path), "--tls-cert", str(cert),
                      "--tls-key", str(key)) as server:
        assert server.url.startswith("https://127.0.0.1:")
        trust = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=server.url, verify=trust, timeout=TIMEOUT_S) as client:
            assert client.get("/healthz").status_code == 200
            reply = client.post("/v1/search", json={"queries": ["a red car"], "top_k": 1},
                                headers={"Authorization": f"Bearer {keys.search}"})
            assert reply.status_code == 200, reply.text
        plain = server.url.replace("https://", "http://")
        with httpx.Client(timeout=TIMEOUT_S) as client, pytest.raises(httpx.HTTPError):
            client.get(plain + "healthz").raise_for_status()


def test_tls_options_go_together(served, certificate):
    cert, _ = certificate
    index, _ = served
    result = serve_refusal("--index", str(index), "--tls-cert", str(cert))
    assert result.returncode == 1 and "--tls-cert and --tls-key together" in result.stderr
