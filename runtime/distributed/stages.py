"""What the workers of the Ray index pipeline do, free of Ray (tested directly).

Both stages take and return column batches (name -> numpy array), the form Ray Data's
``map_batches(batch_format="numpy")`` passes. A decode batch carries ``id`` and ``path``; each
stage adds its columns and passes every row on, failed ones included (``error`` non-empty), so the
driver sees every video exactly once whatever happened to it.
"""
from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from runtime.faults import crash_once
from runtime.index import IDS, SHARDS, ShardRecord, write_shard
from runtime.remote import RemoteSettings, is_url
from ucofia.data.video import VideoSpec, decode_many, to_model_input

Batch = dict[str, np.ndarray]
SHARD_PREFIX = "ray-"


def _strings(values: Any) -> list[str]:
    return [str(v) for v in np.asarray(values).tolist()]


def decode_items(todo: list[tuple[str, Path]], metadata: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """The rows of the pipeline's input: id, path and the user metadata (JSON) of each video."""
    return [{"id": vid, "path": str(path), "metadata": json.dumps(metadata.get(vid) or {})} for vid, path in todo]


def decode_batch(batch: Batch, spec: VideoSpec, thumbnails_root: str | None = None,
                 remote: RemoteSettings | None = None) -> Batch:
    """Decode each video of the batch (one thread each: a Ray task holds one CPU) and hash its
    file (``metadata``, when the batch has the column: each row's user metadata as JSON); frames
    stay uint8 ``[F, S, S, 3]`` (a quarter of float32 in the object store). A URL is downloaded
    (one ahead of the decoder) and decoded from its local copy, as in the single-process path
    (``runtime.ingest.staging``).

    Adds ``frames``, ``video_mask`` (float32 [F]), ``entry`` (the index entry as JSON), ``error``
    ("" when decoded) and ``decode_s``. Failures get zero frames and the same error text as the
    single-process path. With ``thumbnails_root`` (the index directory) each decoded video's
    thumbnail is written there too, so thumbnails scale with the decode tasks; one that cannot be
    made is left to the driver's backfill, which reports it. ``remote``: the URL settings (the
    driver's, so every node uses the same; default: this process's environment)."""
    from runtime.ingest.files import unreadable_reason, video_entry
    from runtime.ingest.staging import scratch, stage
    from runtime.thumbnails import ThumbnailError, make_thumbnail

    ids, paths = _strings(batch["id"]), _strings(batch["path"])
    metadata = [json.loads(m) for m in _strings(batch["metadata"])] if "metadata" in batch else [None] * len(ids)
    shape = (spec.max_frames, spec.image_size, spec.image_size, 3)
    frames = np.zeros((len(ids), *shape), np.uint8)
    masks = np.zeros((len(ids), spec.max_frames), np.float32)
    entries, errors, seconds = [""] * len(ids), [""] * len(ids), np.zeros(len(ids), np.float64)
    start = time.perf_counter()
    sources = [(vid, path if is_url(path) else Path(path)) for vid, path in zip(ids, paths)]
    with scratch() as directory, ThreadPoolExecutor(max_workers=1, thread_name_prefix="ucofia-fetch") as pool:
        staged = stage(sources, pool, 1, directory, remote,
                       thumbnails=Path(thumbnails_root) if thumbnails_root else None)
        for i, (item, path, meta) in enumerate(zip(staged, paths, metadata)):
            if item.error is not None:
                errors[i] = item.error
            else:
                outcome = next(decode_many([item.local], spec, workers=1, threads_per_video=1, prefetch=1))
                item.release()
                if not outcome.ok:
                    errors[i] = str(outcome.error).replace(str(item.local), path)
                else:
                    try:
                        entry = video_entry(item.vid, item.identity_now(), outcome.video, meta)
                        entries[i] = json.dumps(entry)
                        frames[i] = outcome.video.frames_uint8
                        masks[i] = outcome.video.video_mask
                    except OSError as exc:  # the file went away or became unreadable after decoding
                        errors[i] = f"{path}: {unreadable_reason(exc)}"
                    else:
                        if thumbnails_root is not None:
                            try:
                                make_thumbnail(thumbnails_root, entry)
                            except ThumbnailError:
                                pass
            now = time.perf_counter()
            seconds[i], start = now - start, now
    return {"id": np.asarray(ids, dtype=object), "path": np.asarray(paths, dtype=object), "frames": frames,
            "video_mask": masks, "entry": np.asarray(entries, dtype=object),
            "error": np.asarray(errors, dtype=object), "decode_s": seconds}


def shard_name(ids: list[str], entries: list[dict[str, Any]] | None = None) -> str:
    """The shard of a batch is named by its rows: their ids and, where ``entries`` record it, the
    content hash (``sha256``) of each row's file. A retried batch (the same files) writes the same
    shard again; a batch of the same ids whose files changed since gets a shard of its own."""
    if entries is not None and len(entries) != len(ids):
        raise ValueError(f"{len(entries)} entries for {len(ids)} ids")
    keys = ids if entries is None else [f"{vid}\t{entry.get('sha256', '')}" for vid, entry in zip(ids, entries)]
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()
    return f"{SHARD_PREFIX}{digest[:24]}"


def write_shard_once(shard_root: Path, ids: list[str], features: dict[str, np.ndarray],
                     entries: list[dict[str, Any]], store: str) -> ShardRecord:
    """:func:`runtime.index.write_shard` under :func:`shard_name`; when an earlier attempt of the
    same batch already wrote it (same ids and files), that shard is kept (shards are never changed)."""
    name = shard_name(ids, entries)
    record = ShardRecord(name=name, count=len(ids), store=store)
    existing = shard_root / name / IDS
    if existing.is_file() and json.loads(existing.read_text()) == ids:
        return record
    try:
        return write_shard(shard_root, name, ids, features, entries, store)
    except OSError:
        if existing.is_file() and json.loads(existing.read_text()) == ids:  # written meanwhile by a retry
            return record
        raise


class ShardEncoder:
    """One encoder (a Ray actor holds one): runs the bundle's video encoder on a decoded batch and
    writes the videos that encoded to finite, storable features as one shard of the index.

    Adds ``shard`` (name, "" when the row was not stored), ``shard_rows`` (rows in that shard),
    ``encode_s`` and ``write_s`` (the batch's seconds, shared out over its rows) and fills
    ``error`` for rows :func:`runtime.ingest.screen_features` refuses. Frames are dropped from
    the output: the driver only needs what to commit."""

    def __init__(self, bundle_dir: str, backend: str, threads: int | None, index_root: str, store: str,
                 convert_threads: int = 1) -> None:
        from runtime.backends import open_session, resolve_backend
        from runtime.bundle import load_bundle

        bundle = load_bundle(bundle_dir)
        self.backend = resolve_backend(backend, bundle)  # on this worker's machine
        self.session = open_session(bundle, "video_encoder", self.backend, threads)
        self.spec = VideoSpec.from_config(bundle.config)
        self.shard_root = Path(index_root) / SHARDS
        self.store = store
        # numpy releases the GIL on whole-array work: several threads convert a batch's frames at once
        self._convert = ThreadPoolExecutor(convert_threads) if convert_threads > 1 else None

    def _model_input(self, frames: np.ndarray, masks: np.ndarray, rows: list[int]) -> np.ndarray:
        """float32 [n, F, 3, S, S] encoder input of the given rows (bit-identical either way)."""
        def one(i: int) -> np.ndarray:
            return to_model_input(frames[i], masks[i], self.spec)

        return np.stack(list(self._convert.map(one, rows)) if self._convert else [one(i) for i in rows])

    def __call__(self, batch: Batch) -> Batch:
        from runtime.ingest.batches import screen_features

        crash_once("ray:encode")
        ids, errors = _strings(batch["id"]), _strings(batch["error"])
        n = len(ids)
        shard, shard_rows = [""] * n, np.zeros(n, np.int64)
        encode_s, write_s = np.zeros(n), np.zeros(n)
        ok = [i for i in range(n) if not errors[i]]
        if ok:
            start = time.perf_counter()
            frames = self._model_input(batch["frames"], batch["video_mask"], ok)
            mask = np.stack([np.asarray(batch["video_mask"][i], np.float32) for i in ok])
            features = {**self.session.run({"frames": frames, "video_mask": mask}), "video_mask": mask}
            entries = [json.loads(str(batch["entry"][i])) for i in ok]
            bad, refused = screen_features(entries, features, self.store)
            for (entry, error) in refused:
                errors[ids.index(entry["id"])] = error
            encoded = time.perf_counter()
            keep = [i for i, dropped in zip(ok, bad) if not dropped]
            if keep:
                kept = {role: value[~bad] for role, value in features.items()}
                record = write_shard_once(self.shard_root, [ids[i] for i in keep], kept,
                                          [e for e, dropped in zip(entries, bad) if not dropped], self.store)
                for i in keep:
                    shard[i], shard_rows[i] = record.name, record.count
            done = time.perf_counter()
            encode_s[ok], write_s[ok] = (encoded - start) / len(ok), (done - encoded) / len(ok)
        return {"id": np.asarray(ids, dtype=object), "path": batch["path"], "error": np.asarray(errors, dtype=object),
                "shard": np.asarray(shard, dtype=object), "shard_rows": shard_rows, "decode_s": batch["decode_s"],
                "encode_s": encode_s, "write_s": write_s}
