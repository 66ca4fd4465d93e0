"""The finalize step: always runs, always writes a final state, frees the lock, counts the run.

It takes no claim: the run store's finish is first-writer-wins, so a duplicate finalize (or one
racing the watchdog) changes nothing and counts nothing twice.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from celery import shared_task

from tasks import context
from tasks.outcome import Verdict, final_verdict
from tasks.references import Refused, StepRef, parse_reference
from tasks.retention import prune_after_run
from tasks.s3_storage import sweep_run_uploads
from tasks.stats import record_finished_run
from tasks.step_runner import check_digest, record_refusal
from tasks.storage import storage_from_config
from workers.logs import log_context

log = logging.getLogger("backupy.finalize")


@shared_task(name="backupy.finalize", bind=True)
def finalize_step(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    try:
        ref = parse_reference(args, kwargs, ("finalize",))
    except Refused as refused:
        return record_refusal(kwargs, str(refused))
    with log_context(run_id=ref.run_id, job_id=ref.job_id, step=ref.step):
        return finalize_run(ref)


def decide(ref: StepRef, steps: dict[str, Any]) -> Verdict:
    try:
        check_digest(ref)
        return final_verdict(context.config().job(ref.job_id), steps)
    except Refused as refused:
        return Verdict("failed", str(refused))
    except Exception as exc:  # the run must still end: record why it could not be judged
        log.exception("finalize of run %s could not decide", ref.run_id)
        return Verdict("failed", f"internal error at finalize: {type(exc).__name__}")


def sweep_dump_leftovers(job_id: str, run_id: str, run: dict[str, Any]) -> None:
    """A dump killed mid-write cannot abort its S3 upload nor remove its local partial file."""
    try:
        storage = storage_from_config(context.config().storage)
        swept = sweep_run_uploads(storage, job_id, run_id, float(run["created_at"]))
    except Exception:
        log.warning("run %s: sweeping its dump's left-overs failed", run_id, exc_info=True)
        return
    if swept:
        log.warning("run %s: removed what its interrupted dump left: %s", run_id, swept)


def finalize_run(ref: StepRef) -> dict[str, Any]:
    store = context.run_store()
    run = store.get(ref.run_id)
    if run is None:
        return record_refusal(ref.as_kwargs(), f"run {ref.run_id} is not in the run store")
    if run.get("job") != ref.job_id:
        return record_refusal(ref.as_kwargs(), f"run {ref.run_id} is not a run of job {ref.job_id}")
    verdict = decide(ref, run["steps"])
    if (run["steps"].get("dump") or {}).get("state") != "ok":
        sweep_dump_leftovers(ref.job_id, ref.run_id, run)
    budget = context.budget_meter().snapshot(ref.run_id)
    artifact = (run["steps"].get("dump") or {}).get("artifact")
    extra = {"budget": dataclasses.asdict(budget), "artifact": artifact}
    finished = store.finish(ref.run_id, verdict.status, verdict.reason, extra)
    context.job_lock().release(ref.job_id, ref.run_id)
    if finished:
        record_finished_run(
            store.client,
            store.keys.prefix,
            ref.job_id,
            verdict.status,
            {**run, "artifact": artifact},
            budget_exhausted=budget.exhausted,
        )
        log.info("run %s of %s ended %s %s", ref.run_id, ref.job_id, verdict.status, verdict.reason)
        if verdict.status == "success":
            prune_after_run(store, context.config(), ref.job_id)
    return {"state": "ok", "status": verdict.status, "reason": verdict.reason}
