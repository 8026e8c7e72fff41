"""Benchmark: decoding a video at a URL, the way ``ucofia-run index`` does it (download to a local
file, decode that) against the alternative (PyAV reading an fsspec file object over HTTP ranges).

Each clip (the real clips of the shared data folder, else generated ones, plus one generated
60 s 320x240 clip) is served by a loopback HTTP server with Range support
(``tests/helpers/url_server.py``). Per clip, rounds interleaved, medians reported:

* ``local_s``:     ``decode_video(path)`` of the file on disk (the reference);
* ``download_s``:  ``runtime.remote.download`` of the URL (sha256 computed on the way);
* ``copy_s``:      ``decode_video`` of the downloaded copy; ``copy_identical``: its frames and mask
  equal the local decode's (bit for bit);
* ``stream_s``:    every frame decoded by PyAV from ``fsspec.open(url)`` (a file object doing
  ranged reads), against every frame decoded from the path (``raw_s``); ``stream_identical``:
  the frames are equal; ``stream_requests``: HTTP requests it took.

    .venv/bin/python benchmarks/url_decode.py -o benchmarks/results/url_decode.json
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

sys.path.insert(0, str(common.REPO / "tests" / "helpers"))
from url_server import FileServer

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov")


def clips(folder: Path) -> list[Path]:
    """The shared real clips (copied into ``folder``), else two generated ones; plus a 60 s clip."""
    import shutil

    from runtime_helpers import make_clip

    shared = sorted(p for p in (common.SHARED / "data").rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    out = []
    for path in shared:
        out.append(folder / path.name)
        shutil.copyfile(path, out[-1])
    if not out:
        out = [make_clip(folder / f"gen{i}.mp4", seconds=5, size=(160, 120), fps=25, seed=i) for i in range(2)]
    out.append(make_clip(folder / "long60s.mp4", seconds=60, size=(320, 240), fps=25, seed=7))
    return out


def all_frames(source) -> list:
    import av

    with av.open(source) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-o", "--out", type=Path)
    args = parser.parse_args()

    import fsspec
    import numpy as np

    from runtime.remote import RemoteSettings, download
    from ucofia.data.video import VideoSpec, decode_video

    spec = VideoSpec()
    settings = RemoteSettings()
    before = common.load_average()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, FileServer(Path(tmp) / "served") as server:
        served = Path(tmp) / "served"
        served.mkdir()
        for path in clips(served):
            url = f"{server.url}/{path.name}"
            copy = Path(tmp) / ("copy" + path.suffix)
            times: dict[str, list[float]] = {k: [] for k in ("local_s", "download_s", "copy_s", "raw_s", "stream_s")}
            copy_identical = stream_identical = True
            requests = 0
            for _ in range(args.rounds):
                t, local = timed(lambda p=path: decode_video(p, spec))
                times["local_s"].append(t)
                t, _ = timed(lambda u=url, c=copy: download(u, c, settings))
                times["download_s"].append(t)
                t, remote = timed(lambda c=copy: decode_video(c, spec))
                times["copy_s"].append(t)
                copy_identical &= bool(np.array_equal(local.frames_uint8, remote.frames_uint8)
                                       and np.array_equal(local.video_mask, remote.video_mask))
                t, raw = timed(lambda p=path: all_frames(str(p)))
                times["raw_s"].append(t)
                count = len(server.requests)

                def stream(u=url):
                    with fsspec.open(u, "rb", block_size=1 << 20) as fh:
                        return all_frames(fh)

                t, streamed = timed(stream)
                times["stream_s"].append(t)
                requests = len(server.requests) - count
                stream_identical &= len(raw) == len(streamed) and all(np.array_equal(a, b)
                                                                      for a, b in zip(raw, streamed))
            row = {"clip": path.name, "bytes": path.stat().st_size,
                   **{k: round(statistics.median(v), 4) for k, v in times.items()},
                   "copy_identical": copy_identical, "stream_identical": stream_identical,
                   "stream_requests": requests}
            row["download_share_of_url_decode"] = round(row["download_s"] / (row["download_s"] + row["copy_s"]), 3)
            rows.append(row)
            print(row, file=sys.stderr)
    total = {k: round(sum(r[k] for r in rows), 3) for k in ("local_s", "download_s", "copy_s", "raw_s", "stream_s")}
    common.write_result(args.out, {
        "benchmark": "url_decode", "machine": common.machine(), "load_after": common.load_average(),
        "load_before": before, "rounds": args.rounds, "clips": rows, "totals": total,
        "all_copies_identical": all(r["copy_identical"] for r in rows),
        "all_streams_identical": all(r["stream_identical"] for r in rows)})


if __name__ == "__main__":
    main()
