"""`backupy restore RUN --to URL|PATH [-i KEYFILE] [--force]`.

Every error is one line on stderr (``backupy: …``), never a traceback.
"""

from __future__ import annotations

import click

from tasks.restore import EXIT_FAILED, RestoreError, restore_run
from workers.cli_common import _load_or_exit, config_option, connected_store, fail


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option(
    "--to",
    "to",
    required=True,
    metavar="URL|PATH",
    help="postgresql://, mysql://, mariadb://, mongodb:// URL, or a new file path.",
)
@click.option(
    "-i",
    "--identity",
    "identity",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="KEYFILE",
    help="age identity file; required when the artifact is encrypted.",
)
@click.option(
    "--force", is_flag=True, help="Replace an existing dump FILE (never an SQLite database)."
)
@config_option
def restore(
    run_id: str, to: str, identity: str | None, force: bool, config_file: str | None
) -> None:
    """Verify, decrypt, decompress and load the artifact of RUN into URL or PATH.

    The stored bytes are checked against the manifest's SHA-256 before anything is loaded.
    A URL loads into that database through its driver. A PATH gets a new SQLite database for
    an SQLite run (an existing file is never replaced) or, for any other database, the plain
    dump (a pg_dump custom-format file, a Redis .rdb, ...). Files appear only when complete.

    \b
    Exit status:
      0  restored
      1  the restore failed: checksum mismatch, decryption, decompression, storage or load
         error (nothing half-written is kept)
      2  bad input, nothing was loaded: unknown run, bad key file, existing target, bad URL,
         no driver for the target, bad config, Redis unreachable
    """
    cfg = _load_or_exit(config_file, one_line=True)
    store = connected_store()
    try:
        result = restore_run(
            run_id, to, store=store, config=cfg, identity_path=identity, force=force
        )
    except RestoreError as exc:
        fail(str(exc), exc.exit_code)
    except Exception as exc:  # an operator reads this: one line, and exit 1
        fail(f"restore failed: {type(exc).__name__}: {exc}", EXIT_FAILED)
    click.echo(
        f"restored run {result.run_id} of {result.job} ({result.driver}, "
        f"{result.raw_bytes} bytes, sha256 {result.sha256[:12]} verified) into {result.target}"
    )


if __name__ == "__main__":  # pragma: no cover
    restore()
