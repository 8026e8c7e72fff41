"""Run a click command line in this process and get what a subprocess would give: exit code, stdout
and stderr (kept apart). ``runtime_helpers.run_cli`` is this for ``ucofia-run``."""
from __future__ import annotations

import traceback
from collections.abc import Sequence
from dataclasses import dataclass

import click


@dataclass
class CliResult:
    """What a finished command line returned: the fields of ``subprocess.CompletedProcess`` tests read."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def invoke(main: click.Command, args: Sequence[str], prog_name: str) -> CliResult:
    """Run ``main`` with ``args`` through click's CliRunner (stdout and stderr apart). An exception
    that escapes the command is appended to stderr as a traceback, as an uncaught exception prints
    it, so ``"Traceback" not in result.stderr`` still means what it says. Logging and progress bars a
    command configures are reset after each test (tests/conftest.py)."""
    from click.testing import CliRunner

    result = CliRunner().invoke(main, list(args), prog_name=prog_name)
    stderr = result.stderr
    if result.exc_info is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    return CliResult([prog_name, *args], result.exit_code, result.stdout, stderr)
