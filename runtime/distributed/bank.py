"""The caption bank x gallery scoring behind the SK biases, spread over a pool of Ray actors.

Each actor holds the text encoder, the scorer and the index (opened from the storage every node
sees); the driver hands out tiles (a chunk of bank captions x a range of gallery rows), writes
each returned block into the memory-mapped [3, B, V] scratch file, and runs SK over it as the
single-process path does. Every (caption, video) score is computed by the same graphs from the
same inputs; only the tiling differs.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from runtime.scoring import LEVELS, RowRange, VideoSource

# Gallery rows per tile: big enough that a tile's scoring outweighs the call, small enough that a
# [3, BANK_CHUNK, rows] float32 block (96 MiB at 8192 rows) moves cheaply through the object store.
BANK_TILE_VIDEOS = 8192


class BankScorer:
    """Scores tiles of bank captions x index rows (one per Ray actor)."""

    def __init__(self, bundle_dir: str, backend: str, threads: int | None, index_root: str, rows: int) -> None:
        from runtime.backends import open_session, resolve_backend
        from runtime.bundle import load_bundle
        from runtime.errors import GalleryIndexError
        from runtime.index import GalleryIndex
        from runtime.scoring import Scorer
        from runtime.text import TextEncoder

        bundle = load_bundle(bundle_dir)
        resolved = resolve_backend(backend, bundle)
        self.text = TextEncoder(bundle, resolved, threads)
        # an actor that scores bank chunks against the whole index until the job ends
        self.scorer = Scorer(open_session(bundle, "scorer", resolved, threads, split_text_side=True), bundle.config)
        self.index = GalleryIndex(index_root, include_pending=True)
        if len(self.index) != rows:
            raise GalleryIndexError(f"a bank scorer sees {len(self.index)} rows in {index_root} but the driver "
                                    f"{rows}; every node must see the same index directory (shared storage)")
        self._chunk: tuple[int, Any] = (-1, None)

    def score(self, c0: int, captions: list[str], v0: int, v1: int, memory_mb: float
              ) -> tuple[int, int, np.ndarray]:
        """(c0, v0, [3, len(captions), v1 - v0] level scores)."""
        from runtime.scoring import score_matrix

        if self._chunk[0] != c0:  # tiles come chunk by chunk: encode each chunk once per actor
            self._chunk = (c0, self.text.encode(captions, what="bank caption", first_number=c0 + 1))
        out = score_matrix(self.scorer, self._chunk[1], RowRange(self.index, v0, v1), memory_mb)
        return c0, v0, np.stack([out[level] for level in LEVELS])


def ray_bank_biases(ray: Any, *, bundle_dir: Path, index_root: Path, backend: str, actors: int,
                    actor_options: dict[str, Any], tile_videos: int = BANK_TILE_VIDEOS) -> Callable[..., np.ndarray]:
    """A ``compute`` for :func:`runtime.ingest.biases.update_biases` that scores on ``actors`` Ray actors;
    each resolves ``backend`` (as asked for, e.g. auto) on its own machine."""
    from runtime.ingest.biases import BANK_CHUNK, biases_from_bank_scores

    def compute(videos: VideoSource, bundle: Any, captions: list[str], *, memory_mb: float, threads: int | None,
                scratch: Path, progress: Callable[[int], None] | None = None, **_: Any) -> np.ndarray:
        from ray.util import ActorPool

        n_bank, n_video = len(captions), len(videos)
        remote = ray.remote(BankScorer).options(max_restarts=-1, max_task_retries=-1, **actor_options)
        pool = ActorPool([remote.remote(str(bundle_dir), backend, threads, str(index_root), n_video)
                          for _ in range(max(1, actors))])
        tiles = [(c0, captions[c0:c0 + BANK_CHUNK], v0, min(v0 + tile_videos, n_video))
                 for c0 in range(0, n_bank, BANK_CHUNK) for v0 in range(0, n_video, tile_videos)]

        def fill(sims: np.ndarray) -> None:
            for c0, v0, block in pool.map_unordered(
                    lambda actor, t: actor.score.remote(t[0], t[1], t[2], t[3], memory_mb), tiles):
                sims[:, c0:c0 + block.shape[1], v0:v0 + block.shape[2]] = block
                if progress:
                    progress(block.shape[1] * block.shape[2])

        return biases_from_bank_scores(scratch, n_bank, n_video, bundle.config.sk_iterations, fill)

    return compute
