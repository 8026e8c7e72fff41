"""The OpenAPI schema of ``ucofia-run serve`` says what the running server does (issue 29).

Security requirements (with each route's scope) only when keys are on; every rule the server
validates with is in the schema (the query pattern, bounds, strict types, ``--two-stage off``,
the Range header); every status code a route answers is listed with its body. Each test checks
the schema and the server's answer side by side, on apps over one small index. The fuzzer's view
of the same contract is tests/test_serve_fuzz.py."""
from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("fastapi", reason="ucofia-run serve needs the 'serve' extra")
pytest.importorskip("httpx", reason="the schema tests use FastAPI's TestClient (httpx)")

from fastapi.testclient import TestClient
from serve_helpers import build_index, make_keys, open_app

from runtime.serve.contract import (
    BLANK_CHARACTERS,
    MEDIA_TYPES,
    QUERY_PATTERN,
    QUERY_RULE,
    RANGE_PATTERN,
    RANGE_RULE,
    SOURCE_MEDIA_TYPES,
    media_type_of,
)
from runtime.serve.settings import Limits

CLIPS = 3
QUERY = {"queries": ["a red car on the road"], "top_k": 2}
PROTECTED = {"search": "search", "search_by_video": "search", "describe": "search", "video": "search",
             "thumbnail": "search", "media": "search", "reload": "admin", "fields": "search"}
SIGNED = {"thumbnail", "media"}  # a signed URL is the other way in
PUBLIC = {"healthz", "readyz", "metrics", "info"}
# The statuses each operation answers besides its 2xx (keys mode adds 401 and 403 to the protected ones);
# every operation answers 421 to a Host it does not serve, the POST ones 403 to a foreign Origin.
STATUSES = {
    "search": {"200", "400", "403", "404", "413", "415", "421", "422", "500", "503", "504"},
    "search_by_video": {"200", "400", "403", "411", "413", "415", "421", "422", "500", "503"},
    "describe": {"200", "400", "403", "404", "413", "415", "421", "422", "500", "503"},
    "video": {"200", "404", "421", "500"},
    "thumbnail": {"200", "304", "404", "421", "500"},
    "media": {"200", "206", "304", "404", "409", "416", "421", "422", "500"},
    "reload": {"200", "400", "403", "409", "413", "415", "421", "422", "500"},
    "healthz": {"200", "421", "500"},
    "readyz": {"200", "421", "500", "503"},
    "metrics": {"200", "421", "500"},
    "info": {"200", "421", "500"},
    "fields": {"200", "421", "500"},
}
CROSS_ORIGIN_CHECKED = {"search", "search_by_video", "describe", "reload"}


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return build_index(tmp_path_factory.mktemp("serve_schema"), CLIPS)[2]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return make_keys(tmp_path_factory.mktemp("serve_schema_keys") / "keys.json")


def _client(index, **settings) -> TestClient:
    _, app = open_app(index, **settings)
    return TestClient(app, base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def open_client(index):
    with _client(index) as client:
        yield client


@pytest.fixture(scope="module")
def keyed_client(index, keys):
    with _client(index, api_keys=keys.path) as client:
        client.headers["Authorization"] = f"Bearer {keys.both}"
        yield client


def _operations(schema: dict) -> dict[str, dict]:
    return {op["operationId"]: op for ops in schema["paths"].values() for op in ops.values()}


def _request_schema(schema: dict) -> dict:
    return schema["components"]["schemas"]["SearchRequest"]


# ------------------------------------------------------------------------------------------------ security
def test_without_keys_the_schema_asks_for_no_credentials(open_client):
    schema = open_client.get("/openapi.json").json()
    assert "securitySchemes" not in schema.get("components", {})
    for name, op in _operations(schema).items():
        assert "security" not in op, name
        assert "401" not in op["responses"], name
        assert ("403" in op["responses"]) == (name in CROSS_ORIGIN_CHECKED), name  # a foreign Origin only
        assert all(p["name"].lower() not in ("authorization", "sig", "exp") for p in op.get("parameters", [])), name
    # ... and the server indeed answers without any
    assert open_client.post("/v1/search", json=QUERY).status_code == 200
    assert open_client.get("/v1/videos/clip1").status_code == 200


def test_with_keys_each_protected_route_lists_its_scope(keyed_client, keys):
    schema = keyed_client.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["HTTPBearer"] == {**schemes["HTTPBearer"], "type": "http", "scheme": "bearer"}
    assert schemes["SignedUrl"] == {**schemes["SignedUrl"], "type": "apiKey", "in": "query", "name": "sig"}
    operations = _operations(schema)
    for name, scope in PROTECTED.items():
        expected = [{"HTTPBearer": [scope]}] + ([{"SignedUrl": []}] if name in SIGNED else [])
        assert operations[name]["security"] == expected, name
        assert {"401", "403"} <= set(operations[name]["responses"]), name
        assert operations[name]["responses"]["401"]["headers"]["WWW-Authenticate"]["required"] is True
    for name in PUBLIC:
        assert "security" not in operations[name], name
    # the server enforces the scopes the schema lists
    bare = {"Authorization": ""}
    search_only, admin_only = {"Authorization": f"Bearer {keys.search}"}, {"Authorization": f"Bearer {keys.admin}"}
    assert keyed_client.post("/v1/search", json=QUERY, headers=bare).status_code == 401
    assert keyed_client.post("/v1/search", json=QUERY, headers=admin_only).status_code == 403
    assert keyed_client.post("/v1/search", json=QUERY, headers=search_only).status_code == 200
    assert keyed_client.post("/v1/admin/reload", json={}, headers=search_only).status_code == 403
    assert keyed_client.post("/v1/admin/reload", json={}, headers=admin_only).status_code == 200
    assert keyed_client.get("/v1/videos/clip1/media", headers=bare).status_code == 401
    assert keyed_client.get("/v1/videos/clip1/media", headers=admin_only).status_code == 403


def test_a_signed_url_or_a_key_opens_media(keyed_client, keys):
    hit = keyed_client.post("/v1/search", json=QUERY).json()["results"][0]["results"][0]
    link = hit["links"]["thumbnail"]
    assert keyed_client.get(link, headers={"Authorization": ""}).status_code == 200  # the signed URL alone
    # a valid key is enough whatever else the URL carries; without one a wrong signature is refused
    assert keyed_client.get(link.replace("sig=", "sig=x")).status_code == 200
    assert keyed_client.get(link.replace("sig=", "sig=x"), headers={"Authorization": ""}).status_code == 403


# ------------------------------------------------------------------------------------------------ statuses
def test_every_route_lists_the_statuses_it_answers_with_their_bodies(open_client, keyed_client):
    for client, auth in ((open_client, set()), (keyed_client, {"401", "403"})):
        schema = client.get("/openapi.json").json()
        assert "HTTPValidationError" not in json.dumps(schema)  # FastAPI's default 422 body is never sent
        for name, op in _operations(schema).items():
            expected = STATUSES[name] | (auth if name in PROTECTED else set())
            assert set(op["responses"]) == expected, name
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")) and not (name == "readyz" and status == "503"):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorResponse"), (name, status)
    operations = _operations(open_client.get("/openapi.json").json())
    assert operations["search"]["responses"]["503"]["headers"]["Retry-After"]["required"] is True
    assert operations["media"]["responses"]["416"]["headers"]["Content-Range"]["required"] is True
    assert operations["readyz"]["responses"]["503"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ReadyResponse")


def test_media_types_come_from_one_table(open_client):
    content = _operations(open_client.get("/openapi.json").json())["media"]["responses"]["200"]["content"]
    assert set(SOURCE_MEDIA_TYPES) == set(content) and set(MEDIA_TYPES.values()) < set(content)
    assert media_type_of(".TS") == "video/mp2t" and media_type_of(".xyz") == "application/octet-stream"
    # by the container recorded at indexing; the name only chooses within its family
    assert media_type_of(".html", "mov,mp4,m4a,3gp,3g2,mj2") == "video/mp4"
    assert media_type_of(".mov", "mov,mp4,m4a,3gp,3g2,mj2") == "video/quicktime"
    assert media_type_of(".mp4", "unknown") == "application/octet-stream"
    reply = open_client.get("/v1/videos/clip1/media")
    assert reply.status_code == 200 and reply.headers["content-type"] == "video/mp4"
    thumb = open_client.get("/v1/videos/clip1/thumbnail")
    assert thumb.headers["content-type"] in _operations(open_client.get("/openapi.json").json())["thumbnail"][
        "responses"]["200"]["content"]


# ------------------------------------------------------------------------------------------------ strict types
STRICT_CASES = [
    ({"two_stage": 0}, "two_stage"), ({"two_stage": 1}, "two_stage"), ({"two_stage": "true"}, "two_stage"),
    ({"top_k": "5"}, "top_k"), ({"top_k": True}, "top_k"), ({"top_k": 2.5}, "top_k"),
    ({"windows_per_file": "2"}, "windows_per_file"), ({"windows_per_file": False}, "windows_per_file"),
    ({"group_by": "File"}, "group_by"), ({"group_by": 1}, "group_by"), ({"queries": "a red car"}, "queries"),
    ({"queries": [7]}, "queries.0"),
]


@pytest.mark.parametrize("fields,where", STRICT_CASES, ids=[json.dumps(c[0]) for c in STRICT_CASES])
def test_the_server_refuses_what_the_schema_types_refuse(open_client, fields, where):
    reply = open_client.post("/v1/search", json={**QUERY, **fields})
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"].startswith(f"{where}:")


def test_the_schema_types_are_strict_and_whole_floats_are_integers(open_client):
    properties = _request_schema(open_client.get("/openapi.json").json())["properties"]
    assert properties["two_stage"]["anyOf"] == [{"type": "boolean"}, {"type": "null"}]
    assert properties["top_k"]["type"] == properties["windows_per_file"]["type"] == "integer"
    assert properties["group_by"]["anyOf"][0] == {"enum": ["file", "window"], "type": "string"}
    assert _request_schema(open_client.get("/openapi.json").json())["additionalProperties"] is False
    # JSON Schema counts 2.0 as an integer: so does the server
    reply = open_client.post("/v1/search", json={**QUERY, "top_k": 2.0, "windows_per_file": 3.0, "two_stage": False})
    assert reply.status_code == 200 and reply.json()["top_k"] == 2


def test_bounds_in_the_schema_are_the_servers(open_client):
    properties = _request_schema(open_client.get("/openapi.json").json())["properties"]
    limits = open_client.get("/v1/info").json()["limits"]
    assert properties["queries"]["maxItems"] == limits["max_queries"]
    assert properties["queries"]["items"]["maxLength"] == limits["max_query_chars"]
    assert properties["top_k"]["maximum"] == limits["max_top_k"]
    assert properties["windows_per_file"]["maximum"] == limits["max_windows_per_file"]
    for field, value in (("top_k", limits["max_top_k"] + 1), ("windows_per_file", 0)):
        assert open_client.post("/v1/search", json={**QUERY, field: value}).status_code == 422
    assert open_client.post("/v1/search", json={**QUERY, "top_k": limits["max_top_k"]}).status_code == 200


def test_two_stage_off_is_in_the_schema(index):
    with _client(index, two_stage="off") as client:
        two_stage = _request_schema(client.get("/openapi.json").json())["properties"]["two_stage"]
        assert two_stage["anyOf"] == [{"type": "boolean", "const": False}, {"type": "null"}]
        refused = client.post("/v1/search", json={**QUERY, "two_stage": True})
        assert refused.status_code == 422 and "two-stage search is off" in refused.json()["error"]
        assert client.post("/v1/search", json={**QUERY, "two_stage": 0}).status_code == 422
        assert client.post("/v1/search", json={**QUERY, "two_stage": False}).status_code == 200


# ------------------------------------------------------------------------------------------------ queries
BLANK = ["", " ", "\t\n", "\x00", "\x01\x02\x1f", "\x7f", "\x85", "\xa0", "\u3000", "\u2028", "\ufeff",
         "\u200a \u205f", "\ufff9\ufffc", " \x00 \u206a "]
TEXT = ["a", " a ", "\x00a", "?", "\u200b", "\x80", "\u0301", "\U0001F600", "日本", "\ufffd", "a" * 1000]


def test_the_query_pattern_in_the_schema_is_the_rule_the_server_enforces(open_client):
    item = _request_schema(open_client.get("/openapi.json").json())["properties"]["queries"]["items"]
    assert item["pattern"] == QUERY_PATTERN and item["minLength"] == 1
    for text in BLANK + TEXT:
        in_schema = 1 <= len(text) <= item["maxLength"] and re.search(item["pattern"], text) is not None
        reply = open_client.post("/v1/search", json={"queries": [text], "top_k": 1})
        assert reply.status_code == (200 if in_schema else 422), (text, reply.text)
        if text and not in_schema:
            assert reply.json()["error"] == f"queries.0: {QUERY_RULE}"


def test_what_the_pattern_cannot_see_is_in_the_description(open_client):
    queries = _request_schema(open_client.get("/openapi.json").json())["properties"]["queries"]
    assert "&nbsp;" in queries["description"]
    reply = open_client.post("/v1/search", json={"queries": ["&nbsp;"], "top_k": 1})
    assert re.search(QUERY_PATTERN, "&nbsp;") and reply.status_code == 422
    assert reply.json()["error"].startswith("queries.0: no text is left after cleaning")


def test_blank_characters_are_exactly_those_the_tokenizer_refuses():
    """BLANK_CHARACTERS is the set of characters c for which the query c alone is refused by the
    tokenizer (stripped away, or nothing left after cleaning): checked over the whole BMP and a
    sample of the other planes (where ftfy drops nothing the cleaning keeps as text)."""
    from ucofia.data.tokenizer import clean_text

    blank = re.compile(f"[{BLANK_CHARACTERS}]")
    points = [*range(0xD800), *range(0xE000, 0x10000), *range(0x10000, 0x110000, 251),
              *range(0xE0000, 0xE0080), *range(0x1D173, 0x1D17B)]
    wrong = [hex(p) for p in points if bool(blank.fullmatch(chr(p))) != (not chr(p).strip() or not clean_text(chr(p)))]
    assert wrong == []


# ------------------------------------------------------------------------------------------------ Range
def test_the_range_header_is_validated_with_the_schemas_pattern(open_client):
    media = _operations(open_client.get("/openapi.json").json())["media"]
    header = next(p for p in media["parameters"] if p["name"] == "Range")
    assert header["in"] == "header" and header["required"] is False
    assert header["schema"] == {**header["schema"], "type": "string", "pattern": RANGE_PATTERN}  # never null
    size = len(open_client.get("/v1/videos/clip1/media").content)
    for value, status in [("bytes=0-9", 206), ("BYTES = 0-9", 422), ("bytes=0-1, 4-5", 206), ("bytes=-5", 206),
                          ("bytes=3-", 206), ("bytes=abc", 422), ("items=0-1", 422), ("bytes=", 422),
                          (f"bytes={size}-", 416), ("bytes=9-3", 416), ("bytes=-0", 416), ("bytes=0-1,9-3", 416)]:
        assert (re.search(RANGE_PATTERN, value) is not None) == (status != 422), value
        reply = open_client.get("/v1/videos/clip1/media", headers={"Range": value})
        assert reply.status_code == status, (value, reply.text)
        if status == 422:
            assert reply.json()["error"] == f"header.Range: {RANGE_RULE}"
        if status == 416:
            assert reply.headers["content-range"] == f"bytes */{size}" and "error" in reply.json()


def test_an_if_range_that_does_not_match_serves_the_whole_file(open_client):
    reply = open_client.get("/v1/videos/clip1/media", headers={"Range": "bytes=9-3", "If-Range": '"other"'})
    assert reply.status_code == 200


# ------------------------------------------------------------------------------------------------ body size
def test_the_largest_valid_search_fits_under_the_body_limit(open_client):
    limits = open_client.get("/v1/info").json()["limits"]
    text = "\U0001D400" * limits["max_query_chars"]  # escaped as a surrogate pair: 12 bytes a character
    body = json.dumps({"queries": [text] * limits["max_queries"], "top_k": 1, "group_by": None,
                       "two_stage": False, "windows_per_file": 1}, ensure_ascii=True).encode()
    assert len(body) <= limits["max_body_bytes"]
    reply = open_client.post("/v1/search", content=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == 200, reply.text[:300]
    with pytest.raises(ValueError, match="below the largest valid search body"):
        Limits(max_body_bytes=256 * 1024)
