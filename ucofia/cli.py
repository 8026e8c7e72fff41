"""``ucofia`` command line: a thin click group; each command lives in ``ucofia.commands``.

Commands are imported only when used, so ``ucofia --help`` and torch-free commands stay fast.
"""
from __future__ import annotations

import click

from ucofia.cli_support import LazyGroup

# command name -> ("module:function", one-line help shown by `ucofia --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("ucofia.commands.demo:demo", "Run the whole pipeline on the built-in demo benchmark."),
    "demo-data": ("ucofia.commands.demo_data:demo_data", "Write the built-in synthetic demo benchmark."),
    "export": ("ucofia.commands.export:export", "Export a checkpoint to a verified ONNX/TensorRT bundle."),
    "train": ("ucofia.commands.train:train", "Train UCoFiA (reference recipe, DDP via torchrun, exact resume)."),
    "parity": ("ucofia.commands.parity:parity", "Compare PyTorch and an exported bundle on a benchmark."),
}


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ucofia")
def main() -> None:
    """ucofia: train, export and serve UCoFiA video-text retrieval models.

    Typical flow: `ucofia demo-data` -> `ucofia train` -> `ucofia export` ->
    `ucofia-run index/search/evaluate` -> `ucofia parity`.
    """


if __name__ == "__main__":
    main()
