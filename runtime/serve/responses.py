"""The search response, built and serialised off the event loop.

A 64-query, top-100 answer holds 6,400 records, each with its entry and three links (two of them
signed: an HMAC each). Built on the event loop, with FastAPI validating it against the response
model and encoding it in one call, it held the loop for up to 150 ms, and ``/healthz`` with it.
Here:

* the entry and links of a row are made and encoded once per (snapshot, root path, key, link
  expiry) and reused (the expiry is bucketed, so they stay the same for a bucket's time;
  ``LinkCache``); only the records' own fields are encoded per answer;
* the body is encoded query by query on one responder thread (``Responder``), so the GIL goes
  back to the event loop between queries, never held for the whole 1.4 MB;
* the route returns the bytes as they are (the response model documents them: the schema tests
  and Schemathesis check that the body matches it), handed to the server ``CHUNK_BYTES`` at a time
  (``ChunkedResponse``): one socket write of 3 MB held the event loop for ~7 ms on a busy two-core
  box; in chunks, the transport's flow control lets the loop serve others while the kernel drains.
"""
from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, urlencode

from starlette.responses import Response

from runtime.serve.auth import MEDIA, THUMBNAIL, MediaSigner
from runtime.serve.snapshot import Snapshot

# Entry fields kept from API answers: the server's file layout is nobody's business.
HIDDEN_ENTRY_FIELDS = frozenset({"id", "path"})
# Generations (snapshot, root, key, expiry) of cached rows kept, and rows per generation.
CACHE_GENERATIONS = 16
CACHE_ROWS = 50_000
# Bytes of a response body handed to the server at once.
CHUNK_BYTES = 128 * 1024


class ChunkedResponse(Response):
    """A Response whose body (known, so Content-Length is set) goes out CHUNK_BYTES at a time."""

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        body = memoryview(self.body)
        for start in range(0, max(len(body), 1), CHUNK_BYTES):
            end = start + CHUNK_BYTES
            await send({"type": "http.response.body", "body": bytes(body[start:end]), "more_body": end < len(body)})


def public_entry(entry: dict[str, Any] | None) -> dict[str, Any]:
    """What an answer shows of an index entry."""
    return {k: v for k, v in (entry or {}).items() if k not in HIDDEN_ENTRY_FIELDS}


def make_links(root_path: str, video_id: str, entry: dict[str, Any] | None, signer: MediaSigner | None,
               kid: str | None, expires: int | None = None) -> dict[str, str]:
    """The links of one row under ``root_path``: metadata, and thumbnail and media (signed for
    the key ``kid`` when there is a signer; a window's media link plays its span)."""
    base = f"{root_path}/v1/videos/{quote(video_id, safe='')}"
    thumbnail, media = f"{base}/thumbnail", f"{base}/media"
    if signer is not None and kid is not None:
        thumbnail += "?" + urlencode(signer.sign(THUMBNAIL, video_id, kid, expires=expires))
        media += "?" + urlencode(signer.sign(MEDIA, video_id, kid, expires=expires))
    if entry and entry.get("start") is not None and entry.get("end") is not None:
        media += f"#t={float(entry['start']):g},{float(entry['end']):g}"  # a window: play its span
    return {"video": base, "thumbnail": thumbnail, "media": media}


class LinkCache:
    """The JSON of rows' entry and links, per generation (snapshot version, root path, key id,
    link expiry); only the responder thread uses it."""

    def __init__(self, signer: MediaSigner | None) -> None:
        self.signer = signer
        self._generations: OrderedDict[tuple, dict[str, tuple[str, str]]] = OrderedDict()

    def rows(self, snapshot: Snapshot, root_path: str, kid: str | None):
        """A function video_id -> (JSON members ``"entry":{...},"links":{...}``, JSON member
        ``"links":{...}``) for one answer."""
        expires = self.signer.expiry() if self.signer is not None and kid is not None else None
        key = (snapshot.version, id(snapshot), root_path, kid, expires)
        rows = self._generations.get(key)
        if rows is None:
            rows = self._generations[key] = {}
            while len(self._generations) > CACHE_GENERATIONS:
                self._generations.popitem(last=False)
        index = snapshot.index

        def row(video_id: str) -> tuple[str, str]:
            found = rows.get(video_id)
            if found is None:
                if len(rows) >= CACHE_ROWS:
                    rows.clear()
                entry = index.entry(video_id)
                links = '"links":' + _encode(make_links(root_path, video_id, entry, self.signer, kid, expires))
                found = rows[video_id] = ('"entry":' + _encode(public_entry(entry)) + "," + links, links)
            return found

        return row


def _encode(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class Responder:
    """Builds search response bodies on one thread of its own.

    Each query's records are encoded in one ``json.dumps`` call (C speed) with a marker member
    last in every record (``"\\u0000<nonce>":N``, N numbering the records); each marker is then
    replaced by the cached JSON of its record's entry and links. The nonce (64 random bits) is drawn
    for every answer, so no text of a request or of the index can hold a marker; inside a JSON
    string a quote is always escaped, so neither can a string's content end like one.
    """

    def __init__(self, signer: MediaSigner | None) -> None:
        self.cache = LinkCache(signer)
        self._executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ucofia-respond")

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    async def search_body(self, head: dict[str, Any], queries: list[dict[str, Any]], snapshot: Snapshot,
                          root_path: str, kid: str | None, tail: dict[str, Any]) -> bytes:
        """The JSON body ``{**head, "results": [...], **tail}`` with each hit's entry and links."""
        assert self._executor is not None, "start() the responder first"
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._search_body, head, queries, snapshot, root_path, kid, tail)

    def _search_body(self, head: dict[str, Any], queries: list[dict[str, Any]], snapshot: Snapshot,
                     root_path: str, kid: str | None, tail: dict[str, Any]) -> bytes:
        row = self.cache.rows(snapshot, root_path, kid)
        marker = "\x00" + secrets.token_hex(8)
        found = re.compile(re.escape(_encode(marker)) + r":(\d+)\}")
        parts = []
        for query in queries:
            members: list[str] = []  # the entry and links of each record, by its number
            hits = []
            for hit in query["results"]:
                both, _ = row(hit["video_id"])
                record = {**hit}
                if "windows" in hit:
                    windows = []
                    for window in hit["windows"]:
                        members.append(row(window["video_id"])[1])
                        windows.append({**window, marker: len(members) - 1})
                    record["windows"] = windows
                members.append(both)
                record[marker] = len(members) - 1
                hits.append(record)
            encoded = _encode({**query, "results": hits})  # one query at a time: the GIL is let go between
            parts.append(found.sub(lambda m: members[int(m[1])] + "}", encoded).encode())
        head_json, tail_json = _encode(head).encode(), _encode(tail).encode()
        return b"".join([head_json[:-1], b',"results":[', b",".join(parts), b"],", tail_json[1:]])


__all__ = ["ChunkedResponse", "LinkCache", "Responder", "make_links", "public_entry"]
