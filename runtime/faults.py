"""Named crash points in the index's update paths, for the kill tests.

Every step of an update that writes to disk passes a named point (``crash_point("commit:state")``).
When the environment variable ``UCOFIA_CRASH_AT`` names that point, the process kills itself with
SIGKILL there (``name#N``: the N-th time it passes that point): the tests run each update in a
subprocess with every point in turn and check that the index still opens and answers with every
committed video. Unset (always, outside those tests) a point costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal
from collections import Counter

CRASH_ENV = "UCOFIA_CRASH_AT"
_passes: Counter = Counter()


def crash_point(name: str) -> None:
    """SIGKILL this process when ``UCOFIA_CRASH_AT`` is ``name`` or ``name#N`` and this is the N-th
    pass (no-op otherwise)."""
    target = os.environ.get(CRASH_ENV)
    if not target or not target.startswith(name):
        return
    _passes[name] += 1
    point, _, nth = target.partition("#")
    if point == name and _passes[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


ONCE_ENV = "UCOFIA_CRASH_ONCE"


def crash_once(name: str) -> None:
    """Like :func:`crash_point` for pools of worker processes: when ``UCOFIA_CRASH_ONCE`` is
    ``name#N=MARKER`` the first process to pass ``name`` N times creates the file MARKER and
    kills itself (SIGKILL); the marker stops every later pass, in any process, from crashing
    (so a restarted worker carries on). Used by the Ray tests to kill an encoder actor mid-run."""
    target = os.environ.get(ONCE_ENV)
    if not target or not target.startswith(name):
        return
    spec, _, marker = target.partition("=")
    _passes[f"once:{name}"] += 1
    point, _, nth = spec.partition("#")
    if point != name or _passes[f"once:{name}"] < int(nth or 1) or not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
