"""`python -m bench.runs`: what Celery orchestration costs a run, and how many runs a minute.

1. End-to-end latency (trigger → final state) of a run with 4 + 4 `true` hooks and a small
   SQLite dump, median and p95 over 20 runs, beside the same hooks and dump executed directly
   in one process. The difference per step is our orchestration: target ≤ 25 ms a step.
2. Runs per minute with 200 runs queued at once on two worker processes: target ≥ 240.

Redis: ``BACKUPY_REDIS_URL`` or the local 127.0.0.1:6379; everything else (worker, config,
storage, keys) is made in a temporary folder and removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis
import yaml

from bench.common import Figure, median, percentile, print_table
from config.jobs import Config, load_config
from config.limits import Limits
from config.settings import load_settings
from tasks.dump_task import dump_to_storage
from tasks.hooks import run_hook
from tasks.keys import generate_identity
from tasks.runs import FINAL_STATES, RunStore, new_run_id
from workers.app import create_app
from workers.processes import ProcessHandle, wait_for, worker_argv
from workers.trigger import trigger_run

HOOKS_PER_PHASE = 4
# pre-hooks + dump + post-hooks + finalize (+ start_run, which the direct path has no twin of)
STEPS_PER_RUN = 2 * HOOKS_PER_PHASE + 3
ORCHESTRATION_TARGET_MS = 25.0
RUNS_PER_MINUTE_TARGET = 240.0


def make_database(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        db.executemany("INSERT INTO t (v) VALUES (?)", [(f"row {i}",) for i in range(1000)])


def job_spec(job_id: str, db: Path, queue: str) -> dict[str, Any]:
    return {
        "id": job_id,
        "schedule": "0 3 * * *",
        "queue": queue,
        "target": {"type": "sqlite", "path": str(db)},
        "timeout": "5m",
        "pre_hooks": [{"command": "true"}] * HOOKS_PER_PHASE,
        "post_hooks": [{"command": "true"}] * HOOKS_PER_PHASE,
    }


def direct_run(cfg: Config, job_id: str) -> float:
    """The same work with no Celery, no Redis: the reference."""
    job, limits = cfg.job(job_id), Limits()
    began = time.perf_counter()
    for hook in job.pre_hooks:
        run_hook(hook.command, limits=limits)
    dump_to_storage(cfg, job, new_run_id(), time.time())
    for hook in job.post_hooks:
        run_hook(hook.command, limits=limits)
    return time.perf_counter() - began


class Bench:
    def __init__(self, work: Path, redis_url: str, jobs: int) -> None:
        self.work = work
        self.tag = uuid.uuid4().hex[:8]
        self.queue = f"bench-{self.tag}"
        db = work / "app.db"
        make_database(db)
        recipient = generate_identity(work / "key.txt")
        document = {
            "storage": {"type": "local", "path": str(work / "backups")},
            "encryption": {"recipients": [recipient]},
            "jobs": [job_spec(f"job-{i:03d}", db, self.queue) for i in range(jobs)],
        }
        self.config_path = work / "jobs.yaml"
        self.config_path.write_text(yaml.safe_dump(document))
        self.cfg = load_config(self.config_path)
        self.env = {
            **os.environ,
            "BACKUPY_REDIS_URL": redis_url,
            "BACKUPY_CONFIG": str(self.config_path),
            "BACKUPY_PREFIX": f"backupy-bench:{self.tag}:",
            "BACKUPY_CONTROL_QUEUE": f"bench-ctl-{self.tag}",
        }
        settings = load_settings(self.env)
        self.app = create_app(settings)
        self.client = redis.Redis.from_url(redis_url)
        self.store = RunStore(self.client, settings.prefix)

    def start_worker(self, concurrency: int) -> ProcessHandle:
        argv = worker_argv([self.queue, self.env["BACKUPY_CONTROL_QUEUE"]], f"b-{self.tag}@%h")
        argv[argv.index("-c") + 1] = str(concurrency)
        argv[argv.index("-l") + 1] = "WARNING"
        worker = ProcessHandle(argv, self.env, self.work / "worker.log").start()
        wait_for(lambda: self._worker_answers(), 60, "the worker to answer a ping")
        return worker

    def _worker_answers(self) -> bool:
        return bool(self.app.control.ping(timeout=0.5))

    def final(self, run_id: str) -> dict[str, Any] | None:
        run = self.store.get(run_id)
        return run if run and run.get("status") in FINAL_STATES else None

    def latency(self, job_id: str) -> float:
        began = time.perf_counter()
        run_id = trigger_run(self.app, self.cfg, job_id, trigger="test")
        run = wait_for(lambda: self.final(run_id), 60, f"run {run_id}", interval=0.002)
        elapsed = time.perf_counter() - began
        if run["status"] != "success":
            raise SystemExit(f"run {run_id} ended {run['status']}: {run.get('reason')}")
        return elapsed

    def throughput(self, runs: int) -> float:
        began = time.perf_counter()
        ids = [trigger_run(self.app, self.cfg, f"job-{i:03d}", trigger="test") for i in range(runs)]
        for run_id in ids:
            wait_for(lambda run_id=run_id: self.final(run_id), 600, f"run {run_id}", 0.05)
        elapsed = time.perf_counter() - began
        statuses = [self.store.get(run_id)["status"] for run_id in ids]
        bad = [s for s in statuses if s != "success"]
        if bad:
            raise SystemExit(f"{len(bad)} of {runs} runs did not succeed: {set(bad)}")
        return runs / elapsed * 60

    def cleanup(self) -> None:
        keys = list(self.client.scan_iter(match=f"{self.env['BACKUPY_PREFIX']}*", count=1000))
        for start in range(0, len(keys), 500):
            self.client.delete(*keys[start : start + 500])
        self.app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-runs", type=int, default=20)
    parser.add_argument("--queued-runs", type=int, default=200)
    args = parser.parse_args()
    redis_url = os.environ.get("BACKUPY_REDIS_URL", "redis://127.0.0.1:6379/0")
    with tempfile.TemporaryDirectory(prefix="backupy-bench-") as tmp:
        bench = Bench(Path(tmp), redis_url, max(args.queued_runs, 1))
        direct = [direct_run(bench.cfg, "job-000") for _ in range(args.latency_runs)]
        worker = bench.start_worker(concurrency=2)
        try:
            bench.latency("job-000")  # warm the pool processes
            e2e = [bench.latency("job-000") for _ in range(args.latency_runs)]
            per_minute = bench.throughput(args.queued_runs)
        finally:
            worker.stop()
            bench.cleanup()
    overhead_ms = (median(e2e) - median(direct)) / STEPS_PER_RUN * 1000
    figures = [
        Figure(
            "end-to-end latency, median (ms)", median(e2e) * 1000, median(direct) * 1000,
            "ms", "-", True,
        ),
        Figure(
            "end-to-end latency, p95 (ms)", percentile(e2e, 0.95) * 1000,
            percentile(direct, 0.95) * 1000, "ms", "-", True,
        ),
        Figure(
            f"orchestration per step ({STEPS_PER_RUN} steps, ms)", overhead_ms, None, "ms",
            f"<= {ORCHESTRATION_TARGET_MS:g} ms", overhead_ms <= ORCHESTRATION_TARGET_MS,
        ),
        Figure(
            f"runs per minute, {args.queued_runs} queued, 2 processes", per_minute, None, "/m",
            f">= {RUNS_PER_MINUTE_TARGET:g}", per_minute >= RUNS_PER_MINUTE_TARGET,
        ),
    ]  # fmt: skip
    title = f"bench.runs: {HOOKS_PER_PHASE}+{HOOKS_PER_PHASE} `true` hooks and a SQLite dump"
    print_table(title, figures)


if __name__ == "__main__":
    main()
