"""The long-video demo benchmark (ucofia demo-data --long): scripted events at known times."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_paths import REPO_ROOT

from ucofia.data import demo, demo_long
from ucofia.data.video import VideoSpec, decode_video

SCALE = 0.125  # one file of 18 events (about 3 minutes at 3 fps, 96x64)
SEED = 5


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("long") / "bench"
    demo_long.generate_long_demo(out, scale=SCALE, seed=SEED)
    return out


def _moments(bench: Path) -> list[dict[str, str]]:
    with (bench / demo_long.MOMENTS_CSV).open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_plan_events_back_to_back_unique_and_unseen():
    settings = demo_long.LongSettings()
    videos = demo_long.plan_long(1.0, SEED)
    assert len(videos) == settings.files and [v.video_id for v in videos] == [f"long{i}" for i in range(8)]
    short = {v.scene for v in demo.plan_benchmark(demo.demo_counts(1.0), SEED)}
    scenes = [e.scene for v in videos for e in v.events]
    assert len(set(scenes)) == len(scenes) and not short.intersection(scenes)
    for v in videos:
        assert len(v.events) == settings.events_per_file and v.events[0].start == 0
        assert all(a.end == b.start for a, b in zip(v.events, v.events[1:]))
        assert all(settings.min_event_seconds <= e.seconds <= settings.max_event_seconds for e in v.events)
        own = {e.scene for e in v.events}
        twins = sum(dataclass_swap(e.scene) in own for e in v.events)
        assert twins == 2 * settings.twin_pairs_per_file  # each twin of a pair finds the other
        assert 120 <= v.seconds <= 260  # several minutes
    assert demo_long.plan_long(1.0, SEED) == videos and demo_long.plan_long(1.0, SEED + 1) != videos


def dataclass_swap(scene: demo.Scene) -> demo.Scene:
    import dataclasses

    return dataclasses.replace(scene, event=scene.event.swapped())


def test_files_annotations_and_determinism(bench: Path, tmp_path: Path):
    meta = json.loads((bench / demo_long.BENCHMARK_JSON).read_text())
    assert meta["format"] == demo_long.LONG_FORMAT and meta["seed"] == SEED and len(meta["videos"]) == 1
    rows = _moments(bench)
    events = meta["videos"][0]["events"]
    assert [(r["video_id"], r["sentence"], int(r["start"]), int(r["end"])) for r in rows] == \
        [("long0", e["caption"], e["start"], e["end"]) for e in events]
    again = tmp_path / "again"
    demo_long.generate_long_demo(again, scale=SCALE, seed=SEED)
    for path in sorted(p for p in bench.rglob("*") if p.is_file()):
        assert (again / path.relative_to(bench)).read_bytes() == path.read_bytes(), path.name


def test_each_event_is_drawn_at_its_time(bench: Path):
    import av

    video = demo_long.plan_long(SCALE, SEED)[0]
    settings = demo.VideoSettings()
    with av.open(str(bench / demo_long.VIDEO_DIR / video.filename)) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.int16)
    assert len(decoded) == video.seconds * settings.fps
    for k, event in enumerate(video.events[:6]):
        rendered = next(demo_long.render_long(demo_long.LongVideo("x", (event,)), settings)).astype(np.int16)
        part = decoded[event.start * settings.fps: event.end * settings.fps]
        assert np.abs(part - rendered).mean() < 4.0, k
        if k:  # and not the previous event's picture
            previous = next(demo_long.render_long(demo_long.LongVideo("x", (video.events[k - 1],)), settings))
            assert np.abs(part[:3] - previous[-3:].astype(np.int16)).mean() > 8.0


def test_a_window_of_an_event_samples_one_frame_per_second(bench: Path):
    from ucofia.data.window_decode import decode_windows
    from ucofia.data.windows import Span

    video = demo_long.plan_long(SCALE, SEED)[0]
    event = video.events[3]
    span = Span(event.start * 1000, event.end * 1000)
    (window,) = decode_windows(bench / demo_long.VIDEO_DIR / video.filename, VideoSpec(image_size=32), [span])
    assert window.video.num_frames == min(event.seconds, 12)
    assert window.video.read_indices == [3 * (event.start + s) for s in range(event.seconds)]
    whole = decode_video(bench / demo_long.VIDEO_DIR / video.filename, VideoSpec(image_size=32))
    assert whole.frame_indices[-1] - whole.frame_indices[0] > 100 * 3  # the whole file: minutes apart


def test_cli_demo_data_long(tmp_path: Path):
    from click.testing import CliRunner

    from ucofia.cli import main

    out = tmp_path / "cli"
    result = CliRunner().invoke(main, ["demo-data", "--long", "-o", str(out), "--scale", "0.1", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert "1 long videos, 18 events" in result.output and "--window 10" in result.output
    assert (out / demo_long.MOMENTS_CSV).is_file() and (out / demo_long.VIDEO_DIR / "long0.mp4").is_file()
    again = CliRunner().invoke(main, ["demo-data", "--long", "-o", str(out), "--scale", "0.1"])
    assert again.exit_code != 0 and "--force" in again.output
    bad = CliRunner().invoke(main, ["demo-data", "--long", "-o", str(tmp_path / "x"), "--scale", "-1"])
    assert bad.exit_code != 0 and "--scale" in bad.output


def test_long_demo_is_torch_free():
    code = "import sys, ucofia.data.demo_long; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
