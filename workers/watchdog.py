"""The watchdog: a beat-driven task that ends runs past their deadline as ``lost``.

A run whose chain died with its worker and was never redelivered, or whose finalize never came,
would otherwise stay ``running`` forever and hold its job lock until the TTL. The watchdog frees
the lock as soon as the deadline passes and counts the run, once (first writer wins).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery import shared_task

from tasks import context
from tasks.finalize_task import sweep_dump_leftovers
from tasks.stats import record_finished_run

log = logging.getLogger("backupy.watchdog")


@shared_task(name="backupy.watchdog")
def watchdog() -> dict[str, Any]:
    return {"lost": mark_overdue_runs_lost()}


def mark_overdue_runs_lost(now: float | None = None) -> list[str]:
    store, lock = context.run_store(), context.job_lock()
    lost: list[str] = []
    for run_id in store.overdue(now):
        run = store.get(run_id)
        if run is None:
            store.client.zrem(store.keys.active(), run_id)
            continue
        deadline = datetime.fromtimestamp(float(run["deadline"]), UTC).isoformat()
        reason = f"no final state by its deadline {deadline}: its worker or chain was lost"
        if store.finish(run_id, "lost", reason):
            lock.release(run["job"], run_id)
            sweep_dump_leftovers(run["job"], run_id, run)
            record_finished_run(store.client, store.keys.prefix, run["job"], "lost", run)
            log.warning("run %s of %s is lost: %s", run_id, run["job"], reason)
            lost.append(run_id)
    return lost
