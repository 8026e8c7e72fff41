"""Windowed indexing (``ucofia-run index --window W --stride S``): the window setting of an index,
the row id of each window, and planning which windows of a file to index. Planning probes the file,
so this is the ingest side; what a windowed entry holds is read with ``runtime.index.entries``.
docs/index-format-windows.md specifies the windows, their entry fields and row ids.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import GalleryIndexError, RuntimeUserError
from runtime.index.entries import is_windowed
from ucofia.data.video import DecodedVideo, StreamInfo, VideoDecodeError, probe_video
from ucofia.data.windows import Span, WindowError, format_seconds, seconds_to_ms, stream_spans

ID_SEPARATOR = "@"


@dataclass(frozen=True)
class WindowSetting:
    """``--window`` / ``--stride`` of an index, in milliseconds."""

    window_ms: int
    stride_ms: int

    @classmethod
    def from_options(cls, window: float | None, stride: float | None) -> WindowSetting | None:
        """The setting of ``--window SECONDS [--stride SECONDS]`` (stride defaults to the window);
        None for whole-file indexing. RuntimeUserError for a stride without a window or bad values."""
        if window is None:
            if stride is not None:
                raise RuntimeUserError("--stride needs --window (the window length in seconds)")
            return None
        try:
            window_ms = seconds_to_ms(window, "--window")
            stride_ms = window_ms if stride is None else seconds_to_ms(stride, "--stride")
        except WindowError as exc:
            raise RuntimeUserError(str(exc)) from None
        return cls(window_ms, stride_ms)

    @property
    def window(self) -> float:
        return self.window_ms / 1000

    @property
    def stride(self) -> float:
        return self.stride_ms / 1000

    def describe(self) -> str:
        return f"--window {format_seconds(self.window_ms)} --stride {format_seconds(self.stride_ms)}"


def window_id(file_id: str, span: Span) -> str:
    """The row id of ``file_id``'s window ``span`` (docs/index-format-windows.md, "Row ids")."""
    return f"{file_id}{ID_SEPARATOR}{format_seconds(span.start_ms)}-{format_seconds(span.end_ms)}"


def setting_of(entries: Iterable[Mapping[str, Any]]) -> WindowSetting | None:
    """The window setting of an index's rows; None when they are whole files (or there are none).

    GalleryIndexError when the rows mix settings (not written by ``ucofia-run index``).
    """
    found: set[WindowSetting | None] = set()
    for entry in entries:
        if is_windowed(entry):
            found.add(WindowSetting(seconds_to_ms(entry["window"], "window"), seconds_to_ms(entry["stride"], "stride")))
        else:
            found.add(None)
        if len(found) > 1:
            raise GalleryIndexError("the index mixes whole-file rows and windows of different --window/--stride "
                                    "settings; rebuild it with one setting")
    return next(iter(found), None)


def check_setting(root: Path, entries: list[Mapping[str, Any]], wanted: WindowSetting | None) -> None:
    """Refuse to add rows of another window setting than the index already holds."""
    if not entries:
        return
    have = setting_of(entries)
    if have != wanted:
        def words(s: WindowSetting | None) -> str:
            return "whole files (no --window)" if s is None else s.describe()

        raise GalleryIndexError(f"index {root} holds {words(have)}; this run asks for {words(wanted)}. Re-run with "
                                f"the index's setting, or index into a new directory")


@dataclass
class FilePlan:
    """The windows of one file still to index."""

    file_id: str
    path: Path
    info: StreamInfo
    duration_ms: int
    spans: list[Span]      # not yet indexed, in time order
    planned: int           # windows the file has in all
    replaces: list[str] = field(default_factory=list)  # old rows of a changed file its windows replace


def plan_file(file_id: str, path: Path, setting: WindowSetting, indexed: set[str]) -> FilePlan:
    """Probe ``path`` and list its windows that are not in ``indexed`` (VideoDecodeError when the
    file cannot be opened or has no known duration)."""
    info = probe_video(path)
    duration_ms, spans = stream_spans(info, setting.window_ms, setting.stride_ms)
    if not spans:
        raise VideoDecodeError(path, "the stream reports neither a frame count nor a duration, so its windows "
                               "cannot be planned; re-encode it (e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`)")
    todo = [s for s in spans if window_id(file_id, s) not in indexed]
    return FilePlan(file_id, Path(path), info, duration_ms, todo, len(spans))


def window_entry(file_entry: Mapping[str, Any], file_id: str, span: Span, video: DecodedVideo,
                 setting: WindowSetting) -> dict[str, Any]:
    """The index entry of one window (``file_entry``: the whole-file entry of its file)."""
    return {**file_entry, "id": window_id(file_id, span), "frames": video.num_frames, "file_id": file_id,
            "start": span.start, "end": span.end, "window": setting.window, "stride": setting.stride}
