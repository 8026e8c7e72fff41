"""Dataset readers for the video-text retrieval layouts CLIP4Clip / UCoFiA users already have.

Every reader returns a :class:`RetrievalSplit`: the split's videos (id, resolved path, optional
time window) and its captions, each pointing at its video, in a deterministic order. Metrics need
``split.video_of_text`` (caption -> video index; several captions may share a video).

Layouts (file names as the reference dataloaders use them; searched in ``root`` and the usual
sub-folders, e.g. CLIP4Clip's ``msrvtt_data/``):

========== ======================================================= ==================================
dataset    annotation files                                        captions per video
========== ======================================================= ==================================
msrvtt     test: ``MSRVTT_JSFUSION_test.csv`` (key,vid_key,        1 (1k-A); train: all of the video's
           video_id,sentence); val: ``MSRVTT_val.csv`` if present, sentences in ``MSRVTT_data.json``
           else the JSFUSION file (the reference's ``--val_csv``);
           train: ``MSRVTT_train.9k.csv`` (video_id) +
           ``MSRVTT_data.json``; train7k: ``MSRVTT_train.7k.csv``
msvd       ``{train,val,test}_list.txt`` + ``raw-captions.pkl``     all (about 40)
didemo     ``{train,val,test}_list.txt`` + ``{split}_data.json``    1 paragraph (descriptions joined),
                                                                   window 0-31 s as the reference
activitynet ``train_ids.json``/``val_ids.json`` + ``train.json``/   1 paragraph (sentences joined),
           ``val_1.json`` (``test`` = ``val``)                      window 0-ceil(duration) s
lsmdc      ``LSMDC16_annos_training.csv`` / ``_val.csv`` /          1 per row (tab-separated, 6 fields)
           ``LSMDC16_challenge_1000_publictect.csv``
vatex      ``train_list.txt`` / ``test_list.txt`` (``val`` = test)  all (10 English)
           + ``ref_captions.json``
csv        any CSV with a video column (``video_path``, ``path``,   1 per row
           ``file``, ``video``, ``video_id``, ``filename``) and a
           caption column (``caption``, ``sentence``, ``text``)
========== ======================================================= ==================================

Videos are found by id under the video root (recursively), trying the exact file name and then
the id with the usual video extensions (``.mp4`` first, then ``.webm``, ``.mkv``, ``.avi``, ...).
Videos missing on disk are reported together in one :class:`MissingVideosError`; with
``allow_missing=True`` they are skipped (with their captions) and listed in ``split.missing``.

Videos keep the order of the split's list (or of first appearance); captions keep the annotation
order (MSR-VTT sentences, LSMDC / CSV rows) or are grouped per video (MSVD, VATEX, as the
reference's ``cut_off_points``).

Deliberate differences from the reference loaders: orders are deterministic (the reference
iterates Python sets for DiDeMo / VATEX), videos missing on disk are an error instead of being
dropped silently (DiDeMo, ActivityNet, LSMDC, VATEX) or crashing later (MSR-VTT, MSVD), and ids
that the split lists without captions raise an error naming them (the reference asserts for MSVD /
VATEX and silently drops them for DiDeMo / ActivityNet); ``allow_missing=True`` skips both kinds
and lists them in ``split.missing``.
"""
from __future__ import annotations

import csv
import json
import math
import os
import pickle
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg",
                                     ".flv", ".wmv", ".3gp", ".ogv", ".ts", ".mts", ".m2ts")
_MAX_LISTED = 20

__all__ = [
    "DATASETS",
    "VIDEO_EXTENSIONS",
    "Caption",
    "DatasetError",
    "MissingVideo",
    "MissingVideosError",
    "RetrievalSplit",
    "VideoIndex",
    "VideoItem",
    "read_activitynet",
    "read_csv",
    "read_didemo",
    "read_lsmdc",
    "read_msrvtt",
    "read_msvd",
    "read_split",
    "read_vatex",
]


# ---------------------------------------------------------------------------------------------
# result types and errors
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoItem:
    """One video of a split; ``start_time``/``end_time`` (seconds) restrict frame sampling."""

    video_id: str
    path: Path
    start_time: int | None = None
    end_time: int | None = None


@dataclass(frozen=True)
class Caption:
    """One caption and the index (into ``RetrievalSplit.videos``) of the video it describes."""

    text: str
    video_index: int


@dataclass(frozen=True)
class MissingVideo:
    """A video the annotations name but that was skipped (``allow_missing=True``)."""

    video_id: str
    reason: str
    captions_dropped: int = 0


@dataclass
class RetrievalSplit:
    """Videos + captions of one split, with the multi-caption bookkeeping metrics need."""

    name: str
    videos: list[VideoItem]
    captions: list[Caption]
    missing: list[MissingVideo] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.videos)
        bad = [i for i, c in enumerate(self.captions) if not 0 <= c.video_index < n]
        if bad:
            raise DatasetError(f"{self.name}: captions {bad[:_MAX_LISTED]} point at no video")

    @property
    def video_of_text(self) -> list[int]:
        """Video index of every caption (the ground truth for text-to-video metrics)."""
        return [c.video_index for c in self.captions]

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.captions]

    @property
    def video_ids(self) -> list[str]:
        return [v.video_id for v in self.videos]

    @property
    def video_paths(self) -> list[Path]:
        return [v.path for v in self.videos]

    def captions_of_video(self) -> list[list[int]]:
        """Caption indices per video (the ground truth for video-to-text metrics)."""
        out: list[list[int]] = [[] for _ in self.videos]
        for i, c in enumerate(self.captions):
            out[c.video_index].append(i)
        return out

    @property
    def multi_caption(self) -> bool:
        return len(self.captions) != len(self.videos)

    def summary(self) -> str:
        extra = f", {len(self.missing)} skipped" if self.missing else ""
        return f"{self.name}: {len(self.videos)} videos, {len(self.captions)} captions{extra}"


class DatasetError(ValueError):
    """Annotation files are missing, malformed or inconsistent (the message names file and fix)."""


class MissingVideosError(DatasetError):
    """Videos the annotations name are not on disk (all of them listed in ``.missing``)."""

    def __init__(self, dataset: str, video_root: Path, missing: Sequence[str]):
        self.video_root = video_root
        self.missing = list(missing)
        shown = ", ".join(self.missing[:_MAX_LISTED])
        more = f" and {len(self.missing) - _MAX_LISTED} more" if len(self.missing) > _MAX_LISTED else ""
        super().__init__(
            f"{dataset}: {len(self.missing)} video(s) not found under {video_root} (tried the id and "
            f"id + {'/'.join(VIDEO_EXTENSIONS[:4])}/...): {shown}{more}. Fix the video root "
            "(video_root=...), download the missing files, or pass allow_missing=True to skip them "
            "(they are listed in split.missing)")


# ---------------------------------------------------------------------------------------------
# finding files
# ---------------------------------------------------------------------------------------------
class VideoIndex:
    """All video files under ``root`` (recursive), looked up by file name or id (= file stem)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"video folder {self.root} does not exist; pass video_root=... pointing "
                               "at the folder that holds the videos")
        self._by_name: dict[str, Path] | None = None
        self._by_stem: dict[str, list[Path]] = {}

    def _build(self) -> dict[str, Path]:
        """Walk the folder once (lazily: readers whose annotations give paths never walk)."""
        if self._by_name is None:
            by_name: dict[str, Path] = {}
            for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if name.startswith("."):
                        continue
                    path = Path(dirpath) / name
                    by_name.setdefault(name, path)
                    stem, ext = os.path.splitext(name)
                    if ext.lower() in VIDEO_EXTENSIONS:
                        self._by_stem.setdefault(stem, []).append(path)
            self._by_name = by_name
        return self._by_name

    def __len__(self) -> int:
        self._build()
        return sum(len(v) for v in self._by_stem.values())

    def resolve(self, video_id: str) -> Path | None:
        """Path of ``video_id`` (exact name, relative path, or stem with a video extension)."""
        vid = str(video_id).strip()
        if not vid:
            return None
        if "/" in vid or os.sep in vid:
            candidate = self.root / vid
            if candidate.is_file():
                return candidate
        by_name = self._build()
        if vid in by_name and os.path.splitext(vid)[1]:
            return by_name[vid]
        for stem in (vid, os.path.splitext(vid)[0]):
            paths = self._by_stem.get(stem)
            if paths:
                return min(paths, key=lambda p: (_ext_rank(p), len(p.parts), str(p)))
        return None


def _ext_rank(path: Path) -> int:
    ext = path.suffix.lower()
    return VIDEO_EXTENSIONS.index(ext) if ext in VIDEO_EXTENSIONS else len(VIDEO_EXTENSIONS)


_ANNOTATION_SUBDIRS = ("", "msrvtt_data", "annotations", "annotation", "anns", "data")


def _find_file(dataset: str, root: Path | None, files: Mapping[str, Any], role: str,
               names: Sequence[str]) -> Path:
    """The annotation file for ``role``: ``files[role]`` if given, else the first of ``names`` found."""
    if role in files and files[role] is not None:
        path = Path(files[role])
        if not path.is_file():
            raise DatasetError(f"{dataset}: {role} file {path} does not exist")
        return path
    if root is None:
        raise DatasetError(f"{dataset}: no {role} file given and no dataset root to look in; pass the "
                           f"dataset folder or files={{'{role}': path}}")
    tried = []
    for sub in _ANNOTATION_SUBDIRS:
        for name in names:
            path = root / sub / name if sub else root / name
            tried.append(str(path))
            if path.is_file():
                return path
    raise DatasetError(f"{dataset}: {role} file not found; looked for {', '.join(names)} in {root} and "
                       f"its sub-folders {', '.join(s for s in _ANNOTATION_SUBDIRS if s)}. Pass the dataset "
                       f"folder, or files={{'{role}': path}}")


def _video_root(dataset: str, root: Path | None, video_root: Any, candidates: Sequence[str]) -> Path:
    if video_root is not None:
        vr = Path(video_root)
        if not vr.is_dir():
            raise DatasetError(f"{dataset}: video folder {vr} does not exist")
        return vr
    if root is None:
        raise DatasetError(f"{dataset}: pass video_root=... (the folder that holds the videos)")
    for cand in candidates:
        path = root / cand if cand else root
        if path.is_dir() and cand:
            return path
    return root


def _read_csv_rows(path: Path, required: Sequence[str], dataset: str) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise DatasetError(f"{dataset}: {path} lacks column(s) {', '.join(missing)} (has: "
                                   f"{', '.join(header) or 'no header'}); expected columns "
                                   f"{', '.join(required)}")
            rows = []
            for row in reader:
                rows.append({(k or "").strip(): (v if v is not None else "") for k, v in row.items()})
            return rows
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{dataset}: {path} is not UTF-8 text ({exc}); save it as UTF-8 CSV") from None
    except csv.Error as exc:
        raise DatasetError(f"{dataset}: {path} is not a valid CSV file ({exc})") from None


def _read_json(path: Path, dataset: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{dataset}: {path} is not valid JSON ({exc})") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{dataset}: {path} is not UTF-8 text ({exc})") from None


def _read_id_list(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig") as fh:
        ids = [line.strip() for line in fh]
    return list(OrderedDict.fromkeys(i for i in ids if i))


# ---------------------------------------------------------------------------------------------
# assembling a split
# ---------------------------------------------------------------------------------------------
@dataclass
class _Entry:
    video_id: str
    texts: list[str]
    start_time: int | None = None
    end_time: int | None = None
    path: Path | None = None  # set by the caller when the annotation gives a path


def _assemble(name: str, entries: Iterable[_Entry], index: VideoIndex | None, allow_missing: bool,
              unknown: Sequence[str] = (), unknown_what: str = "", annotation: Path | None = None,
              rows: Sequence[tuple[str, str]] | None = None) -> RetrievalSplit:
    """Resolve videos, report missing ones together, and build the split.

    Captions keep the annotation order ``rows`` ((video_id, text) pairs) when given, else they are
    grouped per video in video order.
    """
    dataset = name.split("/")[0]
    entries = list(entries)
    missing: list[MissingVideo] = []
    if unknown:
        if not allow_missing:
            shown = ", ".join(list(unknown)[:_MAX_LISTED])
            more = f" and {len(unknown) - _MAX_LISTED} more" if len(unknown) > _MAX_LISTED else ""
            raise DatasetError(f"{dataset}: {len(unknown)} video id(s) {unknown_what}"
                               f"{f' {annotation}' if annotation else ''}: {shown}{more}. Fix the "
                               "annotation files or pass allow_missing=True to skip them")
        reason = f"no captions in {annotation.name}" if annotation else "no captions"
        missing += [MissingVideo(v, reason) for v in unknown]
    videos: list[VideoItem] = []
    position: dict[str, int] = {}
    not_found: list[_Entry] = []
    for e in entries:
        path = e.path if e.path is not None else (index.resolve(e.video_id) if index else None)
        if path is None or not Path(path).is_file():
            not_found.append(e)
            continue
        position[e.video_id] = len(videos)
        videos.append(VideoItem(e.video_id, Path(path), e.start_time, e.end_time))
    if rows is None:
        rows = [(e.video_id, t) for e in entries for t in e.texts]
    captions = [Caption(text, position[vid]) for vid, text in rows if vid in position]
    if not_found:
        if not allow_missing:
            root = index.root if index is not None else Path(".")
            raise MissingVideosError(dataset, root, [e.video_id for e in not_found])
        missing += [MissingVideo(e.video_id, "not found on disk", len(e.texts)) for e in not_found]
    if not videos:
        raise DatasetError(f"{name}: no usable video (all {len(not_found)} missing); check video_root")
    return RetrievalSplit(name=name, videos=videos, captions=captions, missing=missing)


def _check_text(text: Any, where: str, dataset: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise DatasetError(f"{dataset}: empty or non-text caption {text!r} at {where}; fix or drop it")
    return text


# ---------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------
MSRVTT_VIDEO_DIRS = ("videos/all", "videos", "MSRVTT_Videos", "MSRVTT/videos/all", "TrainValVideo",
                     "TestVideo", "")


def read_msrvtt(root: str | os.PathLike[str] | None, split: str = "test", *, video_root: Any = None,
                files: Mapping[str, Any] | None = None, allow_missing: bool = False) -> RetrievalSplit:
    """MSR-VTT: 1k-A test (JSFUSION csv), val, or the 9k / 7k training split (csv + data json)."""
    ds = "msrvtt"
    files = dict(files or {})
    root_p = Path(root) if root is not None else None
    vroot = _video_root(ds, root_p, video_root, MSRVTT_VIDEO_DIRS)
    if split in ("test", "val"):
        names = ["MSRVTT_JSFUSION_test.csv"]
        role = "test_csv"
        if split == "val":
            role = "val_csv"
            names = ["MSRVTT_val.csv", "MSRVTT_JSFUSION_test.csv"]
            if "val_csv" not in files and "test_csv" in files:
                files["val_csv"] = files["test_csv"]
        path = _find_file(ds, root_p, files, role, names)
        rows = _read_csv_rows(path, ["video_id", "sentence"], ds)
        order: OrderedDict[str, list[str]] = OrderedDict()
        pairs = []
        for i, row in enumerate(rows):
            vid = row["video_id"].strip()
            if not vid:
                raise DatasetError(f"{ds}: empty video_id on row {i + 2} of {path}")
            text = _check_text(row["sentence"], f"{path} row {i + 2}", ds)
            order.setdefault(vid, []).append(text)
            pairs.append((vid, text))
        entries = [_Entry(v, t) for v, t in order.items()]
        return _assemble(f"{ds}/{split}", entries, VideoIndex(vroot), allow_missing, rows=pairs)
    if split in ("train", "train9k", "train7k"):
        csv_name = "MSRVTT_train.7k.csv" if split == "train7k" else "MSRVTT_train.9k.csv"
        csv_path = _find_file(ds, root_p if root_p is not None else _parent(files, "train_csv"), files,
                              "train_csv", [csv_name])
        data_path = _find_file(ds, root_p if root_p is not None else csv_path.parent, files, "data_json",
                               ["MSRVTT_data.json"])
        rows = _read_csv_rows(csv_path, ["video_id"], ds)
        train_ids = list(OrderedDict.fromkeys(r["video_id"].strip() for r in rows if r["video_id"].strip()))
        data = _read_json(data_path, ds)
        if not isinstance(data, dict) or not isinstance(data.get("sentences"), list):
            raise DatasetError(f"{ds}: {data_path} has no 'sentences' list; expected the MSRVTT_data.json "
                               "layout {\"videos\": [...], \"sentences\": [{\"video_id\", \"caption\"}]}")
        texts: dict[str, list[str]] = {v: [] for v in train_ids}
        pairs = []
        for i, s in enumerate(data["sentences"]):  # sentence order, as the reference unfolds them
            if not isinstance(s, dict) or "video_id" not in s or "caption" not in s:
                raise DatasetError(f"{ds}: sentence {i} of {data_path} lacks 'video_id' / 'caption'")
            if s["video_id"] in texts:
                text = _check_text(s["caption"], f"{data_path} sentence {i}", ds)
                texts[s["video_id"]].append(text)
                pairs.append((s["video_id"], text))
        no_caption = [v for v in train_ids if not texts[v]]
        entries = [_Entry(v, texts[v]) for v in train_ids if texts[v]]
        return _assemble(f"{ds}/{split}", entries, VideoIndex(vroot), allow_missing, unknown=no_caption,
                         unknown_what=f"of {csv_path.name} have no sentence in", annotation=data_path,
                         rows=pairs)
    raise DatasetError(f"{ds}: unknown split {split!r}; use test (1k-A), val, train (9k) or train7k")


def _parent(files: Mapping[str, Any], role: str) -> Path | None:
    return Path(files[role]).parent if files.get(role) else None


def read_msvd(root: str | os.PathLike[str] | None, split: str = "test", *, video_root: Any = None,
              files: Mapping[str, Any] | None = None, allow_missing: bool = False) -> RetrievalSplit:
    """MSVD: ``{split}_list.txt`` + ``raw-captions.pkl`` (id -> list of token lists)."""
    ds = "msvd"
    _check_split(ds, split, ("train", "val", "test"))
    files = dict(files or {})
    root_p = Path(root) if root is not None else None
    list_path = _find_file(ds, root_p, files, "list", [f"{split}_list.txt"])
    cap_path = _find_file(ds, root_p or list_path.parent, files, "captions", ["raw-captions.pkl"])
    ids = _read_id_list(list_path)
    try:
        with open(cap_path, "rb") as fh:
            captions = pickle.load(fh)  # the dataset's own format (trusted local file)
    except Exception as exc:
        raise DatasetError(f"{ds}: cannot read {cap_path} as a pickle ({exc.__class__.__name__}: {exc}); "
                           "expected raw-captions.pkl from CLIP4Clip's MSVD package") from None
    if not isinstance(captions, dict):
        raise DatasetError(f"{ds}: {cap_path} holds a {type(captions).__name__}, expected a dict "
                           "video_id -> list of captions")
    unknown = [v for v in ids if v not in captions]
    entries = []
    for v in ids:
        if v not in captions:
            continue
        texts = [" ".join(c) if isinstance(c, (list, tuple)) else c for c in captions[v]]
        entries.append(_Entry(v, [_check_text(t, f"{cap_path} [{v}]", ds) for t in texts]))
    vroot = _video_root(ds, root_p, video_root, ("YouTubeClips", "videos", "MSVD_Videos", ""))
    return _assemble(f"{ds}/{split}", entries, VideoIndex(vroot), allow_missing, unknown=unknown,
                     unknown_what=f"of {list_path.name} have no captions in", annotation=cap_path)


# DiDeMo: the reference samples 0..31 s of every video ("trick to save time").
DIDEMO_WINDOW = (0, 31)


def read_didemo(root: str | os.PathLike[str] | None, split: str = "test", *, video_root: Any = None,
                files: Mapping[str, Any] | None = None, allow_missing: bool = False) -> RetrievalSplit:
    """DiDeMo paragraph retrieval: all descriptions of a video joined, window 0-31 s."""
    ds = "didemo"
    _check_split(ds, split, ("train", "val", "test"))
    files = dict(files or {})
    root_p = Path(root) if root is not None else None
    list_path = _find_file(ds, root_p, files, "list", [f"{split}_list.txt"])
    data_path = _find_file(ds, root_p or list_path.parent, files, "data", [f"{split}_data.json"])
    ids = _read_id_list(list_path)
    wanted = set(ids)
    data = _read_json(data_path, ds)
    if not isinstance(data, list):
        raise DatasetError(f"{ds}: {data_path} should hold a list of {{description, times, video}}")
    texts: OrderedDict[str, list[str]] = OrderedDict()
    for i, item in enumerate(data):
        if not isinstance(item, dict) or "video" not in item or "description" not in item:
            raise DatasetError(f"{ds}: entry {i} of {data_path} lacks 'video' / 'description'")
        if item["video"] in wanted:
            texts.setdefault(item["video"], []).append(
                _check_text(item["description"], f"{data_path} entry {i}", ds))
    unknown = [v for v in ids if v not in texts]
    entries = [_Entry(v, [" ".join(t)], *DIDEMO_WINDOW) for v, t in texts.items()]
    vroot = _video_root(ds, root_p, video_root, ("videos", "DiDeMo_Videos", ""))
    return _assemble(f"{ds}/{split}", entries, VideoIndex(vroot), allow_missing, unknown=unknown,
                     unknown_what=f"of {list_path.name} have no description in", annotation=data_path)


def read_activitynet(root: str | os.PathLike[str] | None, split: str = "val", *, video_root: Any = None,
                     files: Mapping[str, Any] | None = None, allow_missing: bool = False) -> RetrievalSplit:
    """ActivityNet Captions, paragraph protocol: sentences joined, window 0-ceil(duration) s."""
    ds = "activitynet"
    _check_split(ds, split, ("train", "val", "test"))
    part = "train" if split == "train" else "val"
    files = dict(files or {})
    root_p = Path(root) if root is not None else None
    ids_path = _find_file(ds, root_p, files, "ids", [f"{part}_ids.json"])
    data_path = _find_file(ds, root_p or ids_path.parent, files, "data",
                           ["train.json"] if part == "train" else ["val_1.json"])
    ids = _read_json(ids_path, ds)
    if not isinstance(ids, list):
        raise DatasetError(f"{ds}: {ids_path} should hold a list of video ids (v_XXXXXXXXXXX)")
    ids = list(OrderedDict.fromkeys(str(i) for i in ids))
    data = _read_json(data_path, ds)
    if not isinstance(data, dict):
        raise DatasetError(f"{ds}: {data_path} should map video ids to {{duration, timestamps, sentences}}")
    vroot = _video_root(ds, root_p, video_root, ("videos", "Activity_Videos", "activitynet_videos", ""))
    index = VideoIndex(vroot)
    entries, unknown = [], []
    for vid in ids:
        item = data.get(vid)
        if item is None:
            unknown.append(vid)
            continue
        if not isinstance(item, dict) or "sentences" not in item or "duration" not in item:
            raise DatasetError(f"{ds}: {data_path}[{vid}] lacks 'sentences' / 'duration'")
        sentences = [s for s in item["sentences"] if isinstance(s, str)]
        text = _check_text(" ".join(sentences), f"{data_path}[{vid}]", ds)
        end = int(math.ceil(float(item["duration"])))
        path = index.resolve(vid) or (index.resolve(vid[2:]) if vid.startswith("v_") else None)
        entries.append(_Entry(vid, [text], 0, max(end, 1), path=path))
    return _assemble(f"{ds}/{split}", entries, index, allow_missing, unknown=unknown,
                     unknown_what=f"of {ids_path.name} have no captions in", annotation=data_path)


LSMDC_FILES = {"train": "LSMDC16_annos_training.csv", "val": "LSMDC16_annos_val.csv",
               "test": "LSMDC16_challenge_1000_publictect.csv"}


def read_lsmdc(root: str | os.PathLike[str] | None, split: str = "test", *, video_root: Any = None,
               files: Mapping[str, Any] | None = None, allow_missing: bool = False) -> RetrievalSplit:
    """LSMDC: tab-separated ``clip_id, start/end aligned, start/end extracted, sentence``."""
    ds = "lsmdc"
    _check_split(ds, split, tuple(LSMDC_FILES))
    files = dict(files or {})
    root_p = Path(root) if root is not None else None
    path = _find_file(ds, root_p, files, "annotations", [LSMDC_FILES[split]])
    texts: OrderedDict[str, list[str]] = OrderedDict()
    pairs: list[tuple[str, str]] = []
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 6:
                raise DatasetError(f"{ds}: line {lineno} of {path} has {len(fields)} tab-separated fields, "
                                   "expected 6 (clip_id, start_aligned, end_aligned, start_extracted, "
                                   "end_extracted, sentence)")
            clip_id, sentence = fields[0].strip(), fields[5]
            text = _check_text(sentence, f"{path} line {lineno}", ds)
            texts.setdefault(clip_id, []).append(text)
            pairs.append((clip_id, text))
    entries = [_Entry(v, t) for v, t in texts.items()]
    vroot = _video_root(ds, root_p, video_root, ("videos", "avi", "LSMDC_Videos", ""))
    return _assemble(f"{ds}/{split}", entries, VideoIndex(vroot), allow_missing, rows=pairs)


def read_vatex(root: str | os.PathLike[str] | None, split: str = "test", *, video_root: Any = None,
               files: Mapping[str, Any] | None = None, allow_missing: bool = False) -> RetrievalSplit:
    """VATEX: ``train_list.txt`` / ``test_list.txt`` + ``ref_captions.json`` (id -> captions)."""
    ds = "vatex"
    _check_split(ds, split, ("train", "val", "test"))
    files = dict(files or {})
    root_p = Path(root) if root is not None else None
    list_path = _find_file(ds, root_p, files, "list", ["train_list.txt" if split == "train" else "test_list.txt"])
    cap_path = _find_file(ds, root_p or list_path.parent, files, "captions", ["ref_captions.json"])
    ids = _read_id_list(list_path)
    captions = _read_json(cap_path, ds)
    if not isinstance(captions, dict):
        raise DatasetError(f"{ds}: {cap_path} should map video ids to lists of captions")
    unknown = [v for v in ids if v not in captions]
    entries = []
    for v in ids:
        if v in captions:
            caps = captions[v] if isinstance(captions[v], list) else [captions[v]]
            entries.append(_Entry(v, [_check_text(c, f"{cap_path}[{v}]", ds) for c in caps]))
    vroot = _video_root(ds, root_p, video_root, ("videos", "vatex_videos", ""))
    return _assemble(f"{ds}/{split}", entries, VideoIndex(vroot), allow_missing, unknown=unknown,
                     unknown_what=f"of {list_path.name} have no captions in", annotation=cap_path)


CSV_VIDEO_COLUMNS = ("video_path", "path", "file", "filename", "video", "video_id")
CSV_CAPTION_COLUMNS = ("caption", "sentence", "text", "description")


def read_csv(path: str | os.PathLike[str], split: str = "all", *, video_root: Any = None,
             video_column: str | None = None, caption_column: str | None = None,
             allow_missing: bool = False) -> RetrievalSplit:
    """Generic CSV: one caption per row; the video column holds a path (relative to the CSV's
    folder or ``video_root``) or an id resolved like the other readers. Several rows may name the
    same video."""
    ds = "csv"
    p = Path(path)
    if p.is_dir():
        raise DatasetError(f"{ds}: {p} is a folder; pass the CSV file itself")
    if not p.is_file():
        raise DatasetError(f"{ds}: CSV file {p} does not exist")
    with open(p, newline="", encoding="utf-8-sig") as fh:
        header = [h.strip() for h in (next(csv.reader(fh), []) or [])]
    vcol = video_column or next((c for c in CSV_VIDEO_COLUMNS if c in header), None)
    ccol = caption_column or next((c for c in CSV_CAPTION_COLUMNS if c in header), None)
    if vcol is None or ccol is None:
        need = []
        if vcol is None:
            need.append(f"a video column (one of {', '.join(CSV_VIDEO_COLUMNS)})")
        if ccol is None:
            need.append(f"a caption column (one of {', '.join(CSV_CAPTION_COLUMNS)})")
        raise DatasetError(f"{ds}: {p} lacks {' and '.join(need)}; it has columns {', '.join(header) or 'none'}. "
                           "Rename them or pass video_column=/caption_column=")
    rows = _read_csv_rows(p, [vcol, ccol], ds)
    vroot = Path(video_root) if video_root is not None else p.parent
    index = VideoIndex(vroot)
    order: OrderedDict[str, _Entry] = OrderedDict()
    pairs: list[tuple[str, str]] = []
    for i, row in enumerate(rows):
        ref = row[vcol].strip()
        if not ref:
            raise DatasetError(f"{ds}: empty {vcol} on row {i + 2} of {p}")
        text = _check_text(row[ccol], f"{p} row {i + 2}", ds)
        if ref not in order:
            direct = Path(ref) if Path(ref).is_absolute() else vroot / ref
            path = direct if direct.is_file() else index.resolve(ref)
            order[ref] = _Entry(ref, [], path=path)
        order[ref].texts.append(text)
        pairs.append((ref, text))
    return _assemble(f"{ds}/{split}", order.values(), index, allow_missing, rows=pairs)


def _check_split(ds: str, split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise DatasetError(f"{ds}: unknown split {split!r}; use one of {', '.join(allowed)}")


DATASETS: dict[str, Callable[..., RetrievalSplit]] = {
    "msrvtt": read_msrvtt, "msvd": read_msvd, "didemo": read_didemo, "activitynet": read_activitynet,
    "activity": read_activitynet, "lsmdc": read_lsmdc, "vatex": read_vatex, "csv": read_csv,
}
_PRIMARY_ROLE = {"msrvtt": None, "lsmdc": "annotations"}


def read_split(dataset: str, root_or_files: str | os.PathLike[str] | Mapping[str, Any], split: str = "test",
               *, video_root: Any = None, allow_missing: bool = False, **options: Any) -> RetrievalSplit:
    """Read one split of ``dataset`` (msrvtt, msvd, didemo, activitynet, lsmdc, vatex, csv).

    ``root_or_files`` is the dataset folder, a single annotation file (csv datasets, MSR-VTT's
    JSFUSION / train csv, an LSMDC annotation file), or a mapping of file roles to paths (e.g.
    ``{"root": folder, "test_csv": path}``; roles per reader: msrvtt test_csv/val_csv/train_csv/
    data_json, msvd list/captions, didemo list/data, activitynet ids/data, lsmdc annotations,
    vatex list/captions, csv csv).
    """
    key = dataset.lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {dataset!r}; use one of {', '.join(sorted(set(DATASETS) - {'activity'}))}")
    reader = DATASETS[key]
    if key == "csv":
        src = root_or_files
        if isinstance(src, Mapping):
            src = src.get("csv")
            if src is None:
                raise DatasetError("csv: pass the CSV path (or {'csv': path})")
        return reader(src, split if split != "test" else "all", video_root=video_root,
                      allow_missing=allow_missing, **options)
    files: dict[str, Any] = {}
    root: Any
    if isinstance(root_or_files, Mapping):
        files = dict(root_or_files)
        root = files.pop("root", None)
    else:
        path = Path(root_or_files)
        if path.is_file():
            root = path.parent
            if key == "msrvtt":
                role = "train_csv" if split.startswith("train") else ("val_csv" if split == "val" else "test_csv")
                files[role] = path
            elif key == "lsmdc":
                files["annotations"] = path
            else:
                raise DatasetError(f"{key}: pass the dataset folder (or a mapping of files), not the single "
                                   f"file {path}")
        else:
            if not path.is_dir():
                raise DatasetError(f"{key}: dataset folder {path} does not exist")
            root = path
    return reader(root, split, video_root=video_root, files=files, allow_missing=allow_missing, **options)
