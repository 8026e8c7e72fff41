"""The gallery index on disk: per-video features in .npy shards plus a small JSON state.

Modules: ``format`` (file names, the typed ``index.json`` state), ``state`` (reading and replacing
it), ``shards`` (shard directories, row reads), ``store`` (stored dtypes), ``reader``
(:class:`GalleryIndex`), ``writer`` (:class:`IndexWriter`), ``compaction``, ``locks``,
``failures`` (failed.jsonl), ``entries`` (what a row was made from, its file and span),
``updates`` (remove, merge). The format itself is specified in docs/index-format.md.
"""
from __future__ import annotations

from runtime.index.compaction import COMPACT_ROWS
from runtime.index.entries import METADATA, RECORDED_FIELDS, file_of, is_windowed, metadata_of, source_key, span_of
from runtime.index.format import (
    ENTRIES,
    FAILED,
    FEATURE_ROLES,
    IDS,
    INDEX_FORMAT,
    LOCK,
    READABLE_FORMATS,
    SHARD_ARRAYS,
    SHARDS,
    STAGE1_PREFIX,
    STATE,
    BankRecord,
    BiasesRecord,
    IndexChangedError,
    IndexState,
    PendingChanges,
    ShardRecord,
    ids_digest,
)
from runtime.index.locks import file_lock, writer_lock
from runtime.index.reader import GalleryIndex, RowSubset
from runtime.index.shards import OpenShard, link_shard, write_shard
from runtime.index.writer import KEEP_BIASES, BiasesUpdate, IndexWriter, KeepBiases

__all__ = ["COMPACT_ROWS", "ENTRIES", "FAILED", "FEATURE_ROLES", "IDS", "INDEX_FORMAT", "KEEP_BIASES", "LOCK",
           "METADATA", "READABLE_FORMATS", "RECORDED_FIELDS", "SHARDS", "SHARD_ARRAYS", "STAGE1_PREFIX", "STATE",
           "BankRecord", "BiasesRecord", "BiasesUpdate", "GalleryIndex", "IndexChangedError", "IndexState",
           "IndexWriter", "KeepBiases", "OpenShard", "PendingChanges", "RowSubset", "ShardRecord", "file_lock",
           "file_of", "ids_digest", "is_windowed", "link_shard", "metadata_of", "source_key", "span_of",
           "write_shard", "writer_lock"]
