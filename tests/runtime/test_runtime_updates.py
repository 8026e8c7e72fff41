"""Stored dtypes and index updates (remove, replace, merge, compact) on a hand-built bundle: each
update gives the index an index built from scratch on the same videos would be, and a SIGKILL at
any step of an update leaves an index that opens and answers (no torch involved)."""
from __future__ import annotations

import json
import os
import shutil
import signal

import numpy as np
import pytest
from runtime_helpers import build_fake_bundle, run_cli, run_cli_process

from runtime import search
from runtime.backends import open_session
from runtime.bundle import load_bundle
from runtime.errors import GalleryIndexError
from runtime.faults import CRASH_ENV
from runtime.index import GalleryIndex, IndexWriter
from runtime.index.store import FLOAT16_MAX, STORES, bytes_per_video, decode, encode, unstorable_rows
from runtime.scoring import LEVELS, VIDEO_ROLES, Scorer
from runtime.text import TextEncoder

N_CLIPS = 5
QUERIES = ["a red car", "a dog on the beach", "cooking pasta"]


@pytest.fixture(scope="module")
def bundle_dir(fake_bundle):
    return fake_bundle


# clips (tests/runtime/conftest.py): clip0 ... clip5; clip5 is the changed content of clip1 in the replace test


@pytest.fixture(scope="module")
def bank_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bank") / "bank.txt"
    path.write_text("a red car drives\na dog on the beach\nsomeone is cooking\na man plays guitar\ntwo people talk\n")
    return path


def _listing(folder, clips, numbers, name="videos.txt"):
    path = folder / name
    path.write_text("".join(f"clip{i}\t{clips / f'clip{i}.mp4'}\n" for i in numbers))
    return path


def _index(bundle_dir, videos, out, *extra, env=None):
    """``ucofia-run index``; in a subprocess with ``env`` (a crash point kills the process)."""
    args = ("index", "--bundle", str(bundle_dir), "--videos", str(videos), "-o", str(out), "--batch-size", "2",
            "--workers", "1", "-q", *extra)
    return run_cli(*args) if env is None else run_cli_process(*args, env=env)


def _search(index_dir, k=4):
    gallery = GalleryIndex(index_dir)
    bundle = load_bundle(gallery.bundle_path)
    feats = TextEncoder(bundle, "cpu").encode(QUERIES)
    scorer = Scorer(open_session(bundle, "scorer", "cpu"), bundle.config)
    return gallery, search.exhaustive(scorer, gallery, feats, k=min(k, len(gallery)))


def assert_same_gallery(got, want):
    """Same ids, features, biases and search results as the index ``want`` (built from scratch)."""
    a, top_a = _search(got)
    b, top_b = _search(want)
    assert a.ids == b.ids and a.store == b.store
    for role in VIDEO_ROLES:
        np.testing.assert_allclose(a.features(0, len(a))[role], b.features(0, len(b))[role], rtol=1e-6, atol=1e-6)
    bias_a, bias_b = a.biases(), b.biases()
    assert (bias_a is None) == (bias_b is None)
    for level in LEVELS if bias_a else ():
        np.testing.assert_allclose(bias_a[level], bias_b[level], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(top_a.indices, top_b.indices)
    np.testing.assert_allclose(top_a.fused, top_b.fused, rtol=1e-5, atol=1e-6)


# ---- stored dtypes -------------------------------------------------------------------------------
def test_store_encode_decode_bounds():
    rng = np.random.default_rng(0)
    x = {"video": rng.standard_normal((3, 16)).astype(np.float32),
         "frame_features": rng.standard_normal((3, 4, 16)).astype(np.float32) * 5,
         "patches": np.concatenate([np.zeros((1, 8, 16)), rng.standard_normal((2, 8, 16)) * 100]).astype(np.float32),
         "video_mask": np.ones((3, 4), np.float32)}
    for store in STORES:
        stored = encode(x, store)
        for role in x:
            scale = stored.get(f"{role}.scale")
            back = decode(stored[role], scale)
            assert back.dtype == np.float32 and back.shape == x[role].shape
            if store == "float32" or role == "video_mask":
                np.testing.assert_array_equal(back, x[role])
            elif scale is None:  # float16: relative rounding 2^-11
                np.testing.assert_allclose(back, x[role], rtol=2 ** -11, atol=1e-7)
            else:  # int8: within half a step of the vector's scale; zero vectors stay zero
                step = np.abs(x[role]).max(axis=-1, keepdims=True) / 127
                assert (np.abs(back - x[role]) <= step / 2 + 1e-6).all()
    assert np.all(decode(encode(x, "int8")["patches"], encode(x, "int8")["patches.scale"])[0] == 0)
    with pytest.raises(ValueError, match="float16 range"):
        encode({"video": np.full((1, 4), 1e5, np.float32)}, "float16")
    sizes = {s: bytes_per_video(s, 512, 12, 48) for s in STORES}
    assert sizes["float32"] == (512 * 61 + 12) * 4 and sizes["float16"] < sizes["float32"] / 1.9
    assert sizes["int8"] < sizes["float32"] / 3.5


def test_store_limits_and_sizes():
    """float16 holds |x| <= 65504: that value is stored exactly, anything beyond is refused, and
    unstorable_rows flags exactly the rows with such a value in a role the store keeps in float16
    (video_mask is float32 in every store, int8 roles have a scale). A zero vector is stored as
    zeros in int8. Bytes per video follow the layout of runtime.index.store."""
    top = {"video": np.full((1, 4), -FLOAT16_MAX, np.float32), "patches": np.full((1, 2, 4), FLOAT16_MAX, np.float32)}
    for role, value in encode(top, "float16").items():
        assert value.dtype == np.float16
        np.testing.assert_array_equal(decode(value, None), top[role])
    features = {"video": np.zeros((4, 4), np.float32), "frame_features": np.zeros((4, 2, 4), np.float32),
                "patches": np.zeros((4, 2, 4), np.float32), "video_mask": np.ones((4, 2), np.float32)}
    features["frame_features"][0, 1, 2] = FLOAT16_MAX  # storable everywhere
    features["patches"][1, 0, 3] = -70000.0  # beyond float16: int8 scales it
    features["video"][2, 3] = 1e5  # beyond float16, which the int8 store keeps video in
    features["video_mask"][3, 0] = 1e6  # float32 in every store
    assert unstorable_rows(features, "float32").tolist() == [False, False, False, False]
    assert unstorable_rows(features, "float16").tolist() == [False, True, True, False]
    assert unstorable_rows(features, "int8").tolist() == [False, False, True, False]
    with np.errstate(all="raise"):  # no 0/0 on the way (NaN cast to int8 is undefined)
        zero = encode({"patches": np.zeros((2, 3, 4), np.float32)}, "int8")
    assert not zero["patches"].any() and not zero["patches.scale"].any()
    # video + frame_features + patches + video_mask (float32), int8 roles with a float32 scale a vector
    assert bytes_per_video("float16", 512, 12, 48) == 2 * 512 * 61 + 4 * 12
    assert bytes_per_video("int8", 512, 12, 48) == 2 * 512 + (512 + 4) * (12 + 48) + 4 * 12


@pytest.mark.parametrize("store", STORES)
def test_each_store_round_trips_through_search_and_evaluate(store, bundle_dir, clips, bank_file, tmp_path):
    listing = _listing(tmp_path, clips, range(N_CLIPS))
    ref, out = tmp_path / "f32", tmp_path / store
    assert _index(bundle_dir, listing, ref, "--bank", str(bank_file), "--store", "float32").returncode == 0
    done = _index(bundle_dir, listing, out, "--bank", str(bank_file), "--store", store)
    assert done.returncode == 0, done.stderr
    gallery = GalleryIndex(out)
    assert gallery.store == store and json.loads((out / "index.json").read_text())["store"] == store
    dtypes = {p.name: np.load(p, mmap_mode="r").dtype.name for p in next((out / "shards").iterdir()).glob("*.npy")}
    want = {"float32": "float32", "float16": "float16", "int8": "int8"}[store]
    assert dtypes["patches.npy"] == want and dtypes["video_mask.npy"] == "float32"
    assert ("patches.scale.npy" in dtypes) == (store == "int8")
    exact = GalleryIndex(ref).features(0, N_CLIPS)
    got = gallery.features(0, N_CLIPS)
    tol = {"float32": 0, "float16": 2 ** -10, "int8": 2 / 127}[store]
    for role in VIDEO_ROLES:
        assert got[role].dtype == np.float32
        scale = np.abs(exact[role]).max(axis=-1, keepdims=True)
        assert (np.abs(got[role] - exact[role]) <= tol * scale + 1e-7).all()
    found = run_cli("search", "--index", str(out), "--query", "a red car", "--top-k", "3", "--two-stage",
                    "--shortlist", "5")
    assert found.returncode == 0, found.stderr
    assert len(json.loads(found.stdout)["results"]) == 3
    annotations = tmp_path / "ann.csv"
    annotations.write_text("video_id,sentence\n" + "".join(f"clip{i},caption {i}\n" for i in range(N_CLIPS)))
    evaluated = run_cli("evaluate", "--index", str(out), "--annotations", str(annotations), "--dataset", "generic",
                        "-o", str(tmp_path / "eval.json"))
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "eval.json").read_text())["videos"] == N_CLIPS


def test_existing_index_keeps_its_store(bundle_dir, clips, tmp_path):
    listing = _listing(tmp_path, clips, range(2))
    assert _index(bundle_dir, listing, tmp_path / "idx", "--store", "int8").returncode == 0
    again = _index(bundle_dir, _listing(tmp_path, clips, range(3)), tmp_path / "idx")  # no --store: the index's
    assert again.returncode == 0 and GalleryIndex(tmp_path / "idx").store == "int8"
    clash = _index(bundle_dir, listing, tmp_path / "idx", "--store", "float32")
    assert clash.returncode == 1 and "stores features as int8" in clash.stderr and "merge" in clash.stderr


# ---- updates equal a from-scratch index ----------------------------------------------------------
@pytest.fixture(scope="module")
def scratch(bundle_dir, clips, bank_file, tmp_path_factory):
    """Indexes built from scratch: name -> path (all five clips; without clip1 and clip3)."""
    folder = tmp_path_factory.mktemp("scratch")
    out = {}
    for name, numbers in {"all": range(N_CLIPS), "without_1_3": (0, 2, 4)}.items():
        out[name] = folder / name
        done = _index(bundle_dir, _listing(folder, clips, numbers, f"{name}.txt"), out[name], "--bank", str(bank_file))
        assert done.returncode == 0, done.stderr
    return out


def test_remove_then_compact_equal_a_fresh_index(bundle_dir, clips, bank_file, scratch, tmp_path):
    out = tmp_path / "idx"
    shutil.copytree(scratch["all"], out)
    ids = tmp_path / "ids.txt"
    ids.write_text("clip1\n# a comment\n\nclip3\n")
    done = run_cli("remove", "--index", str(out), "--ids", str(ids), "-q")
    assert done.returncode == 0, done.stderr
    assert "removed 2 videos" in done.stdout and "computed from 5 bank captions" in done.stdout
    assert GalleryIndex(out).removed_rows == 2
    assert_same_gallery(out, scratch["without_1_3"])
    # removed videos never come back in results, also two-stage
    found = run_cli("search", "--index", str(out), "--query", "a car", "--top-k", "3", "--two-stage",
                    "--shortlist", "3")
    assert found.returncode == 0 and {"clip1", "clip3"}.isdisjoint(
        r["video_id"] for r in json.loads(found.stdout)["results"])

    size = sum(p.stat().st_size for p in (out / "shards").rglob("*.npy"))
    done = run_cli("compact", "--index", str(out), "-q")
    assert done.returncode == 0 and "2 removed rows reclaimed" in done.stdout, done.stderr
    assert GalleryIndex(out).removed_rows == 0
    assert sum(p.stat().st_size for p in (out / "shards").rglob("*.npy")) < size * 0.7
    assert len(list((out / "shards").iterdir())) == 1  # three shards of 2, 2, 1 rows coalesced
    assert_same_gallery(out, scratch["without_1_3"])


def _remove(index_dir, tmp_path, *ids):
    listing = tmp_path / "remove.txt"
    listing.write_text("".join(f"{vid}\n" for vid in ids))
    done = run_cli("remove", "--index", str(index_dir), "--ids", str(listing), "-q")
    assert done.returncode == 0, done.stderr
    return done


def test_repeated_removes_on_one_shard_then_compaction_into_several_shards(bundle_dir, clips, bank_file, tmp_path):
    """Shards of 3 rows [clip0 clip1 clip2] [clip3 clip4 clip5]; clip0 and clip2 removed one after the
    other from the first, clip4 from the second; compaction at 2 rows a shard writes [clip1] and
    [clip3 clip5]. After every step the index equals a fresh one of the videos left."""
    out, fresh = tmp_path / "idx", tmp_path / "fresh"
    done = _index(bundle_dir, _listing(tmp_path, clips, range(6)), out, "--bank", str(bank_file), "--batch-size", "3")
    assert done.returncode == 0, done.stderr
    assert [s["count"] for s in json.loads((out / "index.json").read_text())["shards"]] == [3, 3]
    _remove(out, tmp_path, "clip0")
    _remove(out, tmp_path, "clip2")  # the second remove on the same shard keeps the first
    assert GalleryIndex(out).ids == ["clip1", "clip3", "clip4", "clip5"] and GalleryIndex(out).removed_rows == 2
    _remove(out, tmp_path, "clip4")
    left = (1, 3, 5)
    done = _index(bundle_dir, _listing(tmp_path, clips, left, "fresh.txt"), fresh, "--bank", str(bank_file))
    assert done.returncode == 0, done.stderr
    assert_same_gallery(out, fresh)

    done = run_cli("compact", "--index", str(out), "--rows-per-shard", "2", "-q")
    assert done.returncode == 0 and "3 removed rows reclaimed" in done.stdout, done.stderr
    state = json.loads((out / "index.json").read_text())
    assert [s["count"] for s in state["shards"]] == [1, 2] and not any(s.get("removed") for s in state["shards"])
    assert sorted(p.name for p in (out / "shards").iterdir()) == sorted(s["name"] for s in state["shards"])
    assert GalleryIndex(out).ids == [f"clip{i}" for i in left] and GalleryIndex(out).removed_rows == 0
    assert_same_gallery(out, fresh)


def test_compaction_coalesces_small_shards_into_groups_and_keeps_full_ones(bundle_dir, clips, tmp_path):
    """Six shards of one row, clip3 removed: at 4 rows a shard (shards under 2 rows are rewritten)
    the five live rows become [4, 1]; compacting again changes nothing (the full shard is kept, the
    last one has nothing to coalesce with); with clip0 removed the two coalesce into one."""
    out = tmp_path / "idx"
    assert _index(bundle_dir, _listing(tmp_path, clips, range(6)), out, "--batch-size", "1").returncode == 0
    before = GalleryIndex(out)
    features = {vid: before.gather(np.array([row])) for row, vid in enumerate(before.ids)}

    def shards():
        return [(s["name"], s["count"]) for s in json.loads((out / "index.json").read_text())["shards"]]

    def assert_rows(ids):
        gallery = GalleryIndex(out)
        assert gallery.ids == ids and gallery.removed_rows == 0
        for row, vid in enumerate(ids):
            got = gallery.gather(np.array([row]))
            for role in got:
                np.testing.assert_array_equal(got[role], features[vid][role], err_msg=f"{vid} {role}")
        assert sorted(p.name for p in (out / "shards").iterdir()) == sorted(name for name, _ in shards())

    _remove(out, tmp_path, "clip3")
    done = run_cli("compact", "--index", str(out), "--rows-per-shard", "4", "-q")
    assert done.returncode == 0 and "1 removed rows reclaimed" in done.stdout, done.stderr
    assert [count for _, count in shards()] == [4, 1]
    assert_rows(["clip0", "clip1", "clip2", "clip4", "clip5"])
    compacted = shards()
    for rows in ("4", "2", "8"):  # at 8 the 4-row shard is half the target: kept, not rewritten
        done = run_cli("compact", "--index", str(out), "--rows-per-shard", rows, "-q")
        assert done.returncode == 0 and "0 removed rows reclaimed" in done.stdout, done.stderr
        assert shards() == compacted
    _remove(out, tmp_path, "clip0")
    done = run_cli("compact", "--index", str(out), "--rows-per-shard", "4", "-q")
    assert done.returncode == 0 and "1 removed rows reclaimed" in done.stdout, done.stderr
    assert [count for _, count in shards()] == [4]
    assert_rows(["clip1", "clip2", "clip4", "clip5"])


def test_remove_refuses_unknown_ids_unless_allowed(scratch, tmp_path):
    out = tmp_path / "idx"
    shutil.copytree(scratch["all"], out)
    ids = tmp_path / "ids.txt"
    ids.write_text("clip0\nnope\n")
    done = run_cli("remove", "--index", str(out), "--ids", str(ids), "-q")
    assert done.returncode == 1 and "nope" in done.stderr and "nothing was removed" in done.stderr
    assert len(GalleryIndex(out)) == N_CLIPS
    done = run_cli("remove", "--index", str(out), "--ids", str(ids), "--allow-missing", "-q")
    assert done.returncode == 0 and "removed 1 videos, 1 not in the index" in done.stdout
    assert "clip0" not in GalleryIndex(out).ids


def _without_its_bundle(index_dir):
    """Make the index's recorded bundle a path that is gone (as after moving the bundle)."""
    state = json.loads((index_dir / "index.json").read_text())
    state["bundle"] = str(index_dir.parent / "gone-bundle")
    (index_dir / "index.json").write_text(json.dumps(state))


def test_remove_id_lists_and_updates_without_the_bundle(bundle_dir, clips, scratch, tmp_path):
    """--ids takes ids or `id<TAB>path` lines; a missing or empty list is refused; only unknown ids
    (allowed) remove nothing. Without its bundle an index can lose videos only when no SK biases
    must be recomputed (none stored, no --bank)."""
    out = tmp_path / "idx"
    shutil.copytree(scratch["all"], out)

    def state():
        return {k: v for k, v in json.loads((out / "index.json").read_text()).items() if k != "updated"}

    before = state()
    missing = run_cli("remove", "--index", str(out), "--ids", str(tmp_path / "none.txt"), "-q")
    assert missing.returncode == 1 and "none.txt: file not found" in missing.stderr
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    empty = run_cli("remove", "--index", str(out), "--ids", str(tmp_path / "empty.txt"), "-q")
    assert empty.returncode == 1 and "lists no video ids" in empty.stderr
    (tmp_path / "unknown.txt").write_text(f"nope\t{clips / 'nope.mp4'}\n")
    done = run_cli("remove", "--index", str(out), "--ids", str(tmp_path / "unknown.txt"), "--allow-missing", "-q")
    assert done.returncode == 0, done.stderr
    assert "removed 0 videos, 1 not in the index (skipped)" in done.stdout and "biases: unchanged" in done.stdout
    assert state() == before

    _without_its_bundle(out)  # it has biases: removing needs the bundle to recompute them
    (tmp_path / "one.txt").write_text(f"clip3\t{clips / 'clip3.mp4'}\n")
    refused = run_cli("remove", "--index", str(out), "--ids", str(tmp_path / "one.txt"), "-q")
    assert refused.returncode == 1 and "must be recomputed, which needs its bundle" in refused.stderr
    assert "--bundle" in refused.stderr and GalleryIndex(out).ids == [f"clip{i}" for i in range(N_CLIPS)]
    done = run_cli("remove", "--index", str(out), "--ids", str(tmp_path / "one.txt"), "--bundle", str(bundle_dir),
                   "-q")
    assert done.returncode == 0 and "removed 1 videos" in done.stdout, done.stderr

    plain = tmp_path / "plain"  # no biases: removing works without the bundle, unless --bank asks for biases
    assert _index(bundle_dir, _listing(tmp_path, clips, range(3), "plain.txt"), plain).returncode == 0
    _without_its_bundle(plain)
    (tmp_path / "zero.txt").write_text("clip0\n")
    with_bank = run_cli("remove", "--index", str(plain), "--ids", str(tmp_path / "zero.txt"), "--bank",
                        str(tmp_path / "empty.txt"), "-q")
    assert with_bank.returncode == 1 and "which needs its bundle" in with_bank.stderr
    done = run_cli("remove", "--index", str(plain), "--ids", str(tmp_path / "zero.txt"), "-q")
    assert done.returncode == 0 and "biases: none" in done.stdout, done.stderr
    assert GalleryIndex(plain).ids == ["clip1", "clip2"]


def test_reindexing_a_changed_file_replaces_its_rows(bundle_dir, clips, bank_file, tmp_path):
    """clip1's file gets new content: re-indexing replaces its row; equal to a fresh index of the new files."""
    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(N_CLIPS):
        shutil.copy(clips / f"clip{i}.mp4", folder / f"clip{i}.mp4")
    out, fresh = tmp_path / "idx", tmp_path / "fresh"
    listing = _listing(tmp_path, folder, range(N_CLIPS))
    assert _index(bundle_dir, listing, out, "--bank", str(bank_file)).returncode == 0
    unchanged = _index(bundle_dir, listing, out)
    assert "indexed 0 new" in unchanged.stdout and "5 already present" in unchanged.stdout
    os.utime(folder / "clip2.mp4")  # touched, same content: kept
    shutil.copy(clips / "clip5.mp4", folder / "clip1.mp4")  # new content
    done = _index(bundle_dir, listing, out)
    assert done.returncode == 0, done.stderr
    assert "indexed 1 new videos" in done.stdout and "1 of them replacing" in done.stdout
    gallery = GalleryIndex(out)
    assert sorted(gallery.ids) == [f"clip{i}" for i in range(N_CLIPS)] and gallery.removed_rows == 1
    assert gallery.entry("clip1")["sha256"] != gallery.entry("clip0")["sha256"]
    # a fresh index of the new files in the same row order (the replaced video is now last)
    order = [0, 2, 3, 4, 1]
    assert gallery.ids == [f"clip{i}" for i in order]
    assert _index(bundle_dir, _listing(tmp_path, folder, order, "fresh.txt"), fresh,
                  "--bank", str(bank_file)).returncode == 0
    assert_same_gallery(out, fresh)


@pytest.mark.parametrize("policy", ["first", "last"])
def test_merge_equals_a_fresh_index_and_recomputes_biases(policy, bundle_dir, clips, bank_file, tmp_path):
    """Both inputs hold an id clip2, made from different files (a: clip2.mp4, b: clip5.mp4) and at
    different positions: ``first`` keeps a's row where a has it, ``last`` b's row where b has it."""
    a, b = tmp_path / "a", tmp_path / "b"
    done = _index(bundle_dir, _listing(tmp_path, clips, (0, 1, 2), "a.txt"), a, "--bank", str(bank_file))
    assert done.returncode == 0, done.stderr
    (tmp_path / "b.txt").write_text(f"clip3\t{clips / 'clip3.mp4'}\nclip2\t{clips / 'clip5.mp4'}\n"
                                    f"clip4\t{clips / 'clip4.mp4'}\n")
    assert _index(bundle_dir, tmp_path / "b.txt", b, "--bank", str(bank_file)).returncode == 0
    refused = run_cli("merge", str(a), str(b), "-o", str(tmp_path / "c"), "-q")
    assert refused.returncode == 1 and "clip2" in refused.stderr and "--on-duplicate" in refused.stderr
    assert not (tmp_path / "c").exists()
    done = run_cli("merge", str(a), str(b), "-o", str(tmp_path / "c"), "--on-duplicate", policy, "-q")
    assert done.returncode == 0, done.stderr
    assert "1 duplicate rows dropped" in done.stdout and "computed from 5 bank captions" in done.stdout
    order = {"first": [("clip0", 0), ("clip1", 1), ("clip2", 2), ("clip3", 3), ("clip4", 4)],
             "last": [("clip0", 0), ("clip1", 1), ("clip3", 3), ("clip2", 5), ("clip4", 4)]}[policy]
    fresh = tmp_path / "fresh"
    (tmp_path / "fresh.txt").write_text("".join(f"{vid}\t{clips / f'clip{n}.mp4'}\n" for vid, n in order))
    assert _index(bundle_dir, tmp_path / "fresh.txt", fresh, "--bank", str(bank_file)).returncode == 0
    assert GalleryIndex(tmp_path / "c").ids == [vid for vid, _ in order]
    assert_same_gallery(tmp_path / "c", fresh)
    kept = GalleryIndex(tmp_path / "c").entry("clip2")["sha256"]
    assert kept == GalleryIndex(a if policy == "first" else b).entry("clip2")["sha256"]
    # shards are shared with the inputs (hard links), not copied
    merged = next((tmp_path / "c" / "shards").iterdir()) / "patches.npy"
    assert merged.stat().st_nlink == 2


def test_merge_of_three_inputs_keeps_one_row_per_id(bundle_dir, clips, tmp_path):
    """clip1 in all three inputs, each made from another file: first keeps a's, last c's; a shard
    whose rows are all removed is not carried into the merged index."""
    from runtime.index.updates import merge_indexes
    from runtime.ingest.biases import BankBiases, BiasScoring

    files = {"a": 1, "b": 2, "c": 3}  # input -> the clip its clip1 is made from
    for name, source in files.items():
        listing = tmp_path / f"{name}.txt"
        listing.write_text(f"{name}0\t{clips / 'clip0.mp4'}\n{name}1\t{clips / 'clip4.mp4'}\n"
                           f"clip1\t{clips / f'clip{source}.mp4'}\n")
        assert _index(bundle_dir, listing, tmp_path / name).returncode == 0
    (tmp_path / "dead.txt").write_text("a0\na1\n")  # a's first shard (2 rows) has no live row left
    assert run_cli("remove", "--index", str(tmp_path / "a"), "--ids", str(tmp_path / "dead.txt"), "-q").returncode == 0
    for policy, keeper in (("first", "a"), ("last", "c")):
        out = tmp_path / "nested" / policy / "merged"  # its parent folders are made
        done = run_cli("merge", *(str(tmp_path / n) for n in files), "-o", str(out), "--on-duplicate", policy, "-q")
        assert done.returncode == 0, done.stderr
        merged = GalleryIndex(out)
        assert sorted(merged.ids) == sorted(["clip1", "b0", "b1", "c0", "c1"]) and len(merged.ids) == 5
        assert merged.entry("clip1")["sha256"] == GalleryIndex(tmp_path / keeper).entry("clip1")["sha256"]
        carried = [json.loads((out / "shards" / s["name"] / "ids.json").read_text())
                   for s in json.loads((out / "index.json").read_text())["shards"]]
        assert ["a0", "a1"] not in carried and len(carried) == 5  # a's dead shard is left out
        assert not list(out.parent.glob(".merged.merge*"))  # neither the temp dir nor the lock file is left
    bundle = load_bundle(bundle_dir)
    with pytest.raises(ValueError, match="unknown duplicate policy 'middle'"):
        merge_indexes([tmp_path / "a", tmp_path / "b"], tmp_path / "x", bundle, on_duplicate="middle",
                      biases_for=BankBiases(bundle, BiasScoring("cpu")))


def test_merge_refuses_what_it_cannot_merge_safely(bundle_dir, clips, bank_file, tmp_path):
    """An existing output, an input that is no index, an input another process is writing, a
    merge into the same output running, inputs whose biases come from different banks: each is
    refused with nothing written; stale temp dirs of killed merges into the output are cleaned."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert _index(bundle_dir, _listing(tmp_path, clips, (0, 1), "a.txt"), a, "--bank", str(bank_file)).returncode == 0
    other_bank = tmp_path / "bank2.txt"
    other_bank.write_text("a cat\na horse\n")
    assert _index(bundle_dir, _listing(tmp_path, clips, (2,), "b.txt"), b, "--bank", str(other_bank)).returncode == 0
    out = tmp_path / "out"

    def merge(*inputs, extra=()):
        return run_cli("merge", *map(str, inputs), "-o", str(out), "-q", *extra)

    banks = merge(a, b)
    assert banks.returncode == 1 and "different caption banks" in banks.stderr and "--bank" in banks.stderr
    plain = tmp_path / "plain"
    assert _index(bundle_dir, _listing(tmp_path, clips, (3,), "p.txt"), plain).returncode == 0
    some = merge(a, plain)
    assert some.returncode == 1 and "only some inputs have biases" in some.stderr
    not_index = tmp_path / "folder"
    not_index.mkdir()
    for bad in (not_index, tmp_path / "missing"):
        refused = merge(a, bad)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert "not a ucofia index" in refused.stderr or "not found" in refused.stderr
    assert list(not_index.iterdir()) == []  # not even a lock file in it
    with IndexWriter(b, load_bundle(bundle_dir)):  # b is being written
        busy = merge(a, b, extra=("--bank", str(bank_file)))
    assert busy.returncode == 1 and "another process is writing" in busy.stderr
    from runtime.index.locks import file_lock

    with file_lock(tmp_path / ".out.merge.lock", "held"):
        twice = merge(a, b, extra=("--bank", str(bank_file)))
    assert twice.returncode == 1 and "another merge into" in twice.stderr
    assert not out.exists()
    stale = tmp_path / ".out.merge-killed"
    stale.mkdir()
    (stale / "junk").write_text("x")
    done = merge(a, b, extra=("--bank", str(bank_file)))
    assert done.returncode == 0 and "computed from 5 bank captions" in done.stdout, done.stderr
    assert not stale.exists() and not (tmp_path / ".out.merge.lock").exists()
    again = merge(a, b, extra=("--bank", str(bank_file)))
    assert again.returncode == 1 and "already exists" in again.stderr


def test_a_failed_merge_leaves_no_output_and_no_temp_dir(bundle_dir, clips, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _index(bundle_dir, _listing(tmp_path, clips, (0,), "a.txt"), a).returncode == 0
    assert _index(bundle_dir, _listing(tmp_path, clips, (1,), "b.txt"), b).returncode == 0
    bad_bank = tmp_path / "bank.txt"
    bad_bank.write_text("a car\n\na dog\n")  # refused while the merged biases are computed
    failed = run_cli("merge", str(a), str(b), "-o", str(tmp_path / "out"), "--bank", str(bad_bank), "-q")
    assert failed.returncode == 1 and "empty bank caption" in failed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "a.txt", "b", "b.txt", "bank.txt"]


def test_merge_converts_the_store_and_refuses_other_bundles(bundle_dir, clips, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _index(bundle_dir, _listing(tmp_path, clips, (0, 1), "a.txt"), a, "--store", "float32").returncode == 0
    assert _index(bundle_dir, _listing(tmp_path, clips, (2,), "b.txt"), b, "--store", "float16").returncode == 0
    mixed = run_cli("merge", str(a), str(b), "-o", str(tmp_path / "c"), "-q")
    assert mixed.returncode == 1 and "--store" in mixed.stderr
    done = run_cli("merge", str(a), str(b), "-o", str(tmp_path / "c"), "--store", "float16", "-q")
    assert done.returncode == 0, done.stderr
    merged = GalleryIndex(tmp_path / "c")
    assert merged.store == "float16" and merged.ids == ["clip0", "clip1", "clip2"]
    np.testing.assert_allclose(merged.features(0, 2)["patches"], GalleryIndex(a).features(0, 2)["patches"],
                               rtol=2 ** -10, atol=1e-6)
    other = build_fake_bundle(tmp_path / "other", seed=3)
    c = tmp_path / "other_index"
    assert _index(other, _listing(tmp_path, clips, (3,), "o.txt"), c).returncode == 0
    refused = run_cli("merge", str(a), str(c), "-o", str(tmp_path / "d"), "--store", "float16", "-q")
    assert refused.returncode == 1 and "fingerprint" in refused.stderr and not (tmp_path / "d").exists()


def test_shard_names_never_collide_after_compaction(bundle_dir, clips, tmp_path):
    out = tmp_path / "idx"
    assert _index(bundle_dir, _listing(tmp_path, clips, range(4)), out).returncode == 0
    ids = tmp_path / "ids.txt"
    ids.write_text("clip0\n")
    assert run_cli("remove", "--index", str(out), "--ids", str(ids), "-q").returncode == 0
    assert run_cli("compact", "--index", str(out), "--rows-per-shard", "2", "-q").returncode == 0
    names_before = {s["name"] for s in json.loads((out / "index.json").read_text())["shards"]}
    assert _index(bundle_dir, _listing(tmp_path, clips, range(N_CLIPS)), out).returncode == 0
    state = json.loads((out / "index.json").read_text())
    names = [s["name"] for s in state["shards"]]
    assert len(set(names)) == len(names) and names_before < set(names)
    assert GalleryIndex(out).ids == ["clip1", "clip2", "clip3", "clip0", "clip4"]


def test_reader_opened_before_an_update_keeps_its_snapshot(scratch, tmp_path):
    out = tmp_path / "idx"
    shutil.copytree(scratch["all"], out)
    before = GalleryIndex(out)
    ids = tmp_path / "ids.txt"
    ids.write_text("clip4\n")
    assert run_cli("remove", "--index", str(out), "--ids", str(ids), "-q").returncode == 0
    assert len(before) == N_CLIPS  # its own snapshot: rows, features and the biases loaded at open
    everything = GalleryIndex(scratch["all"])
    for role, value in everything.features(0, N_CLIPS).items():
        np.testing.assert_array_equal(before.features(0, N_CLIPS)[role], value, err_msg=role)
    for level, value in everything.biases().items():
        np.testing.assert_array_equal(before.biases()[level], value, err_msg=level)
    unread = GalleryIndex(out)  # opened, nothing read yet
    assert run_cli("compact", "--index", str(out), "-q").returncode == 0
    from runtime.index import IndexChangedError

    # compaction deletes the shards it rewrote: readers of an older state are told to reopen (a
    # reader holds no file open or mapped between reads, so nothing of the gallery stays resident)
    for reader in (unread, before):
        with pytest.raises(IndexChangedError, match="open it again"):
            reader.features(0, 1)
    reopened = GalleryIndex(out)
    assert reopened.ids == everything.ids[:-1]
    for role, value in everything.features(0, N_CLIPS - 1).items():
        np.testing.assert_array_equal(reopened.features(0, N_CLIPS - 1)[role], value, err_msg=role)


# ---- kill at every step of every update ----------------------------------------------------------
def _killed(result):
    return result.returncode == -signal.SIGKILL


def _env(point):
    return {**os.environ, CRASH_ENV: point}


def _assert_answers(index_dir, allowed: list):
    """The index opens and is one of the ``allowed`` indexes built from scratch (the gallery before
    or after the update): the same ids, features, SK biases and search results."""
    ids = GalleryIndex(index_dir).ids
    match = [want for want in allowed if GalleryIndex(want).ids == ids]
    assert match, (ids, [GalleryIndex(want).ids for want in allowed])
    assert_same_gallery(index_dir, match[0])


# Every step that writes (see runtime.faults); "#N": the N-th pass (pass 1 of state:* is the writer's open).
REMOVE_POINTS = ["biases:written", "state:before#2", "state:after#2"]
COMPACT_POINTS = ["shard:renamed", "state:before#2", "compact:committed", "compact:deleting"]
REPLACE_POINTS = ["shard:renamed", "state:before#2", "state:after#2", "biases:written"]
MERGE_POINTS = ["merge:linked", "state:after#2", "biases:written", "merge:built", "merge:renamed"]


@pytest.mark.slow
def test_kill_during_remove_and_compact_leaves_a_working_index(scratch, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("clip1\nclip3\n")
    for point in REMOVE_POINTS:
        out = tmp_path / f"remove_{point.replace(':', '_').replace('#', '_')}"
        shutil.copytree(scratch["all"], out)
        result = run_cli_process("remove", "--index", str(out), "--ids", str(ids), "-q", env=_env(point))
        assert _killed(result), (point, result.returncode, result.stderr)
        _assert_answers(out, [scratch["all"], scratch["without_1_3"]])
        assert run_cli("remove", "--index", str(out), "--ids", str(ids), "--allow-missing", "-q").returncode == 0
        assert_same_gallery(out, scratch["without_1_3"])
        assert not [p for p in out.iterdir() if p.name.startswith("biases-")][1:]  # one bias file left
    for point in COMPACT_POINTS:
        out = tmp_path / f"compact_{point.replace(':', '_').replace('#', '_')}"
        shutil.copytree(scratch["all"], out)
        assert run_cli("remove", "--index", str(out), "--ids", str(ids), "-q").returncode == 0
        result = run_cli_process("compact", "--index", str(out), "-q", env=_env(point))
        assert _killed(result), (point, result.returncode, result.stderr)
        _assert_answers(out, [scratch["without_1_3"]])
        assert run_cli("compact", "--index", str(out), "-q").returncode == 0
        state = json.loads((out / "index.json").read_text())
        assert sorted(p.name for p in (out / "shards").iterdir()) == sorted(s["name"] for s in state["shards"])
        assert_same_gallery(out, scratch["without_1_3"])


@pytest.mark.slow
def test_a_first_run_with_a_bank_publishes_no_row_before_its_biases(bundle_dir, clips, bank_file, tmp_path):
    listing = _listing(tmp_path, clips, range(N_CLIPS))
    out = tmp_path / "new"
    result = _index(bundle_dir, listing, out, "--bank", str(bank_file), env=_env("biases:written"))
    assert _killed(result), (result.returncode, result.stderr)
    assert GalleryIndex(out).ids == []  # the rows wait, durable but unpublished, for biases that fit them
    assert GalleryIndex(out, include_pending=True).ids == [f"clip{i}" for i in range(N_CLIPS)]
    assert _index(bundle_dir, listing, out, "--bank", str(bank_file)).returncode == 0
    finished = GalleryIndex(out)
    assert finished.ids == [f"clip{i}" for i in range(N_CLIPS)] and finished.biases() is not None


@pytest.mark.slow
def test_kill_during_replace_and_merge_leaves_working_indexes(bundle_dir, clips, bank_file, scratch, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(N_CLIPS):
        shutil.copy(clips / f"clip{i}.mp4", folder / f"clip{i}.mp4")
    listing = _listing(tmp_path, folder, range(N_CLIPS))
    base = tmp_path / "base"
    assert _index(bundle_dir, listing, base, "--bank", str(bank_file)).returncode == 0
    shutil.copy(clips / "clip5.mp4", folder / "clip1.mp4")
    replaced = tmp_path / "replaced"  # from scratch: the new clip1 last, as a replacing run leaves it
    assert _index(bundle_dir, _listing(tmp_path, folder, (0, 2, 3, 4, 1), "replaced.txt"), replaced,
                  "--bank", str(bank_file)).returncode == 0
    for point in REPLACE_POINTS:
        out = tmp_path / f"replace_{point.replace(':', '_').replace('#', '_')}"
        shutil.copytree(base, out)
        result = _index(bundle_dir, listing, out, env=_env(point))
        assert _killed(result), (point, result.returncode, result.stderr)
        _assert_answers(out, [base, replaced])  # clip1 old or new, never missing or twice, with biases that fit
        assert _index(bundle_dir, listing, out).returncode == 0
        assert_same_gallery(out, replaced)

    a, b = tmp_path / "a", tmp_path / "b"
    for out, numbers, listing in ((a, (0, 1, 2), "a.txt"), (b, (2, 3, 4), "b.txt")):
        assert _index(bundle_dir, _listing(tmp_path, clips, numbers, listing), out, "--bank",
                      str(bank_file)).returncode == 0
    snapshot = {p: p.read_bytes() for d in (a, b) for p in d.rglob("*") if p.is_file() and p.name != ".lock"}
    for point in MERGE_POINTS:
        out = tmp_path / f"merged_{point.replace(':', '_').replace('#', '_')}"
        result = run_cli_process("merge", str(a), str(b), "-o", str(out), "--on-duplicate", "first", "-q",
                                 env=_env(point))
        assert _killed(result), (point, result.returncode, result.stderr)
        if out.exists():  # complete or absent, never partial
            assert point == "merge:renamed"
            assert_same_gallery(out, scratch["all"])
        else:
            assert run_cli("merge", str(a), str(b), "-o", str(out), "--on-duplicate", "first", "-q").returncode == 0
            assert_same_gallery(out, scratch["all"])
        assert not list(tmp_path.glob(f".{out.name}.merge-*"))  # the temp dir of the killed merge is gone
    assert {p: p.read_bytes() for d in (a, b) for p in d.rglob("*") if p.is_file() and p.name != ".lock"} == snapshot


def test_writer_without_bundle_refuses_a_missing_index(tmp_path):
    with pytest.raises(GalleryIndexError, match="not a ucofia index"), IndexWriter(tmp_path / "none", None):
        pass


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_stage1_kinds_are_recorded_and_exact_with_a_full_shortlist(kind, scratch):
    """Every kind with a shortlist of the whole (5-row) gallery equals exhaustive search and records
    its parameters. What the settings do on a gallery where they matter: test_runtime_stage1.py."""
    from runtime.search.stage1 import choose

    gallery, exhaustive = _search(scratch["all"])
    bundle = load_bundle(gallery.bundle_path)
    feats = TextEncoder(bundle, "cpu").encode(QUERIES)
    scorer = Scorer(open_session(bundle, "scorer", "cpu"), bundle.config)
    staged = search.two_stage(scorer, gallery, feats, k=4, shortlist=N_CLIPS, params=choose(kind, len(gallery)))
    np.testing.assert_array_equal(staged.indices, exhaustive.indices)
    recorded = [json.loads(p.read_text()) for p in scratch["all"].glob("stage1-*.json")]
    assert any(r["params"]["kind"] == kind and r["rows"] == N_CLIPS for r in recorded)
    if kind == "ivf":
        assert {"nlist", "nprobe"} <= set(next(r for r in recorded if r["params"]["kind"] == "ivf")["params"])
