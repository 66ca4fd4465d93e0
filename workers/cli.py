"""The ``backupy`` command line (DESIGN.md "CLI").

``main`` is the click group every subcommand hangs off; :func:`_load_or_exit` and
:data:`config_option` are shared so that every command reads and reports the config the same way:
exit 2 with every violation on stderr, never a traceback, because an operator reads this output,
not a developer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn, TypeVar

import click

from config.jobs import Config, ConfigError, Job, config_path, format_duration, load_config
from config.limits import LimitError

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


def _job_summary(config: Config, job: Job, width: int) -> str:
    """One line an operator can scan: when, where, what, how many hooks, which digest."""
    return "  ".join(
        [
            job.id.ljust(width),
            f'schedule "{job.schedule}"',
            f"queue {job.queue}",
            job.target.type,
            f"{len(job.pre_hooks)} pre + {len(job.post_hooks)} post hooks",
            f"budget {format_duration(job.hooks_budget)}",
            f"digest {config.job_digest(job.id)[:SHORT_DIGEST]}",
        ]
    )


@click.group()
def main() -> None:
    """Backupy: scheduled database backups on Celery workers, with pre/post hooks."""


@main.command()
@config_option
def validate(config_file: str | None) -> None:
    """Check the job config; exit 0, or 2 listing every violation with its path."""
    config = _load_or_exit(config_file)
    width = max((len(job.id) for job in config.jobs), default=0)
    for job in config.jobs:
        click.echo(_job_summary(config, job, width))
    click.echo(f"config digest {config.digest}")


if __name__ == "__main__":  # pragma: no cover
    main()


def _register_commands() -> None:
    """The other commands live in their own modules; they hang off the same group."""
    from workers import cli_keys, cli_ops, cli_restore, cli_runs, demo

    for command in (
        cli_runs.jobs,
        cli_runs.run,
        cli_runs.runs,
        cli_runs.show,
        cli_keys.keygen,
        cli_keys.decrypt,
        cli_restore.restore,
        cli_ops.exporter,
        cli_ops.prune,
        demo.demo,
    ):
        main.add_command(command)


_register_commands()
