"""The rules that decide a run's course and its end (tasks/outcome.py): pure, no Redis, no Celery.

The jobs are real ``config.jobs`` models (the worker hands the same objects to these functions);
step results are the dicts the run store holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from config.jobs import Job, parse_config
from tasks.outcome import (
    EX_TEMPFAIL,
    Verdict,
    earlier_pre_hook_stop,
    final_verdict,
    post_hook_should_run,
    pre_hooks_verdict,
    step_name,
    verdict_before_post_hooks,
)

OK: dict[str, Any] = {"state": "ok", "exit_code": 0}
FAILED: dict[str, Any] = {"state": "failed", "exit_code": 3, "reason": "exited 3"}
TEMPFAIL: dict[str, Any] = {"state": "failed", "exit_code": EX_TEMPFAIL, "reason": "exited 75"}
TIMED_OUT: dict[str, Any] = {"state": "timed_out", "exit_code": -1, "reason": "timed out"}
SKIPPED: dict[str, Any] = {"state": "skipped", "reason": "when: success"}
DUMP_OK: dict[str, Any] = {"state": "ok", "artifact": {"key": "k"}}


def job(
    pre: list[dict[str, Any]] | None = None,
    post: list[dict[str, Any]] | None = None,
    **fields: Any,
) -> Job:
    """A real validated job with these hooks (commands filled in)."""
    data = {
        "storage": {"type": "local", "path": "./var/backups"},
        "encryption": "none",
        "jobs": [
            {
                "id": "app-db",
                "schedule": "0 3 * * *",
                "target": {"type": "sqlite", "path": "/tmp/x.db"},
                "pre_hooks": [{"command": f"echo pre{i}", **h} for i, h in enumerate(pre or [])],
                "post_hooks": [{"command": f"echo post{i}", **h} for i, h in enumerate(post or [])],
                **fields,
            }
        ],
    }
    return parse_config(data).jobs[0]


def steps(**named: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``pre_0=OK`` → ``{"pre.0": OK}``."""
    return {name.replace("_", "."): result for name, result in named.items()}


def test_step_name() -> None:
    assert step_name("pre", 0) == "pre.0"
    assert step_name("post", 12) == "post.12"


# --------------------------------------------------------------------------- pre-hooks


def test_no_pre_hooks_lets_the_dump_run() -> None:
    assert pre_hooks_verdict(job(), {}) is None


def test_all_pre_hooks_ok_lets_the_dump_run() -> None:
    assert pre_hooks_verdict(job([{}, {}]), steps(pre_0=OK, pre_1=OK)) is None


def test_a_failed_pre_hook_fails_the_run_by_default() -> None:
    verdict = pre_hooks_verdict(job([{}, {}]), steps(pre_0=OK, pre_1=FAILED))
    assert verdict is not None
    assert verdict.status == "failed"
    assert "pre.1" in verdict.reason and "failed" in verdict.reason and "exited 3" in verdict.reason


@pytest.mark.parametrize(
    "result", [FAILED, TIMED_OUT, {"state": "budget_exceeded"}, {"state": "interrupted"}]
)
def test_every_kind_of_failure_with_on_error_fail_fails(result: dict[str, Any]) -> None:
    verdict = pre_hooks_verdict(job([{"on_error": "fail"}]), steps(pre_0=result))
    assert verdict is not None and verdict.status == "failed"
    assert result["state"] in verdict.reason


def test_refused_pre_hook_fails_the_run() -> None:
    refused = {"state": "refused", "reason": "config drift: host h has digest abc"}
    verdict = pre_hooks_verdict(job([{}]), steps(pre_0=refused))
    assert verdict == Verdict(
        "failed", "pre-hook pre.0 refused: config drift: host h has digest abc"
    )


@pytest.mark.parametrize("result", [FAILED, TIMED_OUT, {"state": "budget_exceeded"}])
def test_on_error_continue_only_records_the_failure(result: dict[str, Any]) -> None:
    assert pre_hooks_verdict(
        job([{"on_error": "continue"}, {}]), steps(pre_0=result, pre_1=OK)
    ) is (None)


def test_exit_75_skips_the_run() -> None:
    verdict = pre_hooks_verdict(job([{}, {}]), steps(pre_0=TEMPFAIL, pre_1=OK))
    assert verdict is not None
    assert verdict.status == "skipped"
    assert "pre.0" in verdict.reason and "75" in verdict.reason


def test_exit_75_only_counts_as_tempfail_when_the_state_is_failed() -> None:
    # A timed-out hook's exit code is -1; 75 with another state is no "nothing to do now".
    odd = {"state": "timed_out", "exit_code": EX_TEMPFAIL}
    verdict = pre_hooks_verdict(job([{}]), steps(pre_0=odd))
    assert verdict is not None and verdict.status == "failed"


def test_exit_75_skips_even_with_on_error_continue() -> None:
    verdict = pre_hooks_verdict(job([{"on_error": "continue"}]), steps(pre_0=TEMPFAIL))
    assert verdict is not None and verdict.status == "skipped"


@pytest.mark.parametrize("order", ["tempfail first", "failure first"])
def test_failure_beats_tempfail(order: str) -> None:
    named = (
        steps(pre_0=TEMPFAIL, pre_1=FAILED)
        if order == "tempfail first"
        else steps(pre_0=FAILED, pre_1=TEMPFAIL)
    )
    verdict = pre_hooks_verdict(job([{}, {}]), named)
    assert verdict is not None and verdict.status == "failed"


def test_first_of_two_tempfails_is_named() -> None:
    verdict = pre_hooks_verdict(job([{}, {}]), steps(pre_0=TEMPFAIL, pre_1=TEMPFAIL))
    assert verdict is not None and verdict.status == "skipped"
    assert "pre.0" in verdict.reason and "pre.1" not in verdict.reason


def test_a_missing_pre_hook_result_fails_the_run() -> None:
    verdict = pre_hooks_verdict(job([{}, {}]), steps(pre_0=OK))
    assert verdict == Verdict("failed", "pre-hook pre.1 has no recorded result")


def test_a_missing_result_fails_even_with_on_error_continue() -> None:
    verdict = pre_hooks_verdict(job([{"on_error": "continue"}]), {})
    assert verdict is not None and verdict.status == "failed"


def test_skipped_pre_hooks_do_not_stop_the_dump() -> None:
    assert pre_hooks_verdict(job([{}]), steps(pre_0=SKIPPED)) is None


# --------------------------------------------------------------------------- sequential order


def test_sequential_first_hook_always_runs() -> None:
    assert earlier_pre_hook_stop(job([{}, {}]), {}, 0) is None


def test_sequential_after_ok_hooks_runs() -> None:
    assert earlier_pre_hook_stop(job([{}, {}, {}]), steps(pre_0=OK, pre_1=OK), 2) is None


def test_sequential_stops_after_a_failure() -> None:
    stop = earlier_pre_hook_stop(job([{}, {}, {}]), steps(pre_0=OK, pre_1=TIMED_OUT), 2)
    assert stop == "pre-hook pre.1 timed_out"


def test_sequential_stops_after_a_tempfail() -> None:
    stop = earlier_pre_hook_stop(job([{}, {}]), steps(pre_0=TEMPFAIL), 1)
    assert stop == f"pre-hook pre.0 exited {EX_TEMPFAIL}"


def test_sequential_goes_on_after_a_failure_with_on_error_continue() -> None:
    hooks = job([{"on_error": "continue"}, {}])
    assert earlier_pre_hook_stop(hooks, steps(pre_0=FAILED), 1) is None


def test_sequential_skipped_earlier_hook_does_not_stop() -> None:
    assert earlier_pre_hook_stop(job([{}, {}]), steps(pre_0=SKIPPED), 1) is None


def test_sequential_stop_looks_only_at_earlier_hooks() -> None:
    assert earlier_pre_hook_stop(job([{}, {}]), steps(pre_0=OK, pre_1=FAILED), 1) is None


def test_sequential_chain_after_a_stop_ends_failed() -> None:
    """pre.0 fails, pre.1 is recorded skipped by its step: the run is failed, not skipped."""
    named = steps(pre_0=FAILED, pre_1={"state": "skipped", "reason": "not run: ..."})
    verdict = pre_hooks_verdict(job([{}, {}], hook_order="sequential"), named)
    assert verdict is not None and verdict.status == "failed"
    assert "pre.0" in verdict.reason


# --------------------------------------------------------------------------- before post-hooks


def test_before_post_hooks_success_when_dump_ok() -> None:
    assert verdict_before_post_hooks(job([{}]), steps(pre_0=OK, dump=DUMP_OK)) == Verdict("success")


def test_before_post_hooks_pre_verdict_wins_over_the_dump() -> None:
    named = steps(pre_0=TEMPFAIL, dump={"state": "skipped", "reason": "not run"})
    assert verdict_before_post_hooks(job([{}]), named).status == "skipped"
    named = steps(pre_0=FAILED, dump={"state": "skipped", "reason": "not run"})
    assert verdict_before_post_hooks(job([{}]), named).status == "failed"


def test_before_post_hooks_dump_failed() -> None:
    verdict = verdict_before_post_hooks(job(), steps(dump={"state": "failed", "reason": "db away"}))
    assert verdict == Verdict("failed", "dump failed: db away")


def test_before_post_hooks_dump_timed_out_without_reason() -> None:
    verdict = verdict_before_post_hooks(job(), steps(dump={"state": "timed_out"}))
    assert verdict == Verdict("failed", "dump timed_out:")


def test_before_post_hooks_missing_dump() -> None:
    assert verdict_before_post_hooks(job(), {}) == Verdict(
        "failed", "the dump has no recorded result"
    )


# --------------------------------------------------------------------------- post-hook `when`


@pytest.mark.parametrize(
    ("when", "status", "runs"),
    [
        ("always", "success", True),
        ("always", "failed", True),
        ("always", "skipped", True),
        ("success", "success", True),
        ("success", "failed", False),
        ("success", "skipped", False),
        ("failure", "success", False),
        ("failure", "failed", True),
        ("failure", "skipped", False),
    ],
)
def test_post_hook_should_run(when: str, status: str, runs: bool) -> None:
    assert post_hook_should_run(when, status) is runs


def test_post_hook_default_is_always() -> None:
    hooks = job(post=[{}])
    assert hooks.post_hooks[0].when == "always"
    assert hooks.pre_hooks == [] and job([{}]).pre_hooks[0].on_error == "fail"


# --------------------------------------------------------------------------- final verdict


def test_final_success() -> None:
    named = steps(pre_0=OK, dump=DUMP_OK, post_0=OK, post_1=OK)
    assert final_verdict(job([{}], [{}, {}]), named) == Verdict("success")


def test_a_failed_post_hook_fails_a_successful_run() -> None:
    named = steps(pre_0=OK, dump=DUMP_OK, post_0=OK, post_1=FAILED)
    verdict = final_verdict(job([{}], [{}, {}]), named)
    assert verdict.status == "failed"
    assert "post.1" in verdict.reason and "the artifact is stored" in verdict.reason


@pytest.mark.parametrize(
    "result", [TIMED_OUT, {"state": "budget_exceeded"}, {"state": "interrupted"}]
)
def test_any_post_hook_failure_fails_a_successful_run(result: dict[str, Any]) -> None:
    verdict = final_verdict(job(post=[{}]), steps(dump=DUMP_OK, post_0=result))
    assert verdict.status == "failed" and result["state"] in verdict.reason


def test_skipped_post_hooks_are_fine() -> None:
    named = steps(dump=DUMP_OK, post_0=OK, post_1=SKIPPED)
    hooks = job(post=[{}, {"when": "failure"}])
    assert final_verdict(hooks, named) == Verdict("success")


def test_a_missing_post_hook_result_fails_the_run() -> None:
    verdict = final_verdict(job(post=[{}]), steps(dump=DUMP_OK))
    assert verdict.status == "failed"
    assert "post.0 has no recorded result" in verdict.reason


def test_a_skipped_run_stays_skipped_when_post_hooks_are_ok() -> None:
    named = steps(pre_0=TEMPFAIL, dump={"state": "skipped"}, post_0=OK)
    verdict = final_verdict(job([{}], [{}]), named)
    assert verdict.status == "skipped" and "75" in verdict.reason


def test_a_failed_post_hook_fails_a_skipped_run_and_says_both() -> None:
    named = steps(pre_0=TEMPFAIL, dump={"state": "skipped"}, post_0=FAILED)
    verdict = final_verdict(job([{}], [{}]), named)
    assert verdict.status == "failed"
    assert "75" in verdict.reason and "post.0" in verdict.reason


def test_a_failed_run_keeps_its_first_reason() -> None:
    named = steps(dump={"state": "failed", "reason": "db away"}, post_0=FAILED)
    assert final_verdict(job(post=[{}]), named) == Verdict("failed", "dump failed: db away")


def test_final_verdict_without_any_hooks() -> None:
    assert final_verdict(job(), steps(dump=DUMP_OK)) == Verdict("success")
    assert final_verdict(job(), {}).status == "failed"


def test_post_hooks_when_success_skipped_on_failed_run() -> None:
    named = steps(pre_0=FAILED, dump={"state": "skipped"}, post_0=SKIPPED, post_1=OK)
    verdict = final_verdict(job([{}], [{"when": "success"}, {"when": "failure"}]), named)
    assert verdict.status == "failed" and "pre.0" in verdict.reason


def test_duck_typed_stand_ins_work_too() -> None:
    """The rules need only ``pre_hooks[i].on_error`` and ``post_hooks``: dataclasses do."""

    @dataclass
    class Hook:
        on_error: str = "fail"
        when: str = "always"

    @dataclass
    class StandIn:
        pre_hooks: list[Hook] = field(default_factory=list)
        post_hooks: list[Hook] = field(default_factory=list)

    stand_in = StandIn([Hook("continue"), Hook()], [Hook()])
    named = steps(pre_0=FAILED, pre_1=OK, dump=DUMP_OK, post_0=OK)
    assert final_verdict(stand_in, named) == Verdict("success")
    assert pre_hooks_verdict(stand_in, steps(pre_0=OK, pre_1=FAILED)).status == "failed"
