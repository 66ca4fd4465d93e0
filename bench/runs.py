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
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Figure, median, percentile, print_table
from bench.fleet import Fleet, direct_run
from workers.processes import wait_for
from workers.trigger import trigger_run

HOOKS_PER_PHASE = 4
# pre-hooks + dump + post-hooks + finalize (+ start_run, which the direct path has no twin of)
STEPS_PER_RUN = 2 * HOOKS_PER_PHASE + 3
ORCHESTRATION_TARGET_MS = 25.0
RUNS_PER_MINUTE_TARGET = 240.0


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


class Bench(Fleet):
    """The fleet of bench.runs: one worker process pair, latency and throughput."""

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-runs", type=int, default=20)
    parser.add_argument("--queued-runs", type=int, default=200)
    args = parser.parse_args()
    redis_url = os.environ.get("BACKUPY_REDIS_URL", "redis://127.0.0.1:6379/0")
    with tempfile.TemporaryDirectory(prefix="backupy-bench-") as tmp:
        jobs = max(args.queued_runs, 1)
        bench = Bench(Path(tmp), redis_url, jobs, job_spec, rows=1000, name="bench")
        direct = [direct_run(bench.cfg, "job-000") for _ in range(args.latency_runs)]
        bench.start_workers(count=1, concurrency=2)
        try:
            bench.latency("job-000")  # warm the pool processes
            e2e = [bench.latency("job-000") for _ in range(args.latency_runs)]
            per_minute = bench.throughput(args.queued_runs)
        finally:
            bench.stop()
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
