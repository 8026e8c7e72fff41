"""Videos at URLs: ``http(s)://``, ``s3://`` and ``gs://`` sources read through fsspec.

A ``--videos`` list row may name a URL instead of a file. This module is the one place that
reads them: :func:`stat` (size and validators), :func:`download` (to a local file, with sha256,
a size limit, timeouts and retries), :func:`local_copy` (a temporary copy, deleted after use),
:func:`url_changed` (whether an indexed URL now serves other content) and :func:`read_range`
(bytes for the service's media route). Decoding always reads a complete local copy, so a URL
decodes exactly like the same file on disk (docs/indexing.md, "Videos at URLs").

Settings come from the environment, so ``index``, ``thumbnails`` and ``serve`` agree:

* ``UCOFIA_URL_TIMEOUT_S`` (default 30): connect and read timeout of every request, seconds;
* ``UCOFIA_URL_RETRIES`` (default 2): retries after a failed attempt (not after 404/403 or an
  oversized source), with exponential backoff;
* ``UCOFIA_URL_MAX_BYTES`` (default 4 GiB): larger sources are refused before they are read;
* ``UCOFIA_S3_ENDPOINT_URL``: an S3-compatible endpoint (MinIO, a local fake); credentials and
  region come from the usual AWS variables and files (``AWS_ACCESS_KEY_ID``, ...).

fsspec is a light dependency; the protocol packages are extras, imported on first use:
``pip install 'ucofia[http]'`` (aiohttp), ``'ucofia[s3]'`` (s3fs), ``'ucofia[gcs]'`` (gcsfs).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import RuntimeUserError

logger = logging.getLogger(__name__)

URL_SCHEMES = ("http://", "https://", "s3://", "gs://")
# The extra that provides each protocol's fsspec implementation.
EXTRAS = {"http": "http", "https": "http", "s3": "s3", "gs": "gcs"}
CHUNK = 1 << 20
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 2
DEFAULT_MAX_BYTES = 4 << 30
BACKOFF_S = 0.5
BACKOFF_MAX_S = 8.0

Source = Path | str  # a local file, or a URL (a str: Path would fold its '//')


class RemoteError(RuntimeUserError):
    """A URL could not be read (after its retries): the message names the URL and the cause."""


class _Final(RemoteError):
    """A failure that another attempt cannot fix: not found, forbidden, too large."""


@dataclass(frozen=True)
class RemoteSettings:
    """Timeouts, retries and the size limit for reading URLs (see the module doc)."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES
    max_bytes: int = DEFAULT_MAX_BYTES
    s3_endpoint: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RemoteSettings:
        """The settings of the ``UCOFIA_URL_*`` / ``UCOFIA_S3_ENDPOINT_URL`` variables."""
        env = os.environ if env is None else env
        try:
            return cls(timeout_s=float(env.get("UCOFIA_URL_TIMEOUT_S", DEFAULT_TIMEOUT_S)),
                       retries=max(0, int(env.get("UCOFIA_URL_RETRIES", DEFAULT_RETRIES))),
                       max_bytes=int(env.get("UCOFIA_URL_MAX_BYTES", DEFAULT_MAX_BYTES)),
                       s3_endpoint=env.get("UCOFIA_S3_ENDPOINT_URL") or None)
        except ValueError as exc:
            raise RuntimeUserError(f"UCOFIA_URL_* settings: {exc}") from None


def is_url(source: object) -> bool:
    """Whether ``source`` (a list row's path) is a URL this module reads."""
    return isinstance(source, str) and source.lower().startswith(URL_SCHEMES)


def url_stem(url: str) -> str:
    """A video id for a URL without one: its last path segment without extension."""
    return Path(url.split("://", 1)[1].split("?", 1)[0].rstrip("/")).stem


def _protocol(url: str) -> str:
    return url.split("://", 1)[0].lower()


def filesystem(url: str, settings: RemoteSettings) -> Any:
    """The fsspec filesystem for ``url``'s protocol, with the settings' timeouts; RuntimeUserError
    naming the extra to install when its package is missing."""
    protocol = _protocol(url)
    extra = EXTRAS[protocol]
    try:
        import fsspec

        if protocol in ("http", "https"):
            import aiohttp

            timeout = aiohttp.ClientTimeout(total=None, connect=settings.timeout_s, sock_read=settings.timeout_s)
            return fsspec.filesystem("http", client_kwargs={"timeout": timeout})
        if protocol == "s3":
            import s3fs  # noqa: F401  (fsspec imports it; a missing one should name the extra)

            client = {"endpoint_url": settings.s3_endpoint} if settings.s3_endpoint else {}
            config = {"connect_timeout": settings.timeout_s, "read_timeout": settings.timeout_s,
                      "retries": {"max_attempts": 1}}
            return fsspec.filesystem("s3", client_kwargs=client, config_kwargs=config)
        import gcsfs  # noqa: F401

        return fsspec.filesystem("gs", timeout=settings.timeout_s)
    except ImportError as exc:
        raise RuntimeUserError(f"reading {protocol}:// videos needs {exc.name}: "
                               f"pip install 'ucofia[{extra}]'") from None


def require(urls: Iterable[str], settings: RemoteSettings | None = None) -> None:
    """Check, before any work, that every protocol among ``urls`` can be read (its extra is
    installed): RuntimeUserError naming the extra otherwise."""
    settings = settings or RemoteSettings.from_env()
    first: dict[str, str] = {}
    for url in urls:
        first.setdefault(_protocol(url), url)
    for url in first.values():
        filesystem(url, settings)


def _retrying(url: str, what: str, settings: RemoteSettings, call: Any) -> Any:
    """``call()``, tried 1 + ``settings.retries`` times; RemoteError naming the URL and the last cause."""
    for attempt in range(settings.retries + 1):
        try:
            return call()
        except _Final:
            raise
        except PermissionError as exc:
            raise _Final(f"{url}: access denied ({exc})") from None
        except Exception as exc:
            missing = isinstance(exc, FileNotFoundError)
            if missing and exc.__cause__ is not None:
                exc = exc.__cause__  # fsspec's http info reports every failure as not found: the cause says
            status = getattr(exc, "status", None)
            if status in (401, 403):
                raise _Final(f"{url}: access denied (HTTP {status})") from None
            if status == 404 or (missing and not _transient(exc)):
                raise _Final(f"{url}: not found") from None
            cause = f"{exc.__class__.__name__}: {exc}".rstrip(": ")
            if attempt == settings.retries:
                tries = settings.retries + 1
                raise RemoteError(f"{url}: cannot {what} after {tries} attempt{'s' * (tries > 1)} ({cause})") from None
            delay = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** attempt)
            logger.info("%s: %s failed (%s); retrying in %.1f s", url, what, cause, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _transient(error: BaseException) -> bool:
    """Whether ``error`` is a timeout or a connection failure (worth another attempt), or an HTTP
    answer that another attempt may change (5xx, 429)."""
    status = getattr(error, "status", None)
    if status is not None:
        return status >= 500 or status == 429
    names = {cls.__name__ for cls in type(error).__mro__}
    return isinstance(error, TimeoutError | ConnectionError) or "ClientConnectionError" in names


def validators(info: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies a URL's content without reading it: ``bytes``, ``etag``, ``last_modified``
    (whichever fsspec's info gives: HTTP headers, S3 ETag/LastModified, GCS etag/updated)."""
    out: dict[str, Any] = {}
    if info.get("size") is not None:
        out["bytes"] = int(info["size"])
    etag = info.get("ETag") or info.get("etag")
    if etag:
        out["etag"] = str(etag)
    modified = info.get("Last-Modified") or info.get("LastModified") or info.get("updated")
    if modified:
        out["last_modified"] = str(modified)
    return out


def stat(url: str, settings: RemoteSettings | None = None) -> dict[str, Any]:
    """The URL's :func:`validators` (one HEAD or metadata request, retried)."""
    settings = settings or RemoteSettings.from_env()
    fs = filesystem(url, settings)
    return validators(_retrying(url, "read its size", settings, lambda: fs.info(url)))


def _check_size(url: str, size: int | None, settings: RemoteSettings) -> None:
    if size is not None and size > settings.max_bytes:
        raise _Final(f"{url}: {size} bytes is over the size limit of {settings.max_bytes} bytes "
                     f"(UCOFIA_URL_MAX_BYTES)")


def download(url: str, dest: Path, settings: RemoteSettings | None = None) -> dict[str, Any]:
    """Copy ``url`` to ``dest`` and return its index identity: ``path`` (the URL), ``sha256``,
    ``bytes`` and the validators. Refuses a source over the size limit (announced or read), and
    one that ends short of its announced size; RemoteError after the retries."""
    settings = settings or RemoteSettings.from_env()
    fs = filesystem(url, settings)
    known = validators(_retrying(url, "read its size", settings, lambda: fs.info(url)))
    _check_size(url, known.get("bytes"), settings)
    opening: dict[str, Any] = {"block_size": 0} if _protocol(url) in ("http", "https") else {}
    if known.get("bytes") is not None and _protocol(url) != "gs":
        opening["size"] = known["bytes"]  # no second HEAD

    def attempt() -> dict[str, Any]:
        digest, count = hashlib.sha256(), 0
        with fs.open(url, "rb", **opening) as src, open(dest, "wb") as out:
            while chunk := src.read(CHUNK):
                count += len(chunk)
                if count > settings.max_bytes:
                    _check_size(url, count, settings)
                digest.update(chunk)
                out.write(chunk)
        if known.get("bytes") is not None and count != known["bytes"]:
            raise OSError(f"read {count} of {known['bytes']} bytes")
        return {"path": url, "sha256": digest.hexdigest(), **known, "bytes": count}

    return _retrying(url, "download it", settings, attempt)


@contextlib.contextmanager
def local_copy(url: str, settings: RemoteSettings | None = None, directory: str | os.PathLike[str] | None = None
               ) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(a temporary local copy of ``url``, its identity), deleted when the block ends."""
    fd, name = tempfile.mkstemp(prefix="ucofia-url-", suffix=Path(url.split("?", 1)[0]).suffix[:8],
                                dir=directory)
    os.close(fd)
    path = Path(name)
    try:
        yield path, download(url, path, settings)
    finally:
        path.unlink(missing_ok=True)


def url_changed(entry: Mapping[str, Any], url: str, settings: RemoteSettings | None = None) -> bool:
    """Whether ``url`` now serves other content than the one ``entry`` was made from.

    Same URL and size and the same ETag (else the same Last-Modified) mean unchanged without
    reading it; a URL with neither validator, or another URL, is downloaded and its sha256
    decides. A URL that cannot be reached counts as unchanged (logged), like a local file gone."""
    sha = entry.get("sha256")
    if not sha:
        return False
    settings = settings or RemoteSettings.from_env()
    try:
        now = stat(url, settings)
        if entry.get("path") == url:
            if now.get("bytes") is not None and entry.get("bytes") is not None and now["bytes"] != entry["bytes"]:
                return True
            for name in ("etag", "last_modified"):
                if entry.get(name) and now.get(name):
                    return bool(entry[name] != now[name])
        with local_copy(url, settings) as (_, identity):
            return bool(identity["sha256"] != sha)
    except RemoteError as exc:
        logger.warning("cannot check whether %s changed (%s); keeping its rows", url, exc)
        return False


def read_range(url: str, start: int, end: int, settings: RemoteSettings | None = None) -> Iterator[bytes]:
    """The bytes ``[start, end)`` of ``url`` in chunks (what the media route streams): ranged reads,
    but from byte 0 of an http(s) URL one streamed GET, which servers without Range support answer."""
    settings = settings or RemoteSettings.from_env()
    fs = filesystem(url, settings)
    position = start
    if start == 0 and _protocol(url) in ("http", "https"):
        with _retrying(url, "open it", settings, lambda: fs.open(url, "rb", block_size=0)) as src:
            while position < end:
                try:
                    data = src.read(min(CHUNK, end - position))
                except Exception as exc:
                    raise RemoteError(f"{url}: read failed at byte {position} ({exc.__class__.__name__})") from None
                if not data:
                    raise RemoteError(f"{url}: ended at byte {position} of {end}")
                yield data
                position += len(data)
        return
    while position < end:
        stop = min(end, position + CHUNK)
        data = _retrying(url, "read it", settings, lambda p=position, s=stop: fs.cat_file(url, start=p, end=s))
        if len(data) != stop - position:  # a server that ignores Range sends the whole file
            raise RemoteError(f"{url}: asked for bytes {position}-{stop - 1}, got {len(data)} bytes (does the "
                              f"server support Range requests?)")
        yield data
        position += len(data)
