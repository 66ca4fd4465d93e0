"""The ``backupy`` command line (DESIGN.md "CLI").

``main`` is the click group every subcommand hangs off; :func:`_load_or_exit` and
:data:`config_option` are shared so that every command reads and reports the config the same way:
exit 2 with every violation on stderr, never a traceback, because an operator reads this output,
not a developer.
"""

from __future__ import annotations

import click

from config.jobs import Config, Job, format_duration
from workers.cli_common import EXIT_CONFIG, SHORT_DIGEST, _load_or_exit, config_option

__all__ = ["EXIT_CONFIG", "_load_or_exit", "config_option", "main"]


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
