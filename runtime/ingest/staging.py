"""Sources made ready for the decoders: a local file is hashed on a thread while it is decoded; a
URL is downloaded ahead of the decoders into a temporary directory (``runtime.remote``), hashed as
it arrives, decoded from that complete local copy and deleted once decoded.

:func:`stage` yields one :class:`Staged` per listed video, in list order, at most ``ahead``
downloads running or waiting ahead of the consumer (disk use: ``ahead`` files at most, each under
the size limit), in a :func:`scratch` directory. A URL that cannot be read after its retries
comes out with ``error`` set.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.ingest.files import file_identity
from runtime.remote import RemoteError, RemoteSettings, Source, download, is_url
from runtime.thumbnails import ThumbnailError, make_thumbnail

logger = logging.getLogger(__name__)


@dataclass
class Staged:
    """One listed video made ready: ``local`` is the file to decode (a temporary copy of a URL),
    ``identity`` its index identity (a future for local files), ``error`` why a URL failed."""

    vid: str
    source: Source
    local: Path | None = None
    identity: Future | dict[str, Any] | None = None
    error: str | None = None

    def identity_now(self) -> dict[str, Any]:
        """The identity (waits for a local file's hash; OSError when it could not be read)."""
        identity = self.identity
        return identity.result() if isinstance(identity, Future) else dict(identity or {})

    def release(self) -> None:
        """Delete the temporary copy of a URL (a local file is left alone)."""
        if is_url(self.source) and self.local is not None:
            self.local.unlink(missing_ok=True)


def _fetch(vid: str, url: str, directory: Path, number: int, settings: RemoteSettings,
           thumbnails: Path | None) -> Staged:
    local = directory / f"{number}{Path(url.split('?', 1)[0]).suffix[:8]}"
    try:
        identity = download(url, local, settings)
    except RemoteError as exc:
        local.unlink(missing_ok=True)
        logger.warning("%s", exc)
        return Staged(vid, url, error=str(exc))
    if thumbnails is not None:  # from this copy: the thumbnail writer then finds it made
        try:
            make_thumbnail(thumbnails, {"id": vid, **identity}, local)
        except ThumbnailError as exc:
            logger.debug("thumbnail of %s left to the backfill: %s", url, exc)
    return Staged(vid, url, local, identity)


def stage(todo: Iterable[tuple[str, Source]], pool: Executor, ahead: int, directory: Path,
          settings: RemoteSettings | None = None, thumbnails: Path | None = None) -> Iterator[Staged]:
    """Each ``(id, source)`` of ``todo`` made ready, in order (see the module doc); URLs are
    downloaded into ``directory``, which the caller deletes once everything is decoded. With
    ``thumbnails`` (the index directory) a URL's thumbnail is made from its downloaded copy, so
    it is not downloaded a second time for it."""
    settings = settings or RemoteSettings.from_env()
    pending: deque[Future | Staged] = deque()
    for number, (vid, source) in enumerate(todo):
        if is_url(source):
            pending.append(pool.submit(_fetch, vid, str(source), directory, number, settings, thumbnails))
        else:
            pending.append(Staged(vid, source, Path(source), pool.submit(file_identity, Path(source))))
        while len(pending) > max(ahead, 0):
            yield _ready(pending.popleft())
    while pending:
        yield _ready(pending.popleft())


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A temporary directory for downloaded copies, deleted with what is left in it."""
    with tempfile.TemporaryDirectory(prefix="ucofia-url-", ignore_cleanup_errors=True) as tmp:
        yield Path(tmp)


def _ready(item: Future | Staged) -> Staged:
    return item.result() if isinstance(item, Future) else item
