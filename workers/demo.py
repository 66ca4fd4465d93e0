"""`backupy demo`: the whole loop on this machine, then everything it started is stopped.

An embedded Redis (unless ``BACKUPY_REDIS_URL`` is set), a prefork worker and beat; an example
SQLite database and age key; one run of a job with pre- and post-hooks through the real broker;
the run shown as `backupy show` shows it; the artifact decrypted and checked against the source.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import click
import redis
import yaml
from rich.console import Console

from config.jobs import load_config
from config.settings import load_settings
from tasks.artifacts import decrypt_file
from tasks.keys import generate_identity
from tasks.runs import RunStore
from workers.app import create_app
from workers.embedded_redis import EmbeddedRedis
from workers.processes import ProcessHandle, celery_argv, worker_argv
from workers.trigger import trigger_run

DEMO_JOB = "demo-sqlite"
DEMO_ROWS = 2000
WORKER_READY_SECONDS = 60.0


def make_database(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, total REAL)")
        db.executemany(
            "INSERT INTO orders (customer, total) VALUES (?, ?)",
            [(f"customer-{i % 97} ✓", i * 1.25) for i in range(DEMO_ROWS)],
        )


def table_rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute("SELECT * FROM orders ORDER BY id").fetchall()


def demo_config(work: Path, recipient: str, queue: str) -> dict[str, Any]:
    return {
        "storage": {"type": "local", "path": str(work / "backups")},
        "encryption": {"recipients": [recipient]},
        "jobs": [
            {
                "id": DEMO_JOB,
                "schedule": "0 3 * * *",
                "queue": queue,
                "target": {"type": "sqlite", "path": str(work / "app.db")},
                "timeout": "5m",
                "hooks_budget": "1m",
                "pre_hooks": [
                    {"command": "echo checkpoint: $BACKUPY_JOB", "timeout": "10s"},
                    {"command": "echo quiesce && sleep 0.2", "timeout": "10s"},
                ],
                "post_hooks": [
                    {"command": 'echo "undo: run ended $BACKUPY_STATUS"', "timeout": "10s"},
                    {"command": 'echo "notify: $BACKUPY_ARTIFACT_SIZE bytes"', "when": "success"},
                ],
            }
        ],
    }


@contextmanager
def redis_for_demo(console: Console) -> Iterator[str]:
    given = os.environ.get("BACKUPY_REDIS_URL")
    if given:
        yield given
        return
    server = EmbeddedRedis().start()
    console.print(f"[dim]embedded Redis on 127.0.0.1:{server.port}[/dim]")
    try:
        yield server.url
    finally:
        server.stop()


def run_demo(console: Console, keep: bool) -> bool:
    work = Path(tempfile.mkdtemp(prefix="backupy-demo-"))
    tag = uuid.uuid4().hex[:8]
    queue, control = f"demo-{tag}", f"demo-control-{tag}"
    with ExitStack() as stack:
        if not keep:
            stack.callback(shutil.rmtree, work, True)
        redis_url = stack.enter_context(redis_for_demo(console))
        make_database(work / "app.db")
        recipient = generate_identity(work / "key.txt")
        config_path = work / "jobs.yaml"
        config_path.write_text(yaml.safe_dump(demo_config(work, recipient, queue)))
        env = {
            **os.environ,
            "BACKUPY_REDIS_URL": redis_url,
            "BACKUPY_CONFIG": str(config_path),
            "BACKUPY_PREFIX": f"backupy-demo:{tag}:",
            "BACKUPY_CONTROL_QUEUE": control,
            "PYTHONUNBUFFERED": "1",
        }
        worker = ProcessHandle(
            worker_argv([queue, control], f"demo-{tag}@%h"), env, work / "worker.log"
        ).start()
        stack.callback(worker.stop)
        beat = ProcessHandle(
            celery_argv("beat", "-l", "INFO", "-s", str(work / "beat-schedule")),
            env,
            work / "beat.log",
        ).start()
        stack.callback(beat.stop)
        console.print("[dim]waiting for the worker…[/dim]")
        worker.wait_log("ready.", WORKER_READY_SECONDS)

        settings = load_settings(env)
        app = create_app(settings)
        stack.callback(app.close)
        run_id = trigger_run(app, load_config(config_path), DEMO_JOB, trigger="demo")
        console.print(f"run [bold]{run_id}[/bold] of {DEMO_JOB} sent to the worker")
        from workers.cli_runs import follow

        store = RunStore(redis.Redis.from_url(redis_url), settings.prefix)
        run = follow(store, run_id, console)  # leaves the final table on screen
        if run.get("status") != "success":
            console.print(f"[red]the run ended {run.get('status')}[/red]: {run.get('reason')}")
            console.print(worker.log()[-4000:])
            return False
        restored = work / "restored.db"
        decrypt_file(work / "backups" / run["artifact"]["key"], restored, work / "key.txt")
        same = table_rows(restored) == table_rows(work / "app.db")
        verdict = "[green]equal to the source[/green]" if same else "[red]DIFFERENT[/red]"
        console.print(f"decrypted with the identity: {DEMO_ROWS} rows, {verdict}")
        if keep:
            console.print(f"kept {work}")
        return same


@click.command()
@click.option("--keep", is_flag=True, help="Keep the demo's folder (database, key, artifacts).")
def demo(keep: bool) -> None:
    """The whole loop on an embedded Redis: worker, beat, a run with hooks, restore check."""
    console = Console()
    began = time.monotonic()
    ok = run_demo(console, keep)
    console.print(f"demo {'passed' if ok else 'FAILED'} in {time.monotonic() - began:.1f}s")
    raise SystemExit(0 if ok else 1)
