"""Benchmark: one query by example (``--like ID``, ``--query-video FILE``) vs one text query.

An exported bundle of the model with random weights (``--config``: tiny by default, ``vit_b32``
for the published geometry) and synthetic galleries (``large_gallery.build_index``) of 10^4 and
10^5 videos. For each gallery, warm and in one process, interleaved round by round:

* text: encode one query and score it against every video, all three levels (exhaustive search,
  ``runtime.search.Searcher``), and with ``--two-stage`` (shortlist 1000);
* like: the cosine of one stored video-level vector with every row's (``rank_similar``);
* upload: decode and encode one clip file with the video encoder, then the same ranking.

Printed side by side: median milliseconds per query and each one's ratio to the exhaustive text
query. The gallery's ``video`` rows are read from the shard files on every query (page cache
warm), as the command line does.

    .venv/bin/python benchmarks/search_by_example.py -o benchmarks/results/search_by_example_tiny.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from large_gallery import build_index
from serve import export_bundle

QUERY = "a man plays a guitar on a stage"
CLIP_SECONDS = 8


def make_clip(path: Path) -> Path:
    """An 8-second 320x240 H.264 clip of moving noise (the upload)."""
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for _ in range(CLIP_SECONDS * 25):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="tiny", choices=("tiny", "vit_b32"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--store", default="float16", choices=("float32", "float16", "int8"))
    parser.add_argument("--work", type=Path, default=None, help="keep bundle and indexes here (reused)")
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()

    from runtime.backends import open_session
    from runtime.bundle import load_bundle
    from runtime.deployment import load_query_models
    from runtime.index import GalleryIndex
    from runtime.search import Searcher, SearchOptions
    from runtime.search.similar import UploadLimits, query_by_features, query_by_id, rank_similar
    from ucofia.data.video import VideoSpec

    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        bundle_dir = work / f"bundle_{args.config}"
        export_bundle(args.config, bundle_dir)
        bundle = load_bundle(bundle_dir)
        models = load_query_models(bundle, "cpu", None)
        encoder = open_session(bundle, "video_encoder", "cpu", None)
        spec = VideoSpec.from_config(bundle.config)
        clip = make_clip(work / "upload.mp4")
        machine = common.machine()
        sizes = []
        for n in args.sizes:
            index = work / f"index_{args.config}_{n}_{args.store}"
            built = build_index(index, bundle, n, seed=0, per_topic=10, store=args.store)
            gallery = GalleryIndex(index)
            searcher = Searcher(models.scorer, gallery)
            kinds = {
                "text_exhaustive": lambda: searcher.search(models.text.encode([QUERY]), SearchOptions(top_k=10)),
                "text_two_stage": lambda: searcher.search(models.text.encode([QUERY]),
                                                          SearchOptions(top_k=10, two_stage=True, shortlist=1000)),
                "like": lambda: rank_similar(gallery, [query_by_id(gallery, gallery.ids[n // 2])], 10),
                "upload": lambda: rank_similar(gallery, [query_by_features(
                    gallery, *_encoded(encoder, spec, clip, UploadLimits()), include_self=False)], 10),
            }
            for fn in kinds.values():  # warm-up: sessions, page cache, the two-stage index
                fn()
            seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
            for _ in range(args.rounds):
                for kind, fn in kinds.items():
                    start = time.perf_counter()
                    fn()
                    seconds[kind].append(time.perf_counter() - start)
            medians = {kind: statistics.median(values) * 1000 for kind, values in seconds.items()}
            base = medians["text_exhaustive"]
            sizes.append({"videos": n, "index": built, "median_ms": {k: round(v, 2) for k, v in medians.items()},
                          "ratio_to_text_exhaustive": {k: round(v / base, 3) for k, v in medians.items()}})
            print(f"\n{n} videos ({args.config}, {args.store} store)")
            print(f"{'query':18}{'median ms':>12}{'x text':>10}")
            for kind, ms in medians.items():
                print(f"{kind:18}{ms:12.1f}{ms / base:10.2f}")
    common.write_result(args.output, {"benchmark": "search_by_example", "config": args.config, "store": args.store,
                                      "rounds": args.rounds, "sizes": sizes, "machine": machine,
                                      "upload": {"seconds": CLIP_SECONDS, "size": "320x240", "codec": "h264"}})


def _encoded(encoder, spec, clip, limits):
    from runtime.search.similar import encode_query_video

    vector, sha256 = encode_query_video(encoder, spec, clip, limits)
    return vector, "upload", sha256


if __name__ == "__main__":
    main()
