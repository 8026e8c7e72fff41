"""What both command lines (``ucofia`` and ``ucofia-run``) share: a click group that imports a
command's module only when that command runs, and the ``-q`` / ``-v`` flags of every command."""
from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from typing import Any

import click

from ucofia import logs

QUIET_HELP = "Only warnings and errors: no notes, no progress bars."
VERBOSE_HELP = "Also debug messages, each with the module that wrote it."


class LazyGroup(click.Group):
    """A click group whose commands are ``"module:attribute"`` targets, imported on first use, so
    that ``--help`` and light commands never pay for heavy imports. ``commands`` maps a command
    name to (target, one-line help shown in the group's ``--help``)."""

    def __init__(self, *args: Any, lazy_commands: Mapping[str, tuple[str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.lazy_commands)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.lazy_commands:
            return None
        module, attr = self.lazy_commands[name][0].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.lazy_commands[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def verbosity(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command ``-q/--quiet`` and ``-v/--verbose`` and configure logging and progress bars
    (``ucofia.logs``) from them before the command runs."""

    @functools.wraps(func)
    def wrapper(*args: Any, quiet: bool, verbose: int, **kwargs: Any) -> Any:
        if quiet and verbose:
            raise click.UsageError("-q/--quiet and -v/--verbose contradict each other; give one")
        logs.configure(logs.QUIET if quiet else min(verbose, logs.VERBOSE))
        return func(*args, **kwargs)

    wrapper = click.option("-v", "--verbose", count=True, help=VERBOSE_HELP)(wrapper)
    return click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)(wrapper)
