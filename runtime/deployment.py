"""The deployed model opened for queries: an index checked against the bundle it was built with,
and that bundle's text encoder and scorer on one backend (what search, evaluation and the service
load once); and the bundle an index update (remove, merge) recomputes the SK biases with."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime.backends import open_session, resolve_backend
from runtime.backends.precision import DEFAULT_SCORER_PRECISION
from runtime.bundle import Bundle, load_bundle
from runtime.bundle.contract import MANIFEST_FILE
from runtime.errors import GalleryIndexError
from runtime.index import GalleryIndex
from runtime.scoring import Scorer
from runtime.text import TextEncoder


@dataclass
class QueryModels:
    """A bundle's text encoder and scorer, loaded on ``backend`` (resolved: never ``auto``)."""

    bundle: Bundle
    backend: str
    text: TextEncoder
    scorer: Scorer


def load_query_models(bundle: Bundle, backend: str = "auto", threads: int | None = None,
                      scorer_precision: str = DEFAULT_SCORER_PRECISION, split_text_side: bool = False
                      ) -> QueryModels:
    """Resolve ``backend`` for ``bundle`` (a note says why when ``auto`` falls back) and load the
    text encoder and the scorer (``threads``: onnxruntime intra-op threads; ``scorer_precision``:
    float32, or the opt-in int8 of runtime.backends.precision; ``split_text_side``: for processes
    that will score a lot, see runtime.backends.selection.open_session)."""
    resolved = resolve_backend(backend, bundle)
    scorer = Scorer(open_session(bundle, "scorer", resolved, threads, scorer_precision,
                                 split_text_side=split_text_side), bundle.config)
    return QueryModels(bundle, resolved, TextEncoder(bundle, resolved, threads), scorer)


def check_searchable(gallery: GalleryIndex, bundle: Bundle) -> None:
    """GalleryIndexError unless ``gallery`` was built with ``bundle`` and holds videos."""
    gallery.check_bundle(bundle)
    if len(gallery) == 0:
        raise GalleryIndexError(f"index {gallery.root} holds no videos; run `ucofia-run index` first")


def open_index(index_dir: Path, bundle_dir: Path | None = None) -> tuple[GalleryIndex, Bundle]:
    """The index at ``index_dir`` and its bundle (``bundle_dir``, default the one the index
    recorded), checked to match and to hold videos."""
    gallery = GalleryIndex(index_dir)
    bundle = load_bundle(bundle_dir or gallery.bundle_path)
    check_searchable(gallery, bundle)
    return gallery, bundle


def bundle_of(index_dir: Path, bundle_dir: Path | None, required: bool) -> Bundle | None:
    """The bundle an update of ``index_dir`` needs (``bundle_dir``, default the one the index
    recorded), checked against the index; None when it is not ``required``, not given and gone."""
    gallery = GalleryIndex(index_dir)
    path = bundle_dir or gallery.bundle_path
    if not required and bundle_dir is None and not (path / MANIFEST_FILE).is_file():
        return None
    bundle = load_bundle(path)
    gallery.check_bundle(bundle)
    return bundle
