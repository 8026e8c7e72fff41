"""Run Ray inside a private network and PID namespace, so every Ray process of a test binds
127.0.0.1 only and none outlives the test.

``unshare -n`` gives the command a network namespace holding nothing but a loopback interface
(brought up first): Ray can reach nothing else and binds 127.0.0.1; its /tmp/ray is a private
tmpfs. ``-p -f --mount-proc`` puts it
in a PID namespace whose first process is a shell: when the shell exits (after the command, or
after the command was killed) the kernel kills every process left in the namespace: raylets, GCS,
workers. Tests skip with the reason when the machine does not allow namespaces.
"""
from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

NETNS = ["unshare", "-n", "-p", "-f", "--mount-proc"]
# The shell is PID 1 of the namespace; "exit $?" after the command keeps it from exec-ing the command
# (PID 1 ignores the SIGKILL a crash test sends itself). A private tmpfs on /tmp/ray (the namespace
# has its own mounts) keeps Ray's session files, and the address a plain ray.init() would join,
# away from every other Ray on the machine; another on /tmp/haproxy-serve does the same for the
# configuration and sockets of Ray Serve's HAProxy ingress.
SHELL = ('ip link set lo up || exit 97; mkdir -p /tmp/ray && mount -t tmpfs ucofia-ray /tmp/ray || exit 96; '
         'mkdir -p /tmp/haproxy-serve && mount -t tmpfs ucofia-haproxy /tmp/haproxy-serve || exit 95; '
         '"$@"; exit $?')
HELPERS = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def netns_problem() -> str | None:
    """Why Ray tests cannot run here (None when they can)."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        return f"Ray is not installed ({exc}); pip install 'ucofia[ray]'"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare (util-linux) and ip (iproute2) are needed to confine Ray to a private loopback"
    probe = subprocess.run([*NETNS, "sh", "-c", SHELL, "sh", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a network + PID namespace here ({probe.stderr.strip() or probe.returncode})"
    return None


def need_netns() -> None:
    problem = netns_problem()
    if problem:
        pytest.skip(problem)


def run_confined(args: list[str], env: dict | None = None, timeout: float = 240,
                 cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``args`` inside a fresh network + PID namespace (see the module docstring)."""
    need_netns()
    return subprocess.run([*NETNS, "sh", "-c", SHELL, "sh", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=cwd)


def ucofia_run(*args: str) -> list[str]:
    """The command line of ``ucofia-run ARGS`` with this interpreter."""
    return [sys.executable, "-m", "runtime.cli", *args]


def scenario(*args: str) -> list[str]:
    """The command line of tests/helpers/ray_scenarios.py ARGS with this interpreter."""
    return [sys.executable, str(HELPERS / "ray_scenarios.py"), *args]
