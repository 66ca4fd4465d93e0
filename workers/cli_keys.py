"""`backupy keygen` and `backupy decrypt`: key handling that needs no Redis and no worker.

Workers hold only recipients (public keys); the identity made here stays with whoever restores.
"""

from __future__ import annotations

import click

from tasks.artifacts import ArtifactError, decrypt_file
from tasks.keys import KeyFileError, generate_identity
from workers.cli_common import EXIT_CONFIG


@click.command()
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False))
def keygen(output: str) -> None:
    """Write a new age identity to KEYFILE (mode 0600) and print its recipient."""
    try:
        recipient = generate_identity(output)
    except KeyFileError as exc:
        click.echo(f"backupy: {exc}", err=True)
        raise SystemExit(EXIT_CONFIG) from None
    click.echo(f"# identity written to {output} (keep it away from the workers)", err=True)
    click.echo(recipient)


@click.command()
@click.argument("source", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False))
@click.option("-i", "--identity", "identity", required=True, type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
def decrypt(source: str, output: str, identity: str, force: bool) -> None:
    """Offline: decrypt (and decompress) an artifact into OUTPUT. No Redis needed."""
    try:
        info = decrypt_file(source, output, identity, overwrite=force)
    except (ArtifactError, KeyFileError, OSError) as exc:
        click.echo(f"backupy: {exc}", err=True)
        raise SystemExit(EXIT_CONFIG) from None
    click.echo(f"wrote {output} ({info.raw_bytes} bytes)")
