"""Schemathesis hooks of the fuzz test (tests/runtime/serve/test_serve_fuzz.py), loaded by its
``st run`` through ``SCHEMATHESIS_HOOKS=schemathesis_hooks``.

One rule of ``POST /v1/search`` no JSON Schema can state: ``offset + top_k`` must be at most
``--max-top-k`` (each field alone is bounded in the schema). Schemathesis generates requests that
break it and holds the server's 422 for them against it; :func:`filter_failure` drops exactly that
failure (the request's page is past the bound and the server's message names this rule), and
keeps every other.

``POST /v1/search/by-video`` takes a file and a filter as form fields: that the file's bytes are
a decodable clip or image, or that the filter's JSON text is a filter, is not something a schema
of a multipart body can state either; its 422 naming one of these is dropped too (only for that
route and those messages).

``POST /v1/search`` takes ``queries`` or ``like``: the schema says "not both" (``not``), but "at
least one" would need ``anyOf`` branches on the object, which the documented generated client
cannot model; the 422 of a search with neither is dropped too.
"""
from __future__ import annotations

import schemathesis

MAX_TOP_K = 100  # the server's --max-top-k: the fuzz test serves with the default
DEFAULT_TOP_K = 10
PAGE_RULE = "offset + top_k is "
UPLOAD_RULES = ("cannot be decoded", "is empty", '"error":"filter')
KIND_RULE = "give `queries` (texts) or `like`"


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@schemathesis.hook
def filter_failure(context, failure, case, response) -> bool:
    """False (drop it) only for the 422 of a search whose offset + top_k is past the bound."""
    body = case.body if isinstance(case.body, dict) else {}
    offset, top_k = _number(body.get("offset", 0)), _number(body.get("top_k", DEFAULT_TOP_K))
    past = offset is not None and top_k is not None and offset + top_k > MAX_TOP_K
    if case.operation.path == "/v1/search/by-video" and response.status_code == 422:
        return not any(rule in response.text for rule in UPLOAD_RULES) and PAGE_RULE not in response.text
    neither = "queries" not in body and "like" not in body
    if case.operation.path == "/v1/search" and response.status_code == 422 and neither and KIND_RULE in response.text:
        return False
    return not (case.operation.path == "/v1/search" and response.status_code == 422 and past
                and PAGE_RULE in response.text)
