"""Progress bars for long loops: the one helper every command's long work goes through.

Bars are tqdm bars on stderr. They are off unless a command line turned them on
(``ucofia.logs.configure``; ``-q`` keeps them off), so library calls, tests and the search service
print none. Log records printed while a bar is open go through :func:`write`, above the bar.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Update = Callable[[int], None]
# Totals from which counts are shown with k/M suffixes (smaller ones as plain integers).
UNIT_SCALE_FROM = 100_000

_enabled = False


def set_enabled(enabled: bool) -> None:
    """Show (True) or hide (False) the bars of every later :func:`progress_bar`."""
    global _enabled  # noqa: PLW0603 - one process-wide switch, set by the command line
    _enabled = enabled


def enabled() -> bool:
    """Whether bars are shown."""
    return _enabled


class Bar:
    """An open bar: call it with the steps done; ``postfix`` shows values after the bar (loss,
    learning rate...). A hidden bar (``visible`` False) ignores both."""

    def __init__(self, tqdm_bar: Any = None, initial: int = 0) -> None:
        self._bar = tqdm_bar
        self.done = initial

    @property
    def visible(self) -> bool:
        return self._bar is not None

    def __call__(self, steps: int = 1) -> None:
        self.done += steps
        if self._bar is not None:
            self._bar.update(steps)

    def advance_to(self, done: int, _total: int | None = None) -> None:
        """Move to ``done`` steps (for work that reports ``(done, total)``)."""
        if done > self.done:
            self(done - self.done)

    def postfix(self, **values: Any) -> None:
        if self._bar is not None:
            self._bar.set_postfix(**values)


@contextmanager
def progress_bar(total: int, desc: str, unit: str = "it", *, initial: int = 0, leave: bool = True,
                 show: bool = True) -> Iterator[Bar]:
    """A bar of ``total`` steps (``initial`` already done), hidden when bars are off or ``show`` is
    False. ``unit`` names a step (video, pair, row...); large counts get k/M suffixes. The bar closes
    when the block ends, whatever happens in it."""
    if not (_enabled and show):
        yield Bar(initial=initial)
        return
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=total >= UNIT_SCALE_FROM,
               dynamic_ncols=True, file=sys.stderr, leave=leave)
    try:
        yield Bar(bar, initial)
    finally:
        bar.close()


def write(message: str) -> None:
    """Print a line to stderr without breaking an open bar."""
    if _enabled:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)
