"""Benchmark: decoding a 10-minute file into time windows vs one plain whole-file pass.

``ucofia-run index --window W --stride S`` decodes each file once (``decode_windows``): one
sequential pass that converts and resizes the frames every window samples (about one per second
per overlapping window) instead of the 12 a whole-file entry keeps. This measures, on the same
file, in one run and interleaved (plain, then each window setting, repeated):

* plain: ``decode_video`` with the reference sampling over the whole file (12 frames kept; it
  decodes up to the last sampled frame, i.e. the whole file);
* windows W/S: ``decode_windows`` over all windows of the file (every window's frames converted).

Reported per side: wall time (best and median), frames decoded, frames kept, peak RSS increase,
and the ratio to the plain pass. The file is synthetic (moving shapes on noise, H.264) unless
``--video`` names one; ``--seconds``, ``--size`` and ``--fps`` shape it.

    .venv/bin/python benchmarks/window_decode.py -o benchmarks/results/window_decode.json
    .venv/bin/python benchmarks/window_decode.py --seconds 60 --repeats 1          # quick check
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

DEFAULT_SETTINGS = ((5.0, 2.5), (10.0, 5.0), (20.0, 10.0), (10.0, 10.0))


def synthetic_video(path: Path, seconds: int, size: tuple[int, int], fps: int) -> Path:
    """A moving-shapes-on-noise H.264 file (x264 'veryfast', crf 23, GOP 2 s), written with PyAV."""
    import av

    w, h = size
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "23",
                                                                    "g": str(2 * fps)})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(seconds * fps):
            t = i / fps
            frame = np.roll(noise, i, axis=1).copy()
            colour = np.array([(37 * int(t // 7)) % 256, (91 * int(t // 11)) % 256, 200], np.uint8)
            cx, cy = (w * (0.5 + 0.4 * np.sin(t / 3))), (h * (0.5 + 0.3 * np.cos(t / 5)))
            frame[(xx - cx) ** 2 + (yy - cy) ** 2 < (h / 6) ** 2] = colour
            image = av.VideoFrame.from_ndarray(frame, format="rgb24")
            image.pts = i
            container.mux(stream.encode(image))
        container.mux(stream.encode(None))
    return path


def plain_pass(path: Path, spec) -> dict:
    from ucofia.data.video import decode_video

    video = decode_video(path, spec, threads=1)
    return {"frames_decoded": video.frames_decoded, "frames_kept": video.num_frames, "windows": 1}


def windowed_pass(path: Path, spec, window_s: float, stride_s: float) -> dict:
    from ucofia.data.video import probe_video
    from ucofia.data.window_decode import decode_windows
    from ucofia.data.windows import seconds_to_ms, stream_spans

    _, spans = stream_spans(probe_video(path), seconds_to_ms(window_s, "window"), seconds_to_ms(stride_s, "stride"))
    kept = decoded = count = 0
    for outcome in decode_windows(path, spec, spans, threads=1):
        if not outcome.ok:
            raise SystemExit(f"window {outcome.span} failed: {outcome.error}")
        kept += outcome.video.num_frames
        decoded = max(decoded, outcome.video.frames_decoded)
        count += 1
    return {"frames_decoded": decoded, "frames_kept": kept, "windows": count}


def measure(fn, repeats: int) -> dict:
    times, rss_peak, info = [], 0.0, {}
    for _ in range(repeats):
        base = common.rss_mib()
        start = time.perf_counter()
        info = fn()
        times.append(time.perf_counter() - start)
        rss_peak = max(rss_peak, common.peak_rss_mib() - base)
    return {**info, "best_s": round(min(times), 3), "median_s": round(statistics.median(times), 3),
            "runs": repeats, "peak_rss_increase_mib_upper_bound": round(rss_peak, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, default=None, help="Video file to decode (default: a synthetic one)")
    parser.add_argument("--seconds", type=int, default=600, help="Length of the synthetic file (default 600)")
    parser.add_argument("--size", default="640x360", help="WxH of the synthetic file (default 640x360)")
    parser.add_argument("--fps", type=int, default=25, help="Frame rate of the synthetic file (default 25)")
    parser.add_argument("--image-size", type=int, default=224, help="Model input size (default 224, ViT-B/32)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()

    from ucofia.data.video import VideoSpec, probe_video

    spec = VideoSpec(image_size=args.image_size)
    monitor = common.CpuMonitor()
    machine = common.machine({"ffmpeg_decoder_threads": 1})
    with tempfile.TemporaryDirectory(prefix="ucofia_window_decode_") as tmp:
        path = args.video
        made_s = None
        if path is None:
            w, h = (int(x) for x in args.size.split("x"))
            start = time.perf_counter()
            path = synthetic_video(Path(tmp) / "long.mp4", args.seconds, (w, h), args.fps)
            made_s = round(time.perf_counter() - start, 1)
        info = probe_video(path)
        sides = {"plain": lambda: plain_pass(path, spec)}
        for window, stride in DEFAULT_SETTINGS:
            sides[f"windows {window:g}/{stride:g}"] = (lambda w=window, s=stride: windowed_pass(path, spec, w, s))
        results = {name: [] for name in sides}
        for _ in range(args.repeats):  # interleaved: every side sees the same load
            for name, fn in sides.items():
                results[name].append(measure(fn, 1))
        merged = {}
        for name, runs in results.items():
            times = [r["best_s"] for r in runs]
            merged[name] = {
                **{k: v for k, v in runs[0].items() if k not in ("best_s", "median_s", "runs")},
                "best_s": min(times), "median_s": round(statistics.median(times), 3), "runs": len(runs),
                "peak_rss_increase_mib_upper_bound": max(r["peak_rss_increase_mib_upper_bound"] for r in runs)}
        plain = merged["plain"]["best_s"]
        for r in merged.values():
            r["time_vs_plain"] = round(r["best_s"] / plain, 3)
        result = {
            "benchmark": "window_decode",
            "video": {"path": str(args.video) if args.video else "synthetic", "seconds": info.duration_s,
                      "frames": info.frame_count, "fps": info.cv_fps, "size": f"{info.width}x{info.height}",
                      "codec": info.codec, "synthesised_in_s": made_s},
            "image_size": args.image_size, "ffmpeg_threads": 1,
            "sides": merged,
            "machine": machine, "contention": common.contention(monitor, 1),
            "load_average_after": common.load_average(),
        }
    for name, r in merged.items():
        print(f"{name:>18}: {r['best_s']:7.2f} s ({r['time_vs_plain']:.2f}x plain), {r['windows']} windows, "
              f"{r['frames_decoded']} frames decoded, {r['frames_kept']} kept", file=sys.stderr)
    common.write_result(args.output, result)


if __name__ == "__main__":
    main()
