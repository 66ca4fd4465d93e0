"""`backupy jobs | run | runs | show`: starting runs and reading the run store.

Every error an operator can cause (an unknown job or run, an unreachable Redis) is one line on
stderr and exit 2; `run --wait` exits 0 when the run ends `success` and 1 otherwise.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import click
from croniter import croniter
from rich.console import Console
from rich.live import Live
from rich.table import Table

from config.jobs import format_duration
from tasks.runs import FINAL_STATES, RunStore, is_run_id
from workers.cli_common import _load_or_exit, config_option, connected_store, fail
from workers.render import render_run, runs_table

# How often `run --wait` redraws; the dump's progress is written about once a second.
WAIT_REFRESH_SECONDS = 0.25
# How long `run --wait` waits for a worker to pick the run up before it says so.
PICKUP_TIMEOUT_SECONDS = 60.0


def find_run(store: RunStore, run_id: str) -> dict[str, Any]:
    if not is_run_id(run_id):
        fail(f"{run_id!r} is not a run id (like 20261203T031500Z-4f9c2a1b)")
    run = store.get(run_id)
    if run is None:
        fail(f"no run {run_id} in the run store")
    return run


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


@click.command()
@config_option
def jobs(config_file: str | None) -> None:
    """The jobs, their schedules (UTC) and next run times."""
    cfg = _load_or_exit(config_file, one_line=True)
    table = Table(show_header=True, header_style="bold")
    for column in ("job", "schedule", "next run (UTC)", "queue", "target", "hooks", "budget"):
        table.add_column(column)
    now = datetime.now(UTC)
    for job in cfg.jobs:
        upcoming = croniter(job.schedule, now).get_next(datetime)
        table.add_row(
            job.id,
            job.schedule,
            upcoming.strftime("%Y-%m-%d %H:%M"),
            job.queue,
            job.target.type,
            f"{len(job.pre_hooks)} pre, {len(job.post_hooks)} post",
            format_duration(job.hooks_budget),
        )
    Console().print(table)


@click.command()
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Follow the run live; exit 0 on success, 1 otherwise.")
@config_option
def run(job_id: str, wait: bool, config_file: str | None) -> None:
    """Start a run of JOB now (through the broker, like beat does)."""
    from workers.app import app
    from workers.trigger import trigger_run

    cfg = _load_or_exit(config_file, one_line=True)
    if job_id not in {job.id for job in cfg.jobs}:
        fail(f"no job {job_id!r} in the config (jobs: {', '.join(j.id for j in cfg.jobs)})")
    store = connected_store()
    run_id = trigger_run(app, cfg, job_id, trigger="cli")
    click.echo(f"run {run_id} of {job_id} sent to queue {cfg.job(job_id).queue}")
    if not wait:
        return
    final = follow(store, run_id)
    raise SystemExit(0 if final.get("status") == "success" else 1)


def follow(store: RunStore, run_id: str, console: Console | None = None) -> dict[str, Any]:
    """Redraw the run until it is final; returns the final record."""
    console = console or Console()
    picked_by = time.monotonic() + PICKUP_TIMEOUT_SECONDS
    run = store.get(run_id)
    while run is None:
        if time.monotonic() > picked_by:
            fail(f"no worker picked up run {run_id} within {PICKUP_TIMEOUT_SECONDS:g}s")
        time.sleep(WAIT_REFRESH_SECONDS)  # polling the run store for the worker's first write
        run = store.get(run_id)
    with Live(render_run(run), console=console, refresh_per_second=8) as live:
        while run.get("status") not in FINAL_STATES:
            time.sleep(WAIT_REFRESH_SECONDS)  # redraw interval
            run = store.get(run_id) or run
            live.update(render_run(run))
    if not console.is_terminal:
        console.line()  # the last frame ends without a newline when output is not a terminal
    return run


@click.command()
@click.argument("job_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-n", "--limit", default=20, show_default=True, help="How many runs.")
def runs(job_id: str | None, as_json: bool, limit: int) -> None:
    """Recent runs, newest first (of one job, or of all)."""
    found = connected_store().list_runs(job_id, limit)
    if as_json:
        print_json(found)
    else:
        Console().print(runs_table(found))


@click.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(run_id: str, as_json: bool) -> None:
    """One run: every step, exit codes, output tails, budget, artifact."""
    found = find_run(connected_store(), run_id)
    if as_json:
        print_json(found)
    else:
        Console().print(render_run(found))
