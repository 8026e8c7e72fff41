"""What the command lines print: every module logs with ``logging.getLogger(__name__)``; a command
line calls :func:`configure` once with its ``-q`` / ``-v`` count.

* default (0): info and above, as plain lines on stderr (warnings as ``warning: ...``), and
  progress bars (``ucofia.progress``);
* quiet (-1, ``-q``): warnings and errors only, no bars;
* verbose (1+, ``-v``): debug records too, each with the module that logged it.
"""
from __future__ import annotations

import logging
import sys

from ucofia import progress

# The project's top-level packages: their loggers get the command line's handler.
PACKAGES = ("ucofia", "runtime", "export", "evaluation")
QUIET, NORMAL, VERBOSE = -1, 0, 1
_PREFIX = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "error: "}


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


class _StderrHandler(logging.Handler):
    """Writes each record to the current ``sys.stderr`` (a test runner may swap it after
    :func:`configure`), above any open progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            progress.write(self.format(record))
        except Exception:  # a handler must not raise into the code that logged
            self.handleError(record)


def configure(verbosity: int = NORMAL, level: str | int | None = None) -> None:
    """Route the project's log records to stderr at the level ``verbosity`` asks for (or at
    ``level``, a logging level or its name, when given) and turn the progress bars on or off.
    Calling it again replaces the previous setting."""
    if level is None:
        level = logging.WARNING if verbosity <= QUIET else logging.INFO if verbosity == NORMAL else logging.DEBUG
    handler = _StderrHandler()
    handler.setFormatter(_LineFormatter(verbose=verbosity >= VERBOSE))
    for name in PACKAGES:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)
    progress.set_enabled(verbosity > QUIET and sys.stderr is not None)
