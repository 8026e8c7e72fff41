"""ucofia-run on the real clips of the optional shared data folder (``tests/helpers/data_paths.py``;
skipped when absent): MSR-VTT test clips and clips of other sizes / frame rates / with audio flow
through index, search and evaluate. The four shipped clips run on every clone in
``test_runtime_real_clips.py``."""
from __future__ import annotations

import json

from runtime_helpers import run_cli

from runtime.index import GalleryIndex

MSRVTT_CLIPS = 4


def test_real_clips_index_search_evaluate(shared_dir, fake_bundle, tmp_path):
    sample = shared_dir / "data" / "msrvtt_1ka_sample"
    real = shared_dir / "data" / "real_clips"
    annotations = sample / "MSRVTT_JSFUSION_test.csv"
    rows = annotations.read_text().splitlines()[1:]
    chosen = [line.split(",")[2] for line in rows[:MSRVTT_CLIPS]]
    listing = tmp_path / "videos.txt"
    listing.write_text("".join(f"{sample / 'videos' / (vid + '.mp4')}\n" for vid in chosen) +
                       "".join(f"{p}\n" for p in sorted(real.glob("*.mp4"))[:2]))
    bundle = fake_bundle
    index = tmp_path / "index"
    result = run_cli("index", "--bundle", str(bundle), "--videos", str(listing), "--bank", str(annotations),
                     "-o", str(index), "-q")
    assert result.returncode == 0, result.stderr
    gallery = GalleryIndex(index)
    assert len(gallery) == MSRVTT_CLIPS + 2 and gallery.biases() is not None
    masks = gallery.features(0, len(gallery), roles=("video_mask",))["video_mask"]
    assert (masks.sum(axis=1) >= 1).all()

    out = tmp_path / "hits.jsonl"
    result = run_cli("search", "--index", str(index), "--query", "a man talking about cars", "--top-k", "3",
                     "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert len(json.loads(out.read_text())["results"]) == 3

    metrics = tmp_path / "metrics.json"
    result = run_cli("evaluate", "--index", str(index), "--annotations", str(annotations), "--allow-missing",
                     "-o", str(metrics), "-q")
    assert result.returncode == 0, result.stderr
    report = json.loads(metrics.read_text())
    assert report["captions"] == MSRVTT_CLIPS and report["extra_gallery_videos"] == 2
