"""ucofia-run index / search on a hand-built bundle: resume, bad videos, fingerprint mismatch,
bank biases, two-stage search, CLI errors (no torch involved)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from runtime_helpers import build_fake_bundle, copy_clips, run_cli, synthetic_index

from runtime import search
from runtime.backends import open_session
from runtime.bundle import load_bundle
from runtime.errors import GalleryIndexError
from runtime.index import GalleryIndex, IndexWriter
from runtime.ingest import local as ingest
from runtime.scoring import LEVELS, Scorer, score_matrix
from runtime.text import TextEncoder

N_CLIPS = 5


@pytest.fixture(scope="module")
def bundle_dir(fake_bundle):
    return fake_bundle


@pytest.fixture(scope="module")
def clips(clips, tmp_path_factory):
    """clip0 ... clip4 of the session's clips and a broken file, in a folder of this module's own."""
    folder = copy_clips(clips, tmp_path_factory.mktemp("clips"), range(N_CLIPS))
    (folder / "broken.mp4").write_bytes(b"this is not a video")
    return folder


@pytest.fixture(scope="module")
def bank_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bank") / "bank.txt"
    path.write_text("a red car drives\na dog on the beach\nsomeone is cooking\na man plays guitar\n"
                    "two people talk\n")
    return path


def _index(bundle_dir, videos, out, *extra):
    return run_cli("index", "--bundle", str(bundle_dir), "--videos", str(videos), "-o", str(out),
                   "--batch-size", "2", "--workers", "2", "-q", *extra)


def test_index_skips_and_reports_bad_videos_then_resumes(bundle_dir, clips, tmp_path):
    out = tmp_path / "index"
    first = _index(bundle_dir, clips, out)
    assert first.returncode == 3, first.stderr
    assert "broken" in first.stderr and "failed.jsonl" in first.stderr
    failed = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    assert [r["id"] for r in failed] == ["broken"] and "not a video" in failed[0]["error"]
    gallery = GalleryIndex(out)
    assert sorted(gallery.ids) == [f"clip{i}" for i in range(N_CLIPS)]
    before = {role: gallery.features(0, len(gallery))[role].copy() for role in ("video", "patches")}
    shards_before = sorted(p.name for p in (out / "shards").iterdir())

    # simulate a run killed after a shard was renamed in but before the state was updated
    orphan = out / "shards" / f"{len(shards_before):06d}"
    orphan.mkdir()
    (orphan / "ids.json").write_text('["ghost"]')
    (clips / "broken.mp4").unlink()  # the bad file is fixed by removal; the rerun must not re-encode
    try:
        second = _index(bundle_dir, clips, out)
    finally:
        (clips / "broken.mp4").write_bytes(b"this is not a video")
    assert second.returncode == 0, second.stderr
    assert "5 already present" in second.stdout and "indexed 0 new" in second.stdout
    assert not orphan.exists()
    assert sorted(p.name for p in (out / "shards").iterdir()) == shards_before
    again = GalleryIndex(out)
    assert again.ids == gallery.ids
    for role, value in before.items():
        np.testing.assert_array_equal(again.features(0, len(again))[role], value)


def test_resume_adds_only_new_videos(bundle_dir, clips, tmp_path):
    listing = tmp_path / "videos.txt"
    listing.write_text("".join(f"{clips / f'clip{i}.mp4'}\n" for i in range(2)))
    out = tmp_path / "index"
    assert _index(bundle_dir, listing, out).returncode == 0
    listing.write_text("".join(f"{clips / f'clip{i}.mp4'}\n" for i in range(N_CLIPS)))
    result = _index(bundle_dir, listing, out)
    assert result.returncode == 0 and "indexed 3 new" in result.stdout and "2 already present" in result.stdout
    assert GalleryIndex(out).ids == [f"clip{i}" for i in range(N_CLIPS)]


def test_fingerprint_mismatch_leaves_index_untouched(bundle_dir, clips, tmp_path):
    out = tmp_path / "index"
    listing = tmp_path / "one.txt"
    listing.write_text(f"{clips / 'clip0.mp4'}\n")
    assert _index(bundle_dir, listing, out).returncode == 0
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = build_fake_bundle(tmp_path / "other", seed=7)
    result = _index(other, clips, out)
    assert result.returncode == 1
    assert "fingerprint" in result.stderr and "Traceback" not in result.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot
    with pytest.raises(GalleryIndexError, match="fingerprint"):
        GalleryIndex(out).check_bundle(load_bundle(other))
    searched = run_cli("search", "--index", str(out), "--bundle", str(other), "--query", "a car")
    assert searched.returncode == 1 and "fingerprint" in searched.stderr


@pytest.fixture(scope="module")
def built(bundle_dir, clips, bank_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "index"
    result = _index(bundle_dir, clips, out, "--bank", str(bank_file))
    assert result.returncode == 3, result.stderr  # broken.mp4
    return out


def test_bank_biases_match_numpy_sk(built, bundle_dir, bank_file):
    from runtime.scoring import score_matrix
    from runtime.sinkhorn import video_bias

    bundle = load_bundle(bundle_dir)
    gallery = GalleryIndex(built)
    stored = gallery.biases()
    assert stored is not None and set(stored) == set(LEVELS)
    text = TextEncoder(bundle, "cpu").encode(bank_file.read_text().splitlines())
    scorer = Scorer(open_session(bundle, "scorer", "cpu"), bundle.config)
    sims = score_matrix(scorer, text, gallery)
    for level in LEVELS:
        np.testing.assert_allclose(stored[level], video_bias(sims[level], bundle.config.sk_iterations),
                                   rtol=1e-5, atol=1e-6)
    assert json.loads((built / "index.json").read_text())["biases"]["bank"]["captions"] == 5


def test_two_stage_with_full_shortlist_equals_exhaustive(built):
    queries = ["a red car", "a dog", "cooking pasta in a kitchen"]
    gallery = GalleryIndex(built)
    bundle = load_bundle(gallery.bundle_path)
    feats = TextEncoder(bundle, "cpu").encode(queries)
    scorer = Scorer(open_session(bundle, "scorer", "cpu"), bundle.config)
    exhaustive = search.exhaustive(scorer, gallery, feats, k=4)
    staged = search.two_stage(scorer, gallery, feats, k=4, shortlist=len(gallery))
    np.testing.assert_array_equal(staged.indices, exhaustive.indices)
    np.testing.assert_allclose(staged.fused, exhaustive.fused, rtol=1e-5, atol=1e-6)
    for level in LEVELS:
        np.testing.assert_allclose(staged.levels[level], exhaustive.levels[level], rtol=1e-5, atol=1e-6)
    # the probed kernel reproduces the video_sentence level exactly enough to rank by it
    search.check_level1_kernel(np.load(built / search.KERNEL_FILE), scorer, gallery, feats)


def test_two_stage_shortlist_ranks_by_video_sentence_plus_its_bias(bundle_dir, tmp_path):
    """A real shortlist (10 of 200) whose membership the video_sentence bias changes: stage 1 must
    keep the 10 best by video_sentence + bias, stage 2 re-rank them by the fused score. Expected
    values come from the level matrices and plain numpy, not from the search code."""
    bundle = load_bundle(bundle_dir)
    root = synthetic_index(tmp_path / "index", bundle, 200, shard=64, seed=11)
    gallery = GalleryIndex(root)
    scorer = Scorer(open_session(bundle, "scorer", "cpu"), bundle.config)
    queries = TextEncoder(bundle, "cpu").encode(["a red car", "a dog on the beach", "someone is cooking"])
    sims = score_matrix(scorer, queries, gallery)
    rng = np.random.default_rng(12)
    spread = float(sims["video_sentence"].std())
    biases = {lv: rng.normal(0, 2 * spread, 200).astype(np.float32) for lv in LEVELS}
    with IndexWriter(root, bundle) as writer:
        writer.set_biases(np.stack([biases[lv] for lv in LEVELS]), {"bank": {"path": "synthetic"}})
    gallery = GalleryIndex(root)  # re-read: the state now names the biases
    k, shortlist = 3, 10

    stage1 = sims["video_sentence"] + biases["video_sentence"][None, :]
    want = []
    for q in range(len(queries)):
        short = np.argsort(-stage1[q], kind="stable")[:shortlist]
        by_level_alone = set(np.argsort(-sims["video_sentence"][q], kind="stable")[:shortlist])
        assert set(short) != by_level_alone, "the bias must change the shortlist for this test to mean anything"
        fused = sum(sims[lv][q, short] + biases[lv][short] for lv in LEVELS) / 3
        want.append(short[np.argsort(-fused, kind="stable")[:k]])
    got = search.two_stage(scorer, gallery, queries, k=k, shortlist=shortlist)
    np.testing.assert_array_equal(got.indices, np.array(want))
    exhaustive = search.exhaustive(scorer, gallery, queries, k=k)
    assert not np.array_equal(exhaustive.indices, got.indices)  # stage 1 really decided something


def test_reader_edges_and_unpublished_rows(bundle_dir, tmp_path):
    """Empty row ranges, a missing directory, an index that records no bundle, entries that do not
    match the ids, and rows committed by an unfinished run that only its writer sees."""
    bundle = load_bundle(bundle_dir)
    root = synthetic_index(tmp_path / "index", bundle, 10, shard=4)
    gallery = GalleryIndex(root)
    for start, stop in ((3, 3), (10, 10), (4, 4)):
        assert all(len(value) == 0 for value in gallery.features(start, stop).values()), (start, stop)
    assert all(len(value) == 0 for value in GalleryIndex(synthetic_index(tmp_path / "empty", bundle, 0))
               .features(0, 0).values())
    with pytest.raises(GalleryIndexError, match="index directory not found"):
        GalleryIndex(tmp_path / "nowhere")
    state = json.loads((root / "index.json").read_text())
    state.pop("bundle")
    (root / "index.json").write_text(json.dumps(state))
    with pytest.raises(GalleryIndexError, match="records no bundle; pass --bundle"):
        _ = GalleryIndex(root).bundle_path
    entries = root / "shards" / "000001" / "entries.json"
    entries.write_text(json.dumps(json.loads(entries.read_text())[:-1]))
    with pytest.raises(GalleryIndexError, match="hold 9 entries for 10 rows"):
        _ = GalleryIndex(root).entries

    pending = tmp_path / "pending"
    cfg = bundle.config
    features = {"video": np.ones((2, cfg.embed_dim), np.float32),
                "frame_features": np.zeros((2, cfg.max_frames, cfg.embed_dim), np.float32),
                "patches": np.zeros((2, cfg.num_pixels, cfg.embed_dim), np.float32),
                "video_mask": np.ones((2, cfg.max_frames), np.float32)}
    with IndexWriter(pending, bundle) as writer:
        writer.publish_later = True  # biases are about to be computed: rows wait for them
        writer.add_batch(["p0", "p1"], features)
        assert writer.index.ids == ["p0", "p1"]
    assert GalleryIndex(pending).ids == [] and GalleryIndex(pending, include_pending=True).ids == ["p0", "p1"]
    with IndexWriter(pending, bundle) as writer:  # a re-run's writer knows them (it resumes after them)
        assert writer.indexed == {"p0", "p1"}
        for update in (lambda: writer.remove(["p0"]), writer.compact):
            with pytest.raises(GalleryIndexError, match="interrupted `ucofia-run index` run"):
                update()


def _rows(cfg, n, value=0.0):
    return {"video": np.full((n, cfg.embed_dim), value, np.float32),
            "frame_features": np.zeros((n, cfg.max_frames, cfg.embed_dim), np.float32),
            "patches": np.zeros((n, cfg.num_pixels, cfg.embed_dim), np.float32),
            "video_mask": np.ones((n, cfg.max_frames), np.float32)}


def test_writer_edges(bundle_dir, tmp_path):
    """Where a writer may create an index, its lock after a failed open, shard names past an
    uncommitted shard, duplicate ids refused before anything is written, failures forgotten once
    indexed, stage-1 caches dropped by every commit that changes rows or biases, corrupt files named."""
    from runtime.index import SHARDS, write_shard

    bundle = load_bundle(bundle_dir)
    cfg = bundle.config
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(GalleryIndexError, match="non-empty directory without index.json"), IndexWriter(busy, bundle):
        pass
    nested = tmp_path / "a" / "b" / "index"
    with IndexWriter(nested, bundle) as writer:
        writer.add_batch(["v0", "v1"], _rows(cfg, 2))
        # a shard written by another worker under the next number, not yet committed: skipped
        taken = f"{writer.state.next_shard:06d}"
        write_shard(nested / SHARDS, taken, ["w0"], _rows(cfg, 1, 2.0))
        writer.add_batch(["v2"], _rows(cfg, 1, 1.0))
        assert taken not in writer.state.shard_names() and (nested / SHARDS / taken / "ids.json").is_file()
        before = sorted(p.name for p in (nested / SHARDS).iterdir())
        with pytest.raises(GalleryIndexError, match="already indexed.*'v1'"):
            writer.add_batch(["v1"], _rows(cfg, 1))
        assert sorted(p.name for p in (nested / SHARDS).iterdir()) == before  # nothing written
        writer.record_failure("v3", "v3.mp4", "broken")
        writer.add_batch(["v3"], _rows(cfg, 1))  # indexed after all: no longer listed as failed
    assert (nested / "failed.jsonl").read_text() == ""
    assert GalleryIndex(nested).ids == ["v0", "v1", "v2", "v3"]
    with pytest.raises(ValueError, match="video has 2 rows for 1 ids"):
        write_shard(nested / SHARDS, "x", ["only"], _rows(cfg, 2))

    def cache():  # what a two-stage search leaves in the index
        (nested / "stage1-0123.faiss").write_bytes(b"x")
        (nested / "stage1-0123.json").write_text("{}")

    for commit in (lambda w: w.remove(["v3"]), lambda w: w.add_batch(["v4"], _rows(cfg, 1)),
                   lambda w: w.set_biases(np.zeros((3, 4), np.float32), {"bank": {"path": "b"}})):
        cache()
        with IndexWriter(nested, bundle) as writer:
            commit(writer)
        assert not list(nested.glob("stage1-*")), commit
    cache()
    with IndexWriter(nested, bundle) as writer:
        writer.publish()  # nothing to publish: no commit, the caches stay
    assert len(list(nested.glob("stage1-*"))) == 2

    broken = nested / SHARDS / GalleryIndex(nested).shards[0].name / "ids.json"
    good = broken.read_text()
    broken.write_text("[not json")
    failed = IndexWriter(nested, bundle)
    with pytest.raises(GalleryIndexError, match="ids.json is corrupt"):
        failed.__enter__()  # fails after taking the lock (the writer object lives on) ...
    broken.write_text(good)
    with IndexWriter(nested, bundle):  # ... and released it
        pass
    state = nested / "index.json"
    state.write_text("{ truncated")
    with pytest.raises(GalleryIndexError, match="index.json is corrupt .* rebuild the index"):
        GalleryIndex(nested)


def test_biases_of_other_videos_are_refused(bundle_dir, tmp_path):
    bundle = load_bundle(bundle_dir)
    root = synthetic_index(tmp_path / "index", bundle, 4)
    with IndexWriter(root, bundle) as writer:
        writer.set_biases(np.zeros((3, 4), np.float32), {"bank": {"path": "b"}})
    assert GalleryIndex(root).biases() is not None
    state = json.loads((root / "index.json").read_text())
    state["biases"]["ids_sha256"] = "0" * 64
    (root / "index.json").write_text(json.dumps(state))
    with pytest.raises(GalleryIndexError, match="do not match the indexed videos"):
        GalleryIndex(root).biases()


def test_damaged_shards_are_named(bundle_dir, tmp_path):
    bundle = load_bundle(bundle_dir)
    root = synthetic_index(tmp_path / "index", bundle, 10, shard=5)
    patches = root / "shards" / "000001" / "patches.npy"
    patches.write_bytes(patches.read_bytes()[:-100])  # a half-written copy
    gallery = GalleryIndex(root)
    assert gallery.features(0, 5)["patches"].shape[0] == 5  # the intact shard still reads
    with pytest.raises(GalleryIndexError, match="000001/patches.npy is (truncated|unreadable)"):
        gallery.features(3, 10)
    with pytest.raises(GalleryIndexError, match="000001/patches.npy is truncated; rebuild the index"):
        gallery.gather(np.array([9]))
    np.save(root / "shards" / "000001" / "video.npy", np.zeros((4, bundle.config.embed_dim), np.float32))
    with pytest.raises(GalleryIndexError, match=r"000001/video.npy has shape \(4, 64\), the state says 5 rows"):
        GalleryIndex(root).features(5, 6)


def test_search_cli_outputs(built, tmp_path):
    out = tmp_path / "res.jsonl"
    result = run_cli("search", "--index", str(built), "--query", "a red car", "--query", "a dog",
                     "--top-k", "3", "-o", str(out))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["query"] for r in rows] == ["a red car", "a dog"]
    assert all(len(r["results"]) == 3 for r in rows)
    hit = rows[0]["results"][0]
    assert set(hit) == {"rank", "video_id", "score", "levels", "metadata"} and set(hit["levels"]) == set(LEVELS)
    scores = [h["score"] for h in rows[0]["results"]]
    assert scores == sorted(scores, reverse=True)
    csv_out = tmp_path / "res.csv"
    queries = tmp_path / "q.txt"
    queries.write_text("a red car\n" + "word " * 60 + "\n")
    result = run_cli("search", "--index", str(built), "--queries", str(queries), "--format", "csv",
                     "--top-k", "2", "-o", str(csv_out))
    assert result.returncode == 0, result.stderr
    assert "truncated" in result.stderr and "query 2" in result.stderr
    assert len(csv_out.read_text().splitlines()) == 1 + 2 * 2


@pytest.mark.parametrize("args, message", [
    (["--query", "   "], "query 1 is empty"),
    (["--queries", "MISSING"], "not found"),
    ([], "give --query"),
])
def test_search_cli_errors(built, args, message):
    result = run_cli("search", "--index", str(built), *args)
    assert result.returncode in (1, 2) and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_search_empty_line_in_queries_file_names_line(built, tmp_path):
    queries = tmp_path / "q.txt"
    queries.write_text("a car\n\na dog\n")
    result = run_cli("search", "--index", str(built), "--queries", str(queries))
    assert result.returncode == 1 and "line 2: empty query;" in result.stderr


def test_bad_bank_is_refused_before_encoding(bundle_dir, clips, tmp_path):
    bank = tmp_path / "bank.txt"
    bank.write_text("a red car\n\na dog\n")
    result = _index(bundle_dir, clips, tmp_path / "index", "--bank", str(bank))
    assert result.returncode == 1 and "line 2: empty bank caption" in result.stderr
    assert not (tmp_path / "index").exists()  # nothing was encoded or written


def test_output_that_is_a_directory_is_refused_before_any_work(built, tmp_path):
    for command in (["search", "--query", "a car"], ["evaluate", "--annotations", str(tmp_path / "none.csv")]):
        result = run_cli(*command, "--index", str(built), "-o", str(tmp_path))
        assert result.returncode == 2, result.stderr
        assert "is a directory" in result.stderr and "Traceback" not in result.stderr


def test_index_lock_rejects_second_writer(bundle_dir, tmp_path):
    bundle = load_bundle(bundle_dir)
    with (IndexWriter(tmp_path / "idx", bundle),
          pytest.raises(GalleryIndexError, match="another process"),
          IndexWriter(tmp_path / "idx", bundle)):
        pass


def test_ingest_report_counts(bundle_dir, clips, tmp_path):
    bundle = load_bundle(bundle_dir)
    report = ingest.IngestReport()
    pairs = [(f"clip{i}", clips / f"clip{i}.mp4") for i in range(3)] + [("broken", clips / "broken.mp4")]
    with IndexWriter(tmp_path / "idx", bundle) as writer:
        ingest.encode_videos(writer, bundle, pairs, backend="cpu", batch_size=2, workers=1, processes=False,
                             threads=None, report=report)
    assert report.indexed == 3 and [vid for vid, _ in report.failed] == ["broken"]
    assert [s["count"] for s in json.loads((tmp_path / "idx" / "index.json").read_text())["shards"]] == [2, 1]


def test_entries_record_each_source_file(built, clips):
    import hashlib

    gallery = GalleryIndex(built)
    assert [e["id"] for e in gallery.entries] == gallery.ids
    for i in range(N_CLIPS):
        path = clips / f"clip{i}.mp4"
        entry = gallery.entry(f"clip{i}")
        assert gallery.entries[gallery.row_of(f"clip{i}")] is entry
        assert entry["path"] == str(path.resolve())
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["bytes"] == path.stat().st_size and entry["mtime"] == path.stat().st_mtime
        assert (entry["width"], entry["height"]) == (48, 40) and entry["fps"] == 3
        assert entry["duration_s"] == pytest.approx(1 + i, abs=0.4)
        assert entry["frames"] == min(1 + i, load_bundle(gallery.bundle_path).config.max_frames)
    assert gallery.entry("broken") is None and gallery.row_of("broken") is None


def test_format_1_index_opens_and_is_upgraded_on_append(bundle_dir, clips, tmp_path):
    """An index written before entries existed reads with id-only entries; appending upgrades it."""
    listing = tmp_path / "videos.txt"
    listing.write_text("".join(f"{clips / f'clip{i}.mp4'}\n" for i in range(2)))
    out = tmp_path / "index"
    assert _index(bundle_dir, listing, out, "--store", "float32").returncode == 0
    state = json.loads((out / "index.json").read_text())
    state["format"] = "ucofia.index/1"
    for key in ("store", "next_shard"):  # what format 1 did not record
        state.pop(key)
    for record in state["shards"]:
        record.pop("store")
    (out / "index.json").write_text(json.dumps(state))
    for entries in (out / "shards").glob("*/entries.json"):
        entries.unlink()
    old = GalleryIndex(out)
    assert old.entries == [{"id": "clip0"}, {"id": "clip1"}] and old.entry("clip1") == {"id": "clip1"}

    listing.write_text("".join(f"{clips / f'clip{i}.mp4'}\n" for i in range(3)))
    assert _index(bundle_dir, listing, out).returncode == 0
    upgraded = GalleryIndex(out)
    assert upgraded.state.format == "ucofia.index/3" and upgraded.store == "float32"
    assert upgraded.entries[:2] == [{"id": "clip0"}, {"id": "clip1"}]
    assert upgraded.entry("clip2")["path"] == str((clips / "clip2.mp4").resolve())


def test_add_batch_refuses_entries_of_other_ids(bundle_dir, tmp_path):
    bundle = load_bundle(bundle_dir)
    cfg = bundle.config
    d, f, p = cfg.embed_dim, cfg.max_frames, cfg.num_pixels
    features = {"video": np.zeros((1, d), np.float32), "frame_features": np.zeros((1, f, d), np.float32),
                "patches": np.zeros((1, p, d), np.float32), "video_mask": np.ones((1, f), np.float32)}
    with IndexWriter(tmp_path / "index", bundle) as writer, pytest.raises(ValueError, match="entries"):
        writer.add_batch(["a"], features, [{"id": "b"}])
    assert GalleryIndex(tmp_path / "index").ids == []


def test_unknown_index_format_is_refused_with_the_fix(built, tmp_path):
    import shutil

    copy = tmp_path / "index"
    shutil.copytree(built, copy)
    state = json.loads((copy / "index.json").read_text())
    state["format"] = "ucofia.index/99"
    (copy / "index.json").write_text(json.dumps(state))
    with pytest.raises(GalleryIndexError, match="unsupported index format.*rebuild the index or upgrade"):
        GalleryIndex(copy)


def test_shards_written_elsewhere_are_committed_once_and_never_twice(bundle_dir, tmp_path):
    """write_shard + commit_shards: how parallel workers add shards; duplicate ids are refused."""
    from runtime.index import SHARDS, write_shard

    bundle = load_bundle(bundle_dir)
    cfg = bundle.config
    d, f, p = cfg.embed_dim, cfg.max_frames, cfg.num_pixels

    def features(n, value):
        return {"video": np.full((n, d), value, np.float32), "frame_features": np.zeros((n, f, d), np.float32),
                "patches": np.zeros((n, p, d), np.float32), "video_mask": np.ones((n, f), np.float32)}

    with IndexWriter(tmp_path / "index", bundle) as writer:
        a = write_shard(tmp_path / "index" / SHARDS, "w0-a", ["a", "b"], features(2, 1.0))
        b = write_shard(tmp_path / "index" / SHARDS, "w1-b", ["c"], features(1, 2.0))
        assert GalleryIndex(tmp_path / "index").ids == []  # written, not yet committed
        writer.commit_shards([a, b])
        clash = write_shard(tmp_path / "index" / SHARDS, "w2-c", ["d", "b"], features(2, 3.0))
        with pytest.raises(GalleryIndexError, match="already indexed.*'b'"):
            writer.commit_shards([clash])
        twice = write_shard(tmp_path / "index" / SHARDS, "w3-d", ["e", "e"], features(2, 4.0))
        with pytest.raises(GalleryIndexError, match="'e'"):
            writer.commit_shards([twice])
        # a shard already recorded is refused even with its rows removed (two records of one
        # directory: compacting one of them would delete the files the other still names)
        with pytest.raises(GalleryIndexError, match="shard w0-a is already recorded"):
            writer.commit_shards([a.with_removed([0, 1])])
    gallery = GalleryIndex(tmp_path / "index")
    assert gallery.ids == ["a", "b", "c"]
    np.testing.assert_array_equal(gallery.features(0, 3)["video"][:, 0], [1.0, 1.0, 2.0])
    with IndexWriter(tmp_path / "index", bundle):  # uncommitted shards are orphans: removed on open
        pass
    assert sorted(x.name for x in (tmp_path / "index" / SHARDS).iterdir()) == ["w0-a", "w1-b"]


def test_scattered_rows_are_read_by_parallel_positioned_reads_into_their_places(bundle_dir, tmp_path, monkeypatch):
    import os
    import threading

    from runtime.index import reader, shards

    root = synthetic_index(tmp_path / "index", load_bundle(bundle_dir), 60, shard=5)
    gallery = GalleryIndex(root)
    whole = gallery.features(0, 60)
    rows = np.array([0, 2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 33, 37, 41, 43, 47, 53, 58, 59])  # 12 shards
    readers: list[str] = []
    preadv = os.preadv

    def spy(fd, buffers, offset):
        readers.append(threading.current_thread().name)
        return preadv(fd, buffers, offset)

    monkeypatch.setattr(shards.os, "preadv", spy)
    for least, pooled in ((4, True), (len(rows) + 1, False)):
        monkeypatch.setattr(reader, "PARALLEL_MIN_ROWS", least)
        readers.clear()
        got = gallery.gather(rows[::-1])  # any order in, that order out
        for role, value in whole.items():
            np.testing.assert_array_equal(got[role], value[rows[::-1]])
        assert readers and all(name.startswith("ucofia-read") == pooled for name in readers), readers
    monkeypatch.setattr(reader, "PARALLEL_MIN_ROWS", 4)
    patches = root / "shards" / "000011" / "patches.npy"
    patches.write_bytes(patches.read_bytes()[:-100])  # the last row is cut short
    with pytest.raises(GalleryIndexError, match="000011/patches.npy is truncated; rebuild the index"):
        GalleryIndex(root).gather(rows)
