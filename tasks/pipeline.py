"""Builds one run's Celery canvas: pre-hooks, dump, post-hooks, finalize (DESIGN.md, "The shape").

- A phase's hooks form a group (parallel) or a chain (``hook_order: sequential``).
- An empty phase is left out: Celery cannot run an empty chord header.
- Every signature is immutable (``.si``) and carries only references; each step reads what came
  before from the run store, so a one-task group being unrolled by Celery changes nothing.
- Per-hook timeout → ``soft_time_limit``; ``time_limit`` = timeout + margin, the backstop if the
  soft limit's own cleanup hangs. The dump's ``timeout`` is mapped the same way.
"""

from __future__ import annotations

from celery import chain, group
from celery.canvas import Signature

from config.jobs import Job
from config.limits import Limits
from tasks.dump_task import dump_step
from tasks.finalize_task import finalize_step
from tasks.hook_task import hook_step

# Finalize writes a few Redis keys and applies retention: a minute is plenty, and it must never
# be the step that hangs.
FINALIZE_SOFT_LIMIT_SECONDS = 60.0


def step_kwargs(run_id: str, job_id: str, phase: str, index: int, digest: str) -> dict:
    return {"run_id": run_id, "job_id": job_id, "phase": phase, "index": index, "digest": digest}


def hook_signature(
    job: Job, run_id: str, digest: str, phase: str, index: int, limits: Limits
) -> Signature:
    hook = (job.pre_hooks if phase == "pre" else job.post_hooks)[index]
    timeout = min(hook.timeout, limits.hook_timeout_max)
    return hook_step.si(**step_kwargs(run_id, job.id, phase, index, digest)).set(
        queue=job.queue,
        soft_time_limit=timeout,
        time_limit=timeout + limits.hard_limit_margin,
    )


def phase_canvas(
    job: Job, run_id: str, digest: str, phase: str, limits: Limits
) -> Signature | None:
    hooks = job.pre_hooks if phase == "pre" else job.post_hooks
    signatures = [hook_signature(job, run_id, digest, phase, i, limits) for i in range(len(hooks))]
    if not signatures:
        return None
    return chain(*signatures) if job.hook_order == "sequential" else group(signatures)


def build_run(job: Job, run_id: str, digest: str, limits: Limits) -> Signature:
    dump = dump_step.si(**step_kwargs(run_id, job.id, "dump", 0, digest)).set(
        queue=job.queue,
        soft_time_limit=job.timeout,
        time_limit=job.timeout + limits.hard_limit_margin,
    )
    finalize = finalize_step.si(**step_kwargs(run_id, job.id, "finalize", 0, digest)).set(
        queue=job.queue,
        soft_time_limit=FINALIZE_SOFT_LIMIT_SECONDS,
        time_limit=FINALIZE_SOFT_LIMIT_SECONDS + limits.hard_limit_margin,
    )
    parts = [
        phase_canvas(job, run_id, digest, "pre", limits),
        dump,
        phase_canvas(job, run_id, digest, "post", limits),
        finalize,
    ]
    return chain(*[part for part in parts if part is not None])


def longest_hard_limit(jobs: list[Job], limits: Limits) -> float:
    """The longest ``time_limit`` any task of these jobs gets: the broker's visibility timeout
    must exceed it, or a message still running is delivered a second time."""
    longest = FINALIZE_SOFT_LIMIT_SECONDS
    for job in jobs:
        longest = max(longest, job.timeout)
        for hook in (*job.pre_hooks, *job.post_hooks):
            longest = max(longest, min(hook.timeout, limits.hook_timeout_max))
    return longest + limits.hard_limit_margin
