"""start_run: takes the job lock, writes the run record, opens the budget, queues the canvas.

Triggered by beat (from the config's cron schedules) or by ``backupy run``. A trigger that finds
the job's lock taken records a ``skipped`` run saying which run holds it: overlaps are visible,
never silent.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from celery import shared_task
from celery.exceptions import Ignore

from config.jobs import Job
from tasks import context
from tasks.pipeline import build_run
from tasks.references import DIGEST_PATTERN, JOB_ID_PATTERN, Refused
from tasks.runs import is_run_id, new_run_id
from tasks.stats import record_finished_run
from tasks.step_runner import record_refusal
from workers.logs import log_context

log = logging.getLogger("backupy.start")

START_FIELDS = frozenset({"job_id", "run_id", "trigger", "digest"})
TRIGGERS = frozenset({"beat", "cli", "demo", "test"})


@shared_task(name="backupy.start_run", bind=True)
def start_run(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    try:
        job_id, run_id, trigger, digest = parse_start(args, kwargs)
    except Refused as refused:
        return record_refusal(kwargs, str(refused))
    run_id = run_id or new_run_id()
    with log_context(run_id=run_id, job_id=job_id, step="start"):
        return start(job_id, run_id, trigger, digest)


def parse_start(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[str, str | None, str, str | None]:
    if args or set(kwargs) - START_FIELDS or "job_id" not in kwargs:
        raise Refused("start_run takes job_id and optionally run_id, trigger, digest")
    job_id, run_id = kwargs["job_id"], kwargs.get("run_id")
    trigger, digest = kwargs.get("trigger", "cli"), kwargs.get("digest")
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
        raise Refused("job_id is not a job id")
    if run_id is not None and not is_run_id(run_id):
        raise Refused("run_id is not a run id")
    if trigger not in TRIGGERS:
        raise Refused("trigger is not one of " + ", ".join(sorted(TRIGGERS)))
    if digest is not None and not (isinstance(digest, str) and DIGEST_PATTERN.fullmatch(digest)):
        raise Refused("digest is not a config digest")
    return job_id, run_id, trigger, digest


def run_deadline(job: Job, now: float) -> float:
    """When the watchdog may call the run lost: its hook budget, its dump timeout, the hard-limit
    margins of every step, and the slack for queueing."""
    limits, settings = context.limits(), context.settings()
    steps = len(job.pre_hooks) + len(job.post_hooks) + 2
    return (
        now
        + job.hooks_budget
        + job.timeout
        + steps * limits.hard_limit_margin
        + (settings.deadline_slack)
    )


def start(job_id: str, run_id: str, trigger: str, digest: str | None) -> dict[str, Any]:
    store = context.run_store()
    if store.exists(run_id):
        raise Ignore()  # a redelivery of a start already done
    cfg = context.config()
    try:
        job = cfg.job(job_id)
    except KeyError:
        return record_refusal({"run_id": run_id}, f"job {job_id} is not in this host's config")
    ours = cfg.job_digest(job_id)
    now = time.time()
    deadline = run_deadline(job, now)
    base = {
        "status": "queued",
        "trigger": trigger,
        "digest": ours,
        "host": socket.gethostname(),
        "queue": job.queue,
        "deadline": deadline,
        "created_at": now,
        "steps_planned": planned_steps(job),
    }
    if digest is not None and digest != ours:
        reason = (
            f"config drift: host {socket.gethostname()} has digest {ours[:12]} for job "
            f"{job_id}, the trigger was built with {digest[:12]}"
        )
        return end_at_start(run_id, job_id, base, "failed", reason)
    lock = context.job_lock()
    if not lock.acquire(job_id, run_id, deadline - now):
        holder = lock.holder(job_id) or "another run"
        reason = f"overlap: run {holder} of job {job_id} still holds the job lock"
        return end_at_start(run_id, job_id, base, "skipped", reason)
    store.create(run_id, job_id, base)
    context.budget_meter().open(run_id, job.hooks_budget, deadline - now + 3600)
    try:
        build_run(job, run_id, ours, context.limits()).apply_async()
    except Exception as exc:
        log.exception("could not queue run %s", run_id)
        store.finish(run_id, "failed", f"could not queue the run: {type(exc).__name__}")
        lock.release(job_id, run_id)
        return {"run_id": run_id, "status": "failed"}
    log.info("run %s of %s queued (%s)", run_id, job_id, trigger)
    return {"run_id": run_id, "status": "queued"}


def end_at_start(
    run_id: str, job_id: str, base: dict[str, Any], status: str, reason: str
) -> dict[str, Any]:
    """A run that ends as it starts (overlap, drift): recorded and counted like any other."""
    store = context.run_store()
    record = {**base, "status": status, "reason": reason, "finished_at": time.time()}
    store.create(run_id, job_id, record)
    record_finished_run(store.client, store.keys.prefix, job_id, status, record)
    log.warning("run %s of %s %s: %s", run_id, job_id, status, reason)
    return {"run_id": run_id, "status": status, "reason": reason}


def planned_steps(job: Job) -> list[str]:
    """The steps in order, so `backupy show` can list the ones that have not run yet."""
    pre = [f"pre.{i}" for i in range(len(job.pre_hooks))]
    post = [f"post.{i}" for i in range(len(job.post_hooks))]
    return [*pre, "dump", *post]
