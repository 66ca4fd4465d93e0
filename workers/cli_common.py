"""What every `backupy` command shares: the config option, loading it, one-line errors.

Its own module so the command modules import it, and `workers.cli` imports them: no cycle, in
whatever order the modules are first imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn, TypeVar

import click
import redis

from config.jobs import Config, ConfigError, config_path, load_config
from config.limits import LimitError
from config.settings import redact_url
from tasks import context
from tasks.runs import RunStore

# Exit status for a config (or operator override) that cannot be used: the same as click's own
# usage errors, since both mean "the input is wrong, nothing ran".
EXIT_CONFIG = 2

# How much of a digest the summary shows: enough to tell two configs apart by eye.
SHORT_DIGEST = 12

F = TypeVar("F", bound=Callable[..., object])


def config_option(func: F) -> F:
    """``-c/--config FILE``; without it, ``$BACKUPY_CONFIG`` or ``config/jobs.yaml``."""
    return click.option(
        "-c",
        "--config",
        "config_file",
        default=None,
        metavar="FILE",
        help="Job config file [default: $BACKUPY_CONFIG or config/jobs.yaml].",
    )(func)


def _exit_with(lines: list[str]) -> NoReturn:
    for line in lines:
        click.echo(line, err=True)
    raise SystemExit(EXIT_CONFIG)


def _load_or_exit(path: str | None, *, one_line: bool = False) -> Config:
    """The validated config, or exit 2 listing every violation on stderr (no traceback).

    ``one_line``: the commands that only need a config (``jobs``, ``run``) say what is wrong in
    one line, the first violations and their count; ``validate`` lists them all.
    """
    source = path if path is not None else config_path()
    try:
        return load_config(source)
    except ConfigError as exc:
        if one_line:
            _exit_with([_violations_line(str(source), exc.violations)])
        _exit_with([f"{source}: {len(exc.violations)} violation(s)", *exc.violations])
    except LimitError as exc:
        _exit_with([f"backupy: operator limit override refused: {exc}"])


def _violations_line(source: str, violations: list[str], shown: int = 3) -> str:
    """``backupy: FILE: N violation(s): first; second; third (+M more: backupy validate)``."""
    parts = [violation.removeprefix(f"{source}: ") for violation in violations[:shown]]
    more = len(violations) - shown
    tail = f" (+{more} more: backupy validate -c {source})" if more > 0 else ""
    return f"backupy: {source}: {len(violations)} violation(s): {'; '.join(parts)}{tail}"


def fail(message: str, code: int = EXIT_CONFIG) -> NoReturn:
    """One line on stderr, ``backupy: …``, and the exit code (2: bad input, nothing done)."""
    click.echo(f"backupy: {' '.join(str(message).split())}", err=True)
    raise SystemExit(code)


def connected_store() -> RunStore:
    """The run store, or exit 2 saying which Redis (credentials masked) could not be reached."""
    store = context.run_store()
    try:
        store.client.ping()
    except redis.RedisError as exc:
        url = redact_url(context.settings().redis_url)
        fail(f"cannot reach Redis at {url}: {type(exc).__name__}")
    return store
