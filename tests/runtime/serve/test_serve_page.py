"""The search page in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright)
opens the page of a server with API keys on a demo index, is asked for a key, searches, sees
thumbnails and score bars, keeps the query in the URL, works from the keyboard and plays a clip.
A screenshot is kept in UCOFIA_TEST_ARTIFACTS (default: test-artifacts/ in the checkout)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from data_paths import REPO_ROOT

pytest.importorskip("fastapi", reason="ucofia-run serve needs the 'serve' extra")
httpx = pytest.importorskip("httpx", reason="the page test checks against the API with httpx")
playwright_api = pytest.importorskip("playwright.sync_api", reason="the page test drives Chromium with playwright")

from runtime_helpers import run_cli  # noqa: E402
from serve_helpers import ServerThread, make_keys, open_app  # noqa: E402

REPO = REPO_ROOT
ARTIFACTS = Path(os.environ.get("UCOFIA_TEST_ARTIFACTS", REPO / "test-artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 30_000
DEMO_SCALE = 0.05  # 5 test videos

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable (Debian package `chromium`; "
                                                          ".ci/run installs it)")]


@pytest.fixture(scope="module")
def demo_server(fake_bundle, tmp_path_factory):
    from ucofia.data.demo import generate_demo
    from ucofia.data.readers import read_split

    root = tmp_path_factory.mktemp("page")
    data = root / "data"
    generate_demo(data, scale=DEMO_SCALE, seed=0)
    split = read_split("msrvtt", data, "test")
    listing = root / "test_videos.txt"
    listing.write_text("".join(f"{v.video_id}\t{Path(v.path).resolve()}\n" for v in split.videos))
    index = root / "index"
    result = run_cli("index", "--bundle", str(fake_bundle), "--videos", str(listing),
                     "-o", str(index), "-q", "--workers", "1")
    assert result.returncode == 0, result.stderr
    keys = make_keys(root / "keys.json")
    _, app = open_app(index, api_keys=keys.path)
    with ServerThread(app) as server:
        yield server.url, keys, split


def test_search_page_in_chromium(demo_server):
    url, keys, split = demo_server
    query = split.captions[0].text
    problems: list[str] = []
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(url + "/")

            # auth is on: the page asks for a key; a wrong one is asked again for at the first search
            page.wait_for_selector("#key-dialog[open]")
            page.fill("#key", "ucofia_not-the-key")
            page.press("#key", "Enter")
            page.wait_for_function("() => document.activeElement && document.activeElement.id === 'q'")
            page.keyboard.type(query)
            page.keyboard.press("Enter")
            page.wait_for_selector("#key-dialog[open]")
            assert "not accepted" in page.text_content("#key-error")
            page.fill("#key", keys.search)
            page.press("#key", "Enter")

            # results: a card per indexed video, thumbnails loaded, four score bars each
            page.wait_for_function("() => document.querySelectorAll('#results .card').length === 5")
            page.wait_for_function("() => [...document.querySelectorAll('.card img.thumb')]"
                                   ".every(img => img.complete && img.naturalWidth > 0)")
            assert "5 results" in page.text_content("#status")
            widths = page.eval_on_selector_all(".card .fill", "els => els.map(e => e.getBoundingClientRect().width)")
            assert len(widths) == 5 * 4 and all(w > 0 for w in widths)
            with httpx.Client(base_url=url, timeout=30) as client:
                api = client.post("/v1/search", json={"queries": [query], "top_k": 10},
                                  headers={"Authorization": f"Bearer {keys.search}"}).json()
            ranked = [hit["video_id"] for hit in api["results"][0]["results"]]
            shown = page.eval_on_selector_all(".card", "els => els.map(e => e.dataset.videoId)")
            assert shown == ranked
            assert page.text_content(".card .scores dd .value") == f"{api['results'][0]['results'][0]['score']:.3f}"
            assert "q=" in page.url and "k=10" in page.url

            # the query is in the URL: opening it again shows the same results without typing
            page.reload()
            page.wait_for_function("() => document.querySelectorAll('#results .card').length === 5")
            assert page.input_value("#q") == query

            # keyboard: "/" comes back to the search box; Enter on a card plays its clip inline
            page.evaluate("() => document.activeElement.blur()")
            page.keyboard.press("/")
            assert page.evaluate("() => document.activeElement.id") == "q"
            page.focus(".card .play")
            page.keyboard.press("Enter")
            page.wait_for_function("() => { const v = document.querySelector('.card video');"
                                   " return v && v.readyState >= 2 && v.currentTime > 0; }")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "serve_page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
    # the wrong key's 401 is the only expected console error (the browser logs failed fetches)
    assert all("401" in p for p in problems), problems
