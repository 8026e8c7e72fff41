"""Binding the listening socket (loopback unless keys or --insecure-no-auth) and running uvicorn
with the service's connection layer (``runtime.serve.transport``)."""
from __future__ import annotations

import gc
import ipaddress
import logging
import socket
import sys
from typing import Any

from runtime.errors import RuntimeUserError
from runtime.serve.settings import MAX_HEAD_BYTES, SWITCH_INTERVAL_S, HttpSettings

logger = logging.getLogger(__name__)
# File descriptors the process needs besides its connections (index shards, sessions, logs).
SPARE_FILES = 256

GRACEFUL_SHUTDOWN_S = 5


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` stands for is a loopback address (127.0.0.0/8, ::1)."""
    name = host.strip("[]")
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None)
    except socket.gaierror as exc:
        raise RuntimeUserError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def check_exposure(host: str, has_keys: bool, insecure_no_auth: bool) -> None:
    """Refuse a non-loopback address without API keys unless explicitly allowed."""
    if has_keys or insecure_no_auth or is_loopback(host):
        return
    raise RuntimeUserError(
        f"refusing to listen on {host} (reachable from other machines) without API keys: give --api-keys FILE "
        f"(create it with `ucofia-run api-key create --file FILE --name NAME --scope search`), or "
        f"--insecure-no-auth to let anyone who reaches the port search and reload the index")


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port); port 0 takes any free port (see ``sock.getsockname()``)."""
    name = host.strip("[]")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise RuntimeUserError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise RuntimeUserError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port "
                               f"(0 takes any free one)") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, tls: bool = False) -> str:
    """http(s)://host:port/ of a bound socket."""
    host, port = sock.getsockname()[:2]
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"{'https' if tls else 'http'}://{netloc}/"


def check_tls(http: HttpSettings) -> None:
    """--tls-cert and --tls-key go together and name readable files."""
    given = [p for p in (http.tls_cert, http.tls_key) if p is not None]
    if len(given) == 1:
        raise RuntimeUserError("give --tls-cert and --tls-key together (the certificate chain and its private key, "
                               "PEM files)")
    for path in given:
        if not path.is_file():
            raise RuntimeUserError(f"TLS file not found: {path}")


def raise_file_limit(connections: int) -> None:
    """Raise the soft limit of open files to what ``connections`` need (up to the hard limit), so
    that the connection bound, not the process's file limit, is what refuses connections."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < wanted:
            logger.warning("open-file limit %d is below --max-connections %d + %d; raise `ulimit -n` or lower "
                           "--max-connections", target, connections, SPARE_FILES)


def prepare_process() -> None:
    """Process-wide settings of a server process, once its service is loaded: the GIL changes hands
    every SWITCH_INTERVAL_S (the event loop waits less behind the batch and responder threads),
    and what was loaded at start is frozen out of the garbage collector's full passes (they then
    walk the requests' objects only, not the index's entries)."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.collect()
    gc.freeze()


def make_server(app: Any, http: HttpSettings | None = None, *, log_level: str = "info", observer: Any = None):
    """A uvicorn Server for ``app`` (run it with ``server.run(sockets=[sock])``): the guarded h11
    protocol (head and body deadlines, the connection bound), uvicorn's keep-alive timeout, head
    size bound, root path, proxy headers and TLS. Logging is the caller's (uvicorn configures
    none; its access log is off: the app writes its own, with the request id). ``observer``: where
    closed connections are counted (default: the app's metrics)."""
    import uvicorn

    from runtime.serve.transport import TransportLimits, guarded_protocol

    http = http or HttpSettings()
    if observer is None:
        observer = getattr(getattr(app, "state", None), "metrics", None)
    limits = TransportLimits(http.header_timeout_s, http.body_timeout_s, http.max_connections)
    config = uvicorn.Config(
        app, http=guarded_protocol(limits, observer), log_config=None, log_level=log_level, access_log=False,
        lifespan="on", timeout_keep_alive=http.keep_alive_timeout_s, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES, server_header=False, root_path=http.root_path,
        proxy_headers=http.proxy_headers, forwarded_allow_ips=list(http.forwarded_allow_ips),
        ssl_certfile=http.tls_cert, ssl_keyfile=http.tls_key)
    return uvicorn.Server(config)
