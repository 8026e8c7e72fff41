"""``ucofia`` command line: a thin click group; each command lives in ``ucofia.commands``.

Commands are imported only when used, so ``ucofia --help`` and torch-free commands stay fast.
"""
from __future__ import annotations

import importlib

import click

# command name -> ("module:function", one-line help shown by `ucofia --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("ucofia.commands.demo:demo", "Run the whole pipeline on the built-in demo benchmark."),
    "demo-data": ("ucofia.commands.demo_data:demo_data", "Write the built-in synthetic demo benchmark."),
    "export": ("ucofia.commands.export:export", "Export a checkpoint to a verified ONNX/TensorRT bundle."),
    "train": ("ucofia.commands.train:train", "Train UCoFiA (reference recipe, DDP via torchrun, exact resume)."),
    "parity": ("ucofia.commands.parity:parity", "Compare PyTorch and an exported bundle on a benchmark."),
}


class LazyGroup(click.Group):
    """A click group that imports a command's module only when that command is invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        target, _ = COMMANDS[name]
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ucofia")
def main() -> None:
    """ucofia: train, export and serve UCoFiA video-text retrieval models.

    Typical flow: `ucofia demo-data` -> `ucofia train` -> `ucofia export` ->
    `ucofia-run index/search/evaluate` -> `ucofia parity`.
    """


if __name__ == "__main__":
    main()
