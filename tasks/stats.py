"""Per-job counters in ``stats:{job_id}``: what the Prometheus exporter reads.

They live in Redis, not in any process, so they survive restarts of workers and the exporter and
say the same thing whichever host ran the run. They are written once per run, by whoever
finished it (finalize or the watchdog), which the run store's first-writer-wins finish ensures.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import redis

from tasks.outcome import EX_TEMPFAIL
from tasks.redis_keys import Keys

HOOK_FAILURE_STATES = frozenset(
    {"failed", "timed_out", "budget_exceeded", "interrupted", "refused"}
)


def record_finished_run(
    client: redis.Redis,
    prefix: str,
    job_id: str,
    status: str,
    run: Mapping[str, Any],
    *,
    budget_exhausted: bool = False,
) -> None:
    keys = Keys(prefix)
    key = keys.stats(job_id)
    now = time.time()
    pipe = client.pipeline(transaction=True)
    pipe.sadd(keys.stats_index(), job_id)
    pipe.hincrby(key, f"runs_total:{status}", 1)
    started = run.get("started_at") or run.get("created_at")
    if started:
        pipe.hset(key, "last_run_duration_seconds", round(now - float(started), 3))
    if status == "success":
        pipe.hset(key, "last_success_timestamp_seconds", now)
        artifact = run.get("artifact") or {}
        if artifact.get("stored_bytes") is not None:
            pipe.hset(key, "last_backup_size_bytes", artifact["stored_bytes"])
    for name, result in (run.get("steps") or {}).items():
        phase = name.split(".", 1)[0]
        if phase == "pre" and result.get("exit_code") == EX_TEMPFAIL:
            continue  # "nothing to do now": the run is skipped, the hook did not fail
        if phase in ("pre", "post") and result.get("state") in HOOK_FAILURE_STATES:
            pipe.hincrby(key, f"hook_failures:{phase}:{result['state']}", 1)
    if budget_exhausted:
        pipe.hincrby(key, "hook_budget_exhausted", 1)
    pipe.execute()
