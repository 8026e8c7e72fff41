"""Advisory file locks: one writer per index, one merge per output directory."""
from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from runtime.errors import GalleryIndexError
from runtime.index.format import LOCK


@contextmanager
def file_lock(path: Path, message: str) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if needed); GalleryIndexError(message) when taken."""
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GalleryIndexError(message) from None
        yield


def writer_lock(root: Path) -> AbstractContextManager[None]:
    """The lock of the one process that may write the index ``root``."""
    return file_lock(root / LOCK, f"another process is writing the index {root} (lock {root / LOCK} held)")
