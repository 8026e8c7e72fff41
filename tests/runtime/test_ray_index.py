"""``ucofia-run index --ray``: the index a Ray pipeline builds equals the single-process one (ids,
entries, features and biases bit for bit, search results), bad files are reported the same way,
and the job survives a killed driver (resume), a killed encoder actor and a node removed mid-run.

Every Ray process runs inside a private network + PID namespace (tests/helpers/ray_helpers.py): it binds
127.0.0.1 only, and nothing of it outlives its test. Tests skip with the reason where Ray is not
installed or namespaces cannot be made.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from data_paths import REPO_ROOT
from ray_helpers import HELPERS, need_netns, run_confined, scenario, ucofia_run
from runtime_helpers import import_blocker, make_clip, run_cli, run_cli_process

from runtime.bundle import load_bundle
from runtime.index import SHARDS, GalleryIndex, IndexState
from runtime.thumbnails import thumbnail_file

REPO = REPO_ROOT
N_CLIPS = 8
BATCH = "2"


@pytest.fixture(scope="module")
def data(fake_bundle, tmp_path_factory):
    """A fake bundle, N_CLIPS small clips plus a broken file, a caption bank, and the index the
    single-process path builds from them."""
    root = tmp_path_factory.mktemp("ray_data")
    bundle = fake_bundle
    clips = root / "clips"
    clips.mkdir()
    for i in range(N_CLIPS):
        make_clip(clips / f"clip{i}.mp4", seconds=1 + i % 4, seed=i)
    (clips / "broken.mp4").write_bytes(b"this is not a video")
    bank = root / "bank.txt"
    bank.write_text("a red car drives\na dog on the beach\nsomeone is cooking\na man plays guitar\ntwo people talk\n")
    single = root / "single"
    result = run_cli("index", "--bundle", str(bundle), "--videos", str(clips), "--bank", str(bank), "-o", str(single),
                     "--batch-size", BATCH, "--no-thumbnails", "-q")
    assert result.returncode == 3, result.stderr
    return {"root": root, "bundle": bundle, "clips": clips, "bank": bank, "single": single}


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def _ray_index(data, out: Path, *extra: str, env: dict | None = None, timeout: float = 240):
    return run_confined(ucofia_run("index", "--bundle", str(data["bundle"]), "--videos", str(data["clips"]),
                                   "--bank", str(data["bank"]), "-o", str(out), "--batch-size", BATCH, "--ray",
                                   "--ray-cpus", "2", "--no-thumbnails", "-q", *extra),
                        env=env or _env(), timeout=timeout, cwd=REPO)


def _by_id(index: GalleryIndex) -> dict[str, int]:
    rows = {vid: row for row, vid in enumerate(index.ids)}
    assert len(rows) == len(index.ids), "an id is stored twice"
    return rows


def assert_same_index(expected_dir: Path, got_dir: Path, same_order: bool = True, same_paths: bool = True) -> None:
    """Same ids, entries, features (bit for bit) and SK biases as the single-process index
    (``same_paths`` False: the files were indexed from copies elsewhere)."""
    expected, got = GalleryIndex(expected_dir), GalleryIndex(got_dir)
    rows_e, rows_g = _by_id(expected), _by_id(got)
    assert sorted(rows_e) == sorted(rows_g)
    if same_order:
        assert expected.ids == got.ids
    order = np.asarray([rows_g[vid] for vid in expected.ids])
    fe, fg = expected.features(0, len(expected)), got.features(0, len(got))
    for role in fe:
        assert np.array_equal(fe[role], fg[role][order]), role
    def described(entry: dict) -> dict:  # a URL source has etag / last_modified instead of an mtime
        gone = ("path", "mtime", "etag", "last_modified")
        return entry if same_paths else {k: v for k, v in entry.items() if k not in gone}

    assert [described(got.entry(vid)) for vid in expected.ids] == [described(e) for e in expected.entries]
    be, bg = expected.biases(), got.biases()
    assert be is not None and bg is not None
    for level in be:
        if same_order:
            assert np.array_equal(be[level], bg[level]), level
        else:  # SK sums over the gallery in row order: another order may change the last bits
            np.testing.assert_allclose(bg[level][order], be[level], rtol=0, atol=1e-6)
    state = json.loads((got_dir / "index.json").read_text())
    named = IndexState.from_dict(state).shard_names()
    assert {p.name for p in (got_dir / SHARDS).iterdir()} == named, "shards written but never committed"
    assert not state.get("pending"), "rows left unpublished"


def _failed_ids(index_dir: Path) -> dict[str, str]:
    lines = (index_dir / "failed.jsonl").read_text().splitlines()
    return {json.loads(line)["id"]: json.loads(line)["error"] for line in lines if line.strip()}


@pytest.mark.slow
def test_ray_index_equals_single_process_and_never_imports_torch(data, tmp_path):
    need_netns()
    hook = import_blocker(tmp_path / "hook")  # Ray's workers inherit it: all of them stay torch-free
    out = tmp_path / "ray_index"
    result = _ray_index(data, out, env=_env(PYTHONPATH=os.pathsep.join([str(hook), str(REPO)])))
    assert result.returncode == 3, result.stderr  # broken.mp4, exactly as without --ray
    assert "1 videos failed" in result.stderr and "blocked" not in result.stderr
    assert_same_index(data["single"], out)
    assert _failed_ids(out) == _failed_ids(data["single"])
    for index in (data["single"], out):
        searched = run_cli("search", "--index", str(index), "--query", "a red car", "--query", "two people talk",
                           "--top-k", "5", "-o", str(tmp_path / f"{index.name}.jsonl"))
        assert searched.returncode == 0, searched.stderr
    ranked = [[(h["video_id"], h["score"], h["levels"]) for h in json.loads(line)["results"]]
              for index in (data["single"], out)
              for line in (tmp_path / f"{index.name}.jsonl").read_text().splitlines()]
    assert ranked[:2] == ranked[2:]

    again = _ray_index(data, out)  # a re-run finds everything indexed (the broken file is retried and fails)
    assert again.returncode == 3, again.stderr
    assert len(GalleryIndex(out)) == N_CLIPS


@pytest.mark.slow
@pytest.mark.parametrize("source", ["demo", "shared"])
def test_ray_index_equals_single_process_on_demo_and_real_clips(source, data, tmp_path, request):
    """The demo benchmark's clips and the real clips of the shared data folder (two aspect ratios,
    10-30 s, 480-718 px, audio tracks), both with a caption bank: the same index either way."""
    need_netns()
    if source == "demo":
        from ucofia.data import demo

        bench = tmp_path / "bench"
        demo.generate_demo(bench, scale=0.05, seed=3)
        videos, bank = bench / "videos", bench / "MSRVTT_JSFUSION_test.csv"
    else:
        shared = request.getfixturevalue("shared_dir") / "data"
        videos = tmp_path / "videos.txt"
        clips = sorted((shared / "msrvtt_1ka_sample" / "videos").glob("*.mp4")) + sorted(
            (shared / "real_clips").glob("*.mp4"))
        videos.write_text("".join(f"{p.stem}\t{p}\n" for p in clips))
        bank = shared / "msrvtt_1ka_sample" / "MSRVTT_JSFUSION_test.csv"
    common = ["--bundle", str(data["bundle"]), "--videos", str(videos), "--bank", str(bank), "--batch-size", "4"]
    single = run_cli("index", *common, "-o", str(tmp_path / "single"), "--no-thumbnails", "-q")
    assert single.returncode == 0, single.stderr
    on_ray = run_confined(ucofia_run("index", *common, "-o", str(tmp_path / "ray"), "--ray", "--ray-cpus", "2"),
                          env=_env(), timeout=300, cwd=REPO)
    assert on_ray.returncode == 0, on_ray.stderr
    assert len(GalleryIndex(tmp_path / "ray")) >= 20
    assert_same_index(tmp_path / "single", tmp_path / "ray")
    # thumbnails were made by the decode tasks: the driver's backfill found every one present
    entries = GalleryIndex(tmp_path / "ray").entries
    assert all(thumbnail_file(tmp_path / "ray", entry).is_file() for entry in entries)
    assert f"thumbnails: 0 thumbnails made, {len(entries)} already present" in on_ray.stderr
    assert "ray: " in on_ray.stderr and "videos/s" in on_ray.stderr  # the summary


@pytest.mark.slow
def test_ray_resumes_after_the_driver_is_killed_and_replaces_changed_files(data, tmp_path):
    need_netns()
    out = tmp_path / "ray_index"
    killed = _ray_index(data, out, "--ray-commit-every", "0", "--ray-decode-batch", "2",
                        env=_env(UCOFIA_CRASH_AT="ray:committed#2"))
    assert killed.returncode == 137, killed.stderr  # SIGKILL after its second commit
    partial = GalleryIndex(out, include_pending=True)
    assert 0 < len(partial) < N_CLIPS
    resumed = _ray_index(data, out)
    assert resumed.returncode == 3, resumed.stderr
    assert_same_index(data["single"], out)

    # a file whose content changed is encoded again and replaces its row, as without --ray
    clips = tmp_path / "clips"
    shutil.copytree(data["clips"], clips)
    make_clip(clips / "clip2.mp4", seconds=2, seed=99)
    changed = _ray_index({**data, "clips": clips}, out)
    assert changed.returncode == 3, changed.stderr
    fresh = tmp_path / "fresh"
    single = run_cli("index", "--bundle", str(data["bundle"]), "--videos", str(clips), "--bank", str(data["bank"]),
                     "-o", str(fresh), "--batch-size", BATCH, "--no-thumbnails", "-q")
    assert single.returncode == 3, single.stderr
    assert_same_index(fresh, out, same_order=False, same_paths=False)
    assert GalleryIndex(out).removed_rows == 1


@pytest.mark.slow
def test_ray_survives_a_killed_encoder_actor(data, tmp_path):
    need_netns()
    marker = tmp_path / "actor-killed"
    out = tmp_path / "ray_index"
    result = _ray_index(data, out, env=_env(UCOFIA_CRASH_ONCE=f"ray:encode#2={marker}"))
    assert marker.exists(), "the fault was not injected"
    assert result.returncode == 3, result.stderr
    assert_same_index(data["single"], out)


@pytest.mark.slow
def test_two_node_cluster_on_loopback_survives_a_removed_node(data, tmp_path):
    need_netns()
    out = tmp_path / "ray_index"
    result = run_confined(scenario("--bundle", str(data["bundle"]), "--videos", str(data["clips"]), "--bank",
                                   str(data["bank"]), "-o", str(out), "--remove-node-after", "3"),
                          env=_env(), timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Ray's own log lines (e.g. an actor restarted after the node went) may come after the report
    report = json.loads(next(line for line in result.stdout.splitlines() if line.startswith('{"addresses"')))
    assert report["addresses"] == ["127.0.0.1"] and report["nodes"] == 2
    assert report["node_removed"]
    assert report["failed"] == ["broken"] and report["indexed"] == N_CLIPS
    assert report["biases"].startswith("computed")  # bank scored on actors in tiles of 2 videos
    assert_same_index(data["single"], out, same_order=False)


# ---- without a cluster -------------------------------------------------------------------------
def test_ray_options_are_checked_before_anything_starts(data, tmp_path):
    base = ["index", "--bundle", str(data["bundle"]), "--videos", str(data["clips"]), "-o", str(tmp_path / "i")]
    for extra, message in ((["--ray", "--window", "5"], "--window is not supported with --ray"),
                           (["--ray-cpus", "2"], "need --ray"),
                           (["--ray", "--workers", "2"], "--workers"),
                           (["--ray", "--ray-address", "127.0.0.1:1", "--ray-cpus", "2"],
                            "--ray-cpus sizes a local Ray")):
        result = run_cli(*base, *extra)
        assert result.returncode == 2 and message in result.stderr, (extra, result.stderr)
    assert not (tmp_path / "i").exists()


def test_ray_missing_says_how_to_install(data, tmp_path):
    blocker = import_blocker(tmp_path / "noray", ("ray",))
    env = _env(PYTHONPATH=os.pathsep.join([str(blocker), str(REPO)]))
    result = run_cli_process("index", "--bundle", str(data["bundle"]), "--videos", str(data["clips"]), "-o",
                             str(tmp_path / "i"), "--ray", env=env)
    assert result.returncode == 1
    assert "pip install 'ucofia[ray]'" in result.stderr
    assert not (tmp_path / "i").exists()


def test_decode_stage_reports_bad_files_like_the_single_process_path(data):
    from runtime.bundle import load_bundle
    from runtime.distributed.stages import decode_batch
    from ucofia.data.video import VideoSpec

    spec = VideoSpec.from_config(load_bundle(data["bundle"]).config)
    out = decode_batch({"id": np.asarray(["clip0", "broken"], dtype=object),
                        "path": np.asarray([str(data["clips"] / "clip0.mp4"), str(data["clips"] / "broken.mp4")],
                                           dtype=object)}, spec)
    assert out["frames"].dtype == np.uint8 and out["frames"].shape[1:] == (spec.max_frames, spec.image_size,
                                                                           spec.image_size, 3)
    assert out["error"][0] == "" and json.loads(out["entry"][0])["id"] == "clip0"
    assert out["error"][1] == _failed_ids(data["single"])["broken"]
    assert not out["frames"][1].any() and out["entry"][1] == ""


def test_a_batch_delivered_twice_is_stored_once(data, tmp_path):
    """The driver commits by shard; ids it already holds come back as removed rows, never twice."""
    from runtime.bundle import load_bundle
    from runtime.distributed.pipeline import RayIndexRun, RayOptions, _Arrivals
    from runtime.distributed.stages import shard_name, write_shard_once
    from runtime.index import IDS, IndexWriter
    from runtime.ingest import IngestReport

    bundle = load_bundle(data["bundle"])
    single = GalleryIndex(data["single"])
    ids = single.ids[:3]
    features = {**single.features(0, 3), "video_mask": single.features(0, 3, roles=("video_mask",))["video_mask"]}
    out = tmp_path / "index"
    with IndexWriter(out, bundle) as writer:
        first = write_shard_once(out / SHARDS, ids[:2], {k: v[:2] for k, v in features.items()},
                                 single.entries[:2], writer.store)
        ids_file = out / SHARDS / first.name / IDS
        written = ids_file.stat().st_mtime_ns
        assert write_shard_once(out / SHARDS, ids[:2], {k: v[:2] for k, v in features.items()},
                                single.entries[:2], writer.store) == first  # a retry keeps the shard
        assert ids_file.stat().st_mtime_ns == written and first.name == shard_name(ids[:2], single.entries[:2])
        overlapping = write_shard_once(out / SHARDS, ids[1:], {k: v[1:] for k, v in features.items()},
                                       single.entries[1:3], writer.store)
        report = IngestReport()
        run = RayIndexRun(writer, bundle, backend="cpu", batch_size=2, threads=1, options=RayOptions(), report=report)
        arrivals = _Arrivals()
        for record, shard_ids in ((first, ids[:2]), (overlapping, ids[1:])):
            n = len(shard_ids)
            run._receive({"id": np.asarray(shard_ids, dtype=object), "path": np.asarray(["p"] * n, dtype=object),
                          "error": np.asarray([""] * n, dtype=object), "shard": np.asarray([record.name] * n,
                                                                                            dtype=object),
                          "shard_rows": np.full(n, n), "decode_s": np.zeros(n), "encode_s": np.zeros(n),
                          "write_s": np.zeros(n)}, arrivals)
            run._commit(arrivals)
    index = GalleryIndex(out)
    assert index.ids == ids and report.indexed == 3
    assert np.array_equal(index.features(0, 3)["video"], features["video"])


class _FakeDataset:
    """What the driver reads of a Ray Data pipeline: ``iter_batches(batch_size=None,
    batch_format="numpy")`` yields the encoder actors' output batches (column arrays) in order; a
    pipeline that fails (a node lost with blocks Ray could not rebuild) raises from the iterator
    after the batches it did deliver."""

    def __init__(self, batches: list[dict], failure: Exception | None = None) -> None:
        self.batches, self.failure = batches, failure

    def iter_batches(self, *, batch_size=None, batch_format="default"):
        assert batch_size is None and batch_format == "numpy"
        yield from self.batches
        if self.failure is not None:
            raise self.failure


class _Pipeline:
    """The driver (RayIndexRun) of an index at ``out`` run over scripted pipelines instead of Ray:
    :meth:`shard` writes what an encoder actor writes for a batch, :meth:`batch` is what the actor
    returns, :meth:`run` runs the driver's own loop with one scripted pipeline per attempt."""

    def __init__(self, data: dict, writer, monkeypatch) -> None:
        from runtime.distributed import pipeline

        monkeypatch.setattr(pipeline, "require_ray", lambda: _FakeRay(1, 2, 0))  # no Ray is started
        self.pipeline, self.data, self.writer = pipeline, data, writer
        self.single = GalleryIndex(data["single"])
        self.rows = {vid: row for row, vid in enumerate(self.single.ids)}
        self.asked: list[list[str]] = []  # the videos each attempt was asked to index

    def shard(self, ids: list[str], content: list[str] | None = None) -> str:
        """Write the shard of a batch of ``ids`` made from the files of ``content`` (default: their own)."""
        from runtime.distributed.stages import write_shard_once
        from runtime.index import SHARD_ARRAYS

        picked = np.asarray([self.rows[v] for v in content or ids])
        entries = [{**self.single.entries[row], "id": vid} for vid, row in zip(ids, picked)]
        return write_shard_once(self.writer.root / SHARDS, ids, self.single.gather(picked, SHARD_ARRAYS), entries,
                                self.writer.store).name

    def batch(self, *items: tuple) -> dict:
        """Rows ``(id, shard, rows of the shard)`` or ``(id, error)`` as an encoder actor returns them."""
        n = len(items)
        return {"id": np.asarray([i[0] for i in items], dtype=object),
                "path": np.asarray([str(self.data["clips"] / f"{i[0]}.mp4") for i in items], dtype=object),
                "error": np.asarray([i[1] if len(i) == 2 else "" for i in items], dtype=object),
                "shard": np.asarray([i[1] if len(i) == 3 else "" for i in items], dtype=object),
                "shard_rows": np.asarray([i[2] if len(i) == 3 else 0 for i in items]),
                "decode_s": np.full(n, 0.5), "encode_s": np.full(n, 0.25), "write_s": np.full(n, 0.125)}

    def run(self, todo: list[str], attempts: list[_FakeDataset], report, replaces=None, commit_every_s: float = 0.0,
            progress=None):
        self.asked.clear()

        def dataset(left, encoders, resources):
            self.asked.append([vid for vid, _ in left])
            return attempts[len(self.asked) - 1]

        run = self.pipeline.RayIndexRun(self.writer, load_bundle(self.data["bundle"]), backend="cpu", batch_size=2,
                                        threads=1, options=self.pipeline.RayOptions(commit_every_s=commit_every_s),
                                        report=report, replaces=replaces, progress=progress)
        run._dataset = dataset
        return run.run([(vid, self.data["clips"] / f"{vid}.mp4") for vid in todo])


def test_the_driver_stores_each_video_once_whatever_the_pipeline_delivers_twice(data, tmp_path, monkeypatch):
    """RayIndexRun.run, the driver's own loop, over a fake Ray (no cluster): attempt 1 delivers a
    complete shard, a broken file and half a shard, then fails; the driver commits the complete
    shard only and runs again over the videos not done. Attempt 2 delivers the broken file's
    error again, the half shard whole, the same batch a second time (a retried task), a shard
    overlapping an id committed before and the first attempt's batch again. Every video is stored
    once, counted once and failed once, and every shard is recorded once."""
    from runtime.index import IndexWriter
    from runtime.ingest import IngestReport

    out = tmp_path / "index"
    report = IngestReport()
    with IndexWriter(out, load_bundle(data["bundle"])) as writer:
        fake = _Pipeline(data, writer, monkeypatch)
        vids = fake.single.ids[:5]
        first, half, overlap = fake.shard(vids[:2]), fake.shard(vids[2:4]), fake.shard(vids[3:5])
        broken = ("broken", "broken.mp4: not a video")
        attempts = [
            _FakeDataset([fake.batch((vids[0], first, 2), broken, (vids[1], first, 2)),
                          fake.batch((vids[2], half, 2))], failure=RuntimeError("ObjectLostError: a node died")),
            _FakeDataset([fake.batch(broken, (vids[2], half, 2), (vids[3], half, 2)),
                          fake.batch((vids[2], half, 2), (vids[3], half, 2)),  # the same batch delivered again
                          fake.batch((vids[3], overlap, 2), (vids[4], overlap, 2)),
                          fake.batch((vids[0], first, 2), (vids[1], first, 2))]),  # attempt 1's, after its commit
        ]
        times = fake.run(vids + ["broken"], attempts, report)
    assert fake.asked == [vids + ["broken"], vids[2:]]  # attempt 2: the videos neither committed nor failed
    assert times.attempts == 2 and times.videos == 6
    assert times.decode == pytest.approx(0.5 * 13) and times.encode == pytest.approx(0.25 * 13)  # rows delivered
    index = GalleryIndex(out)
    assert index.ids == vids and report.indexed == 5 and report.replaced == 0
    for role, value in index.features(0, 5).items():
        np.testing.assert_array_equal(value, fake.single.gather(np.arange(5))[role], err_msg=role)
    assert report.failed == [broken] and _failed_ids(out) == {"broken": broken[1]}
    names = [s["name"] for s in json.loads((out / "index.json").read_text())["shards"]]
    assert sorted(names) == sorted({first, half, overlap})  # each shard recorded once
    assert times.use_gpu is False and times.encoders == 1 and times.nodes == 1
    assert times.write == pytest.approx(0.125 * 13) and 0 <= times.commit <= times.wall


def test_what_arrived_before_a_failure_is_committed_and_a_pipeline_that_keeps_failing_stops(data, tmp_path,
                                                                                           monkeypatch):
    """Commits held back (a long commit interval): the shard that arrived before the pipeline
    failed is committed on the way out, so the next attempt asks only for the rest; when every
    attempt fails the run stops with an error that says how far it got and to re-run."""
    from runtime.errors import RuntimeUserError
    from runtime.index import IndexWriter
    from runtime.ingest import IngestReport

    out = tmp_path / "index"
    delivered: list[int] = []
    with IndexWriter(out, load_bundle(data["bundle"])) as writer:
        fake = _Pipeline(data, writer, monkeypatch)
        vids = fake.single.ids[:4]
        first = fake.shard(vids[:2])
        lost = RuntimeError("ObjectLostError: a node died")
        attempts = [_FakeDataset([fake.batch((vids[0], first, 2), (vids[1], first, 2))], failure=lost)]
        attempts += [_FakeDataset([], failure=lost) for _ in range(fake.pipeline.RayOptions().attempts - 1)]
        with pytest.raises(RuntimeUserError, match=r"failed \d+ times.*2 of 4 videos are committed; re-run"):
            fake.run(vids, attempts, IngestReport(), commit_every_s=3600.0, progress=delivered.append)
    assert fake.asked[0] == vids and all(asked == vids[2:] for asked in fake.asked[1:])
    assert len(fake.asked) == fake.pipeline.RayOptions().attempts
    assert GalleryIndex(out).ids == vids[:2] and sum(delivered) == 2


def test_a_user_error_in_the_pipeline_is_not_retried(data, tmp_path, monkeypatch):
    from runtime.errors import RuntimeUserError
    from runtime.index import IndexWriter
    from runtime.ingest import IngestReport

    with IndexWriter(tmp_path / "index", load_bundle(data["bundle"])) as writer:
        fake = _Pipeline(data, writer, monkeypatch)
        vids = fake.single.ids[:2]
        with pytest.raises(RuntimeUserError, match="the bundle went away"):
            fake.run(vids, [_FakeDataset([], failure=RuntimeUserError("the bundle went away"))] * 3, IngestReport())
    assert fake.asked == [vids]  # one attempt: another run would fail the same way


def test_the_driver_replaces_a_changed_file_even_in_a_batch_of_the_same_ids(data, tmp_path, monkeypatch):
    """A file indexed alone in its batch changes; re-indexed, its batch has the same ids as before:
    the new content gets a shard of its own (not the old shard again) and replaces the old row."""
    from runtime.index import IndexWriter
    from runtime.ingest import IngestReport

    out = tmp_path / "index"
    with IndexWriter(out, load_bundle(data["bundle"])) as writer:
        fake = _Pipeline(data, writer, monkeypatch)
        vid, other = fake.single.ids[0], fake.single.ids[1]
        old = fake.shard([vid])
        fake.run([vid], [_FakeDataset([fake.batch((vid, old, 1))])], IngestReport())
        report = IngestReport()
        new = fake.shard([vid], content=[other])  # the file now holds what `other` holds
        assert new != old
        fake.run([vid], [_FakeDataset([fake.batch((vid, new, 1))])], report, replaces={vid: [vid]})
    index = GalleryIndex(out)
    assert index.ids == [vid] and index.removed_rows == 1 and report.indexed == report.replaced == 1
    changed = fake.single.gather(np.array([fake.rows[other]]))
    for role, value in index.features(0, 1).items():
        np.testing.assert_array_equal(value, changed[role], err_msg=role)
    assert index.entry(vid)["sha256"] == fake.single.entry(other)["sha256"]


def test_encoder_actor_converts_frames_the_same_with_threads(data, tmp_path):
    """A GPU actor converts uint8 frames on several threads: the shard it writes is bit-identical."""
    from runtime.bundle import load_bundle
    from runtime.distributed.stages import ShardEncoder, decode_batch
    from ucofia.data.video import VideoSpec

    bundle = load_bundle(data["bundle"])
    clips = [f"clip{i}" for i in range(4)]
    batch = decode_batch({"id": np.asarray(clips + ["broken"], dtype=object),
                          "path": np.asarray([str(data["clips"] / f"{c}.mp4") for c in clips + ["broken"]],
                                             dtype=object)}, VideoSpec.from_config(bundle.config))
    shards = []
    for threads in (1, 3):
        root = tmp_path / f"t{threads}"
        (root / SHARDS).mkdir(parents=True)
        out = ShardEncoder(str(data["bundle"]), "cpu", 1, str(root), "float32", convert_threads=threads)(batch)
        assert list(out["error"][:4]) == [""] * 4 and out["error"][4] and out["shard"][4] == ""
        shards.append(root / SHARDS / out["shard"][0])
    for name in ("video.npy", "frame_features.npy", "patches.npy", "video_mask.npy", "ids.json", "entries.json"):
        assert (shards[0] / name).read_bytes() == (shards[1] / name).read_bytes(), name


class _FakeRay:
    """What actor_resources reads of a cluster: its resources and nodes."""

    def __init__(self, nodes: int, cpus: float, gpus: float) -> None:
        self._resources = {**({"CPU": cpus} if cpus else {}), **({"GPU": gpus} if gpus else {})}
        self._nodes = [{"Alive": True}] * nodes

    def cluster_resources(self) -> dict:
        return self._resources

    def nodes(self) -> list:
        return self._nodes


def test_actor_resources_follow_the_cluster():
    from runtime.distributed.pipeline import GPU_ACTOR_CPUS, RayOptions, actor_resources
    from runtime.errors import RuntimeUserError

    options = RayOptions()
    assert actor_resources(_FakeRay(1, 2, 0), "auto", options) == (1, {"num_cpus": 1})
    assert actor_resources(_FakeRay(3, 48, 0), "cpu", options) == (3, {"num_cpus": 1})  # one per node
    assert actor_resources(_FakeRay(4, 64, 4), "auto", options) == (4, {"num_gpus": 1, "num_cpus": GPU_ACTOR_CPUS})
    assert actor_resources(_FakeRay(1, 3, 1), "cuda", options) == (1, {"num_gpus": 1, "num_cpus": 2})
    assert actor_resources(_FakeRay(4, 64, 4), "cpu", options) == (4, {"num_cpus": 1})  # GPUs unused on cpu
    assert actor_resources(_FakeRay(4, 64, 4), "auto", RayOptions(encoders=2))[0] == 2
    # asked for more encoders than the cluster holds: one a GPU, or all CPUs but one (for decoding)
    assert actor_resources(_FakeRay(1, 4, 0), "cpu", RayOptions(encoders=10))[0] == 3
    assert actor_resources(_FakeRay(2, 64, 2), "auto", RayOptions(encoders=10))[0] == 2
    with pytest.raises(RuntimeUserError, match="has 0 CPU"):
        actor_resources(_FakeRay(1, 0, 0), "cpu", options)  # a cluster that reports no CPU resource
    with pytest.raises(RuntimeUserError, match="needs GPUs"):
        actor_resources(_FakeRay(2, 32, 0), "tensorrt", options)
    with pytest.raises(RuntimeUserError, match="at least 2"):
        actor_resources(_FakeRay(1, 1, 0), "cpu", options)


@pytest.mark.slow
def test_ray_index_of_a_jsonl_list_stores_the_same_metadata(data, tmp_path):
    """A .jsonl list with metadata: --ray stores the same entries (metadata included) as the
    single-process path."""
    need_netns()
    listing = tmp_path / "videos.jsonl"
    listing.write_text("".join(json.dumps({"id": f"c{i}", "path": str(data["clips"] / f"clip{i}.mp4"), "n": i,
                                           "tags": [f"t{i}"]}) + "\n" for i in range(4)))
    single, ray_out = tmp_path / "single", tmp_path / "ray"
    assert run_cli("index", "--bundle", str(data["bundle"]), "--videos", str(listing), "-o", str(single),
                   "--batch-size", BATCH, "--no-thumbnails", "-q").returncode == 0
    result = run_confined(ucofia_run("index", "--bundle", str(data["bundle"]), "--videos", str(listing),
                                     "-o", str(ray_out), "--batch-size", BATCH, "--ray", "--ray-cpus", "2",
                                     "--no-thumbnails", "-q"), env=_env(), timeout=240, cwd=REPO)
    assert result.returncode == 0, result.stderr
    got = GalleryIndex(ray_out)
    assert {e["id"]: e["metadata"] for e in got.entries} == {f"c{i}": {"n": i, "tags": [f"t{i}"]} for i in range(4)}
    assert sorted(got.entries, key=lambda e: e["id"]) == sorted(GalleryIndex(single).entries, key=lambda e: e["id"])


@pytest.mark.slow
def test_ray_index_of_urls_equals_single_process_of_the_files(data, tmp_path):
    """The clips at URLs of a loopback server (inside the namespace) index on Ray to the same
    features, entries and biases as the files on disk; the broken one fails the same way."""
    pytest.importorskip("aiohttp", reason="http(s) URLs need aiohttp (pip install 'ucofia[http]')")
    names = sorted(p.name for p in data["clips"].iterdir())
    (tmp_path / "template.txt").write_text("".join(f"{{url}}/{name}\n" for name in names))
    listing, out = tmp_path / "urls.txt", tmp_path / "ray"
    command = [sys.executable, str(HELPERS / "serve_files_and_run.py"), str(data["clips"]),
               str(tmp_path / "template.txt"), str(listing), "--",
               *ucofia_run("index", "--bundle", str(data["bundle"]), "--videos", str(listing), "--bank",
                           str(data["bank"]), "-o", str(out), "--batch-size", BATCH, "--ray", "--ray-cpus", "2",
                           "--no-thumbnails", "-q")]
    env = _env(PYTHONPATH=os.pathsep.join([str(REPO), str(HELPERS)]))
    result = run_confined(command, env=env, cwd=REPO)
    assert result.returncode == 3, result.stderr
    assert_same_index(data["single"], out, same_paths=False)
    assert all(e["path"].startswith("http://127.0.0.1:") and e["etag"] for e in GalleryIndex(out).entries)
    failed = _failed_ids(out)
    assert list(failed) == ["broken"]
    assert failed["broken"] == _failed_ids(data["single"])["broken"].replace(
        str(data["clips"] / "broken.mp4"), json.loads((out / "failed.jsonl").read_text())["path"])


def test_decode_stage_reads_urls_like_files_with_the_drivers_settings(data):
    pytest.importorskip("aiohttp", reason="http(s) URLs need aiohttp (pip install 'ucofia[http]')")
    from url_server import FileServer

    from runtime.bundle import load_bundle
    from runtime.distributed.stages import decode_batch
    from runtime.remote import RemoteSettings
    from ucofia.data.video import VideoSpec

    spec = VideoSpec.from_config(load_bundle(data["bundle"]).config)
    with FileServer(data["clips"]) as server:
        ids = np.asarray(["clip0", "clip1", "gone"], dtype=object)
        urls = np.asarray([f"{server.url}/clip0.mp4", f"{server.url}/clip1.mp4", f"{server.url}/gone.mp4"],
                          dtype=object)
        files = np.asarray([str(data["clips"] / "clip0.mp4"), str(data["clips"] / "clip1.mp4")], dtype=object)
        remote = decode_batch({"id": ids, "path": urls}, spec, remote=RemoteSettings(retries=0))
        local = decode_batch({"id": ids[:2], "path": files}, spec)
        assert np.array_equal(remote["frames"][:2], local["frames"]) and remote["frames"].dtype == np.uint8
        assert np.array_equal(remote["video_mask"][:2], local["video_mask"])
        for got, expected in zip(remote["entry"][:2], local["entry"]):
            got, expected = json.loads(got), json.loads(expected)
            assert got["path"].startswith(server.url) and got["sha256"] == expected["sha256"]
            assert got["frames"] == expected["frames"] and got["duration_s"] == expected["duration_s"]
        assert "not found" in remote["error"][2] and remote["entry"][2] == ""
        small = decode_batch({"id": ids[:1], "path": urls[:1]}, spec, remote=RemoteSettings(retries=0, max_bytes=100))
        assert "over the size limit of 100 bytes" in small["error"][0]   # the settings given, not the environment
