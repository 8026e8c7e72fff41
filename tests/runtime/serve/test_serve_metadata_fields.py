"""``GET /v1/fields``: what the search page builds its filter controls from. On an index built
from a .jsonl list with metadata, the summaries equal what the entries hold (kind, count, distinct
values, number range), and a filter made from them gives the videos they say. With API keys on the
route needs a key (metadata values are not public)."""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="ucofia-run serve needs the 'serve' extra")
httpx = pytest.importorskip("httpx", reason="the service tests use httpx")

from serve_helpers import PAGE_METADATA, ServerThread, build_metadata_index, make_keys, open_app  # noqa: E402

from runtime.index import GalleryIndex  # noqa: E402
from runtime.search.fields import metadata_fields  # noqa: E402

TIMEOUT_S = 30


@pytest.fixture(scope="module")
def served(fake_bundle, clips, tmp_path_factory):
    index = build_metadata_index(tmp_path_factory.mktemp("serve_fields"), clips, fake_bundle)
    keys = make_keys(index.parent / "keys.json")
    _service, app = open_app(index, api_keys=keys.path)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as client:
        client.headers["Authorization"] = f"Bearer {keys.search}"
        yield index, client


def _expected(entries) -> list[dict]:
    """The summaries, computed here from the entries in the plainest way."""
    out: dict[str, dict] = {}
    for entry in entries:
        for name, value in entry.get("metadata", {}).items():
            kind = ("boolean" if isinstance(value, bool) else "number" if isinstance(value, int | float)
                    else "string" if isinstance(value, str) else "list")
            field = out.setdefault(name, {"name": name, "kinds": set(), "videos": 0, "strings": set(), "numbers": []})
            field["kinds"].add(kind)
            field["videos"] += 1
            field["strings"].update([value] if kind == "string" else value if kind == "list" else [])
            field["numbers"] += [value] if kind == "number" else []
    summaries = []
    for field in out.values():
        kind = field["kinds"].pop() if len(field["kinds"]) == 1 else "mixed"
        summaries.append({"name": field["name"], "kind": kind, "videos": field["videos"],
                          "values": sorted(field["strings"]) if kind in ("string", "list") else None,
                          "min": min(field["numbers"]) if kind == "number" else None,
                          "max": max(field["numbers"]) if kind == "number" else None})
    return summaries


def test_fields_lists_the_metadata_fields_the_entries_hold(served):
    index, client = served
    reply = client.get("/v1/fields")
    assert reply.status_code == 200, reply.text
    assert reply.json()["snapshot"]["videos"] == len(PAGE_METADATA)
    fields = reply.json()["fields"]
    assert fields == _expected(GalleryIndex(index).entries)
    by_name = {f["name"]: f for f in fields}
    assert [f["name"] for f in fields] == ["channel", "year", "live", "tags", "note"]
    assert by_name["channel"]["values"] == ["music", "news", "sport"]
    assert by_name["live"] == {"name": "live", "kind": "boolean", "videos": 4, "values": None, "min": None,
                               "max": None}
    assert (by_name["year"]["min"], by_name["year"]["max"]) == (2018, 2023)
    assert by_name["tags"]["values"] == ["city", "field", "night"]
    # a control's choice, sent as a filter, gives the videos holding that value
    for value in by_name["channel"]["values"]:
        reply = client.post("/v1/search", json={"queries": ["a red car"], "top_k": 10,
                                                "filter": {"channel": value}})
        got = {hit["video_id"] for hit in reply.json()["results"][0]["results"]}
        assert got == {vid for vid, meta in PAGE_METADATA.items() if meta["channel"] == value}
    # not public: no key, no fields (/v1/info, public, does not list them)
    assert client.get("/v1/fields", headers={"Authorization": ""}).status_code == 401
    assert "fields" not in client.get("/v1/info").json()


def test_summaries_of_many_values_and_mixed_kinds():
    entries = [{"metadata": {"name": f"v{i}", "odd": i if i % 2 else str(i), "$x": 1}} for i in range(5)]
    fields = {f.name: f.to_dict() for f in metadata_fields(entries, max_values=3)}
    assert set(fields) == {"name", "odd"}  # a filter cannot name "$x"
    assert fields["name"] == {"name": "name", "kind": "string", "videos": 5, "values": None, "min": None,
                              "max": None}
    assert fields["odd"]["kind"] == "mixed" and fields["odd"]["values"] is None
    assert metadata_fields([{"metadata": {"name": "a"}}, {}])[0].values == ("a",)
