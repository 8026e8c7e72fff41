"""Benchmark: ingest (decode + encode) of the shared real clips through ucofia-run's index path.

The 30 real clips of the shared data folder kept outside the repository (``common.SHARED``: 24
MSR-VTT 1k-A test clips + 6 assorted real clips, 4 of them also shipped in tests/data/real_clips) are
indexed with a ViT-B/32-geometry bundle (random weights, ``export.export_bundle``) by
``runtime.ingest.local.encode_videos`` -- the code ``ucofia-run index`` runs: decoding in a worker pool
(``ucofia.data.video.decode_many``) overlapping the video encoder (onnxruntime CPU) over batches,
shards written to a real index. The run is instrumented, not changed: the decoded-clip iterator
and the encoder session are wrapped to time

* encode: wall time inside the video encoder;
* waiting for decode: wall time the ingest loop blocks on the next decoded clip (the encoder
  idles meanwhile) -- the "decode share" of ingest time;
* other: frame conversion, shard writes, bookkeeping.

For scale, the same clips are also decoded alone (the same pool) and encoded alone (pre-decoded
frames, the same batches), which gives decode's share of the total work if nothing overlapped.

    .venv/bin/python benchmarks/ingest.py -o benchmarks/results/ingest_vit_b32.json
    .venv/bin/python benchmarks/ingest.py --config tiny          # quick check
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

TARGET_DECODE_SHARE = 0.20


class _TimedIterator:
    """Wraps an iterator; accumulates the wall time spent waiting in next()."""

    def __init__(self, it) -> None:
        self.it, self.wait = iter(it), 0.0

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        try:
            return next(self.it)
        finally:
            self.wait += time.perf_counter() - start


class _TimedSession:
    def __init__(self, session) -> None:
        self.session, self.seconds, self.calls = session, 0.0, 0

    def run(self, inputs):
        start = time.perf_counter()
        try:
            return self.session.run(inputs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


def instrumented_ingest(bundle, clips: list[Path], out: Path, batch_size: int, workers: int, processes: bool,
                        threads: int | None) -> dict:
    """Run runtime.ingest.local.encode_videos with timing wrappers around decode and encode."""
    from runtime.index import IndexWriter
    from runtime.ingest import local as ingest
    from runtime.ingest.report import IngestReport

    timers: dict = {}
    real_decode, real_open = ingest.decode_many, ingest.open_session

    def decode_many(*a, **k):
        timers["decode"] = _TimedIterator(real_decode(*a, **k))
        return timers["decode"]

    def open_session(*a, **k):
        timers["encode"] = _TimedSession(real_open(*a, **k))
        return timers["encode"]

    ingest.decode_many, ingest.open_session = decode_many, open_session
    try:
        report = IngestReport(total=len(clips))
        with IndexWriter(out, bundle) as writer:
            start = time.perf_counter()
            ingest.encode_videos(writer, bundle, [(p.stem, p) for p in clips], backend="cpu", batch_size=batch_size,
                                 workers=workers, processes=processes, threads=threads, report=report)
            wall = time.perf_counter() - start
    finally:
        ingest.decode_many, ingest.open_session = real_decode, real_open
    encode, wait = timers["encode"].seconds, timers["decode"].wait
    return {
        "workers": workers, "process_pool": processes, "batch_size": batch_size, "wall_seconds": round(wall, 2),
        "videos": report.indexed, "failed": len(report.failed), "videos_per_second": round(report.indexed / wall, 3),
        "encode_seconds": round(encode, 2), "encoder_calls": timers["encode"].calls,
        "waiting_for_decode_seconds": round(wait, 2), "other_seconds": round(wall - encode - wait, 2),
        "share_encode": round(encode / wall, 3), "share_waiting_for_decode": round(wait / wall, 3),
        "share_other": round((wall - encode - wait) / wall, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["tiny", "vit_b32"], default="vit_b32")
    parser.add_argument("--bundle", type=Path, default=None, help="reuse an exported bundle of this config")
    parser.add_argument("--batch-size", type=int, default=None, help="default: ucofia-run index's default")
    parser.add_argument("--workers", type=int, default=None, help="decoder workers (default: ucofia-run's default)")
    parser.add_argument("--threads", type=int, default=None, help="encoder intra-op threads (default: onnxruntime's)")
    parser.add_argument("--process-pool", action="store_true", help="also measure decoding in processes")
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()
    common.show_library_output()

    import ucofia
    from export import export_bundle
    from runtime.backends import open_session
    from runtime.bundle import load_bundle
    from runtime.ingest import local as ingest
    from ucofia.data.video import VideoSpec, decode_many

    clips = common.shared_clips()
    batch = args.batch_size or ingest.DEFAULT_BATCH
    workers = args.workers or ingest.default_workers()
    machine = common.machine({"decode_workers": workers,
                              "encoder_intra_op_threads": args.threads or "onnxruntime default"})
    with tempfile.TemporaryDirectory(prefix="ucofia-ingest-") as tmp:
        bundle_dir = args.bundle
        if bundle_dir is None:
            bundle_dir = Path(tmp) / "bundle"
            export_bundle(ucofia.build_model(common.config(args.config), seed=0), bundle_dir)
        bundle = load_bundle(bundle_dir)
        spec = VideoSpec.from_config(bundle.config)

        print(f"[ingest] {len(clips)} clips: decode alone ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        decoded = list(decode_many(clips, spec, workers=workers))
        decode_alone = time.perf_counter() - start
        print("[ingest] encode alone ...", file=sys.stderr, flush=True)
        encoder = open_session(bundle, "video_encoder", "cpu", args.threads)
        ok = [o for o in decoded if o.ok]
        frames = [o.video.to_model_input(spec) for o in ok]
        masks = [o.video.video_mask.astype(np.float32) for o in ok]
        encoder.run({"frames": np.stack(frames[:1]), "video_mask": np.stack(masks[:1])})  # warm-up
        start = time.perf_counter()
        for b0 in range(0, len(ok), batch):
            encoder.run({"frames": np.stack(frames[b0:b0 + batch]), "video_mask": np.stack(masks[b0:b0 + batch])})
        encode_alone = time.perf_counter() - start
        del frames, masks, decoded, encoder

        runs = {}
        for processes in ([False, True] if args.process_pool else [False]):
            name = "process_pool" if processes else "thread_pool"
            print(f"[ingest] index path ({name}) ...", file=sys.stderr, flush=True)
            runs[name] = instrumented_ingest(bundle, clips, Path(tmp) / f"index_{name}", batch, workers, processes,
                                             args.threads)
    main_run = runs["thread_pool"]
    result = {
        "benchmark": "ingest", "config": args.config, "clips": len(clips), "decoded_ok": len(ok),
        "machine": machine, "load_average_after": common.load_average(),
        "alone": {"decode_seconds": round(decode_alone, 2), "encode_seconds": round(encode_alone, 2),
                  "decode_share_of_work_without_overlap": round(decode_alone / (decode_alone + encode_alone), 3),
                  "decode_videos_per_second": round(len(clips) / decode_alone, 2),
                  "encode_videos_per_second": round(len(ok) / encode_alone, 3)},
        "index_path": runs,
        "target_decode_share": TARGET_DECODE_SHARE,
        "meets_target": main_run["share_waiting_for_decode"] < TARGET_DECODE_SHARE,
        "summary": [
            f"{name}: {r['videos']} videos in {r['wall_seconds']:.1f} s = {r['videos_per_second']:.2f} videos/s; "
            f"encoder busy {r['share_encode']:.0%}, waiting for decode {r['share_waiting_for_decode']:.0%} "
            f"(target < {TARGET_DECODE_SHARE:.0%}), other {r['share_other']:.0%}"
            for name, r in runs.items()] + [
            f"alone: decode {decode_alone:.1f} s ({len(clips) / decode_alone:.1f} videos/s), "
            f"encode {encode_alone:.1f} s "
            f"-> decode is {decode_alone / (decode_alone + encode_alone):.0%} of the work if nothing overlapped"],
    }
    common.write_result(args.output, result)
    print("\n".join(result["summary"]), file=sys.stderr)


if __name__ == "__main__":
    main()
