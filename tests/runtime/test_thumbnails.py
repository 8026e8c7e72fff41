"""Thumbnails: one frame near the middle of the source file, <= 256 px, JPEG, named from the index
entry; written by `ucofia-run index`, backfilled by `ucofia-run thumbnails`."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from runtime_helpers import make_clip, run_cli

from runtime.index import GalleryIndex
from runtime.thumbnails import (
    LONG_SIDE,
    THUMBNAIL_DIR,
    ThumbnailError,
    render_thumbnail,
    thumbnail_file,
    thumbnail_name,
)

FPS = 3


def _frame_colours(seconds: float, seed: int) -> np.ndarray:
    """The solid colour of every frame make_clip writes (same generator, same order)."""
    rng = np.random.default_rng(seed)
    return np.array([rng.integers(0, 255, 3) for _ in range(max(1, int(seconds * FPS)))], dtype=float)


def test_thumbnail_is_the_middle_frame_scaled_down(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", seconds=4, size=(640, 360), fps=FPS, seed=5)
    image = Image.open(io.BytesIO(render_thumbnail(clip)))
    assert image.format == "JPEG" and image.size == (LONG_SIDE, 144)
    colour = np.asarray(image.convert("RGB"), dtype=float).reshape(-1, 3).mean(axis=0)
    distances = np.abs(_frame_colours(4, 5) - colour).sum(axis=1)
    assert int(np.argmin(distances)) == 6  # 12 frames at 3 fps: the frame at 2.0 s
    assert distances.min() < 20


def test_small_clips_keep_their_size_and_windows_move_the_frame(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", seconds=4, size=(64, 48), fps=FPS, seed=9)
    assert Image.open(io.BytesIO(render_thumbnail(clip))).size == (64, 48)
    late = Image.open(io.BytesIO(render_thumbnail(clip, start=3.0, end=4.0))).convert("RGB")
    colour = np.asarray(late, dtype=float).reshape(-1, 3).mean(axis=0)
    assert int(np.argmin(np.abs(_frame_colours(4, 9) - colour).sum(axis=1))) in (10, 11)  # about 3.5 s


def test_undecodable_source_is_an_error_naming_it(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    with pytest.raises(ThumbnailError, match="bad.mp4"):
        render_thumbnail(bad)


def test_names_come_from_the_entry():
    entry = {"id": "a/../../b", "path": "/x.mp4", "sha256": "1" * 64}
    name = thumbnail_name(entry)
    assert len(name) == 36 and name.endswith(".jpg") and "/" not in name and ".." not in name
    assert thumbnail_name({**entry, "sha256": "2" * 64}) != name  # changed content, new thumbnail
    assert thumbnail_name({**entry, "start": 1.0, "end": 2.0}) != name  # a window of the same file


@pytest.fixture(scope="module")
def indexed(fake_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("thumbs")
    bundle = fake_bundle
    clips = root / "clips"
    clips.mkdir()
    for i in range(3):
        make_clip(clips / f"v{i}.mp4", seconds=2 + i, size=(96, 64), seed=i)
    return bundle, clips


def test_index_writes_thumbnails_and_backfill_fills_the_gaps(indexed, tmp_path):
    bundle, clips = indexed
    with_thumbs = tmp_path / "with"
    result = run_cli("index", "--bundle", str(bundle), "--videos", str(clips), "-o", str(with_thumbs), "-q",
                     "--workers", "1")
    assert result.returncode == 0, result.stderr
    gallery = GalleryIndex(with_thumbs)
    files = {thumbnail_file(with_thumbs, e) for e in gallery.entries}
    assert set((with_thumbs / THUMBNAIL_DIR).iterdir()) == files
    assert all(Image.open(f).size == (96, 64) for f in files)

    without = tmp_path / "without"
    result = run_cli("index", "--bundle", str(bundle), "--videos", str(clips), "-o", str(without), "-q",
                     "--workers", "1", "--no-thumbnails")
    assert result.returncode == 0, result.stderr
    assert not (without / THUMBNAIL_DIR).exists()
    result = run_cli("thumbnails", "--index", str(without), "-q")
    assert result.returncode == 0, result.stderr
    assert "3 thumbnails made, 0 already present" in result.stdout
    for entry in GalleryIndex(without).entries:
        assert thumbnail_file(without, entry).read_bytes() == thumbnail_file(with_thumbs, entry).read_bytes()
    again = run_cli("thumbnails", "--index", str(without), "-q")
    assert again.returncode == 0 and "0 thumbnails made, 3 already present" in again.stdout


def test_backfill_reports_sources_that_are_gone_or_unrecorded(indexed, tmp_path):
    bundle, clips = indexed
    copies = tmp_path / "clips"
    copies.mkdir()
    for clip in clips.iterdir():
        (copies / clip.name).write_bytes(clip.read_bytes())
    index = tmp_path / "index"
    assert run_cli("index", "--bundle", str(bundle), "--videos", str(copies), "-o", str(index), "-q",
                   "--workers", "1", "--no-thumbnails").returncode == 0
    shard = next((index / "shards").iterdir())
    entries = json.loads((shard / "entries.json").read_text())
    entries[0] = {"id": entries[0]["id"]}  # as a format 1 index records it
    (shard / "entries.json").write_text(json.dumps(entries))
    (copies / "v1.mp4").unlink()
    result = run_cli("thumbnails", "--index", str(index), "-q")
    assert result.returncode == 3, result.stderr
    assert "1 thumbnails made" in result.stdout and "1 without a source path" in result.stdout
    assert "1 failed" in result.stdout and "v1.mp4" in result.stderr and "Traceback" not in result.stderr
