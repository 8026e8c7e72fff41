"""Dataset readers: every CLIP4Clip layout on small files, the shipped real clips and (when present)
the shared MSR-VTT sample and real clips."""
from __future__ import annotations

import csv
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from data_paths import REAL_CLIPS as BUNDLED_CLIPS
from data_paths import REPO_ROOT, SHARED_DATA

from ucofia.data.readers import DatasetError, MissingVideosError, RetrievalSplit, VideoIndex, read_csv, read_split

MSRVTT_SAMPLE = SHARED_DATA / "msrvtt_1ka_sample"
REAL_CLIPS = SHARED_DATA / "real_clips"
JSFUSION_HEADER = ["key", "vid_key", "video_id", "sentence"]


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00")  # readers never decode; presence is what matters
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def check_consistent(split: RetrievalSplit) -> None:
    assert len(split.video_of_text) == len(split.captions) == len(split.texts)
    per_video = split.captions_of_video()
    assert sorted(i for caps in per_video for i in caps) == list(range(len(split.captions)))
    assert all(caps for caps in per_video), "every video has at least one caption"
    assert all(v.path.is_file() for v in split.videos)


# ---- MSR-VTT ---------------------------------------------------------------------------------
@pytest.mark.skipif(not MSRVTT_SAMPLE.is_dir(), reason=f"{MSRVTT_SAMPLE} absent")
def test_msrvtt_shared_sample():
    split = read_split("msrvtt", MSRVTT_SAMPLE, "test")
    rows = _csv_rows(MSRVTT_SAMPLE / "MSRVTT_JSFUSION_test.csv")
    assert split.name == "msrvtt/test" and len(split.videos) == len(rows) == 24
    assert split.video_ids == [r["video_id"] for r in rows]
    assert split.texts == [r["sentence"] for r in rows]
    assert split.video_of_text == list(range(24)) and not split.multi_caption
    assert split.videos[0].path == MSRVTT_SAMPLE / "videos" / f"{rows[0]['video_id']}.mp4"
    check_consistent(split)
    # the same through a single file and through a mapping of files
    by_file = read_split("msrvtt", MSRVTT_SAMPLE / "MSRVTT_JSFUSION_test.csv", "test")
    by_map = read_split("msrvtt", {"root": MSRVTT_SAMPLE, "test_csv": MSRVTT_SAMPLE / "MSRVTT_JSFUSION_test.csv"})
    assert by_file.videos == split.videos == by_map.videos and by_file.captions == split.captions
    assert read_split("msrvtt", MSRVTT_SAMPLE, "val").videos == split.videos  # reference --val_csv


@pytest.mark.skipif(not MSRVTT_SAMPLE.is_dir(), reason=f"{MSRVTT_SAMPLE} absent")
def test_msrvtt_sample_items_decode():
    from ucofia.data.video import VideoSpec, decode_many

    split = read_split("msrvtt", MSRVTT_SAMPLE, "test")
    outs = list(decode_many(split.videos[:2], VideoSpec(image_size=16, max_frames=4), workers=2))
    assert all(o.ok for o in outs) and [o.path for o in outs] == [str(v.path) for v in split.videos[:2]]


def make_msrvtt(root: Path, clip4clip: bool = False) -> Path:
    ann = root / "msrvtt_data" if clip4clip else root
    vids = root / ("MSRVTT_Videos" if clip4clip else "videos")
    for i in range(5):
        touch(vids / f"video{i}.mp4")
    write_csv(ann / "MSRVTT_JSFUSION_test.csv", JSFUSION_HEADER,
              [["ret0", "msr3", "video3", "a cat"], ["ret1", "msr4", "video4", "a dog"]])
    write_csv(ann / "MSRVTT_train.9k.csv", ["video_id"], [["video0"], ["video1"], ["video2"]])
    sentences = [{"video_id": f"video{i % 5}", "caption": f"caption {k} of video{i % 5}", "sen_id": k}
                 for k, i in enumerate(range(12))]
    (ann / "MSRVTT_data.json").write_text(json.dumps({"videos": [], "sentences": sentences}))
    return root


@pytest.mark.parametrize("clip4clip", [False, True])
def test_msrvtt_layouts_and_train(tmp_path, clip4clip):
    root = make_msrvtt(tmp_path, clip4clip)
    test = read_split("msrvtt", root, "test")
    assert test.video_ids == ["video3", "video4"] and test.texts == ["a cat", "a dog"]
    train = read_split("msrvtt", root, "train")
    assert train.video_ids == ["video0", "video1", "video2"]
    # json order kept, captions of test videos excluded
    assert train.texts[:3] == ["caption 0 of video0", "caption 1 of video1", "caption 2 of video2"]
    assert len(train.captions) == 8 and train.multi_caption
    assert train.video_of_text == [0, 1, 2, 0, 1, 2, 0, 1]
    check_consistent(train)


def test_msrvtt_val_file_preferred(tmp_path):
    root = make_msrvtt(tmp_path)
    write_csv(root / "MSRVTT_val.csv", JSFUSION_HEADER, [["r", "m", "video1", "val caption"]])
    assert read_split("msrvtt", root, "val").texts == ["val caption"]


def test_msrvtt_train_video_without_sentence(tmp_path):
    root = make_msrvtt(tmp_path)
    write_csv(root / "MSRVTT_train.9k.csv", ["video_id"], [["video0"], ["video9"], ["video8"]])
    with pytest.raises(DatasetError, match=r"2 video id\(s\) of MSRVTT_train.9k.csv have no sentence.*video9, video8"):
        read_split("msrvtt", root, "train")
    split = read_split("msrvtt", root, "train", allow_missing=True)
    assert split.video_ids == ["video0"] and [m.video_id for m in split.missing] == ["video9", "video8"]
    assert split.missing[0].reason == "no captions in MSRVTT_data.json"


def test_missing_columns_named(tmp_path):
    root = make_msrvtt(tmp_path)
    bad = write_csv(root / "MSRVTT_JSFUSION_test.csv", ["key", "vid_key", "video"], [["a", "b", "video1"]])
    with pytest.raises(DatasetError) as info:
        read_split("msrvtt", root, "test")
    msg = str(info.value)
    assert "video_id, sentence" in msg and str(bad) in msg and "has: key, vid_key, video" in msg


def test_missing_videos_reported_together(tmp_path):
    root = tmp_path
    for i in (0, 2):
        touch(root / "videos" / f"video{i}.mp4")
    rows = [[f"r{i}", f"m{i}", f"video{i}", f"caption {i}"] for i in range(5)]
    write_csv(root / "MSRVTT_JSFUSION_test.csv", JSFUSION_HEADER, rows)
    with pytest.raises(MissingVideosError) as info:
        read_split("msrvtt", root, "test")
    err = info.value
    assert err.missing == ["video1", "video3", "video4"]
    assert "3 video(s) not found" in str(err) and "video1, video3, video4" in str(err)
    assert "allow_missing=True" in str(err) and str(root / "videos") in str(err)
    split = read_split("msrvtt", root, "test", allow_missing=True)
    assert split.video_ids == ["video0", "video2"] and split.texts == ["caption 0", "caption 2"]
    assert [(m.video_id, m.reason, m.captions_dropped) for m in split.missing] == [
        ("video1", "not found on disk", 1), ("video3", "not found on disk", 1), ("video4", "not found on disk", 1)]
    assert "3 skipped" in split.summary()


def test_all_videos_missing_is_an_error_even_when_allowed(tmp_path):
    write_csv(tmp_path / "MSRVTT_JSFUSION_test.csv", JSFUSION_HEADER, [["r", "m", "video1", "x"]])
    (tmp_path / "videos").mkdir()
    with pytest.raises(DatasetError, match="no usable video"):
        read_split("msrvtt", tmp_path, "test", allow_missing=True)


def test_empty_caption_and_id_rows(tmp_path):
    root = make_msrvtt(tmp_path)
    write_csv(root / "MSRVTT_JSFUSION_test.csv", JSFUSION_HEADER,
              [["a", "b", "video1", "ok"], ["c", "d", "video2", "  "]])
    with pytest.raises(DatasetError, match="row 3"):
        read_split("msrvtt", root, "test")
    write_csv(root / "MSRVTT_JSFUSION_test.csv", JSFUSION_HEADER, [["a", "b", "", "ok"]])
    with pytest.raises(DatasetError, match="empty video_id on row 2"):
        read_split("msrvtt", root, "test")


# ---- other datasets ---------------------------------------------------------------------------
def test_msvd(tmp_path):
    (tmp_path / "test_list.txt").write_text("vidA\nvidB\n\n")
    (tmp_path / "train_list.txt").write_text("vidC\n")
    caps = {"vidA": [["a", "man", "runs"], ["someone", "runs"]], "vidB": [["a", "dog"]] * 3, "vidC": [["x"]]}
    (tmp_path / "raw-captions.pkl").write_bytes(pickle.dumps(caps))
    touch(tmp_path / "YouTubeClips" / "sub" / "vidA.avi")
    touch(tmp_path / "YouTubeClips" / "vidB.mp4")
    split = read_split("msvd", tmp_path, "test")
    assert split.video_ids == ["vidA", "vidB"] and split.texts[:2] == ["a man runs", "someone runs"]
    assert split.video_of_text == [0, 0, 1, 1, 1]
    assert split.captions_of_video() == [[0, 1], [2, 3, 4]]
    assert split.videos[0].path.suffix == ".avi"
    check_consistent(split)
    (tmp_path / "val_list.txt").write_text("vidA\nghost\n")
    with pytest.raises(DatasetError, match=r"1 video id\(s\) of val_list.txt have no captions.*ghost"):
        read_split("msvd", tmp_path, "val")
    (tmp_path / "raw-captions.pkl").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="cannot read"):
        read_split("msvd", tmp_path, "test")


def test_didemo_paragraphs_and_window(tmp_path):
    (tmp_path / "test_list.txt").write_text("v1.mov\nv2.mp4\n")
    data = [{"video": "v1.mov", "description": "a man walks", "times": [[0, 0]]},
            {"video": "v2.mp4", "description": "a car", "times": [[1, 2]]},
            {"video": "v1.mov", "description": "then he sits", "times": [[2, 3]]},
            {"video": "other.mp4", "description": "not in the list", "times": [[0, 1]]}]
    (tmp_path / "test_data.json").write_text(json.dumps(data))
    touch(tmp_path / "videos" / "v1.mp4")  # converted copy of v1.mov
    touch(tmp_path / "videos" / "v2.mp4")
    split = read_split("didemo", tmp_path, "test")
    assert split.video_ids == ["v1.mov", "v2.mp4"]
    assert split.texts == ["a man walks then he sits", "a car"]
    assert all((v.start_time, v.end_time) == (0, 31) for v in split.videos)
    assert split.videos[0].path.name == "v1.mp4"
    (tmp_path / "test_list.txt").write_text("v1.mov\nv3.mp4\n")
    with pytest.raises(DatasetError, match="v3.mp4"):
        read_split("didemo", tmp_path, "test")


def test_activitynet_paragraph_protocol(tmp_path):
    (tmp_path / "val_ids.json").write_text(json.dumps(["v_abc", "v_def", "v_abc"]))
    data = {"v_abc": {"duration": 12.3, "timestamps": [[0, 5], [5, 12]], "sentences": ["A man dances.", " He stops."]},
            "v_def": {"duration": 0.2, "timestamps": [[0, 0.2]], "sentences": ["Blink."]}}
    (tmp_path / "val_1.json").write_text(json.dumps(data))
    touch(tmp_path / "videos" / "v_abc.mp4")
    touch(tmp_path / "videos" / "def.mkv")  # copies without the v_ prefix resolve too
    split = read_split("activitynet", tmp_path, "val")
    assert split.video_ids == ["v_abc", "v_def"]
    assert split.texts == ["A man dances.  He stops.", "Blink."]
    assert [(v.start_time, v.end_time) for v in split.videos] == [(0, 13), (0, 1)]
    assert read_split("activity", tmp_path, "test").videos == split.videos  # test = val_1
    with pytest.raises(DatasetError, match="train_ids.json"):
        read_split("activitynet", tmp_path, "train")


def test_lsmdc(tmp_path):
    lines = ["clip_a\t0\t1\t0\t1\tSomeone opens a door.", "clip_b\t0\t1\t0\t1\tShe smiles.",
             "clip_a\t0\t1\t0\t1\tSomeone walks in.", ""]
    (tmp_path / "LSMDC16_challenge_1000_publictect.csv").write_text("\n".join(lines))
    touch(tmp_path / "videos" / "1001_Movie" / "clip_a.avi")
    touch(tmp_path / "videos" / "1002_Movie" / "clip_b.avi")
    split = read_split("lsmdc", tmp_path, "test")
    assert split.video_ids == ["clip_a", "clip_b"] and split.video_of_text == [0, 1, 0]
    (tmp_path / "LSMDC16_annos_val.csv").write_text("clip_a\t0\t1\tSomeone\n")
    with pytest.raises(DatasetError, match=r"line 1 .* has 4 tab-separated fields, expected 6"):
        read_split("lsmdc", tmp_path, "val")


def test_vatex(tmp_path):
    (tmp_path / "test_list.txt").write_text("vx\nvy\n")
    (tmp_path / "ref_captions.json").write_text(json.dumps({"vx": ["one", "two"], "vy": ["three"]}))
    touch(tmp_path / "videos" / "vx.mp4")
    touch(tmp_path / "videos" / "vy.webm")
    split = read_split("vatex", tmp_path, "val")  # val reads test_list.txt as the reference
    assert split.video_ids == ["vx", "vy"] and split.video_of_text == [0, 0, 1]
    check_consistent(split)


# ---- generic CSV ------------------------------------------------------------------------------
def _check_real_clips_csv(folder: Path) -> RetrievalSplit:
    split = read_split("csv", folder / "captions.csv")
    rows = _csv_rows(folder / "captions.csv")
    assert [v.path for v in split.videos] == [folder / r["file"] for r in rows]
    assert split.texts == [r["caption"] for r in rows] and split.video_of_text == list(range(len(rows)))
    check_consistent(split)
    return split


def test_bundled_real_clips_csv():
    split = _check_real_clips_csv(BUNDLED_CLIPS)
    assert split.video_ids == ["car-turn.mp4", "man-skiing.mp4", "man-surfing.mp4", "rabbit-watermelon.mp4"]
    assert split.texts[3] == "a rabbit is eating a watermelon"


def test_bundled_real_clips_have_licence_and_attribution():
    licence = (BUNDLED_CLIPS / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    notes = (BUNDLED_CLIPS / "README.md").read_text()
    assert "https://github.com/showlab/Tune-A-Video" in notes
    rows = _csv_rows(BUNDLED_CLIPS / "captions.csv")
    assert {r["licence"] for r in rows} == {"Apache-2.0"}
    assert {r["file"] for r in rows} == {p.name for p in BUNDLED_CLIPS.glob("*.mp4")}


@pytest.mark.skipif(not (REAL_CLIPS / "captions.csv").is_file(), reason=f"{REAL_CLIPS} absent")
def test_real_clips_csv():
    _check_real_clips_csv(REAL_CLIPS)


def test_generic_csv_ids_paths_and_columns(tmp_path):
    touch(tmp_path / "clips" / "a.mp4")
    touch(tmp_path / "clips" / "deep" / "b.webm")
    write_csv(tmp_path / "ann.csv", ["clip", "desc"],
              [["clips/a.mp4", "first"], ["b", "second"], ["clips/a.mp4", "again"]])
    split = read_csv(tmp_path / "ann.csv", video_column="clip", caption_column="desc")
    assert [v.path.name for v in split.videos] == ["a.mp4", "b.webm"] and split.video_of_text == [0, 1, 0]
    with pytest.raises(DatasetError, match=r"lacks a video column .* has columns clip, desc"):
        read_csv(tmp_path / "ann.csv")
    write_csv(tmp_path / "no_caption.csv", ["video_id"], [["a"]])
    with pytest.raises(DatasetError, match="caption column"):
        read_split("csv", tmp_path / "no_caption.csv")
    write_csv(tmp_path / "empty.csv", ["video", "caption"], [["a", "fine"], ["b", ""]])
    with pytest.raises(DatasetError, match="row 3"):
        read_split("csv", tmp_path / "empty.csv", video_root=tmp_path / "clips")


def test_extension_preference_and_exact_names(tmp_path):
    touch(tmp_path / "x.webm")
    touch(tmp_path / "x.mp4")
    touch(tmp_path / "x.txt")
    index = VideoIndex(tmp_path)
    assert index.resolve("x").name == "x.mp4"
    assert index.resolve("x.webm").name == "x.webm"
    assert index.resolve("y") is None and index.resolve("") is None


# ---- dispatcher errors ------------------------------------------------------------------------
def test_read_split_errors(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'youcook'"):
        read_split("youcook", tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        read_split("msvd", tmp_path / "nope")
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        read_split("msvd", tmp_path, "dev")
    with pytest.raises(DatasetError, match=r"test_list.txt .* files=\{'list': path\}"):
        read_split("msvd", tmp_path, "test")
    f = touch(tmp_path / "file.txt")
    with pytest.raises(DatasetError, match="pass the dataset folder"):
        read_split("vatex", f)
    with pytest.raises(DatasetError, match="does not exist"):
        read_split("msrvtt", {"test_csv": tmp_path / "missing.csv"}, video_root=tmp_path)
    with pytest.raises(DatasetError, match="not valid JSON"):
        (tmp_path / "test_list.txt").write_text("a\n")
        (tmp_path / "ref_captions.json").write_text("{broken")
        read_split("vatex", tmp_path)
    assert isinstance(DatasetError("x"), ValueError)


def test_import_is_torch_free():
    code = ("import sys; import ucofia.data.readers, ucofia.data; "
            "assert 'torch' not in sys.modules and 'av' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
