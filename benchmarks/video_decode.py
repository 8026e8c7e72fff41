"""Benchmark: ucofia.data.video decoding (PyAV, sequential) vs an OpenCV seek-per-sample baseline.

Per clip of the shared data folder kept outside the repository (``common.SHARED``: MSR-VTT 1k-A
sample + real clips): median wall time of
``decode_video`` with the published settings (224 px, 12 frames, 1 frame/s, linspace) with
FFmpeg's automatic threads and with one thread, and, when opencv-python is installed, of the
reference's way of reading (``cv2`` seek + read per sampled second, then the same PIL resize and
crop on the kept frames; re-expressed here, not the reference code). Then batch throughput of
``decode_many`` over all clips: 1 worker, 2 threads, 2 processes.

    .venv/bin/python benchmarks/video_decode.py -o benchmarks/results/video_decode.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from ucofia.data.video import VideoSpec, decode_many, decode_video, preprocess_frame, select_positions

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

SHARED = common.SHARED / "data"


def clips() -> list[Path]:
    out = sorted((SHARED / "msrvtt_1ka_sample" / "videos").glob("*.mp4"))
    out += sorted((SHARED / "real_clips").glob("*.mp4"))
    if not out:
        raise SystemExit(f"no clips under {SHARED}: this benchmark needs the shared data folder (set "
                         f"UCOFIA_SHARED_DIR to the folder holding data/msrvtt_1ka_sample and data/real_clips)")
    return out


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall ms and median CPU ms (all threads of this process) over ``repeats`` runs."""
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return round(statistics.median(wall) * 1000.0, 1), round(statistics.median(cpu) * 1000.0, 1)


def cv2_baseline(path: Path, spec: VideoSpec) -> int:
    """Seek + read once per sampled second as the reference does, PIL-preprocess the kept frames."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = max(int(cap.get(cv2.CAP_PROP_FPS)), 1)
    frames = []
    for sec in range((count + fps - 1) // fps + 1):
        cap.set(cv2.CAP_PROP_POS_FRAMES, sec * fps)
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    # the reference preprocesses every frame read, then keeps max_frames of them
    kept = [preprocess_frame(np.ascontiguousarray(f[:, :, ::-1]), spec.image_size) for f in frames]
    return len(kept[: len(select_positions(len(kept), spec.max_frames, spec.slice_framepos))])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("-o", "--output", type=Path)
    args = ap.parse_args()
    spec = VideoSpec()
    load_start = round(os.getloadavg()[0], 2)
    try:
        import cv2  # noqa: F401
        have_cv2 = True
    except ImportError:
        have_cv2 = False
    rows = []
    for path in clips():
        v = decode_video(path, spec)
        row = {"clip": f"{path.parent.name}/{path.name}", "width": v.info.width, "height": v.info.height,
               "fps": round(v.info.cv_fps, 3), "frames": v.info.frame_count, "kept": v.num_frames,
               "frames_decoded": v.frames_decoded,
               }
        row["ms_auto_threads"], row["cpu_ms_auto_threads"] = timed(lambda: decode_video(path, spec), args.repeats)
        row["ms_1_thread"], row["cpu_ms_1_thread"] = timed(lambda: decode_video(path, spec, threads=1), args.repeats)
        if have_cv2:
            row["ms_cv2_seek_baseline"], row["cpu_ms_cv2_seek_baseline"] = timed(
                lambda: cv2_baseline(path, spec), args.repeats)
        rows.append(row)
        print(row)
    paths = clips()
    batch = {}
    for name, kw in [("1_worker", dict(workers=1)), ("2_threads", dict(workers=2)),
                     ("2_processes", dict(workers=2, processes=True))]:
        t = time.perf_counter()
        outs = list(decode_many(paths, spec, **kw))
        dt = time.perf_counter() - t
        assert all(o.ok for o in outs)
        batch[name] = {"seconds": round(dt, 3), "clips_per_s": round(len(paths) / dt, 2)}
        print(name, batch[name])

    def summary(key: str, subset: str) -> float | None:
        vals = [r[key] for r in rows if r["clip"].startswith(subset) and key in r]
        return round(statistics.mean(vals), 1) if vals else None

    result = {
        "benchmark": "video_decode", "spec": spec.__dict__, "machine": {
            "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "load_average_1m_at_start": load_start, "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
        "clips": rows, "batch": batch,
        "mean_ms": {k: {"msrvtt_sample": summary(k, "videos/"), "real_clips": summary(k, "real_clips/")}
                    for k in ("ms_auto_threads", "cpu_ms_auto_threads", "ms_1_thread", "cpu_ms_1_thread",
                  "ms_cv2_seek_baseline", "cpu_ms_cv2_seek_baseline")},
    }
    print(json.dumps(result["mean_ms"], indent=1))
    if args.output:
        from ucofia.io_utils import atomic_write_text

        atomic_write_text(args.output, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
