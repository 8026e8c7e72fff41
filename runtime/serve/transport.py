"""The connection layer under the app: deadlines for a request's head and body, and a bound on open
connections whose surplus is closed at once.

uvicorn (0.30 and later) closes a keep-alive connection that stays idle after a response
(``timeout_keep_alive``, used as is) and bounds the size of a request head (h11's
``max_incomplete_event_size``, used as is), but nothing bounds the *time* a connection may take
to send its request: a socket that never sends a byte, headers sent a byte at a time, or a body
at 1 byte/s hold their connection for ever. Its ``limit_concurrency`` does not help either: past
that many open connections it answers 503 to every request that does arrive, ``/healthz``
included, so one client holding half-open sockets starves everybody else.

``guarded_protocol`` returns a subclass of uvicorn's h11 protocol that adds what is missing:

* **head deadline** (``--header-timeout``): a new connection, and a keep-alive connection from
  the first byte of its next request on, must deliver the whole request head within the deadline;
  later bytes do not extend it (a slow-headers client cannot trickle it along). Otherwise the
  connection gets a ``408`` (when some of a head came) and is closed.
* **body deadline** (``--body-timeout``): the whole body must arrive within the deadline of the
  end of the head; otherwise ``408`` (if no response started) and the connection is closed.
* **connection bound** (``--max-connections``): a connection accepted beyond it is closed at once,
  before any byte is read, instead of being held open and answered 503.

All of this happens before a request reaches the app, so before any authentication. Every close
is counted (``observer.connection_closed(reason)``, the service's metrics) and logged at debug
level, with a warning per reason at most every ``NOTICE_INTERVAL_S`` seconds that counts them (an
attacker must not be able to flood the log).
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

HEADER_TIMEOUT = "header_timeout"
BODY_TIMEOUT = "body_timeout"
KEEP_ALIVE_TIMEOUT = "keep_alive_timeout"
SURPLUS = "surplus"
CLOSE_REASONS = (HEADER_TIMEOUT, BODY_TIMEOUT, KEEP_ALIVE_TIMEOUT, SURPLUS)
NOTICE_INTERVAL_S = 10.0
_WHY = {HEADER_TIMEOUT: "did not send a complete request head within {header:g} s (--header-timeout)",
        BODY_TIMEOUT: "did not send its request body within {body:g} s (--body-timeout)",
        SURPLUS: "were beyond --max-connections {max} open connections"}


@dataclass(frozen=True)
class TransportLimits:
    """Deadlines (seconds) and the connection bound of ``guarded_protocol``."""

    header_timeout_s: float
    body_timeout_s: float
    max_connections: int

    def __post_init__(self) -> None:
        if self.header_timeout_s <= 0 or self.body_timeout_s <= 0 or self.max_connections < 1:
            raise ValueError("timeouts must be > 0 and max_connections >= 1")


def _timeout_response(message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)


class _Notices:
    """A warning at the first close of a reason; the closes that follow within NOTICE_INTERVAL_S
    are counted and logged as one line when the interval ends (so a flood makes a line per
    interval, and no count is lost)."""

    def __init__(self, limits: TransportLimits) -> None:
        self.limits = limits
        self.pending: dict[str, int] = {}
        self.waiting: set[str] = set()

    def closed(self, reason: str, client: Any, loop: asyncio.AbstractEventLoop) -> None:
        logger.debug("closed the connection of %s: %s", client, reason)
        if reason not in _WHY:
            return
        if reason in self.waiting:
            self.pending[reason] = self.pending.get(reason, 0) + 1
            return
        self._warn(reason, 1, "")
        self.waiting.add(reason)
        loop.call_later(NOTICE_INTERVAL_S, self._flush, reason, loop)

    def _flush(self, reason: str, loop: asyncio.AbstractEventLoop) -> None:
        count = self.pending.pop(reason, 0)
        if not count:
            self.waiting.discard(reason)
            return
        self._warn(reason, count, f" in the last {NOTICE_INTERVAL_S:g} s")
        loop.call_later(NOTICE_INTERVAL_S, self._flush, reason, loop)

    def _warn(self, reason: str, count: int, when: str) -> None:
        why = _WHY[reason].format(header=self.limits.header_timeout_s, body=self.limits.body_timeout_s,
                                  max=self.limits.max_connections)
        logger.warning("closed %d connection%s%s that %s", count, "" if count == 1 else "s", when, why)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with head and body deadlines and a connection bound (module docstring).
    Made per server by ``guarded_protocol``, which sets the class attributes."""

    limits: ClassVar[TransportLimits]
    observer: ClassVar[Any] = None
    notices: ClassVar[_Notices]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # ---- connection --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.connections.discard(self)
            self._closed(SURPLUS)
            transport.close()
            return
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)
        self._report_open()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)
        self._report_open()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self.conn.their_state is h11.IDLE:
            # the first byte of the next request on a kept-alive connection: its head's deadline starts
            self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        self._track()

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self._closed(KEEP_ALIVE_TIMEOUT)
        super().timeout_keep_alive_handler()

    # ---- deadlines ---------------------------------------------------------------------------
    def _track(self) -> None:
        """Start or stop the deadlines by where the request is: head, body, or done."""
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            self._cancel_head()
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timeout)
        elif state is h11.IDLE:
            self._cancel_body()
            if self._head_timer is None and self.conn.trailing_data[0]:  # a pipelined request's head has begun
                self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)
        else:  # the request is complete (or the connection is closing): no deadline until the next one
            self._cancel_timers()

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        partial = bool(self.conn.trailing_data[0])
        self._give_up(HEADER_TIMEOUT, f"the request head did not arrive within {self.limits.header_timeout_s:g} s"
                      if partial else None)

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        self._give_up(BODY_TIMEOUT, f"the request body did not arrive within {self.limits.body_timeout_s:g} s")

    def _give_up(self, reason: str, message: str | None) -> None:
        """Answer 408 (when ``message`` and no response has started) and close the connection; a
        request the app is reading sees the client gone."""
        cycle = self.cycle
        if message is not None and (cycle is None or cycle.response_complete or not cycle.response_started):
            self.transport.write(_timeout_response(message))
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        self._closed(reason)
        self.transport.close()

    def _cancel_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_head()
        self._cancel_body()

    # ---- reporting ---------------------------------------------------------------------------
    def _closed(self, reason: str) -> None:
        self.notices.closed(reason, self.client, self.loop)
        if self.observer is not None:
            self.observer.connection_closed(reason)

    def _report_open(self) -> None:
        if self.observer is not None:
            self.observer.connections_open(len(self.connections))


def guarded_protocol(limits: TransportLimits, observer: Any = None) -> type[GuardedH11Protocol]:
    """A ``GuardedH11Protocol`` subclass for one server (uvicorn's ``http=`` setting); ``observer``
    (optional) gets ``connection_closed(reason)`` and ``connections_open(count)``."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"limits": limits, "observer": observer, "notices": _Notices(limits)})


__all__ = ["CLOSE_REASONS", "GuardedH11Protocol", "TransportLimits", "guarded_protocol"]
