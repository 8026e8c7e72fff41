"""Binding the listening socket (loopback unless keys or --insecure-no-auth) and running uvicorn."""
from __future__ import annotations

import ipaddress
import socket
from typing import Any

from runtime.errors import RuntimeUserError
from runtime.serve.settings import MAX_CONNECTIONS

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


def url_of(sock: socket.socket) -> str:
    """http://host:port/ of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def make_server(app: Any, *, log_level: str = "info", access_log: bool = True):
    """A uvicorn Server for ``app`` (run it with ``server.run(sockets=[sock])``)."""
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on",
                            limit_concurrency=MAX_CONNECTIONS, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                            server_header=False, proxy_headers=False)
    return uvicorn.Server(config)
