"""Test helpers for ``ucofia-run serve``: a small index on the hand-built bundle, a real uvicorn
server on 127.0.0.1 (any free port) in a thread, a real ``ucofia-run serve`` process, API key files."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
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



class ServeProcess:
    """A real ``ucofia-run serve`` process on 127.0.0.1 (``--port 0``, ``--backend cpu`` and ``ARGS``)
    whose stderr (its log) is collected line by line; ``url`` is the address it printed (with the
    root path). Stopped with SIGINT (killed if it does not stop) when the block ends."""

    def __init__(self, *args: str, env: dict | None = None) -> None:
        self.args = ["serve", "--port", "0", "--backend", "cpu", *args]
        self.env = env
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.url = ""
        self.returncode: int | None = None

    def _read(self) -> None:
        for line in iter(self.proc.stderr.readline, ""):
            with self._lock:
                self.lines.append(line)

    @property
    def log(self) -> str:
        with self._lock:
            return "".join(self.lines)

    def wait_for_log(self, pattern: str, timeout_s: float = 10.0, after: int = 0) -> re.Match:
        """The first match of the regular expression ``pattern`` in the log lines from ``after`` on,
        waiting at most ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                text = "".join(self.lines[after:])
            found = re.search(pattern, text, re.M)
            if found:
                return found
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"no {pattern!r} in the server log:\n{self.log[-4000:]}")
            time.sleep(0.05)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the server listens on."""
        host, port = re.match(r"https?://([^/]+):(\d+)/", self.url).groups()
        return host.strip("[]"), int(port)

    def _wait_listening(self) -> None:
        """The socket is bound before the app starts; uvicorn listens once the app has started."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                socket.create_connection(self.address, timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise AssertionError(f"the server does not listen:\n{self.log[-4000:]}") from None
                time.sleep(0.05)

    def __enter__(self) -> ServeProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", *self.args], stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True, env=self.env)
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.url = self.wait_for_log(r" at (https?://\S+/) \(", START_TIMEOUT_S).group(1)
            self._wait_listening()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        self.returncode = self.proc.returncode


def private_keys(path: Path) -> Keys:
    """``make_keys`` (the file is written 0600, as the server wants it)."""
    keys = make_keys(path)
    os.chmod(path, 0o600)
    return keys


REFUSAL_TIMEOUT_S = 30.0


def serve_refusal(*args: str, timeout_s: float = REFUSAL_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run ``ucofia-run serve --port 0 ARGS`` in a subprocess that is expected to refuse to start:
    its exit code and stderr. One that starts serving anyway is killed after ``timeout_s`` and
    reported with ``returncode`` None (so a test of a refusal never hangs on a server)."""
    command = [sys.executable, "-m", "runtime.cli", "serve", "--port", "0", "--backend", "cpu", *args]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return subprocess.CompletedProcess(command, None, "", stderr)


# Metadata of the videos of ``build_metadata_index``: a channel (few strings), a year (numbers), a
# flag (booleans, not on every video), tags (lists of strings) and a note holding markup (text).
PAGE_METADATA = {
    "clip0": {"channel": "news", "year": 2019, "live": True, "tags": ["city", "night"], "note": "<b>bold</b>"},
    "clip1": {"channel": "sport", "year": 2021, "live": False, "tags": ["field"], "note": "a & b"},
    "clip2": {"channel": "news", "year": 2022, "tags": ["city"], "note": "plain"},
    "clip3": {"channel": "music", "year": 2020, "live": True, "tags": [], "note": "x"},
    "clip4": {"channel": "news", "year": 2023, "live": False, "tags": ["night"], "note": "y"},
    "clip5": {"channel": "sport", "year": 2018, "note": "z"},
}


def build_metadata_index(root: Path, clips: Path, bundle: Path, metadata: dict | None = None) -> Path:
    """An index of the session's ``clips`` (clip0.mp4 ...) listed in a .jsonl video list with
    ``metadata`` (default PAGE_METADATA: one row per id), indexed by the real CLI."""
    import json

    metadata = PAGE_METADATA if metadata is None else metadata
    listing = root / "videos.jsonl"
    listing.write_text("".join(json.dumps({"id": vid, "path": str(clips / f"{vid}.mp4"), **meta}) + "\n"
                               for vid, meta in metadata.items()))
    index = root / "index"
    result = run_cli("index", "--bundle", str(bundle), "--videos", str(listing), "-o", str(index), "-q",
                     "--workers", "1")
    assert result.returncode == 0, result.stderr
    return index
