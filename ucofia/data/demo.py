"""The built-in demo benchmark: a small synthetic video-text retrieval set written as real mp4 files.

Torch-free (numpy drawing, PyAV encoding). The output follows the MSR-VTT layout that CLIP4Clip
users already have::

    DIR/
      videos/video<N>.mp4          H.264, 3 fps, 96x64 (wider than tall: the centre crop matters)
      MSRVTT_data.json             {"info", "videos": [{video_id, url, split, ...}],
                                    "sentences": [{video_id, caption, sen_id}]}
      MSRVTT_train.9k.csv          column video_id (the training videos)
      MSRVTT_val.csv               key,vid_key,video_id,sentence (validation videos, 1 caption each)
      MSRVTT_JSFUSION_test.csv     key,vid_key,video_id,sentence (test videos, 1 caption each)
      benchmark.json               counts, seed, generator version, settings, per-video attributes,
                                   sha256 of every other file
      README.txt

Every video shows three things a caption names, so that retrieval needs all three granularities:

* a coarse scene attribute: the background colour and texture (plain, striped, checkered);
* an order of events across frames: shape A then shape B, or one shape moving left to right or
  right to left (whole seconds, so one-frame-per-second sampling sees the order);
* a small corner marker (about 3x3 pixels at 32x32 input, inside one patch).

Test and validation videos come in groups of four hard negatives (a base scene, its order
swapped, its background changed, its marker changed) whose captions share one phrasing, so the
order-swapped pair has exactly the same bag of words. Everything derives from ``--seed``: the same
call twice writes byte-identical files (libx264 with one thread, fixed preset/crf, bit-exact mux).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ucofia.io_utils import atomic_directory

GENERATOR_VERSION = "1"
FORMAT = "ucofia.demo/1"

# Default split sizes at --scale 1 (test/val are groups of four hard negatives).
DEFAULT_COUNTS: dict[str, int] = {"train": 320, "val": 64, "test": 96}
SPLITS: tuple[str, ...] = ("train", "val", "test")
# MSR-VTT spells its validation split "validate" in MSRVTT_data.json.
MSRVTT_SPLIT_NAMES: dict[str, str] = {"train": "train", "val": "validate", "test": "test"}
GROUP_SIZE = 4

TRAIN_CSV = "MSRVTT_train.9k.csv"
VAL_CSV = "MSRVTT_val.csv"
TEST_CSV = "MSRVTT_JSFUSION_test.csv"
DATA_JSON = "MSRVTT_data.json"
VIDEO_DIR = "videos"
BENCHMARK_JSON = "benchmark.json"
README = "README.txt"
JSFUSION_COLUMNS: tuple[str, ...] = ("key", "vid_key", "video_id", "sentence")

# ---- the visual vocabulary ----------------------------------------------------------------------
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "gray": (118, 118, 118), "green": (38, 118, 52), "brown": (122, 78, 38), "purple": (92, 42, 124),
}
TEXTURES: tuple[str, ...] = ("plain", "striped", "checkered")
OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (232, 40, 40), "blue": (40, 96, 240), "yellow": (240, 216, 40), "white": (244, 244, 244),
}
SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
MARKER_COLOURS: dict[str, tuple[int, int, int]] = {"white": (250, 250, 250), "orange": (255, 136, 0)}
CORNERS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
DIRECTIONS: tuple[str, ...] = ("left to right", "right to left")
EVENT_KINDS: tuple[str, ...] = ("sequence", "motion")

# ---- caption vocabulary: synonyms, phrasings, distractor phrases -----------------------------------
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "gray": ("gray", "grey"), "green": ("green",), "brown": ("brown",), "purple": ("purple", "violet"),
    "red": ("red",), "blue": ("blue",), "yellow": ("yellow",), "white": ("white",),
    "orange": ("orange",),
}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "square": ("square", "box", "block"), "circle": ("circle", "disc", "ball"),
    "triangle": ("triangle",),
}
TEXTURE_WORDS: dict[str, tuple[str, ...]] = {
    "plain": ("plain", "solid", ""), "striped": ("striped", "stripy"),
    "checkered": ("checkered", "checked", "chequered"),
}
CORNER_WORDS: dict[str, tuple[str, ...]] = {
    "top left": ("top left", "upper left"), "top right": ("top right", "upper right"),
    "bottom left": ("bottom left", "lower left"), "bottom right": ("bottom right", "lower right"),
}
SEQUENCE_FORMS: tuple[str, ...] = (
    "{a} then {b}", "{a} followed by {b}", "first {a} then {b}", "{b} after {a}",
    "{a} appears before {b}", "{a} and later {b}", "{b} comes after {a}", "{a} is replaced by {b}",
)
MOTION_FORMS: tuple[str, ...] = (
    "{a} moves from {src} to {dst}", "{a} slides from {src} to {dst}", "{a} travels {src} to {dst}",
    "from {src} to {dst} {a} moves across", "{a} crosses from {src} to {dst}",
)
BACKGROUND_FORMS: tuple[str, ...] = (
    "on a {tex} {col} background", "against a {tex} {col} backdrop", "over a {tex} {col} background",
    "the background is {tex} {col}", "set on a {tex} {col} background",
)
MARKER_FORMS: tuple[str, ...] = (
    "a {adj} {col} {noun} in the {corner} corner", "with a {adj} {col} {noun} at the {corner}",
    "and a {adj} {col} {noun} at the {corner}", "a {adj} {col} {noun} marks the {corner} corner",
    "the {corner} corner has a {adj} {col} {noun}",
)
MARKER_ADJECTIVES: tuple[str, ...] = ("small", "tiny", "little")
MARKER_NOUNS: tuple[str, ...] = ("dot", "mark", "spot")
# Content-free lead-ins (distractor phrases); empty strings make "no lead-in" the common case.
INTROS: tuple[str, ...] = ("", "", "", "in this clip", "in the video", "the animation shows", "we see")
CLAUSE_ORDERS: tuple[tuple[str, str, str], ...] = (
    ("event", "background", "marker"), ("background", "event", "marker"),
    ("event", "marker", "background"), ("marker", "event", "background"),
)


class DemoDataError(ValueError):
    """The demo benchmark cannot be generated with the given arguments."""


# ---- settings ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoSettings:
    """How the clips are drawn and encoded (recorded in benchmark.json)."""

    width: int = 96
    height: int = 64
    fps: int = 3  # as CLIP4Clip's compress_video.py leaves MSR-VTT
    min_seconds: int = 4  # >= 4 so each half of a "then" event spans >= 2 one-per-second samples
    max_seconds: int = 14  # > 12 on purpose: some clips exercise the max_frames subsampling
    codec: str = "libx264"
    preset: str = "medium"
    crf: int = 18
    # x264's macroblock-tree lookahead is not reproducible on frames this small (the output
    # depends on the process's memory history); with it off, output is byte-identical.
    x264_params: str = "mbtree=0"
    pix_fmt: str = "yuv420p"
    captions_per_video: int = 5


@dataclass(frozen=True)
class DemoCounts:
    """Number of videos per split."""

    train: int
    val: int
    test: int

    def as_dict(self) -> dict[str, int]:
        return {"train": self.train, "val": self.val, "test": self.test}

    @property
    def total(self) -> int:
        return self.train + self.val + self.test


def demo_counts(scale: float = 1.0) -> DemoCounts:
    """Split sizes for ``scale`` (each split keeps at least one video)."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise DemoDataError(f"--scale must be a positive number, got {scale!r}")
    sized = {name: max(1, int(round(n * scale))) for name, n in DEFAULT_COUNTS.items()}
    counts = DemoCounts(**sized)
    if counts.total > MAX_VIDEOS:
        raise DemoDataError(
            f"--scale {scale} asks for {counts.total} videos, but the demo vocabulary only has room "
            f"for {MAX_VIDEOS} distinct scenes; use --scale <= {MAX_VIDEOS / sum(DEFAULT_COUNTS.values()):.1f}")
    return counts


# ---- scene description ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Thing:
    """A coloured shape."""

    colour: str
    shape: str


@dataclass(frozen=True)
class Event:
    """``sequence``: objects[0] then objects[1]; ``motion``: objects[0] moves in ``direction``."""

    kind: str
    objects: tuple[Thing, ...]
    direction: str | None = None

    def swapped(self) -> Event:
        """The same event with its order reversed."""
        if self.kind == "sequence":
            return Event("sequence", tuple(reversed(self.objects)))
        other = DIRECTIONS[1 - DIRECTIONS.index(self.direction)]
        return Event("motion", self.objects, other)


@dataclass(frozen=True)
class Scene:
    """The semantic content of a clip: what its captions describe (unique per benchmark)."""

    background_colour: str
    texture: str
    event: Event
    marker_colour: str
    corner: str


@dataclass(frozen=True)
class Look:
    """Nuisance variation that captions do not describe."""

    gain: float  # background brightness factor
    phase: int  # texture offset in pixels
    size: int  # object size in pixels (of the visible square of side min(w, h))
    dx: int  # horizontal offset of static objects
    dy: int  # vertical offset of objects


@dataclass(frozen=True)
class DemoVideo:
    """One clip of the benchmark."""

    video_id: str
    split: str
    group: int
    seconds: int
    scene: Scene
    look: Look
    captions: tuple[str, ...]

    @property
    def filename(self) -> str:
        return f"{self.video_id}.mp4"


@dataclass(frozen=True)
class Phrasing:
    """Which template and synonyms a caption uses (indices, taken modulo each list's length)."""

    intro: int
    order: int
    event_form: int
    background_form: int
    marker_form: int
    colour_syn: int
    shape_syn: int
    texture_syn: int
    corner_syn: int
    adjective: int
    noun: int


def _pick(options: Sequence[str], k: int) -> str:
    return options[k % len(options)]


def _random_phrasing(rng: np.random.Generator) -> Phrasing:
    fields = [f.name for f in dataclasses.fields(Phrasing)]
    return Phrasing(**{name: int(rng.integers(0, 1 << 16)) for name in fields})


def _words(text: str) -> str:
    return " ".join(text.split())


def _thing_phrase(thing: Thing, ph: Phrasing) -> str:
    return f"a {_pick(COLOUR_WORDS[thing.colour], ph.colour_syn)} {_pick(SHAPE_WORDS[thing.shape], ph.shape_syn)}"


def describe(scene: Scene, ph: Phrasing) -> str:
    """The caption of ``scene`` in phrasing ``ph`` (lowercase, no punctuation, as MSR-VTT)."""
    event = scene.event
    if event.kind == "sequence":
        a, b = (_thing_phrase(t, ph) for t in event.objects)
        event_text = _pick(SEQUENCE_FORMS, ph.event_form).format(a=a, b=b)
    else:
        src, dst = event.direction.split(" to ")
        event_text = _pick(MOTION_FORMS, ph.event_form).format(
            a=_thing_phrase(event.objects[0], ph), src=src, dst=dst)
    background_text = _pick(BACKGROUND_FORMS, ph.background_form).format(
        tex=_pick(TEXTURE_WORDS[scene.texture], ph.texture_syn),
        col=_pick(COLOUR_WORDS[scene.background_colour], ph.colour_syn))
    marker_text = _pick(MARKER_FORMS, ph.marker_form).format(
        adj=_pick(MARKER_ADJECTIVES, ph.adjective), col=_pick(COLOUR_WORDS[scene.marker_colour], ph.colour_syn),
        noun=_pick(MARKER_NOUNS, ph.noun), corner=_pick(CORNER_WORDS[scene.corner], ph.corner_syn))
    clauses = {"event": event_text, "background": background_text, "marker": marker_text}
    parts = [_pick(INTROS, ph.intro)] + [clauses[name] for name in _pick(CLAUSE_ORDERS, ph.order)]
    return _words(" ".join(parts))


# Number of distinct scenes the vocabulary can express; the planner keeps scenes unique.
_N_THINGS = len(OBJECT_COLOURS) * len(SHAPES)
N_SCENES = (len(BACKGROUND_COLOURS) * len(TEXTURES) * (_N_THINGS * (_N_THINGS - 1) + _N_THINGS * len(DIRECTIONS))
            * len(MARKER_COLOURS) * len(CORNERS))
MAX_VIDEOS = N_SCENES // 2  # keep rejection sampling of unique scenes cheap


# ---- planning (pure, fast) ----------------------------------------------------------------------------
def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(0, len(options)))]


def _random_thing(rng: np.random.Generator) -> Thing:
    return Thing(_choice(rng, list(OBJECT_COLOURS)), _choice(rng, SHAPES))


def _random_scene(rng: np.random.Generator) -> Scene:
    if _choice(rng, EVENT_KINDS) == "sequence":
        first = _random_thing(rng)
        second = _random_thing(rng)
        while second == first:
            second = _random_thing(rng)
        event = Event("sequence", (first, second))
    else:
        event = Event("motion", (_random_thing(rng),), _choice(rng, DIRECTIONS))
    return Scene(_choice(rng, list(BACKGROUND_COLOURS)), _choice(rng, TEXTURES), event,
                 _choice(rng, list(MARKER_COLOURS)), _choice(rng, CORNERS))


def _other_background(rng: np.random.Generator, scene: Scene) -> Scene:
    while True:
        changed = dataclasses.replace(scene, background_colour=_choice(rng, list(BACKGROUND_COLOURS)),
                                      texture=_choice(rng, TEXTURES))
        if changed != scene:
            return changed


def _other_marker(rng: np.random.Generator, scene: Scene) -> Scene:
    while True:
        changed = dataclasses.replace(scene, marker_colour=_choice(rng, list(MARKER_COLOURS)),
                                      corner=_choice(rng, CORNERS))
        if changed != scene:
            return changed


def _scene_group(rng: np.random.Generator) -> list[Scene]:
    """Four hard negatives: a scene, its order swapped, its background changed, its marker changed."""
    base = _random_scene(rng)
    return [base, dataclasses.replace(base, event=base.event.swapped()),
            _other_background(rng, base), _other_marker(rng, base)]


def _random_look(rng: np.random.Generator, side: int) -> Look:
    size = int(round(side * 0.34)) + int(rng.integers(-2, 3))
    jitter = max(1, int(round(side * 0.08)))
    return Look(gain=float(np.round(rng.uniform(0.9, 1.1), 4)), phase=int(rng.integers(0, side)),
                size=size, dx=int(rng.integers(-jitter, jitter + 1)), dy=int(rng.integers(-jitter, jitter + 1)))


def plan_benchmark(counts: DemoCounts, seed: int, settings: VideoSettings = VideoSettings()) -> list[DemoVideo]:
    """Decide every clip's scene, nuisance and captions (deterministic in ``seed``; no I/O).

    Video ids follow MSR-VTT (``video<N>``, numbered train, then val, then test). Scenes are
    unique across the whole benchmark. Train clips get ``captions_per_video`` independent
    phrasings; a val/test group of four shares one phrasing, used as its csv sentence (caption 0).
    """
    if settings.captions_per_video < 1:
        raise DemoDataError("captions_per_video must be at least 1")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x0C0F1A]))
    side = min(settings.width, settings.height)
    used: set[Scene] = set()
    videos: list[DemoVideo] = []
    group_id = 0
    for split in SPLITS:
        n = counts.as_dict()[split]
        planned: list[tuple[Scene, int, Phrasing | None]] = []
        while len(planned) < n:
            scenes = _scene_group(rng)
            if len(set(scenes)) < len(scenes) or used.intersection(scenes):
                continue
            scenes = scenes[: n - len(planned)]
            used.update(scenes)
            shared = None if split == "train" else _random_phrasing(rng)
            planned.extend((scene, group_id, shared) for scene in scenes)
            group_id += 1
        order = rng.permutation(len(planned))  # ids must not reveal the groups
        for idx in order:
            scene, group, shared = planned[int(idx)]
            captions: list[str] = [describe(scene, shared)] if shared is not None else []
            tries = 0
            while len(captions) < settings.captions_per_video:
                text = describe(scene, _random_phrasing(rng))
                tries += 1
                if text not in captions or tries > 100:
                    captions.append(text)
            videos.append(DemoVideo(
                video_id=f"video{len(videos)}", split=split, group=group,
                seconds=int(rng.integers(settings.min_seconds, settings.max_seconds + 1)),
                scene=scene, look=_random_look(rng, side), captions=tuple(captions)))
    return videos


# ---- drawing ----------------------------------------------------------------------------------------
def _shape_mask(shape: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, size: int) -> np.ndarray:
    r = size / 2.0
    if shape == "square":
        return (np.abs(xx - cx) < r) & (np.abs(yy - cy) < r)
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
    if shape == "triangle":  # pointing up, base 2r
        top = cy - r
        return (yy >= top) & (yy < cy + r) & (np.abs(xx - cx) < (yy - top) / 2.0)
    raise DemoDataError(f"unknown shape {shape!r}")


def render_frames(video: DemoVideo, settings: VideoSettings = VideoSettings()) -> np.ndarray:
    """The clip's RGB frames, uint8 ``[seconds*fps, height, width, 3]`` (pure function of ``video``).

    Content is laid out in the centred square of side ``min(width, height)`` (what a
    resize-shorter-side + centre-crop keeps); the margins only continue the background.
    """
    w, h = settings.width, settings.height
    side = min(w, h)
    x0, y0 = (w - side) // 2, (h - side) // 2
    scene, look = video.scene, video.look
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5

    base = np.asarray(BACKGROUND_COLOURS[scene.background_colour], np.float32) * look.gain
    dark = base * 0.55
    band = max(2, side // 8)  # stripe / checker cell size
    rows = ((yy - y0 + look.phase) // band).astype(np.int64)
    cols = ((xx - x0 + look.phase) // band).astype(np.int64)
    if scene.texture == "plain":
        alt = np.zeros((h, w), bool)
    elif scene.texture == "striped":
        alt = rows % 2 == 1
    else:
        alt = (rows + cols) % 2 == 1
    background = np.where(alt[..., None], dark, base)
    background = np.clip(np.round(background), 0, 255).astype(np.uint8)

    marker = max(2, int(round(side * 0.1)) // 2 * 2)
    inset = max(1, side // 16)
    left = x0 + inset if scene.corner.endswith("left") else x0 + side - inset - marker
    top = y0 + inset if scene.corner.startswith("top") else y0 + side - inset - marker
    background[top: top + marker, left: left + marker] = MARKER_COLOURS[scene.marker_colour]

    n = video.seconds * settings.fps
    cy = y0 + side / 2.0 + look.dy
    event = scene.event
    frames = np.empty((n, h, w, 3), np.uint8)
    switch = settings.fps * (video.seconds // 2)  # "then": whole seconds of A, then of B
    margin = inset  # moving objects cross (almost) the whole visible width
    x_start, x_end = x0 + margin + look.size / 2.0, x0 + side - margin - look.size / 2.0
    for i in range(n):
        frame = frames[i]
        frame[...] = background
        if event.kind == "sequence":
            thing = event.objects[0] if i < switch else event.objects[1]
            cx = x0 + side / 2.0 + look.dx
        else:
            thing = event.objects[0]
            t = i / max(1, n - 1)
            if event.direction == "right to left":
                t = 1.0 - t
            cx = x_start + t * (x_end - x_start)
        frame[_shape_mask(thing.shape, xx, yy, cx, cy, look.size)] = OBJECT_COLOURS[thing.colour]
    return frames


# ---- encoding ---------------------------------------------------------------------------------------
def encode_mp4(frames: np.ndarray | Iterable[np.ndarray], path: Path,
               settings: VideoSettings = VideoSettings()) -> None:
    """Encode RGB frames as an H.264 mp4, reproducibly (one x264 thread, bit-exact muxer).

    ``frames``: one [N, H, W, 3] uint8 array, or an iterable of such chunks (a long video
    rendered piece by piece); the output depends only on the frames, not on the chunking.
    """
    import av  # PyAV; imported here so planning works without it

    chunks = [frames] if isinstance(frames, np.ndarray) else frames
    with av.open(str(path), mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(settings.codec, rate=settings.fps, options={
            "preset": settings.preset, "crf": str(settings.crf), "threads": "1",
            "x264-params": settings.x264_params})
        stream.width, stream.height, stream.pix_fmt = settings.width, settings.height, settings.pix_fmt
        i = 0
        for chunk in chunks:
            if chunk.shape[1:] != (settings.height, settings.width, 3):
                raise DemoDataError(f"frames of shape {chunk.shape[1:]} do not match the settings' "
                                    f"{settings.height}x{settings.width} RGB")
            for image in chunk:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                frame.pts = i
                i += 1
                container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


# ---- annotation files -------------------------------------------------------------------------------
def _csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _jsfusion_csv(videos: Sequence[DemoVideo]) -> str:
    rows = []
    for i, v in enumerate(videos):
        number = v.video_id[len("video"):]
        rows.append((f"ret{i}", f"msr{number}", v.video_id, v.captions[0]))
    return _csv_text(JSFUSION_COLUMNS, rows)


def _msrvtt_data(videos: Sequence[DemoVideo], seed: int) -> dict:
    sentences = []
    for v in videos:
        for caption in v.captions:
            sentences.append({"caption": caption, "video_id": v.video_id, "sen_id": len(sentences)})
    return {
        "info": {"description": "ucofia synthetic demo benchmark (MSR-VTT layout)",
                 "version": f"{FORMAT} generator {GENERATOR_VERSION}", "seed": int(seed)},
        "videos": [{
            "category": EVENT_KINDS.index(v.scene.event.kind),
            "url": f"https://ucofia.invalid/demo?v={v.video_id}",
            "video_id": v.video_id,
            "start time": 0.0,
            "end time": float(v.seconds),
            "split": MSRVTT_SPLIT_NAMES[v.split],
            "id": int(v.video_id[len("video"):]),
        } for v in videos],
        "sentences": sentences,
    }


def _video_record(v: DemoVideo, settings: VideoSettings) -> dict:
    s = v.scene
    return {
        "video_id": v.video_id, "split": v.split, "group": v.group, "seconds": v.seconds,
        "frames": v.seconds * settings.fps,
        "background": {"colour": s.background_colour, "texture": s.texture},
        "event": {"kind": s.event.kind, "objects": [dataclasses.asdict(t) for t in s.event.objects],
                  "direction": s.event.direction},
        "marker": {"colour": s.marker_colour, "corner": s.corner},
        "look": dataclasses.asdict(v.look),
    }


def _write_texts(tmp: Path, texts: dict[str, str], videos: Iterable[Any]) -> dict[str, str]:
    """Write the benchmark's text files into ``tmp``; return the sha256 of every file (texts and
    the already written ``videos``, anything with a ``filename`` under videos/), by relative path,
    for its manifest."""
    for name, text in texts.items():
        (tmp / name).write_text(text, encoding="utf-8")
    files = {name: hashlib.sha256(text.encode("utf-8")).hexdigest() for name, text in texts.items()}
    for video in videos:
        rel = f"{VIDEO_DIR}/{video.filename}"
        files[rel] = hashlib.sha256((tmp / rel).read_bytes()).hexdigest()
    return files


def _library_versions() -> dict[str, str]:
    import av

    versions = {"numpy": np.__version__, "av": av.__version__}
    for name, parts in getattr(av, "library_versions", {}).items():
        versions[name] = ".".join(str(p) for p in parts)
    return versions


def _readme(counts: DemoCounts, seed: int, scale: float, settings: VideoSettings) -> str:
    return f"""ucofia demo benchmark ({FORMAT}, generator {GENERATOR_VERSION})
seed {seed}, scale {scale:g}: {counts.train} train, {counts.val} val, {counts.test} test videos

A synthetic video-text retrieval set in the MSR-VTT layout CLIP4Clip reads:
  videos/video<N>.mp4        H.264, {settings.fps} fps, {settings.width}x{settings.height}, {settings.min_seconds}-{settings.max_seconds} s
  {DATA_JSON}          all captions ("sentences": video_id, caption; {settings.captions_per_video} per video) and "videos"
  {TRAIN_CSV}        training video ids (column video_id)
  {VAL_CSV}             validation: key,vid_key,video_id,sentence (one caption per video)
  {TEST_CSV}   test: key,vid_key,video_id,sentence (one caption per video)
  {BENCHMARK_JSON}             counts, settings, per-video attributes, sha256 of every file

CLIP4Clip-style flags: --data_path {DATA_JSON} --features_path videos
  --train_csv {TRAIN_CSV} --val_csv {TEST_CSV} (or {VAL_CSV})

Each caption names a background (colour + texture), an order of events (shape A then shape B,
or a shape moving left to right / right to left) and a small corner marker. Test and val videos
come in groups of four hard negatives (order swapped, background changed, marker changed) whose
captions share one phrasing, so a bag of words cannot tell the order-swapped pair apart.
Regenerate: ucofia demo-data -o DIR --seed {seed} --scale {scale:g}
"""  # noqa: E501 - the README's text, line for line


# ---- generation -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoSummary:
    """What ``generate_demo`` wrote."""

    path: Path
    counts: DemoCounts
    captions: int
    video_seconds: int
    bytes: int
    elapsed_s: float


def _check_target(out_dir: Path, force: bool) -> bool:
    """Return whether an existing ``out_dir`` must be replaced; refuse non-empty ones without force."""
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise DemoDataError(f"{out_dir} exists and is not a directory; choose another output path")
    if any(out_dir.iterdir()) and not force:
        raise DemoDataError(f"output directory {out_dir} is not empty; pass --force to replace it")
    return True


def generate_demo(out_dir: str | Path, scale: float = 1.0, seed: int = 0, force: bool = False,
                  progress: Callable[[int, int], None] | None = None,
                  settings: VideoSettings = VideoSettings()) -> DemoSummary:
    """Write the demo benchmark to ``out_dir`` (built in a temporary sibling, then renamed).

    ``progress(done, total)`` is called after each video. Raises DemoDataError when ``out_dir``
    is a non-empty directory and ``force`` is false.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DemoDataError(f"--seed must be a non-negative integer, got {seed!r}")
    counts = demo_counts(scale)
    replace = _check_target(out_dir, force)
    videos = plan_benchmark(counts, seed, settings)
    by_split = {split: [v for v in videos if v.split == split] for split in SPLITS}
    with atomic_directory(out_dir, force=replace) as tmp:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the result is a normal directory
        (tmp / VIDEO_DIR).mkdir()
        for done, video in enumerate(videos, 1):
            encode_mp4(render_frames(video, settings), tmp / VIDEO_DIR / video.filename, settings)
            if progress is not None:
                progress(done, len(videos))
        texts = {
            DATA_JSON: json.dumps(_msrvtt_data(videos, seed)) + "\n",
            TRAIN_CSV: _csv_text(("video_id",), ((v.video_id,) for v in by_split["train"])),
            VAL_CSV: _jsfusion_csv(by_split["val"]),
            TEST_CSV: _jsfusion_csv(by_split["test"]),
            README: _readme(counts, seed, scale, settings),
        }
        files = _write_texts(tmp, texts, videos)
        benchmark = {
            "format": FORMAT, "generator_version": GENERATOR_VERSION, "seed": int(seed),
            "scale": float(scale), "counts": counts.as_dict(),
            "captions": {split: sum(len(v.captions) for v in by_split[split]) for split in SPLITS},
            "layout": {"data_json": DATA_JSON, "train_csv": TRAIN_CSV, "val_csv": VAL_CSV,
                       "test_csv": TEST_CSV, "videos": VIDEO_DIR},
            "settings": dataclasses.asdict(settings), "group_size": GROUP_SIZE,
            "vocabulary": {"background_colours": list(BACKGROUND_COLOURS), "textures": list(TEXTURES),
                           "object_colours": list(OBJECT_COLOURS), "shapes": list(SHAPES),
                           "marker_colours": list(MARKER_COLOURS), "corners": list(CORNERS),
                           "directions": list(DIRECTIONS), "event_kinds": list(EVENT_KINDS)},
            "versions": _library_versions(),
            "videos": [_video_record(v, settings) for v in videos],
            "sha256": dict(sorted(files.items())),
        }
        (tmp / BENCHMARK_JSON).write_text(json.dumps(benchmark, indent=1) + "\n", encoding="utf-8")
        total_bytes = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
    return DemoSummary(path=out_dir, counts=counts, captions=sum(len(v.captions) for v in videos),
                       video_seconds=sum(v.seconds for v in videos), bytes=total_bytes,
                       elapsed_s=time.perf_counter() - start)
