"""What the command lines print: ucofia.logs (-q / -v), ucofia.progress (bars) and the shared
click pieces of ucofia.cli_support (the lazy group, the verbosity flags)."""
from __future__ import annotations

import logging

import click
import pytest
from click.testing import CliRunner

from ucofia import logs, progress
from ucofia.cli_support import LazyGroup, verbosity

logger = logging.getLogger("runtime.console_test")


@pytest.fixture(autouse=True)
def _reset_console():
    yield
    logs.configure(logs.NORMAL)
    for name in logs.PACKAGES:
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).setLevel(logging.NOTSET)
    progress.set_enabled(False)


@click.command()
@verbosity
def talk() -> None:
    logger.debug("a debug detail")
    logger.info("an ordinary note")
    logger.warning("something to fix")
    with progress.progress_bar(3, "working", "step") as bar:
        bar(3)
    click.echo("bars shown" if progress.enabled() else "bars hidden")


def test_default_prints_notes_and_warnings_with_prefix_and_bars():
    result = CliRunner().invoke(talk, [])
    assert result.exit_code == 0, result.output
    assert "an ordinary note" in result.stderr and "warning: something to fix" in result.stderr
    assert "a debug detail" not in result.stderr
    assert "bars shown" in result.stdout and "working" in result.stderr  # the bar went to stderr


def test_quiet_keeps_only_warnings_and_hides_bars():
    result = CliRunner().invoke(talk, ["-q"])
    assert result.exit_code == 0, result.output
    assert "an ordinary note" not in result.stderr and "warning: something to fix" in result.stderr
    assert "bars hidden" in result.stdout and "working" not in result.stderr


def test_verbose_adds_debug_with_the_logger_name():
    result = CliRunner().invoke(talk, ["-v"])
    assert result.exit_code == 0, result.output
    assert "[runtime.console_test] a debug detail" in result.stderr
    assert "[runtime.console_test] warning: something to fix" in result.stderr


def test_quiet_and_verbose_together_is_a_usage_error():
    result = CliRunner().invoke(talk, ["-q", "-v"])
    assert result.exit_code == 2 and "contradict" in result.output


def test_configure_twice_leaves_one_handler():
    logs.configure(logs.NORMAL)
    logs.configure(logs.QUIET)
    handlers = logging.getLogger("runtime").handlers
    assert len(handlers) == 1 and logging.getLogger("runtime").level == logging.WARNING
    logs.configure(logs.NORMAL, level="DEBUG")
    assert logging.getLogger("export").level == logging.DEBUG


def test_a_hidden_bar_still_counts():
    progress.set_enabled(False)
    with progress.progress_bar(10, "x", initial=2) as bar:
        bar(3)
        bar.advance_to(7, 10)
        bar.advance_to(6, 10)  # never backwards
        assert not bar.visible and bar.done == 7


def test_a_shown_bar_counts_and_closes(capsys):
    progress.set_enabled(True)
    with progress.progress_bar(4, "loading", "file") as bar:
        bar.advance_to(4, 4)
        bar.postfix(loss="0.1")
        assert bar.visible and bar.done == 4
    err = capsys.readouterr().err
    assert "loading" in err and "4/4" in err


def test_lazy_group_imports_a_command_only_when_asked(monkeypatch):
    imported = []
    real = __import__("importlib").import_module

    def spy(name, *args):
        imported.append(name)
        return real(name, *args)

    monkeypatch.setattr("importlib.import_module", spy)
    group = LazyGroup("tool", lazy_commands={"talk": (f"{__name__}:talk", "Say things.")})
    listing = CliRunner().invoke(group, ["--help"])
    assert listing.exit_code == 0 and "talk" in listing.output and "Say things." in listing.output
    assert imported == []  # --help lists commands without importing them
    assert group.get_command(None, "nothing") is None
    assert CliRunner().invoke(group, ["talk", "-q"]).exit_code == 0
    assert imported == [__name__]
