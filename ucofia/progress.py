"""Progress bars for long loops: the one helper every command's long work goes through.

Bars are tqdm bars on stderr. They are off unless a command line turned them on
(``ucofia.logs.configure``; ``-q`` keeps them off), so library calls, tests and the search service
print none. Log records printed while a bar is open go through :func:`write`, above the bar.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Update = Callable[[int], None]

_enabled = False


def set_enabled(enabled: bool) -> None:
    """Show (True) or hide (False) the bars of every later :func:`progress_bar`."""
    global _enabled  # noqa: PLW0603 - one process-wide switch, set by the command line
    _enabled = enabled


def enabled() -> bool:
    """Whether bars are shown."""
    return _enabled


def _ignore(_: int) -> None:
    """The update function of a hidden bar."""


@contextmanager
def progress_bar(total: int, desc: str, unit: str = "it", *, leave: bool = True) -> Iterator[Update]:
    """A bar of ``total`` steps, yielding its update function (call it with the steps done).

    ``unit`` names a step (video, pair, row...); large counts are shown with k/M suffixes. The bar
    closes when the block ends, whatever happens in it."""
    if not _enabled:
        yield _ignore
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True, file=sys.stderr,
               leave=leave)
    try:
        yield bar.update
    finally:
        bar.close()


def write(message: str) -> None:
    """Print a line to stderr without breaking an open bar."""
    if _enabled:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)
