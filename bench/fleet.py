"""A throwaway deployment for the benchmarks: a SQLite database, a config of N jobs, workers.

Everything lives in a temporary folder and under a unique Redis prefix and queue names, so a
benchmark never touches anyone's keys or messages; ``stop`` removes what it wrote to Redis.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import yaml

from config.jobs import Config, load_config
from config.limits import Limits
from config.settings import load_settings
from tasks.dump_task import dump_to_storage
from tasks.hooks import run_hook
from tasks.keys import generate_identity
from tasks.runs import FINAL_STATES, RunStore, new_run_id
from workers.app import create_app
from workers.processes import ProcessHandle, wait_for, worker_argv

JobSpec = Callable[[str, Path, str], dict[str, Any]]


def make_database(path: Path, rows: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        db.executemany("INSERT INTO t (v) VALUES (?)", [(f"row {i}",) for i in range(rows)])


def direct_run(cfg: Config, job_id: str) -> float:
    """A job's hooks and dump with no Celery and no Redis: the reference for orchestration."""
    job, limits = cfg.job(job_id), Limits()
    began = time.perf_counter()
    for hook in job.pre_hooks:
        run_hook(hook.command, limits=limits)
    dump_to_storage(cfg, job, new_run_id(), time.time())
    for hook in job.post_hooks:
        run_hook(hook.command, limits=limits)
    return time.perf_counter() - began


class Fleet:
    """``jobs`` jobs made by ``spec(job_id, database, queue)``, the workers serving them, and
    the run store to watch."""

    def __init__(
        self, work: Path, redis_url: str, jobs: int, spec: JobSpec, *, rows: int, name: str
    ) -> None:
        self.work = work
        self.tag = uuid.uuid4().hex[:8]
        self.queue = f"{name}-{self.tag}"
        database = work / "app.db"
        make_database(database, rows)
        document = {
            "storage": {"type": "local", "path": str(work / "backups")},
            "encryption": {"recipients": [generate_identity(work / "key.txt")]},
            "jobs": [spec(f"job-{i:03d}", database, self.queue) for i in range(jobs)],
        }
        self.config_path = work / "jobs.yaml"
        self.config_path.write_text(yaml.safe_dump(document))
        self.cfg = load_config(self.config_path)
        self.control_queue = f"{name}-ctl-{self.tag}"
        self.env = {
            **os.environ,
            "BACKUPY_REDIS_URL": redis_url,
            "BACKUPY_CONFIG": str(self.config_path),
            "BACKUPY_PREFIX": f"backupy-{name}:{self.tag}:",
            "BACKUPY_CONTROL_QUEUE": self.control_queue,
        }
        settings = load_settings(self.env)
        self.app = create_app(settings)
        self.client = redis.Redis.from_url(redis_url)
        self.store = RunStore(self.client, settings.prefix)
        self.workers: list[ProcessHandle] = []

    def start_workers(self, count: int, concurrency: int) -> None:
        for n in range(count):
            node = f"w{n}-{self.tag}@%h"
            argv = worker_argv([self.queue, self.control_queue], node, concurrency)
            argv[argv.index("-l") + 1] = "WARNING"
            log = self.work / f"worker-{n}.log"
            self.workers.append(ProcessHandle(argv, self.env, log).start())
        wait_for(lambda: len(self.app.control.ping(timeout=0.5)) >= count, 60, "the workers")

    def final(self, run_id: str) -> dict[str, Any] | None:
        run = self.store.get(run_id)
        return run if run and run.get("status") in FINAL_STATES else None

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        keys = list(self.client.scan_iter(match=f"{self.env['BACKUPY_PREFIX']}*", count=1000))
        for start in range(0, len(keys), 500):
            self.client.delete(*keys[start : start + 500])
        self.app.close()
