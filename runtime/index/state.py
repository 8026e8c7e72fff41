"""Reading and replacing ``index.json``, the one file of an index that changes (see
docs/index-format.md, "Format 3: updates and crash safety")."""
from __future__ import annotations

import json
from pathlib import Path

from runtime.errors import GalleryIndexError
from runtime.index.format import READABLE_FORMATS, STATE, IndexState
from ucofia.io_utils import atomic_write_text


def read_state(root: Path) -> IndexState:
    """The state of the index ``root``; GalleryIndexError when it is missing, corrupt or of a format
    this code does not read."""
    path = root / STATE
    if not path.is_file():
        raise GalleryIndexError(f"{root} is not a ucofia index ({STATE} missing); build one with `ucofia-run index`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GalleryIndexError(f"{path} is corrupt ({exc}); rebuild the index") from None
    found = data.get("format") if isinstance(data, dict) else None
    if found not in READABLE_FORMATS:
        raise GalleryIndexError(f"{path}: unsupported index format {found!r} (this version reads "
                                f"{', '.join(READABLE_FORMATS)}); rebuild the index or upgrade ucofia")
    try:
        return IndexState.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise GalleryIndexError(f"{path} is corrupt ({exc.__class__.__name__}: {exc}); rebuild the index") from None


def write_state(root: Path, state: IndexState) -> None:
    """Replace ``root/index.json`` with ``state`` atomically (temp file + rename)."""
    atomic_write_text(root / STATE, json.dumps(state.to_dict(), indent=1))
