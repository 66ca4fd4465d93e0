"""How a run's steps decide what comes next and how the run ends (DESIGN.md, "Failure semantics").

Hook and dump tasks never raise for an expected failure: they record a result and return, so the
chain goes on and the post-hooks that undo a pre-hook still run. Every later step decides from the
recorded results, through the pure functions here, so the rules live in one place and are tested
without Celery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

# A pre-hook exiting EX_TEMPFAIL says "nothing to do now": the run is skipped, not failed.
EX_TEMPFAIL = 75

Steps = Mapping[str, Mapping[str, Any]]


class PreHookLike(Protocol):
    on_error: str


class PostHookLike(Protocol):
    when: str


class JobLike(Protocol):
    @property
    def pre_hooks(self) -> list[Any]: ...

    @property
    def post_hooks(self) -> list[Any]: ...


@dataclass(frozen=True)
class Verdict:
    """A status (``success``, ``failed``, ``skipped``) and the reason an operator reads."""

    status: str
    reason: str = ""


def step_name(phase: str, index: int) -> str:
    return f"{phase}.{index}"


def _describe(name: str, result: Mapping[str, Any]) -> str:
    reason = result.get("reason") or result.get("state", "no result")
    return f"{name} {result.get('state', 'missing')}: {reason}"


def _is_tempfail(result: Mapping[str, Any]) -> bool:
    return result.get("state") == "failed" and result.get("exit_code") == EX_TEMPFAIL


def pre_hooks_verdict(job: JobLike, steps: Steps) -> Verdict | None:
    """None when the dump may run; otherwise why not (``failed`` wins over ``skipped``)."""
    tempfail: str | None = None
    for index, hook in enumerate(job.pre_hooks):
        name = step_name("pre", index)
        result = steps.get(name)
        if result is None:
            return Verdict("failed", f"pre-hook {name} has no recorded result")
        state = result.get("state")
        if state in ("ok", "skipped"):
            continue
        if _is_tempfail(result):
            tempfail = tempfail or f"pre-hook {name} exited {EX_TEMPFAIL}: nothing to do now"
            continue
        if getattr(hook, "on_error", "fail") == "continue":
            continue
        return Verdict("failed", f"pre-hook {_describe(name, result)}")
    if tempfail:
        return Verdict("skipped", tempfail)
    return None


def earlier_pre_hook_stop(job: JobLike, steps: Steps, index: int) -> str | None:
    """In sequential order, why pre-hook ``index`` must not run (an earlier one stopped the run)."""
    for earlier in range(index):
        result = steps.get(step_name("pre", earlier))
        if result is None or result.get("state") in ("ok", "skipped"):
            continue
        if _is_tempfail(result):
            return f"pre-hook pre.{earlier} exited {EX_TEMPFAIL}"
        if getattr(job.pre_hooks[earlier], "on_error", "fail") != "continue":
            return f"pre-hook pre.{earlier} {result.get('state')}"
    return None


def verdict_before_post_hooks(job: JobLike, steps: Steps) -> Verdict:
    """The outcome the post-hooks see (``BACKUPY_STATUS``): pre-hooks, then the dump."""
    stopped = pre_hooks_verdict(job, steps)
    if stopped is not None:
        return stopped
    dump = steps.get("dump")
    if dump is None:
        return Verdict("failed", "the dump has no recorded result")
    if dump.get("state") != "ok":
        return Verdict("failed", f"dump {dump.get('state')}: {dump.get('reason', '')}".strip())
    return Verdict("success")


def post_hook_should_run(when: str, status: str) -> bool:
    if when == "success":
        return status == "success"
    if when == "failure":
        return status == "failed"
    return True


def final_verdict(job: JobLike, steps: Steps) -> Verdict:
    """The run's final state. A post-hook that failed fails the run even when the artifact is
    stored: an undo hook that did not run can leave a database quiesced, which an operator must
    hear about. The artifact stays recorded and restorable."""
    verdict = verdict_before_post_hooks(job, steps)
    for index, _hook in enumerate(job.post_hooks):
        name = step_name("post", index)
        result = steps.get(name)
        if result is None:
            problem = f"post-hook {name} has no recorded result"
        elif result.get("state") in ("ok", "skipped"):
            continue
        else:
            problem = f"post-hook {_describe(name, result)}"
        if verdict.status == "success":
            return Verdict("failed", f"{problem} (the artifact is stored)")
        if verdict.status == "skipped":
            return Verdict("failed", f"{verdict.reason}; {problem}")
        return verdict
    return verdict
