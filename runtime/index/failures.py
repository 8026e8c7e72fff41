"""``failed.jsonl``: the videos an index run could not index, rewritten atomically as a whole."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runtime.index.format import FAILED
from ucofia.io_utils import atomic_write_text

Failure = dict[str, Any]  # {"id", "path", "error", "time"}


def read_failures(root: Path) -> dict[str, Failure]:
    """id -> failure record of the index ``root`` (empty when it has no failed.jsonl)."""
    path = root / FAILED
    if not path.is_file():
        return {}
    failures = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            failures[record["id"]] = record
    return failures


def write_failures(root: Path, failures: dict[str, Failure]) -> None:
    """Replace ``root/failed.jsonl`` with ``failures`` (temp file + rename)."""
    atomic_write_text(root / FAILED, "".join(json.dumps(r) + "\n" for r in failures.values()))
