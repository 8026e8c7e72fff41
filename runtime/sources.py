"""Inputs of ``ucofia-run``: video lists and caption / query files."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from runtime.errors import QueryError, RuntimeUserError
from runtime.remote import Source, is_url, url_stem

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv",
                              ".flv", ".3gp", ".ts", ".gif"})
CAPTION_COLUMNS = ("sentence", "caption", "text", "query")


def _unique(pairs: list[tuple[str, Source]], where: str) -> list[tuple[str, Source]]:
    seen: dict[str, Source] = {}
    for vid, path in pairs:
        if vid in seen:
            raise RuntimeUserError(f"{where}: video id {vid!r} is used by both {seen[vid]} and {path}; "
                                   f"video ids (file names without extension) must be unique")
        seen[vid] = path
    return pairs


def list_videos(source: str | Path) -> list[tuple[str, Source]]:
    """(video id, path) pairs from a directory (searched recursively) or a list file.

    A list file holds one video per line: ``path`` or ``id<TAB>path`` (relative paths are taken
    from the list file's folder; blank lines and lines starting with # are skipped). A path may be
    a URL (``runtime.remote``: kept as a str). The id of a video is its file name without
    extension unless the list gives one.
    """
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
        if not files:
            raise RuntimeUserError(f"no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) under {source}")
        return _unique([(p.stem, p) for p in files], str(source))
    if not source.is_file():
        raise RuntimeUserError(f"--videos {source}: no such directory or list file")
    pairs: list[tuple[str, Source]] = []
    for line in source.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        vid, _, rest = line.partition("\t")
        given = rest if rest else vid
        if is_url(given):
            pairs.append((vid if rest else url_stem(given), given))
            continue
        path = Path(given)
        path = path if path.is_absolute() else source.parent / path
        pairs.append((vid if rest else path.stem, path))
    if not pairs:
        raise RuntimeUserError(f"video list {source} names no videos")
    return _unique(pairs, str(source))


def read_captions(path: str | Path, what: str = "captions") -> list[str]:
    """Texts from a .txt (one per line), .csv (column sentence/caption/text/query), .json or .jsonl file.

    Raises QueryError naming the line of an empty text.
    """
    path = Path(path)
    if not path.is_file():
        raise RuntimeUserError(f"{what} file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            column = next((c for c in CAPTION_COLUMNS if c in (reader.fieldnames or [])), None)
            if column is None:
                raise RuntimeUserError(f"{path}: no caption column (one of {', '.join(CAPTION_COLUMNS)}) in "
                                       f"header {reader.fieldnames}")
            rows = [(i + 2, row[column] or "") for i, row in enumerate(reader)]
    elif suffix in (".json", ".jsonl"):
        if suffix == ".json":
            items = json.loads(path.read_text())
            items = items.get("sentences", items) if isinstance(items, dict) else items
            numbered = list(enumerate(items, 1))
        else:
            numbered = [(i, json.loads(l)) for i, l in enumerate(path.read_text().splitlines(), 1) if l.strip()]
        rows = []
        for number, item in numbered:
            if isinstance(item, dict):
                item = next((item[c] for c in CAPTION_COLUMNS if c in item), None)
            if not isinstance(item, str):
                raise RuntimeUserError(f"{path} item {number}: expected a string or an object with one of "
                                       f"{', '.join(CAPTION_COLUMNS)}")
            rows.append((number, item))
    else:
        rows = list(enumerate(path.read_text().splitlines(), 1))
        while rows and not rows[-1][1].strip():  # trailing blank lines are not queries
            rows.pop()
    texts = []
    for number, text in rows:
        if not text.strip():
            raise QueryError(f"{path} line {number}: empty {_singular(what)}; "
                             f"remove the line or give it text")
        texts.append(text)
    if not texts:
        raise QueryError(f"{path} holds no {what}")
    return texts


def _singular(noun: str) -> str:
    """'queries' -> 'query', 'bank captions' -> 'bank caption' (for messages)."""
    if noun.endswith("ies"):
        return noun[:-3] + "y"
    return noun[:-1] if noun.endswith("s") else noun
