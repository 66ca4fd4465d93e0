"""The hook step: one pre- or post-hook of one run, looked up in this worker's own config.

Its Celery signature carries ``soft_time_limit`` = the hook's timeout and ``time_limit`` = the
timeout + a margin (``tasks.pipeline``). The runner enforces the same timeout itself; the soft
limit is the second line (its exception stops the process group and yields ``timed_out``), the
hard limit the last (it kills the pool process, and the supervisor then kills the hook's group).
"""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from config.jobs import Job
from tasks import context
from tasks.claims import Claim
from tasks.hooks import HookResult, run_hook
from tasks.outcome import (
    earlier_pre_hook_stop,
    post_hook_should_run,
    verdict_before_post_hooks,
)
from tasks.references import Refused, StepRef
from tasks.step_runner import run_step, step_result


@shared_task(name="backupy.hook", bind=True)
def hook_step(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return run_step(args, kwargs, ("pre", "post"), run_hook_step)


def run_hook_step(ref: StepRef, job: Job, run: dict[str, Any], claim: Claim) -> dict[str, Any]:
    hooks = job.pre_hooks if ref.phase == "pre" else job.post_hooks
    if ref.index >= len(hooks):
        raise Refused(f"job {job.id} has {len(hooks)} {ref.phase}-hook(s): no index {ref.index}")
    hook = hooks[ref.index]
    limits = context.limits()
    count = len(job.pre_hooks) + len(job.post_hooks)
    if count > limits.hooks_max_count:
        raise Refused(f"job {job.id} has {count} hooks, the limit is {limits.hooks_max_count}")
    if hook.timeout > limits.hook_timeout_max:
        raise Refused(f"timeout {hook.timeout:g}s is above the limit {limits.hook_timeout_max:g}s")

    steps = context.run_store().get(ref.run_id)["steps"]  # fresh: earlier steps just finished
    env_context = {
        "BACKUPY_JOB": job.id,
        "BACKUPY_RUN_ID": ref.run_id,
        "BACKUPY_PHASE": ref.phase,
        "BACKUPY_HOOK_INDEX": str(ref.index),
    }
    if ref.phase == "pre" and job.hook_order == "sequential":
        stop = earlier_pre_hook_stop(job, steps, ref.index)
        if stop:
            return step_result("skipped", f"not run: {stop}", command=hook.command)
    if ref.phase == "post":
        verdict = verdict_before_post_hooks(job, steps)
        if not post_hook_should_run(hook.when, verdict.status):
            return step_result(
                "skipped",
                f"when: {hook.when}, and the run is {verdict.status}",
                command=hook.command,
            )
        env_context |= post_hook_context(verdict.status, verdict.reason, steps.get("dump", {}))

    try:
        result = run_hook(
            hook.command,
            env=job.env,
            timeout=hook.timeout,
            context=env_context,
            meter=context.budget_meter().for_run(ref.run_id, tick=limits.budget_tick),
            limits=limits,
            secret_env_names=context.config().secret_env_names(),
            on_spawn=claim.record_process_group,
        )
    except SoftTimeLimitExceeded as exc:
        return soft_limit_result(exc, hook.timeout)
    return result.to_dict()


def post_hook_context(status: str, reason: str, dump: dict[str, Any]) -> dict[str, str]:
    """What a post-hook learns of the run: its outcome and, when stored, the artifact."""
    artifact = dump.get("artifact") or {}
    return {
        "BACKUPY_STATUS": status,
        "BACKUPY_ERROR": reason,
        "BACKUPY_ARTIFACT": str(artifact.get("key", "")),
        "BACKUPY_ARTIFACT_SIZE": str(artifact.get("stored_bytes", "")),
        "BACKUPY_ARTIFACT_SHA256": str(artifact.get("sha256", "")),
    }


def soft_limit_result(exc: BaseException, timeout: float) -> dict[str, Any]:
    """Celery's soft time limit fired: inside the runner (which stopped the group and attached
    what it captured) or before the hook started."""
    reason = f"timed out after {timeout:g}s (soft time limit)"
    partial: HookResult | None = getattr(exc, "hook_result", None)
    if partial is None:
        return step_result("timed_out", reason, exit_code=-1, timed_out=True)
    partial.state, partial.timed_out, partial.exit_code, partial.reason = (
        "timed_out",
        True,
        -1,
        reason,
    )
    return partial.to_dict()
