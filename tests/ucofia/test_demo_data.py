"""The built-in demo benchmark (ucofia.data.demo) and its `ucofia demo-data` command."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from data_paths import REPO_ROOT

from ucofia.config import tiny_config
from ucofia.data import demo

SCALE = 0.05  # 16 train / 3 val / 5 test videos, well under a second to write
SEED = 7


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "bench"
    demo.generate_demo(out, scale=SCALE, seed=SEED)
    return out


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _records(bench: Path) -> list[dict]:
    return json.loads((bench / demo.BENCHMARK_JSON).read_text())["videos"]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_counts_follow_scale() -> None:
    assert demo.demo_counts(1.0).as_dict() == demo.DEFAULT_COUNTS
    assert demo.demo_counts(0.5).as_dict() == {k: v // 2 for k, v in demo.DEFAULT_COUNTS.items()}
    assert demo.demo_counts(1e-6).as_dict() == {"train": 1, "val": 1, "test": 1}
    for bad in (0, -1.0, float("nan"), 1e6):
        with pytest.raises(demo.DemoDataError, match="--scale"):
            demo.demo_counts(bad)


def test_two_runs_are_byte_identical(bench: Path, tmp_path: Path) -> None:
    junk = [np.random.default_rng(i).bytes(4096 * (i + 1)) for i in range(32)]  # perturb the heap
    again = tmp_path / "again"
    demo.generate_demo(again, scale=SCALE, seed=SEED)
    del junk
    first, second = _files(bench), _files(again)
    assert sorted(first) == sorted(second)
    different = [name for name in first if first[name] != second[name]]
    assert not different, f"not byte-identical: {different[:5]}"
    other = tmp_path / "other_seed"
    demo.generate_demo(other, scale=SCALE, seed=SEED + 1)
    assert (other / demo.DATA_JSON).read_bytes() != (bench / demo.DATA_JSON).read_bytes()


def test_benchmark_json_records_counts_and_checksums(bench: Path) -> None:
    meta = json.loads((bench / demo.BENCHMARK_JSON).read_text())
    assert meta["format"] == demo.FORMAT and meta["generator_version"] == demo.GENERATOR_VERSION
    assert meta["seed"] == SEED and meta["counts"] == demo.demo_counts(SCALE).as_dict()
    files = _files(bench)
    assert set(meta["sha256"]) == set(files) - {demo.BENCHMARK_JSON}
    import hashlib
    for name, digest in meta["sha256"].items():
        assert hashlib.sha256(files[name]).hexdigest() == digest, name
    assert "videos" in (bench / demo.README).read_text()


def test_msrvtt_layout_has_what_the_reader_needs(bench: Path) -> None:
    counts = demo.demo_counts(SCALE)
    data = json.loads((bench / demo.DATA_JSON).read_text())
    assert {"videos", "sentences"} <= set(data)
    for item in data["sentences"]:
        assert isinstance(item["video_id"], str) and isinstance(item["caption"], str) and item["caption"]
    for item in data["videos"]:
        assert "?v=" in item["url"] and item["video_id"].startswith("video")
    per_video = Counter(item["video_id"] for item in data["sentences"])
    assert set(per_video.values()) == {demo.VideoSettings().captions_per_video}

    header, train = _read_csv(bench / demo.TRAIN_CSV)
    assert header == ["video_id"] and len(train) == counts.train
    splits = {"train": [r["video_id"] for r in train]}
    for name, n in (("val", counts.val), ("test", counts.test)):
        header, rows = _read_csv(bench / (demo.VAL_CSV if name == "val" else demo.TEST_CSV))
        assert header == list(demo.JSFUSION_COLUMNS) and len(rows) == n
        for row in rows:  # one caption per video, and it is one of the video's MSRVTT_data.json captions
            assert row["vid_key"] == "msr" + row["video_id"][len("video"):]
            assert row["sentence"] in [s["caption"] for s in data["sentences"] if s["video_id"] == row["video_id"]]
        splits[name] = [r["video_id"] for r in rows]
    all_ids = [v for ids in splits.values() for v in ids]
    assert len(all_ids) == len(set(all_ids)) == counts.total  # splits are disjoint
    assert sorted(all_ids) == sorted(item["video_id"] for item in data["videos"])
    json_split = {item["video_id"]: item["split"] for item in data["videos"]}
    assert {json_split[v] for v in splits["val"]} == {"validate"}
    for vid in all_ids:
        assert (bench / demo.VIDEO_DIR / f"{vid}.mp4").is_file()


def test_reader_style_pandas_access(bench: Path) -> None:
    pd = pytest.importorskip("pandas")  # the reference dataloaders read the csvs with pandas
    test = pd.read_csv(bench / demo.TEST_CSV)
    assert list(test["video_id"].values) and all(isinstance(s, str) for s in test["sentence"].values)
    assert list(pd.read_csv(bench / demo.TRAIN_CSV)["video_id"].values)


def test_videos_decode_to_expected_frames(bench: Path) -> None:
    import av

    settings = demo.VideoSettings()
    for rec in _records(bench):
        with av.open(str(bench / demo.VIDEO_DIR / f"{rec['video_id']}.mp4")) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert stream.average_rate == settings.fps
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert len(frames) == rec["frames"] == rec["seconds"] * settings.fps
        assert frames[0].shape == (settings.height, settings.width, 3)
        assert settings.min_seconds <= rec["seconds"] <= settings.max_seconds


def test_decoded_frames_match_the_rendered_scene(bench: Path) -> None:
    import av

    plan = {v.video_id: v for v in demo.plan_benchmark(demo.demo_counts(SCALE), SEED)}
    for vid in list(plan)[:6]:
        rendered = demo.render_frames(plan[vid]).astype(np.int16)
        with av.open(str(bench / demo.VIDEO_DIR / f"{vid}.mp4")) as container:
            decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        assert np.abs(decoded.astype(np.int16) - rendered).mean() < 4.0, vid


def test_reference_cv2_sampling_reads_one_frame_per_second(bench: Path) -> None:
    cv2 = pytest.importorskip("cv2")  # how the reference's RawVideoExtractor reads the clips
    for rec in _records(bench)[:8]:
        cap = cv2.VideoCapture(str(bench / demo.VIDEO_DIR / f"{rec['video_id']}.mp4"))
        fps = int(cap.get(cv2.CAP_PROP_FPS))
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        assert fps == demo.VideoSettings().fps and count == rec["frames"]
        read = 0
        for sec in range((count + fps - 1) // fps + 1):
            cap.set(cv2.CAP_PROP_POS_FRAMES, sec * fps)
            ok, _ = cap.read()
            if not ok:
                break
            read += 1
        cap.release()
        assert read == rec["seconds"]


def test_rendering_shows_background_order_and_marker() -> None:
    settings = demo.VideoSettings()
    side = min(settings.width, settings.height)
    x0 = (settings.width - side) // 2
    red, blue = demo.Thing("red", "square"), demo.Thing("blue", "circle")
    look = demo.Look(gain=1.0, phase=0, size=20, dx=0, dy=0)

    def video(event: demo.Event, corner: str = "top left") -> demo.DemoVideo:
        scene = demo.Scene("green", "plain", event, "orange", corner)
        return demo.DemoVideo("video0", "test", 0, 6, scene, look, ("x",))

    then = demo.render_frames(video(demo.Event("sequence", (red, blue))))
    centre = (settings.height // 2, settings.width // 2)
    assert tuple(then[0][centre]) == demo.OBJECT_COLOURS["red"]
    assert tuple(then[-1][centre]) == demo.OBJECT_COLOURS["blue"]
    assert tuple(then[0][1, 1]) == demo.BACKGROUND_COLOURS["green"]
    # the marker sits inside the centred square a resize + centre crop keeps, in the named corner
    inset = side // 16
    assert tuple(then[0][inset + 1, x0 + inset + 1]) == demo.MARKER_COLOURS["orange"]
    other = demo.render_frames(video(demo.Event("sequence", (red, blue)), corner="bottom right"))
    assert tuple(other[0][side - inset - 2, x0 + side - inset - 2]) == demo.MARKER_COLOURS["orange"]

    def red_x(frame: np.ndarray) -> float:
        _ys, xs = np.nonzero((frame == demo.OBJECT_COLOURS["red"]).all(-1))
        return float(xs.mean())

    ltr = demo.render_frames(video(demo.Event("motion", (red,), "left to right")))
    rtl = demo.render_frames(video(demo.Event("motion", (red,), "right to left")))
    assert red_x(ltr[0]) < red_x(ltr[-1]) and red_x(rtl[0]) > red_x(rtl[-1])
    assert red_x(ltr[-1]) - red_x(ltr[0]) > side / 2  # the motion crosses most of the view


def _words(text: str) -> Counter:
    return Counter(text.split())


def test_order_swapped_captions_differ_only_in_order(bench: Path) -> None:
    records = {r["video_id"]: r for r in _records(bench)}
    _, rows = _read_csv(bench / demo.TEST_CSV)
    sentence = {r["video_id"]: r["sentence"] for r in rows}
    pairs = 0
    for a in sentence:
        for b in sentence:
            ra, rb = records[a], records[b]
            if a >= b or ra["group"] != rb["group"]:
                continue
            if ra["background"] == rb["background"] and ra["marker"] == rb["marker"]:
                ea, eb = ra["event"], rb["event"]
                assert ea != eb and ea["kind"] == eb["kind"]
                if ea["kind"] == "sequence":
                    assert ea["objects"] == eb["objects"][::-1]
                else:
                    assert ea["objects"] == eb["objects"] and ea["direction"] != eb["direction"]
                assert sentence[a] != sentence[b]
                assert _words(sentence[a]) == _words(sentence[b])  # a bag of words cannot tell them apart
                pairs += 1
    assert pairs >= 1


def test_swapped_event_captions_in_every_phrasing() -> None:
    rng = np.random.default_rng(0)
    a, b = demo.Thing("red", "square"), demo.Thing("blue", "circle")
    for event in (demo.Event("sequence", (a, b)), demo.Event("motion", (a,), "left to right")):
        scene = demo.Scene("gray", "striped", event, "white", "top left")
        swapped = demo.Scene("gray", "striped", event.swapped(), "white", "top left")
        for _ in range(50):
            ph = demo._random_phrasing(rng)
            one, two = demo.describe(scene, ph), demo.describe(swapped, ph)
            assert one != two and _words(one) == _words(two)


def test_test_set_needs_all_three_granularities() -> None:
    videos = [v for v in demo.plan_benchmark(demo.demo_counts(0.25), SEED) if v.split == "test"]
    assert len(videos) == 24

    def key_without(scene: demo.Scene, factor: str) -> tuple:
        """What a model blind to ``factor`` can see of a scene."""
        background = None if factor == "background" else (scene.background_colour, scene.texture)
        event = (scene.event.kind, frozenset(scene.event.objects)) if factor == "order" else scene.event
        marker = None if factor == "marker" else (scene.marker_colour, scene.corner)
        return background, event, marker

    assert len({v.scene for v in videos}) == len(videos)
    for factor in ("background", "order", "marker"):
        blind = Counter(key_without(v.scene, factor) for v in videos)
        ambiguous = sum(blind[key_without(v.scene, factor)] > 1 for v in videos)
        assert ambiguous >= len(videos) // 2, factor  # ignoring one granularity confuses many videos


def test_captions_fit_max_words() -> None:
    tokenizer = pytest.importorskip("open_clip.tokenizer")  # exact CLIP BPE lengths
    tok = tokenizer.SimpleTokenizer()
    n = lambda text: len(tok.encode(text))  # noqa: E731
    longest = lambda words: max(n(w) for w in words if w)  # noqa: E731
    colour = max(longest(v) for v in demo.COLOUR_WORDS.values())
    shape = max(longest(v) for v in demo.SHAPE_WORDS.values())
    thing = 1 + colour + shape
    event = max(*(n(f.format(a="", b="")) + 2 * thing for f in demo.SEQUENCE_FORMS),
                *(n(f.format(a="", src="right", dst="left")) + thing for f in demo.MOTION_FORMS))
    texture = max(longest(v) for v in demo.TEXTURE_WORDS.values())
    background = max(n(f.format(tex="", col="")) for f in demo.BACKGROUND_FORMS) + texture + colour
    corner = max(longest(v) for v in demo.CORNER_WORDS.values())
    marker = max(n(f.format(adj="", col="", noun="", corner="")) for f in demo.MARKER_FORMS) + (
        longest(demo.MARKER_ADJECTIVES) + colour + longest(demo.MARKER_NOUNS) + corner)
    bound = longest(demo.INTROS) + event + background + marker
    budget = tiny_config().max_words - 2  # SOT and EOT
    assert 20 <= bound <= budget, f"a caption may need {bound} BPE tokens > {budget}; it would be truncated"


def test_refuses_non_empty_directory(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(demo.DemoDataError, match="--force"):
        demo.generate_demo(target, scale=0.01, seed=0)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no temporary left behind

    demo.generate_demo(target, scale=0.01, seed=0, force=True)
    assert not (target / "keep.txt").exists() and (target / demo.DATA_JSON).is_file()

    empty = tmp_path / "empty"
    empty.mkdir()
    demo.generate_demo(empty, scale=0.01, seed=0)  # an empty directory is fine
    assert (empty / demo.TEST_CSV).is_file()

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(demo.DemoDataError, match="not a directory"):
        demo.generate_demo(a_file, scale=0.01, seed=0, force=True)


def test_cli_demo_data(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ucofia.cli import main

    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(main, ["demo-data", "-o", str(out), "--scale", "0.01", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "1 val" in result.output and (out / demo.TRAIN_CSV).is_file()
    assert json.loads((out / demo.BENCHMARK_JSON).read_text())["seed"] == 3

    again = runner.invoke(main, ["demo-data", "-o", str(out), "--scale", "0.01"])
    assert again.exit_code != 0 and "--force" in again.output
    forced = runner.invoke(main, ["demo-data", "-o", str(out), "--scale", "0.01", "--force"])
    assert forced.exit_code == 0, forced.output

    bad = runner.invoke(main, ["demo-data", "-o", str(tmp_path / "x"), "--scale", "0"])
    assert bad.exit_code != 0 and "--scale" in bad.output


def test_demo_modules_are_torch_free() -> None:
    code = ("import sys, ucofia.data.demo, ucofia.commands.demo_data; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
