"""``ucofia-run api-key create|list|revoke``: the key file of ``ucofia-run serve`` (``runtime.serve.auth``)."""
from __future__ import annotations

from pathlib import Path

import click

from runtime.commands.common import EXIT_CODES_HELP, user_errors


@click.group("api-key")
def api_key() -> None:
    """Create, list and revoke the API keys of `ucofia-run serve`.

    The key file stores only SHA-256 hashes of the keys; a key is shown once, when created. The
    file is private (mode 0600) and changed under a lock (KEYFILE.lock); a running server re-reads
    it within a second or two of a change.
    """

key_file = click.option("--file", "path", required=True, type=click.Path(dir_okay=False, path_type=Path),
                        help="The key file given to `ucofia-run serve --api-keys`.")

@api_key.command("create", epilog=EXIT_CODES_HELP)
@key_file
@click.option("--name", required=True, help="Who or what uses the key (unique in the file).")
@click.option("--scope", "scopes", multiple=True, default=("search",), show_default=True,
              type=click.Choice(["search", "admin"]), help="What the key may do (repeatable).")
@user_errors
def create(path: Path, name: str, scopes: tuple[str, ...]) -> None:
    """Add a key to the file (created when missing) and print it: it is not stored."""
    from runtime.serve.auth import create_key

    key = create_key(path, name, sorted(set(scopes)))
    click.echo(f"added key {name!r} ({', '.join(sorted(set(scopes)))}) to {path}; the key (shown only now):",
               err=True)
    click.echo(key)

@api_key.command("list", epilog=EXIT_CODES_HELP)
@key_file
@user_errors
def list_keys(path: Path) -> None:
    """List the keys' names and scopes (the keys themselves are not stored)."""
    import time

    from runtime.serve.auth import KeyRing

    for key in KeyRing.load(path).keys:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(key.created)) if key.created else "?"
        click.echo(f"{key.name}\t{','.join(sorted(key.scopes))}\t{created}")

@api_key.command("revoke", epilog=EXIT_CODES_HELP)
@key_file
@click.option("--name", required=True, help="The key to remove.")
@user_errors
def revoke(path: Path, name: str) -> None:
    """Remove a key (a running server drops it, and the links signed for it, within a second or two)."""
    from runtime.serve.auth import revoke_key

    revoke_key(path, name)
    click.echo(f"revoked {name!r} in {path}", err=True)
