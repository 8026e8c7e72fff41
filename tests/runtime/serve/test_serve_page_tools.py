"""The search page's tools in a real browser (issue 24 item 8): headless Chromium (Debian's
`chromium`, driven by Playwright) on a server with API keys over an index built from a .jsonl list
with metadata, `--max-top-k 4`. Each thing the page shows is checked against the API's own answer
to the same request: filter controls per metadata field and the filtered results they give, "more
like this" on a card (with the filters), "load more" pages (up to the page that comes back short,
or to max_top_k), search by an uploaded clip, metadata on the cards (as text), and the JSON
download of what is shown. No console errors. A screenshot is kept in UCOFIA_TEST_ARTIFACTS
(default: test-artifacts/ in the checkout)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from data_paths import REPO_ROOT

pytest.importorskip("fastapi", reason="ucofia-run serve needs the 'serve' extra")
httpx = pytest.importorskip("httpx", reason="the page test checks against the API with httpx")
playwright_api = pytest.importorskip("playwright.sync_api", reason="the page test drives Chromium with playwright")

from serve_helpers import PAGE_METADATA, ServerThread, build_metadata_index, make_keys, open_app  # noqa: E402

ARTIFACTS = Path(os.environ.get("UCOFIA_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 30_000
MAX_TOP_K = 4
K = 2
QUERY = "a red car"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable (Debian package `chromium`; "
                                                          ".ci/run installs it)")]

# the cards shown: [rank, id] each
SHOWN = "() => [...document.querySelectorAll('#results .card')].map(e => [Number(e.dataset.rank), e.dataset.videoId])"
# the metadata rows of each card: {id: {name: text}}
CARD_METADATA = """() => Object.fromEntries([...document.querySelectorAll('#results .card')].map(card => [
    card.dataset.videoId,
    Object.fromEntries([...card.querySelectorAll('.meta dt')].map(dt => [dt.textContent,
                                                                        dt.nextElementSibling.textContent]))]))"""
# the search shown (its number: the page counts its searches) once none is under way
SEARCH = "() => Number(document.getElementById('results').dataset.search || 0)"
SETTLED = ("before => !document.getElementById('results').hasAttribute('aria-busy')"
           " && Number(document.getElementById('results').dataset.search || 0) > before")


@pytest.fixture(scope="module")
def served(fake_bundle, clips, tmp_path_factory):
    from runtime.serve.settings import Limits

    root = tmp_path_factory.mktemp("page_tools")
    index = build_metadata_index(root, clips, fake_bundle)
    keys = make_keys(root / "keys.json")
    _, app = open_app(index, api_keys=keys.path, limits=Limits(max_top_k=MAX_TOP_K))
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30,
                                                  headers={"Authorization": f"Bearer {keys.search}"}) as client:
        yield server.url, keys, client


def _ranking(records: list[dict]) -> list[list]:
    return [[r["rank"], r["video_id"]] for r in records]


def _search(client, **body) -> list[dict]:
    reply = client.post("/v1/search", json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()["results"][0]["results"]


def _by_video(client, path: Path, **fields) -> list[dict]:
    form = {name: json.dumps(value) if name == "filter" else str(value) for name, value in fields.items()}
    with path.open("rb") as handle:
        reply = client.post("/v1/search/by-video", files={"file": (path.name, handle, "video/mp4")}, data=form)
    assert reply.status_code == 200, reply.text
    return reply.json()["results"][0]["results"]


def _text(value) -> str:
    """A metadata value as a card shows it."""
    if isinstance(value, list):
        return ", ".join(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


class Page:
    """A Chromium page on the server, its key entered; console errors collected in ``problems``."""

    def __init__(self, playwright, url: str, key: str, path: str) -> None:
        self.browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS)
        self.problems: list[str] = []
        self.page = self.browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        self.page.set_default_timeout(TIMEOUT_MS)
        self.page.on("console", lambda m: self.problems.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.problems.append(str(e)))
        self.page.goto(url + path)
        self.page.wait_for_selector("#key-dialog[open]")
        self.page.fill("#key", key)
        self.page.press("#key", "Enter")
        self.page.wait_for_selector("#filters:not([hidden])")

    def act(self, action, *args) -> list[list]:
        """Run ``page.ACTION(*args)``, wait for the search it starts to be shown; the cards shown."""
        before = self.page.evaluate(SEARCH)
        getattr(self.page, action)(*args)
        self.page.wait_for_function(SETTLED, arg=before)
        return self.page.evaluate(SHOWN)

    def shown(self) -> list[list]:
        return self.page.evaluate(SHOWN)

    def load_more(self) -> list[list]:
        return self.act("click", "#more")

    def download(self) -> dict:
        with self.page.expect_download() as info:
            self.page.click("#download")
        return json.loads(Path(info.value.path()).read_text())

    def close(self) -> None:
        self.browser.close()


def test_filters_more_like_this_and_load_more(served):
    url, keys, client = served
    with playwright_api.sync_playwright() as playwright:
        browser = Page(playwright, url, keys.search, f"/?q={QUERY.replace(' ', '+')}&k={K}")
        page = browser.page
        try:
            # a control per metadata field, of the field's kind
            controls = page.eval_on_selector_all("#filters [data-field]", "els => els.map(e => [e.dataset.field, "
                                                 "e.tagName === 'SELECT' ? 'select' : e.type, e.dataset.op])")
            assert controls == [["channel", "select", "$eq"], ["year", "number", "$gte"], ["year", "number", "$lte"],
                                ["live", "checkbox", "$eq"], ["tags", "select", "$eq"], ["note", "select", "$eq"]]
            channels = page.eval_on_selector_all("#filters select[data-field=channel] option", "os => os.map(o => "
                                                 "o.value)")
            assert channels == ["", "music", "news", "sport"]

            # load more: ranks K+1.. equal the API's offset page; it stops at max_top_k
            page.wait_for_function(SETTLED, arg=0)  # the search of the URL
            assert browser.shown() == _ranking(_search(client, queries=[QUERY], top_k=K))
            assert page.is_visible("#more")
            assert browser.load_more()[K:] == _ranking(_search(client, queries=[QUERY], top_k=K, offset=K))
            assert browser.shown() == _ranking(_search(client, queries=[QUERY], top_k=MAX_TOP_K))
            assert page.is_hidden("#more")

            # a filter value: only matching cards, the API's filtered answer; load more stops at a short page
            news = {"channel": "news"}
            assert browser.act("select_option", "#filters select[data-field=channel]", "news") == _ranking(
                _search(client, queries=[QUERY], top_k=K, filter=news))
            browser.load_more()
            assert page.is_hidden("#more")
            everything = _search(client, queries=[QUERY], top_k=MAX_TOP_K, filter=news)
            assert browser.shown() == _ranking(everything) and len(everything) == 3
            # the cards' metadata, as text (markup in a value stays text)
            assert page.evaluate(CARD_METADATA) == {vid: {k: _text(v) for k, v in PAGE_METADATA[vid].items()}
                                                    for _, vid in browser.shown()}
            assert page.locator(".meta b").count() == 0
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve_page_tools.png"), full_page=True)

            # more like this on a card: the API's `like` ranking, with the filter applied
            assert browser.act("click", "#results .card[data-video-id=clip2] .like") == _ranking(
                _search(client, like="clip2", top_k=K, filter=news))
            assert "like=clip2" in page.url
            assert "like “clip2”" in page.text_content("#status")
            # a number bound narrows the same `like` search
            page.fill("#filters input[data-field=year][data-op='$gte']", "2023")
            narrow = {"channel": "news", "year": {"$gte": 2023}}
            shown = browser.act("press", "#filters input[data-field=year][data-op='$gte']", "Enter")
            assert shown == _ranking(_search(client, like="clip2", top_k=K, filter=narrow)) == [[1, "clip4"]]
            shown = browser.act("check", "#filters input[data-field=live]")
            assert shown == _ranking(_search(client, like="clip2", top_k=K, filter={**narrow, "live": True})) == []
            # the download: what is shown, with its query and filter
            saved = browser.download()
            assert saved["like"] == "clip2" and saved["filter"] == {**narrow, "live": True} and saved["results"] == []
        finally:
            browser.close()
    assert browser.problems == []


def test_upload_load_more_and_download(served, clips):
    url, keys, client = served
    clip = clips / "clip3.mp4"
    with playwright_api.sync_playwright() as playwright:
        browser = Page(playwright, url, keys.search, f"/?k={K}")
        page = browser.page
        try:
            # an uploaded clip: the API's by-video ranking (the key goes with the upload too)
            assert browser.act("set_input_files", "#upload", str(clip)) == _ranking(_by_video(client, clip, top_k=K))
            assert "like the file “clip3.mp4”" in page.text_content("#status")
            assert browser.load_more()[K:] == _ranking(_by_video(client, clip, top_k=K, offset=K))
            assert page.is_hidden("#more")  # max_top_k reached
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve_page_upload.png"), full_page=True)

            # the download holds the records shown (metadata included), in the order shown
            saved = browser.download()
            shown = browser.shown()
            assert saved["query_video"] == "clip3.mp4" and saved["filter"] is None
            assert _ranking(saved["results"]) == shown
            expected = _by_video(client, clip, top_k=MAX_TOP_K)
            drop = ("links",)  # signed links carry an expiry bucket; the rest is the same

            def strip(records):
                return [{k: v for k, v in r.items() if k not in drop} for r in records]

            assert strip(saved["results"]) == strip(expected)
            assert all(r["metadata"] == PAGE_METADATA[r["video_id"]] for r in saved["results"])

            # an upload keeps the filters chosen
            assert browser.act("select_option", "#filters select[data-field=tags]", "city") == _ranking(
                _by_video(client, clip, top_k=K, filter={"tags": "city"}))
        finally:
            browser.close()
    assert browser.problems == []
