"""What the command lines print: every module logs with ``logging.getLogger(__name__)``; a command
line calls :func:`configure` once with its ``-q`` / ``-v`` count.

* default (0): info and above, as plain lines on stderr (warnings as ``warning: ...``), and
  progress bars (``ucofia.progress``);
* quiet (-1, ``-q``): warnings and errors only, no bars;
* verbose (1+, ``-v``): debug records too, each with the module that logged it.

A long-running command (``ucofia-run serve``) asks for lines an operator's tools can read instead:
``fmt="text"`` (``2026-01-31T12:00:00.123Z INFO [request-id] logger: message``) or ``fmt="json"``
(one JSON object per line: ``time``, ``level``, ``logger``, ``message``, the context's fields,
``exception``). Fields set in :data:`CONTEXT` (the service's ``request_id``) go into every record
logged meanwhile, in the same task or thread.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

from ucofia import progress

# The project's top-level packages: their loggers get the command line's handler.
PACKAGES = ("ucofia", "runtime", "export", "evaluation")
QUIET, NORMAL, VERBOSE = -1, 0, 1
_PREFIX = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "error: "}
PLAIN, TEXT, JSON = "plain", "text", "json"
FORMATS = (PLAIN, TEXT, JSON)
# Fields of the work under way (the service's request id), added to every record logged meanwhile.
CONTEXT: ContextVar[Mapping[str, str]] = ContextVar("ucofia_log_context", default={})  # noqa: B039 - never mutated


class _LineFormatter(logging.Formatter):
    """``warning: message`` for warnings, ``message`` for info; with ``-v`` the logger's name too."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        text = _PREFIX.get(record.levelno, "") + record.getMessage()
        if self.verbose:
            text = f"[{record.name}] {text}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _timestamp(created: float) -> str:
    """ISO 8601 in UTC with milliseconds: 2026-01-31T12:00:00.123Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class _ServiceFormatter(logging.Formatter):
    """One line per record with time, level, logger and the context's fields (``fmt`` text or json)."""

    def __init__(self, fmt: str) -> None:
        super().__init__()
        self.json = fmt == JSON

    def format(self, record: logging.LogRecord) -> str:
        fields = dict(CONTEXT.get())
        message = record.getMessage()
        if self.json:
            out = {"time": _timestamp(record.created), "level": record.levelname.lower(), "logger": record.name,
                   "message": message, **fields}
            if record.exc_info:
                out["exception"] = self.formatException(record.exc_info)
            return json.dumps(out, ensure_ascii=False, default=str)
        text = (f"{_timestamp(record.created)} {record.levelname} [{fields.get('request_id', '-')}] {record.name}: "
                f"{message}")
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _StderrHandler(logging.Handler):
    """Writes each record to the current ``sys.stderr`` (a test runner may swap it after
    :func:`configure`), above any open progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            progress.write(self.format(record))
        except Exception:  # a handler must not raise into the code that logged
            self.handleError(record)


def configure(verbosity: int = NORMAL, level: str | int | None = None, fmt: str = PLAIN) -> None:
    """Route the project's log records to stderr at the level ``verbosity`` asks for (or at
    ``level``, a logging level or its name, when given) and turn the progress bars on or off;
    ``fmt``: ``plain`` (the command lines), ``text`` or ``json`` (a service's log, see the module
    docstring). Calling it again replaces the previous setting."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if level is None:
        level = logging.WARNING if verbosity <= QUIET else logging.INFO if verbosity == NORMAL else logging.DEBUG
    handler = _StderrHandler()
    handler.setFormatter(_LineFormatter(verbose=verbosity >= VERBOSE) if fmt == PLAIN else _ServiceFormatter(fmt))
    for name in PACKAGES:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)
    progress.set_enabled(verbosity > QUIET and sys.stderr is not None)


@contextmanager
def routed(*names: str) -> Iterator[None]:
    """While the block runs, records of the loggers ``names`` (a library's, e.g. ``uvicorn``) go
    where :func:`configure` sent the project's, at the same level; afterwards they no longer do."""
    package = logging.getLogger(PACKAGES[0])
    handlers = [h for h in package.handlers if isinstance(h, _StderrHandler)]
    saved = {}
    for name in names:
        logger = logging.getLogger(name)
        saved[name] = (logger.level, logger.propagate)
        for handler in handlers:
            logger.addHandler(handler)
        if handlers:
            logger.setLevel(package.level)
            logger.propagate = False
    try:
        yield
    finally:
        for name, (level, propagate) in saved.items():
            logger = logging.getLogger(name)
            for handler in handlers:
                logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
