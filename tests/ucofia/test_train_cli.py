"""`ucofia train` end to end on a tiny demo benchmark: frame cache, 1 epoch, last/best, metrics.jsonl."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from ucofia.cli import main
from ucofia.data.demo import generate_demo
from ucofia.data.video import VideoSpec
from ucofia.training.frame_cache import CacheItem, FrameCacheError, build_or_open

# a small, fast model that still reads real CLIP BPE ids (full vocabulary)
SMALL = ["--set", "model.max_frames=4", "--set", "model.max_words=16", "--set", "model.clip.embed_dim=32",
         "--set", "model.clip.vision_width=32", "--set", "model.clip.text_width=32",
         "--set", "model.clip.vision_layers=1", "--set", "model.clip.text_layers=1",
         "--set", "eval.test_sk_bank_size=16", "--threads", "1"]


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "demo"
    generate_demo(path, scale=0.05, seed=0)  # 16 train / 3 val / 5 test videos
    return path


def test_cli_one_epoch_smoke(tiny_demo, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--config", "demo", "--data", str(tiny_demo), "-o", str(run), "--epochs", "1",
            "--batch-size", "8", "--no-progress", *SMALL]
    res = CliRunner().invoke(main, args + ["--check"])
    assert res.exit_code == 0 and "checks passed" in res.output, res.output
    assert not run.exists()
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    for name in ("last", "best"):
        assert (run / name / "model.safetensors").is_file() and (run / name / "config.json").is_file()
    assert (run / "last" / "training_state.pt").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["split"] == "val" and records[0]["step"] == 2
    assert set(records[0]["metrics"]["t2v"]) == {"video_sentence", "frame_sentence", "patch_word", "all"}
    results = json.loads((run / "results.json").read_text())
    assert results["test"]["split"] == "test"
    assert set(results["test"]["best"]["metrics"]["t2v"]) >= {"all", "all_sk"}
    assert "all three + SK" in (run / "results.md").read_text()
    assert "T2V R@1" in res.output  # the rich summary table
    caches = list((run / "frame_cache").iterdir())
    assert sorted(c.name.split("-")[0] for c in caches) == ["test", "train", "val"]
    frames = np.load(next(c for c in caches if c.name.startswith("train")) / "frames.npy", mmap_mode="r")
    assert frames.dtype == np.uint8 and frames.shape == (16, 4, 32, 32, 3)

    # --force starts over and reuses the frame cache (no new decode: same directories, same files)
    stamp = {c.name: (c / "frames.npy").stat().st_mtime_ns for c in caches}
    res = CliRunner().invoke(main, args + ["--force", "--max-steps", "1"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert {c.name: (c / "frames.npy").stat().st_mtime_ns for c in (run / "frame_cache").iterdir()} == stamp
    # --resume of the finished run: nothing left to train, same weights
    before = (run / "last" / "meta.json").read_text()
    res = CliRunner().invoke(main, ["train", "-o", str(run), "--resume", "--no-progress"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert json.loads((run / "last" / "meta.json").read_text())["fingerprint"] == json.loads(before)["fingerprint"]


def test_resume_refuses_result_changing_flags(tiny_demo, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--config", "demo", "--data", str(tiny_demo), "-o", str(run), "--epochs", "1",
            "--batch-size", "8", "--no-progress", "--max-steps", "1", *SMALL, "--set", "eval.test_at_end=false"]
    assert CliRunner().invoke(main, args).exit_code == 0
    res = CliRunner().invoke(main, ["train", "-o", str(run), "--resume", "--lr", "0.5"])
    assert res.exit_code != 0 and "optim.lr" in res.output


def test_frame_cache_bad_video(tiny_demo, tmp_path):
    videos = sorted((tiny_demo / "videos").glob("*.mp4"))[:3]
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(videos[0].read_bytes()[:200])  # truncated
    items = [CacheItem(v.stem, str(v)) for v in videos] + [CacheItem("bad", str(bad))]
    spec = VideoSpec(image_size=32, max_frames=4)
    with pytest.raises(FrameCacheError, match="bad"):
        build_or_open(tmp_path / "cache", "train", items, spec, workers=1)
    cached = build_or_open(tmp_path / "cache", "train", items, spec, workers=1, skip_bad=True)
    assert cached.video_ids == [v.stem for v in videos] and list(cached.failed) == ["bad"]
    assert cached.frames.shape == (3, 4, 32, 32, 3) and cached.video_mask.shape == (3, 4)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no temp leftovers
    # same inputs -> the same cache directory is opened, not rebuilt
    again = build_or_open(tmp_path / "cache", "train", items, spec, workers=1, skip_bad=True)
    assert again.directory == cached.directory
    shutil.rmtree(tmp_path / "cache")
