"""ucofia-run on the real clips shipped in tests/data/real_clips (every clone): camera-made files of
odd sizes (480-718 px square), frame rates (10, 24, 29.97, 30 fps) and with audio tracks flow
through index (with their captions as the SK bank), search and evaluate."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from data_paths import REAL_CLIPS, TEST_FIXTURES
from runtime_helpers import run_cli

from runtime.index import GalleryIndex

EXPECTED_VIDEO = json.loads((TEST_FIXTURES / "video" / "expected.json").read_text())


def test_bundled_real_clips_index_search_evaluate(fake_bundle, tmp_path):
    captions = REAL_CLIPS / "captions.csv"
    rows = list(csv.DictReader(captions.open(newline="")))
    bundle = fake_bundle
    index = tmp_path / "index"
    result = run_cli("index", "--bundle", str(bundle), "--videos", str(REAL_CLIPS), "--bank", str(captions),
                     "-o", str(index), "-q")
    assert result.returncode == 0, result.stderr
    gallery = GalleryIndex(index)
    assert sorted(gallery.ids) == sorted(Path(r["file"]).stem for r in rows)
    assert gallery.biases() is not None
    # the index read as many frames per clip as the reference pipeline does (video fixtures, 12
    # frames at 1 frame per second, as the tiny config the fake bundle carries)
    reference = {c["key"]: c["settings"]["default"]["n_frames"] for c in EXPECTED_VIDEO["clips"]
                 if c["root"] == "bundled"}
    masks = gallery.features(0, len(gallery), roles=("video_mask",))["video_mask"]
    assert {vid: int(m.sum()) for vid, m in zip(gallery.ids, masks)} == reference

    out = tmp_path / "hits.jsonl"
    result = run_cli("search", "--index", str(index), "--query", rows[0]["caption"], "--top-k", "4", "-o", str(out))
    assert result.returncode == 0, result.stderr
    hits = json.loads(out.read_text())["results"]
    assert sorted(h["video_id"] for h in hits) == sorted(gallery.ids)

    annotations = tmp_path / "annotations.csv"
    with annotations.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["video_id", "caption"])
        writer.writerows([Path(r["file"]).stem, r["caption"]] for r in rows)
    metrics = tmp_path / "metrics.json"
    result = run_cli("evaluate", "--index", str(index), "--annotations", str(annotations), "--dataset", "generic",
                     "-o", str(metrics), "-q")
    assert result.returncode == 0, result.stderr
    report = json.loads(metrics.read_text())
    assert report["captions"] == report["videos"] == len(rows)
