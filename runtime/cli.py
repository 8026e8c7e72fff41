"""``ucofia-run``: index videos, search them with text, evaluate retrieval, serve search -- without
torch. A thin click group; each command lives in ``runtime.commands`` and is imported only when
it runs, so ``ucofia-run --help`` stays fast and the service's dependencies load only for serve.
"""
from __future__ import annotations

import click

from runtime.commands.common import EXIT_CODES_HELP
from ucofia.cli_support import LazyGroup

# command name -> ("module:attribute", one-line help shown by `ucofia-run --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "index": ("runtime.commands.index:index", "Encode videos into a gallery index (resumable)."),
    "search": ("runtime.commands.search:search", "Top-k videos for text queries (JSONL or CSV)."),
    "evaluate": ("runtime.commands.evaluate:evaluate", "R@1/5/10, median and mean rank on annotated captions."),
    "serve": ("runtime.commands.serve:serve", "HTTP search service and search page (needs ucofia[serve])."),
    "remove": ("runtime.commands.updates:remove", "Remove videos from an index (atomic)."),
    "compact": ("runtime.commands.updates:compact", "Reclaim removed rows and coalesce small shards."),
    "merge": ("runtime.commands.updates:merge", "Merge indexes of one bundle into a new index."),
    "thumbnails": ("runtime.commands.thumbnails:thumbnails", "Make the missing thumbnails of an index."),
    "api-key": ("runtime.commands.api_key:api_key", "Create, list and revoke API keys of the service."),
    "doctor": ("runtime.commands.doctor:doctor", "Versions, backends and libraries here: paste it into bug reports."),
}


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, epilog=EXIT_CODES_HELP,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="ucofia")
def main() -> None:
    """ucofia-run: serve an exported UCoFiA bundle for text-to-video search (no torch needed).

    \b
    1. ucofia-run index    -> encode videos into an index directory (resumable)
    2. ucofia-run search   -> top-k videos for text queries (JSONL or CSV)
    3. ucofia-run evaluate -> R@1/5/10, median and mean rank on annotated captions
    4. ucofia-run serve    -> HTTP search service and search page (pip install 'ucofia[serve]')
    Updates: ucofia-run remove / compact / merge (atomic; a killed update leaves the index as before
    or after it). `ucofia-run doctor` reports what is installed and what runs here (paste it into
    bug reports). Every command takes -q (warnings only) and -v (debug).
    """


if __name__ == "__main__":
    main()
