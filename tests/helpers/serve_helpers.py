"""Test helpers for ``ucofia-run serve``: a small index on the hand-built bundle, a real uvicorn
server on 127.0.0.1 (any free port) in a thread, API key files."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from runtime_helpers import build_fake_bundle, make_clip, run_cli

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


def make_clips(folder: Path, count: int, first: int = 0, seconds: float = 2.0) -> list[Path]:
    """``count`` small H.264 clips clip{first}.mp4 ... (distinct colours per clip)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [make_clip(folder / f"clip{i}.mp4", seconds=seconds + i % 3, size=(64, 48), seed=100 + i)
            for i in range(first, first + count)]


def build_index(root: Path, clips: int = 5, bundle: Path | None = None) -> tuple[Path, Path, Path]:
    """(bundle, clip folder, index) with ``clips`` videos indexed by the real CLI; ``bundle``: the
    session's ``fake_bundle`` in tests (default: a hand-built bundle made under ``root``)."""
    bundle = bundle or build_fake_bundle(root / "bundle")
    folder = root / "clips"
    make_clips(folder, clips)
    index = root / "index"
    result = run_cli("index", "--bundle", str(bundle), "--videos", str(folder), "-o", str(index), "-q",
                     "--workers", "1")
    assert result.returncode == 0, result.stderr
    return bundle, folder, index


@dataclass
class Keys:
    """A key file with one key per scope set."""

    path: Path
    search: str
    admin: str
    both: str


def make_keys(path: Path) -> Keys:
    from runtime.serve.auth import create_key

    return Keys(path, create_key(path, "searcher", ["search"]), create_key(path, "operator", ["admin"]),
                create_key(path, "both", ["search", "admin"]))


class ServerThread:
    """A real uvicorn server for ``app`` on 127.0.0.1, any free port, in a daemon thread (``http``:
    runtime.serve.settings.HttpSettings, the connection layer's settings)."""

    def __init__(self, app, http=None) -> None:
        from runtime.serve.server import bind, make_server, url_of

        self.sock = bind("127.0.0.1", 0)
        self.url = url_of(self.sock).rstrip("/")
        self.server = make_server(app, http, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(STOP_TIMEOUT_S)
        self.sock.close()


def open_app(index: Path, **settings):
    """(service, app) over ``index`` with ServeSettings overrides (no access log unless asked for)."""
    from runtime.serve.app import create_app
    from runtime.serve.service import SearchService
    from runtime.serve.settings import ServeSettings

    settings.setdefault("access_log", False)
    service = SearchService.open(ServeSettings(index_dir=index, backend="cpu", **settings))
    return service, create_app(service)

