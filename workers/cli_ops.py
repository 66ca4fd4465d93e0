"""`backupy exporter` and `backupy prune`: operating a deployment.

* ``backupy exporter [--port 9808] [--addr 0.0.0.0] [-c FILE]`` serves Prometheus metrics read
  from the run store (workers/exporter.py) until SIGTERM or SIGINT. ``--port 0`` picks a free
  port; the first line on stdout says where it listens.
* ``backupy prune JOB [--dry-run] [-c FILE]`` applies the job's retention policy
  (tasks/retention.py) and prints what it keeps, deletes and failed to delete. Exit 0; 1 when a
  delete failed (it is recorded on the run and retried at the next prune) or the prune could not
  complete; 2 for bad input (unknown job, a job without a retention policy, a bad config,
  unreachable Redis), as one ``backupy: ...`` line on stderr.

"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
import redis

from workers.cli_common import _load_or_exit, config_option, connected_store, fail
from workers.exporter import DEFAULT_ADDR, DEFAULT_PORT

EXIT_PRUNE_FAILED = 1

F = TypeVar("F", bound=Callable[..., object])


# ---------------------------------------------------------------------------------------------
# exporter


@click.command()
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port of /metrics (0: any free port, printed at start).",
)
@click.option("--addr", default=DEFAULT_ADDR, show_default=True, help="Address to listen on.")
@config_option
def exporter(port: int, addr: str, config_file: str | None) -> None:
    """Serve Prometheus metrics read from the run store, until SIGTERM/SIGINT."""
    from tasks import context
    from workers.exporter import BackupyCollector, make_registry, run_until, serve
    from workers.logs import configure_logging

    configure_logging(logging.INFO)  # BACKUPY_LOG_FORMAT, with secrets masked
    cfg = _load_or_exit(config_file)
    store = connected_store()
    job_ids = [job.id for job in cfg.jobs]
    collector = BackupyCollector(store.client, context.settings().prefix, job_ids)
    registry = make_registry(collector)
    try:
        server = serve(registry, addr, port)
    except OSError as exc:
        fail(f"cannot listen on {addr}:{port}: {exc.strerror or exc}")
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    host, bound = server.server_address[:2]
    click.echo(
        f"backupy exporter: serving http://{host}:{bound}/metrics "
        f"({len(job_ids)} configured jobs, prefix {context.settings().prefix})"
    )
    run_until(server, stop)
    click.echo("backupy exporter: stopped")


# ---------------------------------------------------------------------------------------------
# prune


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "?"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@click.command()
@click.argument("job_id")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
@config_option
def prune(job_id: str, dry_run: bool, config_file: str | None) -> None:
    """Apply JOB's retention policy: delete the backups it does not keep."""
    from tasks.retention import PruneBusyError, apply_retention, has_rules
    from tasks.storage import StorageError, storage_from_config

    cfg = _load_or_exit(config_file)
    known = [job.id for job in cfg.jobs]
    if job_id not in known:
        fail(f"no job {job_id!r} in the config (jobs: {', '.join(known) or 'none'})")
    policy = cfg.job(job_id).retention
    if not has_rules(policy):
        fail(
            f"job {job_id!r} has no retention policy (set retention: keep_last / keep_daily / "
            "keep_weekly / keep_monthly in its config): nothing to prune"
        )
    try:
        storage = storage_from_config(cfg.storage)
    except StorageError as exc:
        fail(f"storage: {exc}")
    store = connected_store()
    try:
        report = apply_retention(store, storage, job_id, policy, dry_run=dry_run)
    except PruneBusyError as exc:
        fail(f"{exc}; nothing pruned, try again later", EXIT_PRUNE_FAILED)
    except redis.RedisError as exc:
        fail(f"the run store failed during the prune: {type(exc).__name__}", EXIT_PRUNE_FAILED)

    delete_word = "would delete" if dry_run else "delete"
    width = len(delete_word)
    for run_id in report.kept:
        why = ", ".join(report.reasons.get(run_id, []))
        click.echo(
            f"{'keep'.ljust(width)}  {run_id}  {_when(report.finished_at.get(run_id))}  {why}"
        )
    for run_id in report.deleted:
        keys = ", ".join(report.keys.get(run_id, []))
        stamp = _when(report.finished_at.get(run_id))
        click.echo(f"{delete_word}  {run_id}  {stamp}  {keys}")
    for run_id, error in report.failed.items():
        click.echo(f"{'FAILED'.ljust(width)}  {run_id}  {error}")
    click.echo(report.summary() + (" (dry run: nothing deleted)" if dry_run else ""))
    if report.failed:
        click.echo(
            f"backupy: {len(report.failed)} delete(s) failed; recorded on the runs, "
            "retried at the next prune",
            err=True,
        )
        raise SystemExit(EXIT_PRUNE_FAILED)
