"""When the ingress sends a second call to a shard that has not answered yet (a hedged call).

A retry only follows a failure: a call held by one stuck replica (a paused process, a replica on
a node that has just died, which Ray notices only after seconds of health checks) would hold its
request until the shard deadline. A second call made while the first still waits is routed by
Ray to the least-busy replica of the shard, usually not the one holding the first; the first
answer wins and the other calls are cancelled. When every replica of a shard stalls (what losing
a node caused in our runs, docs/scaling.md), only the deadline helps.

Hedging too early doubles the shards' work, so by default the wait adapts to the shard calls
this ingress has seen: ``HEDGE_FACTOR`` times the 90th percentile of the last ``HEDGE_HISTORY``
answered calls of that kind (hits, shortlist, rerank), never under ``HEDGE_MIN_S`` and never past
half the deadline (the hedged call needs time to answer too). Before ``HEDGE_MIN_SAMPLES`` calls,
a quarter of the deadline.

Ray's router can send a hedged call to the dead replica too: until Ray marks it unavailable (5 s
after the node went, on a loaded machine), what it knows of that replica's queue is stale and
looks short. So while a hedged call waits too, further calls follow at half the delay (up to
``MAX_CALLS_IN_FLIGHT``): one of them is sent after Ray has routed around the dead replica.
"""
from __future__ import annotations

import threading
from collections import deque

HEDGE_FACTOR = 3.0
HEDGE_MIN_S = 0.2
HEDGE_HISTORY = 64
HEDGE_MIN_SAMPLES = 8
# Calls to one shard in flight at once for one request: the first and at most five hedged ones.
MAX_CALLS_IN_FLIGHT = 6
AUTO = "auto"


class HedgePolicy:
    """How long a shard call waits before another is sent: ``after_s`` fixed seconds, 0 never,
    None adapted to the calls recorded (thread-safe)."""

    def __init__(self, after_s: float | None = None) -> None:
        if after_s is not None and after_s < 0:
            raise ValueError(f"the hedge delay must be at least 0 s (0: never), got {after_s}")
        self.after_s = after_s
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.after_s != 0

    def record(self, method: str, seconds: float) -> None:
        """An answered call of ``method`` that took ``seconds``."""
        with self._lock:
            self._seen.setdefault(method, deque(maxlen=HEDGE_HISTORY)).append(seconds)

    def delay(self, method: str, deadline_s: float) -> float | None:
        """Seconds a call of ``method`` may wait before another is sent (None: never)."""
        if not self.enabled:
            return None
        if self.after_s is not None:
            return self.after_s
        with self._lock:
            seen = sorted(self._seen.get(method, ()))
        if len(seen) < HEDGE_MIN_SAMPLES:
            return deadline_s / 4
        p90 = seen[int(0.9 * len(seen))]  # within the list: 0.9 n < n
        return min(max(HEDGE_FACTOR * p90, HEDGE_MIN_S), deadline_s / 2)

    @staticmethod
    def gap(delay: float, in_flight: int) -> float:
        """Seconds from the latest call to the next hedged one, ``in_flight`` calls waiting."""
        return delay if in_flight <= 1 else max(delay / 2, min(HEDGE_MIN_S, delay))


def parse_hedge(text: str) -> float | None:
    """``--shard-hedge-after``: ``auto`` (None), ``off`` (0) or seconds."""
    value = text.strip().lower()
    if value == AUTO:
        return None
    if value == "off":
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"expected auto, off or seconds, got {text!r}") from None
    if not seconds >= 0:
        raise ValueError(f"expected auto, off or seconds at least 0, got {text!r}")
    return seconds
