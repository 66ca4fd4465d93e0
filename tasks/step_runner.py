"""The frame every step task runs in: check the message, claim the step, record the result.

A step never raises for an expected failure (DESIGN.md, "Failure semantics"): it records a result
and returns it, so the chain goes on. It raises ``Ignore`` only for a duplicate delivery, which
must leave the chain untouched (a second return would count twice in a chord).
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
from celery.exceptions import Ignore

from config.jobs import Job
from tasks import context
from tasks.claims import Claim
from tasks.references import Refused, StepRef, parse_reference
from tasks.runs import FINAL_STATES, is_run_id
from workers.logs import log_context

log = logging.getLogger("backupy.steps")

# Refusals that name no known run go to a capped list: evidence for operators, bounded in size.
REFUSED_LIST_MAX = 1000
# How long a finished step keeps trying to record its result while Redis is away (a restart).
REDIS_RETRY_SECONDS = 60.0
REDIS_RETRY_PAUSE_SECONDS = 0.5
# A claim outlives its run's deadline by this much, so a very late redelivery still finds it.
CLAIM_TTL_MARGIN_SECONDS = 3600

StepBody = Callable[[StepRef, Job, dict[str, Any], Claim], dict[str, Any]]


def step_result(state: str, reason: str, **fields: Any) -> dict[str, Any]:
    """A result for a step that did not run a process (skipped, refused, interrupted…)."""
    return {
        "state": state,
        "reason": reason,
        "host": socket.gethostname(),
        "finished_at": time.time(),
        **fields,
    }


def record_refusal(kwargs: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """Record a message that was not acted on: in its run when it names one, else in a list."""
    result = step_result("refused", reason)
    store = context.run_store()
    run_id = kwargs.get("run_id")
    if is_run_id(run_id) and store.exists(run_id):
        number = store.client.hincrby(store.keys.run(run_id), "refused_count", 1)
        store.record_step(run_id, f"refused.{number}", result)
    else:
        key = store.keys.refused()
        store.client.lpush(key, json.dumps(result))
        store.client.ltrim(key, 0, REFUSED_LIST_MAX - 1)
    log.warning("refused a message: %s", reason)
    return result


def check_digest(ref: StepRef) -> None:
    """The message must come from a host whose config for this job is the same as ours."""
    cfg = context.config()
    try:
        ours = cfg.job_digest(ref.job_id)
    except KeyError:
        raise Refused(f"job {ref.job_id} is not in this host's config") from None
    if ours != ref.digest:
        node = worker_node()
        worker = f" (worker {node})" if node else ""
        raise Refused(
            f"config drift: host {socket.gethostname()}{worker} has digest {ours[:12]} for job "
            f"{ref.job_id}, the message was built with {ref.digest[:12]}"
        )


def worker_node() -> str:
    """The Celery node name running the current task: two workers on one host differ by it."""
    from celery import current_task

    return str(getattr(getattr(current_task, "request", None), "hostname", None) or "")


def run_step(
    args: tuple[Any, ...], kwargs: Mapping[str, Any], phases: tuple[str, ...], body: StepBody
) -> dict[str, Any]:
    """Parse, claim, run ``body`` and record what it returns under the step's name."""
    try:
        ref = parse_reference(args, kwargs, phases)
    except Refused as refused:
        return record_refusal(kwargs, str(refused))
    with log_context(run_id=ref.run_id, job_id=ref.job_id, step=ref.step):
        return _claim_and_run(ref, kwargs, body)


def _claim_and_run(ref: StepRef, kwargs: Mapping[str, Any], body: StepBody) -> dict[str, Any]:
    store = context.run_store()
    run = store.get(ref.run_id)
    if run is None:
        return record_refusal(kwargs, f"run {ref.run_id} is not in the run store")
    if run.get("job") != ref.job_id:
        return record_refusal(kwargs, f"run {ref.run_id} is not a run of job {ref.job_id}")
    if run.get("status") in FINAL_STATES:
        # A message still queued when the watchdog called the run lost: it must not dump now.
        log.warning("not running %s: run %s already ended %s", ref.step, ref.run_id, run["status"])
        return step_result("skipped", f"not run: the run already ended {run['status']}")
    try:
        # Before the claim: a drifted or forged message must not take the step from the real one.
        check_digest(ref)
    except Refused as refused:
        result = step_result("refused", str(refused))
        store.record_step(ref.run_id, ref.step, result)
        log.warning("refused %s of run %s: %s", ref.step, ref.run_id, refused)
        return result
    # The claim must outlive any redelivery, and the Redis transport redelivers a dead worker's
    # message only after its visibility timeout (6 h by default: later than most deadlines).
    remaining = float(run["deadline"]) - time.time()
    ttl = max(60.0, remaining, context.settings().visibility_timeout) + CLAIM_TTL_MARGIN_SECONDS
    outcome = context.claims().acquire(ref.run_id, ref.step, ttl)
    if outcome.verdict == "duplicate":
        log.info("dropped a duplicate delivery of %s of run %s", ref.step, ref.run_id)
        raise Ignore()
    if outcome.verdict == "orphaned":
        result = step_result(
            "interrupted", "the worker process running this step died before it finished"
        )
        store.record_step(ref.run_id, ref.step, result)
        return result
    claim = outcome.claim
    assert claim is not None
    result = step_result("failed", "the step did not finish")
    try:
        if run.get("status") == "queued":
            store.mark_running(ref.run_id)
        job = context.config().job(ref.job_id)
        result = body(ref, job, run, claim)
    except Refused as refused:
        result = step_result("refused", str(refused))
        log.warning("refused %s of run %s: %s", ref.step, ref.run_id, refused)
    except Exception as exc:
        # A bug or an unreachable service must not stop the chain: record it and go on.
        log.exception("step %s of run %s failed unexpectedly", ref.step, ref.run_id)
        result = step_result("failed", f"internal error: {type(exc).__name__}: {exc}"[:500])
    finally:
        # Redis may be restarting just as the step ends: a result not recorded would stop the
        # chain, so recording is retried for a while before the task gives up.
        final = result
        retry_redis(lambda: store.record_step(ref.run_id, ref.step, final))
        retry_redis(lambda: claim.settle(final["state"]))
    return result


def retry_redis(action: Callable[[], object], seconds: float = REDIS_RETRY_SECONDS) -> None:
    """Run ``action``, retrying while Redis is unreachable, for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            action()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            log.warning("Redis is unreachable; retrying to record the step")
            time.sleep(REDIS_RETRY_PAUSE_SECONDS)  # back-off between attempts, bounded above
