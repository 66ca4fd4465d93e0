"""`python -m bench.scale`: 300 jobs due in the same minute on two workers (concurrency 2 each).

Every job is triggered at once, as beat does when 300 cron schedules fall due together, and a
tenth of them twice (a second beat, an operator's `backupy run`): the overlap rule must turn
each second trigger into a recorded `skipped` run. Prints runs per minute and the p50/p95 time
from "due" to "final state", beside the same runs executed directly in one process.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import Figure, median, percentile, print_table
from bench.fleet import Fleet, direct_run
from config.jobs import Config
from tasks.runs import FINAL_STATES
from workers.processes import wait_for
from workers.trigger import trigger_run

JOBS = 300
TWICE_EVERY = 10  # every tenth job is triggered twice: overlap must make one of them skipped
DRAIN_TIMEOUT_SECONDS = 600.0


def job_spec(job_id: str, db: Path, queue: str) -> dict[str, Any]:
    return {
        "id": job_id,
        "schedule": "* * * * *",
        "queue": queue,
        "target": {"type": "sqlite", "path": str(db)},
        "timeout": "5m",
        "pre_hooks": [{"command": "true"}],
        "post_hooks": [{"command": "true"}],
    }


class ScaleFleet(Fleet):
    """Triggers everything at once and waits for the queue to drain."""

    def trigger_all(self) -> tuple[list[str], float]:
        """Everything due at once; returns the run ids and when they were due."""
        due = time.time()
        ids = []
        for index, job in enumerate(self.cfg.jobs):
            ids.append(trigger_run(self.app, self.cfg, job.id, trigger="test"))
            if index % TWICE_EVERY == 0:
                ids.append(trigger_run(self.app, self.cfg, job.id, trigger="test"))
        return ids, due

    def drain(self, run_ids: list[str]) -> list[dict[str, Any]]:
        def all_final() -> list[dict[str, Any]] | None:
            runs = self.store.get_many(run_ids)
            if all(run and run.get("status") in FINAL_STATES for run in runs):
                return [run for run in runs if run]
            return None

        return wait_for(all_final, DRAIN_TIMEOUT_SECONDS, "every run to end", interval=0.2)


class ScaleRuleBroken(AssertionError):
    """A run lost, failed or duplicated, or an overlap not turned into a skipped run."""


def check(runs: list[dict[str, Any]], jobs: int) -> Counter[str]:
    """Every run final, none lost, one success per job, each second trigger skipped."""
    statuses = Counter(run["status"] for run in runs)
    per_job = Counter((run["job"], run["status"]) for run in runs)
    twice = {f"job-{i:03d}" for i in range(0, jobs, TWICE_EVERY)}
    problems = [
        job
        for job in (f"job-{i:03d}" for i in range(jobs))
        if per_job[(job, "success")] + per_job[(job, "skipped")] != (2 if job in twice else 1)
        or per_job[(job, "success")] < 1
    ]
    if statuses["lost"] or statuses["failed"] or problems:
        raise ScaleRuleBroken(f"scale run broke its rules: {dict(statuses)}; jobs: {problems[:10]}")
    return statuses


def direct_seconds_per_run(cfg: Config) -> float:
    """The same work (a `true` pre-hook, the dump, a `true` post-hook) with no orchestration."""
    return median([direct_run(cfg, cfg.jobs[0].id) for _ in range(20)])


def run(jobs: int) -> dict[str, Any]:
    redis_url = os.environ.get("BACKUPY_REDIS_URL", "redis://127.0.0.1:6379/0")
    with tempfile.TemporaryDirectory(prefix="backupy-scale-") as tmp:
        fleet = ScaleFleet(Path(tmp), redis_url, jobs, job_spec, rows=200, name="scale")
        try:
            direct = direct_seconds_per_run(fleet.cfg)
            fleet.start_workers(count=2, concurrency=2)
            ids, due = fleet.trigger_all()
            runs = fleet.drain(ids)
            drained = time.time() - due
        finally:
            fleet.stop()
    statuses = check(runs, jobs)
    latencies = [run["finished_at"] - due for run in runs if run["status"] == "success"]
    return {
        "statuses": statuses,
        "drain_seconds": drained,
        "runs_per_minute": statuses["success"] / drained * 60,
        "p50": percentile(latencies, 0.5),
        "p95": percentile(latencies, 0.95),
        "direct_per_minute": 60 / direct * 4,  # four processes' worth of direct execution
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=JOBS)
    args = parser.parse_args()
    result = run(args.jobs)
    print(f"statuses: {dict(result['statuses'])}; drained in {result['drain_seconds']:.1f}s")
    figures = [
        Figure(
            "successful runs per minute (4 processes)", result["runs_per_minute"],
            result["direct_per_minute"], "/m", "reference: direct x4", True,
        ),
        Figure("due -> final, p50 (s)", result["p50"], None, "s", "-", True),
        Figure("due -> final, p95 (s)", result["p95"], None, "s", "-", True),
    ]  # fmt: skip
    print_table(f"bench.scale: {args.jobs} jobs due at once, 2 workers x 2 processes", figures)


if __name__ == "__main__":
    main()
