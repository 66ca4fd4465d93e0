"""`backupy restore RUN --to URL|PATH [-i KEYFILE] [--force]`.

Every error is one line on stderr (``backupy: …``), never a traceback. This module does not
import ``workers.cli`` (which registers it), so ``from workers.cli_restore import restore``
works on its own and in any import order.
"""

from __future__ import annotations

from typing import NoReturn

import click
import redis

from config.jobs import Config, ConfigError, load_config
from config.limits import LimitError
from config.settings import redact_url
from tasks import context
from tasks.restore import EXIT_FAILED, EXIT_INPUT, RestoreError, restore_run
from tasks.runs import RunStore


def _fail(message: str, code: int = EXIT_INPUT) -> NoReturn:
    click.echo(f"backupy: {' '.join(str(message).split())}", err=True)
    raise SystemExit(code)


def _config(path: str | None) -> Config:
    try:
        return load_config(path, limits=context.limits()) if path else context.config()
    except ConfigError as exc:
        first = "; ".join(exc.violations[:3])
        more = f" (+{len(exc.violations) - 3} more)" if len(exc.violations) > 3 else ""
        _fail(f"the config has {len(exc.violations)} violation(s): {first}{more}")
    except LimitError as exc:
        _fail(f"operator limit override refused: {exc}")
    except OSError as exc:
        _fail(f"cannot read the config: {exc.strerror or exc}")


def _store() -> RunStore:
    store = context.run_store()
    try:
        store.client.ping()
    except redis.RedisError as exc:
        url = redact_url(context.settings().redis_url)
        _fail(f"cannot reach Redis at {url}: {type(exc).__name__}")
    return store


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
@click.option(
    "-c",
    "--config",
    "config_file",
    default=None,
    metavar="FILE",
    help="Job config file [default: $BACKUPY_CONFIG or config/jobs.yaml].",
)
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
    cfg = _config(config_file)
    store = _store()
    try:
        result = restore_run(
            run_id, to, store=store, config=cfg, identity_path=identity, force=force
        )
    except RestoreError as exc:
        _fail(str(exc), exc.exit_code)
    except Exception as exc:  # an operator reads this: one line, and exit 1
        _fail(f"restore failed: {type(exc).__name__}: {exc}", EXIT_FAILED)
    click.echo(
        f"restored run {result.run_id} of {result.job} ({result.driver}, "
        f"{result.raw_bytes} bytes, sha256 {result.sha256[:12]} verified) into {result.target}"
    )


if __name__ == "__main__":  # pragma: no cover
    restore()
