"""What both command lines (``ucofia`` and ``ucofia-run``) share: a click group that imports a
command's module only when that command runs, and the ``-q`` / ``-v`` flags of every command."""
from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Callable, Mapping
from typing import Any

import click

from ucofia import logs

# The extra that brings PyTorch and what the model side needs (pyproject.toml's [train]), and the
# modules whose absence means it is not installed.
TRAIN_EXTRA = "train"
TRAIN_MODULES = ("torch", "torchvision", "open_clip", "safetensors", "yaml")
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


def missing_modules(modules: tuple[str, ...]) -> list[str]:
    """Those of ``modules`` that cannot be imported here (looked up, not imported)."""
    missing = []
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):  # a blocking import hook, or a broken half-installed package
            missing.append(name)
    return missing


def extra_install_hint(extra: str) -> str:
    """How to install ``extra`` from PyPI and from a checkout."""
    return f"pip install 'ucofia[{extra}]' (from a checkout: pip install -e '.[{extra}]')"


def needs_extra(extra: str, modules: tuple[str, ...]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make a command fail with one line naming the extra to install when one of ``modules`` is
    missing, before its body imports them (``--help`` keeps working: the check runs with the command).

    The base install (``pip install ucofia``) is the torch-free runtime; ``ucofia train``, ``export``,
    ``parity`` and ``demo`` need ``ucofia[train]``.
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            missing = missing_modules(modules)
            if missing:
                command = f"ucofia {click.get_current_context().info_name}"
                raise click.ClickException(
                    f"`{command}` needs the {extra!r} extra, which this install lacks (missing: "
                    f"{', '.join(missing)}); the base install is the torch-free runtime (ucofia-run). "
                    f"Install it with: {extra_install_hint(extra)}")
            return func(*args, **kwargs)

        return wrapper

    return decorate
