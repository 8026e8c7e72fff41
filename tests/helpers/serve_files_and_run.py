"""Serve a folder over HTTP on 127.0.0.1 (``url_server.FileServer``) while a command runs: for
commands that must run where the test process cannot serve them, e.g. inside the private network
namespace of ``ray_helpers.run_confined``.

    python serve_files_and_run.py FOLDER TEMPLATE LIST -- COMMAND...

writes TEMPLATE to LIST with ``{url}`` replaced by the server's address, runs COMMAND and exits
with its exit code (the server stops with it).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from url_server import FileServer


def main(argv: list[str]) -> int:
    folder, template, listing, dashes, *command = argv
    if dashes != "--" or not command:
        raise SystemExit(__doc__)
    with FileServer(Path(folder)) as server:
        Path(listing).write_text(Path(template).read_text().replace("{url}", server.url))
        return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
