"""Search results as records: what ``ucofia-run search`` writes and ``POST /v1/search`` answers.

A query's results are a ranked list of JSON-ready dicts. On a whole-file index, and on an index of
time windows searched with ``group_by="window"``, a record is one gallery row::

    {rank, video_id, [file_id, start, end,] score, levels, metadata}

(``file_id``, ``start`` and ``end`` only on windows). Grouped by file, a record is one file, with
the fields of its best window on top and its best windows listed::

    {rank, file_id, score, video_id, start, end, levels, metadata, windows: [{video_id, start, end, score, levels}]}

``score`` is the fused score (mean over the levels of level score + SK bias), ``levels`` the three
level scores, ``metadata`` the user metadata of the row's video-list row (``{}`` when none). Ranks
are absolute: a page of results (``SearchOptions.offset``) keeps the ranks of the full list.
The same records are written as JSONL (one object per query) or CSV (one row per
query and rank, or per query, file rank and window).
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from runtime.index import GalleryIndex, file_of, is_windowed, metadata_of, span_of
from runtime.scoring import LEVELS, TopK

Record = dict[str, Any]
OUTPUT_FORMATS = ("jsonl", "csv")


def row_records(index: GalleryIndex, top: TopK, query: int, k: int | None = None, first: int = 0) -> list[Record]:
    """The ranked rows of query number ``query`` (its first ``k``) as records, from rank ``first + 1``
    on; rows of -1 (fewer found than asked for, see ``TwoStage.search``) end the list."""
    windowed = len(index) > 0 and is_windowed(index.entries[0])
    entries = index.entries
    ids = index.ids
    rows = (top.indices[query] if k is None else top.indices[query][:k]).tolist()
    # Python floats of the row once (tolist), not a numpy scalar per value: the same values, a
    # fraction of the time for a service answer of 64 queries x 100 records
    fused = top.fused[query, :len(rows)].tolist()
    levels = [top.levels[lv][query, :len(rows)].tolist() for lv in LEVELS]
    records = []
    for r in range(first, len(rows)):
        row = rows[r]
        if row < 0:
            break
        record: Record = {"rank": r + 1, "video_id": ids[row]}
        if windowed:
            start, end = span_of(entries[row])
            record.update({"file_id": file_of(entries[row]), "start": start, "end": end})
        record.update({"score": fused[r], "levels": {lv: values[r] for lv, values in zip(LEVELS, levels)},
                       "metadata": metadata_of(entries[row])})
        records.append(record)
    return records


def to_jsonl(texts: Sequence[str], results: Sequence[list[Record]]) -> str:
    """One ``{"query": text, "results": [...]}`` object per line."""
    _check_lengths(texts, results)
    return "".join(json.dumps({"query": text, "results": records}, ensure_ascii=False) + "\n"
                   for text, records in zip(texts, results))


def to_csv(texts: Sequence[str], results: Sequence[list[Record]], grouped: bool) -> str:
    """One row per (query, rank); grouped by file, one row per (query, file rank, window)."""
    _check_lengths(texts, results)
    buf = io.StringIO()
    writer = csv.writer(buf)
    if grouped:
        writer.writerow(["query_index", "query", "rank", "file_id", "window_rank", "video_id", "start", "end",
                         "score", *LEVELS])
        for q, (text, records) in enumerate(zip(texts, results)):
            for record in records:
                for w, window in enumerate(record["windows"], 1):
                    writer.writerow([q, text, record["rank"], record["file_id"], w, window["video_id"],
                                     window["start"], window["end"], f"{window['score']:.6g}",
                                     *(f"{window['levels'][lv]:.6g}" for lv in LEVELS)])
        return buf.getvalue()
    windowed = any("file_id" in record for records in results for record in records)
    writer.writerow(["query_index", "query", "rank", "video_id", *(("file_id", "start", "end") if windowed else ()),
                     "score", *LEVELS])
    for q, (text, records) in enumerate(zip(texts, results)):
        for record in records:
            span = (record["file_id"], record["start"], record["end"]) if windowed else ()
            writer.writerow([q, text, record["rank"], record["video_id"], *span, f"{record['score']:.6g}",
                             *(f"{record['levels'][lv]:.6g}" for lv in LEVELS)])
    return buf.getvalue()


def format_results(texts: Sequence[str], results: Sequence[list[Record]], fmt: str, grouped: bool) -> str:
    """The results of ``texts`` in ``fmt`` (one of :data:`OUTPUT_FORMATS`)."""
    if fmt == "jsonl":
        return to_jsonl(texts, results)
    if fmt == "csv":
        return to_csv(texts, results, grouped)
    raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")


def _check_lengths(texts: Sequence[str], results: Sequence[list[Record]]) -> None:
    if len(texts) != len(results):
        raise ValueError(f"{len(texts)} queries but {len(results)} result lists")
