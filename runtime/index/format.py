"""The index's on-disk names and its ``index.json`` state as typed records.

docs/index-format.md specifies every file and field; this module only names them and converts the
state between JSON and dataclasses. ``from_dict`` reads every format in :data:`READABLE_FORMATS`;
``to_dict`` writes the keys the current writer writes, and keeps keys this code does not know as
they were (a reader ignores fields added later, a writer must not drop them).
"""
from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from runtime.bundle.contract import VIDEO_ROLES
from runtime.errors import GalleryIndexError
from ucofia.config import LEVELS

INDEX_FORMAT = "ucofia.index/3"
# Formats this code reads (1: no entries.json; 2: float32 shards without removed rows).
READABLE_FORMATS = ("ucofia.index/1", "ucofia.index/2", INDEX_FORMAT)
LEGACY_STORE = "float32"  # the store of format 1 and 2 indexes
STATE = "index.json"
SHARDS = "shards"
IDS = "ids.json"
ENTRIES = "entries.json"
FAILED = "failed.jsonl"
LEGACY_BIASES = "biases.npy"  # format 1/2 name; format 3 names the file by content
BIASES_PREFIX = "biases-"
STAGE1_PREFIX = "stage1-"
LEGACY_STAGE1 = ("faiss.index", "faiss.json")  # format 2's stage-1 cache
LOCK = ".lock"
# The per-row feature arrays of a shard (the scorer's video inputs), and every array a shard holds.
FEATURE_ROLES = VIDEO_ROLES
SHARD_ARRAYS = FEATURE_ROLES + ("video_mask",)


class IndexChangedError(GalleryIndexError):
    """Files of the state this reader opened were replaced by a later update (e.g. compaction)."""


def ids_digest(ids: list[str]) -> str:
    """sha256 of the ordered gallery ids (ties caches such as biases to one gallery)."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def _unknown(data: Mapping[str, Any], known: Iterable[str]) -> dict[str, Any]:
    """The keys of ``data`` a record does not model, kept so that a rewrite does not drop them."""
    names = set(known)
    return {key: copy.deepcopy(value) for key, value in data.items() if key not in names}


@dataclass(frozen=True)
class ShardRecord:
    """One shard in the state: its directory name, physical row count, store, and the local rows
    that are no longer part of the gallery."""

    name: str
    count: int
    store: str = LEGACY_STORE
    removed: tuple[int, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def live_count(self) -> int:
        """Rows of the shard still in the gallery."""
        return self.count - len(self.removed)

    def with_removed(self, rows: Iterable[int]) -> ShardRecord:
        """This record with ``rows`` (local, physical) removed as well."""
        return replace(self, removed=tuple(sorted(set(self.removed) | {int(r) for r in rows})))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShardRecord:
        return cls(name=str(data["name"]), count=int(data["count"]), store=str(data.get("store", LEGACY_STORE)),
                   removed=tuple(int(r) for r in data.get("removed") or ()),
                   extra=_unknown(data, ("name", "count", "store", "removed")))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "count": self.count, "store": self.store}
        if self.removed:
            out["removed"] = list(self.removed)
        out.update(copy.deepcopy(dict(self.extra)))
        return out


@dataclass(frozen=True)
class BankRecord:
    """The caption bank file the biases were computed from."""

    path: str
    sha256: str | None = None
    captions: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BankRecord:
        captions = data.get("captions")
        return cls(path=str(data["path"]), sha256=data.get("sha256"),
                   captions=None if captions is None else int(captions),
                   extra=_unknown(data, ("path", "sha256", "captions")))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path}
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        if self.captions is not None:
            out["captions"] = self.captions
        out.update(copy.deepcopy(dict(self.extra)))
        return out


@dataclass(frozen=True)
class BiasesRecord:
    """The state's description of the SK video biases file (``biases`` in index.json)."""

    ids_sha256: str
    levels: tuple[str, ...] = LEVELS
    file: str | None = None  # None: a format 1/2 index, whose file is LEGACY_BIASES
    bank: BankRecord | None = None
    sk_iterations: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def file_name(self) -> str:
        """The biases file, relative to the index directory."""
        return self.file or LEGACY_BIASES

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BiasesRecord:
        bank = data.get("bank")
        iterations = data.get("sk_iterations")
        return cls(ids_sha256=str(data["ids_sha256"]), levels=tuple(data.get("levels", LEVELS)), file=data.get("file"),
                   bank=None if bank is None else BankRecord.from_dict(bank),
                   sk_iterations=None if iterations is None else int(iterations),
                   extra=_unknown(data, ("bank", "sk_iterations", "file", "ids_sha256", "levels")))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.bank is not None:
            out["bank"] = self.bank.to_dict()
        if self.sk_iterations is not None:
            out["sk_iterations"] = self.sk_iterations
        out.update(copy.deepcopy(dict(self.extra)))
        if self.file is not None:
            out["file"] = self.file
        out["ids_sha256"] = self.ids_sha256
        out["levels"] = list(self.levels)
        return out


@dataclass
class PendingChanges:
    """Shards and removals of an unfinished ``index`` run, not yet visible to readers."""

    shards: list[ShardRecord] = field(default_factory=list)
    removed: dict[str, tuple[int, ...]] = field(default_factory=dict)  # shard name -> local rows
    extra: dict[str, Any] = field(default_factory=dict)

    def remove(self, located: Mapping[str, Iterable[int]]) -> None:
        """Add removals (shard name -> local physical rows)."""
        for name, rows in located.items():
            self.removed[name] = tuple(sorted(set(self.removed.get(name, ())) | {int(r) for r in rows}))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PendingChanges:
        return cls(shards=[ShardRecord.from_dict(r) for r in data.get("shards", [])],
                   removed={str(name): tuple(int(r) for r in rows) for name, rows in data.get("removed", {}).items()},
                   extra=_unknown(data, ("shards", "removed")))

    def to_dict(self) -> dict[str, Any]:
        return {"shards": [r.to_dict() for r in self.shards],
                "removed": {name: list(rows) for name, rows in self.removed.items()}, **copy.deepcopy(self.extra)}


@dataclass
class IndexState:
    """The content of ``index.json``: what the index is (format, bundle, config, store) and which
    files make up its gallery (shards, biases), plus an unfinished run's pending changes."""

    format: str
    fingerprint: str
    config: dict[str, Any]  # the bundle's UCoFiAConfig.to_dict(), kept as written
    shards: list[ShardRecord]
    store: str = LEGACY_STORE
    biases: BiasesRecord | None = None
    created: float | None = None
    bundle: str | None = None  # absolute path of the bundle of the last writer
    next_shard: int | None = None  # None: written before the counter existed (format 1/2)
    updated: float | None = None
    pending: PendingChanges | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def new(cls, fingerprint: str, config: dict[str, Any], store: str, created: float) -> IndexState:
        """The state of a new, empty index."""
        return cls(format=INDEX_FORMAT, fingerprint=fingerprint, config=config, shards=[], store=store,
                   created=created)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IndexState:
        """The state of any readable format (KeyError, TypeError or ValueError when malformed)."""
        if not isinstance(data, Mapping) or not isinstance(data["config"], Mapping):
            raise TypeError("the state and its config must be JSON objects")
        biases, pending, next_shard = data.get("biases"), data.get("pending"), data.get("next_shard")
        return cls(format=str(data["format"]), fingerprint=str(data["fingerprint"]),
                   config=copy.deepcopy(dict(data["config"])),
                   shards=[ShardRecord.from_dict(r) for r in data["shards"]],
                   store=str(data.get("store", LEGACY_STORE)),
                   biases=BiasesRecord.from_dict(biases) if biases else None,
                   created=data.get("created"), bundle=data.get("bundle"),
                   next_shard=None if next_shard is None else int(next_shard), updated=data.get("updated"),
                   pending=PendingChanges.from_dict(pending) if pending else None,
                   extra=_unknown(data, ("format", "fingerprint", "config", "store", "shards", "biases", "created",
                                         "bundle", "next_shard", "updated", "pending")))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``index.json`` (keys in the order a new index gets them)."""
        out: dict[str, Any] = {"format": self.format, "fingerprint": self.fingerprint,
                               "config": copy.deepcopy(self.config), "store": self.store,
                               "shards": [r.to_dict() for r in self.shards],
                               "biases": None if self.biases is None else self.biases.to_dict()}
        optional = {"created": self.created, "bundle": self.bundle, "next_shard": self.next_shard,
                    "updated": self.updated}
        out.update({key: value for key, value in optional.items() if value is not None})
        if self.pending is not None:
            out["pending"] = self.pending.to_dict()
        out.update(copy.deepcopy(self.extra))
        return out

    def copy(self) -> IndexState:
        """An independent copy (a writer builds the next state aside, then saves it at once)."""
        return copy.deepcopy(self)

    def effective_shards(self, include_pending: bool) -> list[ShardRecord]:
        """The shard records, with the pending (unpublished) shards and removals applied when
        ``include_pending`` (what the writer of an unfinished ``index`` run works on)."""
        if not include_pending or self.pending is None:
            return list(self.shards)
        removed = self.pending.removed
        return [record.with_removed(removed.get(record.name, ())) if record.removed or removed.get(record.name)
                else record for record in self.shards + self.pending.shards]

    def shard_names(self) -> set[str]:
        """Names of every shard the state refers to, pending ones included."""
        return {record.name for record in self.effective_shards(include_pending=True)}

    def first_free_shard_number(self) -> int:
        """The shard counter of an index written before it was recorded: past every numeric name."""
        numbers = [int(r.name) for r in self.shards if r.name.isdigit()]
        return max(numbers, default=-1) + 1
