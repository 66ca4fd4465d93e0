"""Results 5, 7, 8 and 9 of the Celery issue, with real prefork workers (and a real beat):

- 5: the broker carries references, never commands. Forged messages (an extra ``command``, a
  wrong digest, positional arguments, a raw pickle message pushed into the queue's Redis list)
  never make a worker run anything; the ones that name a run are recorded in it as ``refused``.
- 7: two triggers of one job at once: one run, the other recorded ``skipped`` (overlap).
- 8: a job's steps run only on the workers that serve its queue.
- 9: beat sends a job's start when it is due, and the watchdog ends a run past its deadline as
  ``lost``, frees its lock and counts it, once.

Every wait polls with a deadline; nothing sleeps a fixed time.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from celery.beat import PersistentScheduler

from config.jobs import load_config
from tasks import context
from tasks.budget import BudgetMeter
from tasks.lock import JobLock
from tasks.runs import FINAL_STATES, RunStore, new_run_id
from tests.harness import Deployment, sqlite_job, wait_for
from tests.integration.runs import client_app, start, store_of, wait_final
from workers.beat import build_schedule

pytestmark = pytest.mark.integration

JOB = "app-db"
WRONG_DIGEST = "0123456789abcdef" * 4


def running_run(store: RunStore, job_id: str, deadline_in: float) -> str:
    """A run record and its hook budget as start_run writes them, without a chain behind it."""
    now = time.time()
    run_id = new_run_id(now)
    store.create(
        run_id,
        job_id,
        {
            "status": "running",
            "trigger": "test",
            "created_at": now,
            "started_at": now,
            "deadline": now + deadline_in,
        },
    )
    BudgetMeter(store.client, store.keys.prefix).open(run_id, 60, max(deadline_in, 0) + 600)
    return run_id


def refs(run_id: str, digest: str, phase: str = "pre", index: int = 0) -> dict[str, Any]:
    return {"run_id": run_id, "job_id": JOB, "phase": phase, "index": index, "digest": digest}


class _RunsACommand:
    """Unpickling this runs a shell command: what a worker that accepted pickle would do."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


def push_raw_pickle_message(client: redis.Redis, queue: str, command: str, run_id: str) -> str:
    """A Celery protocol-2 message in kombu's Redis envelope, serialised with pickle, LPUSHed
    straight into the queue's list: no Celery producer involved."""
    task_id = str(uuid.uuid4())
    body = pickle.dumps(
        ((), {**refs(run_id, WRONG_DIGEST), "payload": _RunsACommand(command)}, {}),
    )
    envelope = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "binary",
        "content-type": "application/x-python-serialize",
        "headers": {
            "lang": "py",
            "task": "backupy.hook",
            "id": task_id,
            "root_id": task_id,
            "parent_id": None,
            "group": None,
            "retries": 0,
            "eta": None,
            "expires": None,
            "timelimit": [None, None],
            "argsrepr": "()",
            "kwargsrepr": "{}",
            "origin": "test",
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    client.lpush(queue, json.dumps(envelope))
    return task_id


# --------------------------------------------------------------------------- 5: broker safety


def test_forged_messages_never_run_anything_and_are_recorded(
    world: Deployment, source_db: Path, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    queue = world.queue()
    # The job's own hook leaves a mark too: a refused message must not run it either.
    world.write_config(
        [sqlite_job(JOB, source_db, queue, pre_hooks=[{"command": f"touch {marks}/own-hook"}])]
    )
    digest = load_config(world.config_path).job_digest(JOB)
    worker = world.worker([queue])
    store = store_of(world)
    run_id = running_run(store, JOB, deadline_in=600)

    app = client_app(world)
    try:
        # (1) valid references plus a command: refused before any lookup.
        app.send_task(
            "backupy.hook",
            kwargs={**refs(run_id, digest), "command": f"touch {marks}/extra-field"},
            queue=queue,
        )
        # (2) positional arguments.
        app.send_task(
            "backupy.hook",
            args=[f"touch {marks}/positional"],
            kwargs=refs(run_id, digest),
            queue=queue,
        )
        # (3) a command smuggled into the dump and into start_run.
        app.send_task(
            "backupy.dump",
            kwargs={**refs(run_id, digest, "dump"), "command": f"touch {marks}/dump"},
            queue=queue,
        )
        app.send_task(
            "backupy.start_run",
            kwargs={"job_id": JOB, "run_id": run_id, "command": f"touch {marks}/start"},
            queue=queue,
        )
        # (4) well-formed references with a digest that is not this host's: config drift.
        app.send_task("backupy.hook", kwargs=refs(run_id, WRONG_DIGEST), queue=queue)
        # (5) a hook index the job does not have.
        app.send_task("backupy.hook", kwargs=refs(run_id, digest, "post", 7), queue=queue)
    finally:
        app.close()
    # (6) raw pickle, straight into the queue's list.
    raw = redis.Redis.from_url(world.redis_url)
    push_raw_pickle_message(raw, queue, f"touch {marks}/pickle", run_id)

    def all_recorded() -> dict[str, Any] | None:
        run = store.get(run_id)
        steps = run["steps"] if run else {}
        refused = {k: v for k, v in steps.items() if k.startswith("refused.")}
        done = len(refused) == 4 and "pre.0" in steps and "post.7" in steps
        return run if done else None

    run = wait_for(all_recorded, 20, "the six forged messages to be refused", interval=0.1)
    worker.wait_log("untrusted content", timeout=20)
    wait_for(lambda: raw.llen(queue) == 0, 20, "the queue to be drained")

    steps = run["steps"]
    refused = [steps[f"refused.{n}"] for n in range(1, 5)]
    assert all(r["state"] == "refused" for r in refused), refused
    reasons = " | ".join(r["reason"] for r in refused)
    assert reasons.count("fields a step does not take: command") == 2, reasons
    assert "positional" in reasons
    assert "start_run takes job_id" in reasons
    # A refusal names the field, never its value.
    assert str(marks) not in json.dumps(run)

    drift = steps["pre.0"]
    assert drift["state"] == "refused"
    assert "config drift" in drift["reason"] and WRONG_DIGEST[:12] in drift["reason"]
    assert steps["post.7"]["state"] == "refused"
    assert "no index 7" in steps["post.7"]["reason"]

    assert sorted(p.name for p in marks.iterdir()) == []
    assert run["status"] == "running"  # refusals do not end a run they do not belong to


def test_a_message_naming_another_jobs_hook_for_a_run_is_refused(
    world: Deployment, source_db: Path, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    queue = world.queue()
    world.write_config(
        [
            sqlite_job(JOB, source_db, queue, pre_hooks=[{"command": f"touch {marks}/own"}]),
            sqlite_job("other", source_db, queue, pre_hooks=[{"command": f"touch {marks}/other"}]),
        ]
    )
    other_digest = load_config(world.config_path).job_digest("other")
    world.worker([queue])
    store = store_of(world)
    run_id = running_run(store, JOB, deadline_in=600)
    app = client_app(world)
    try:
        # Well-formed, the right digest for "other": but the run is app-db's.
        app.send_task(
            "backupy.hook", kwargs={**refs(run_id, other_digest), "job_id": "other"}, queue=queue
        )
    finally:
        app.close()

    def recorded() -> dict[str, Any] | None:
        run = store.get(run_id)
        return run if run and run["steps"] else None

    run = wait_for(recorded, 20, "the message to be handled", interval=0.1)
    assert not (marks / "other").exists(), "another job's hook ran inside this run"
    assert [s["state"] for s in run["steps"].values()] == ["refused"], run["steps"]


# --------------------------------------------------------------------------- 7: overlap


def test_two_triggers_at_once_make_one_run_and_one_skipped(
    world: Deployment, source_db: Path
) -> None:
    queue = world.queue()
    world.write_config([sqlite_job(JOB, source_db, queue, pre_hooks=[{"command": "sleep 2"}])])
    world.worker([queue])
    first, second = start(world, JOB), start(world, JOB)
    runs = {run_id: wait_final(world, run_id, timeout=30) for run_id in (first, second)}

    by_status = {run["status"]: run for run in runs.values()}
    assert sorted(run["status"] for run in runs.values()) == ["skipped", "success"], runs
    winner, skipped = by_status["success"], by_status["skipped"]
    assert "overlap" in skipped["reason"]
    assert winner["run_id"] in skipped["reason"]
    assert skipped["steps"] == {}  # nothing of the skipped run ran
    assert winner["steps"]["pre.0"]["state"] == "ok"

    store = store_of(world)
    assert JobLock(store.client, world.prefix).holder(JOB) is None
    stats = store.client.hgetall(f"{world.prefix}stats:{JOB}")
    assert stats[b"runs_total:success"] == b"1" and stats[b"runs_total:skipped"] == b"1"


# --------------------------------------------------------------------------- 8: routing


def test_steps_run_only_on_the_workers_of_the_jobs_queue(
    world: Deployment, source_db: Path, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    host_a, host_b = world.queue("host-a"), world.queue("host-b")

    def hook(name: str) -> dict[str, str]:
        return {"command": f"echo $PPID > {marks}/{name}"}

    world.write_config(
        [
            sqlite_job(
                JOB,
                source_db,
                host_b,
                pre_hooks=[hook("pre0"), hook("pre1"), hook("pre2")],
                post_hooks=[hook("post0"), hook("post1")],
            )
        ]
    )
    worker_a = world.worker([host_a], name="wa")
    worker_b = world.worker([host_b], name="wb")
    run = wait_final(world, start(world, JOB), timeout=30)
    assert run["status"] == "success", run

    pids_a, pids_b = set(worker_a.pool_pids()), set(worker_b.pool_pids())
    assert pids_a and pids_b and not pids_a & pids_b
    hook_parents = {int((marks / name).read_text()) for name in ("pre0", "pre1", "pre2")}
    hook_parents |= {int((marks / name).read_text()) for name in ("post0", "post1")}
    assert hook_parents <= pids_b, (hook_parents, pids_b)
    assert not hook_parents & pids_a
    for pid in hook_parents:
        assert psutil.Process(pid).ppid() == worker_b.pid
    # Worker A (host-a and the control queue) received no task at all: not the start, the
    # dump or the finalize either.
    assert "Task backupy." not in worker_a.log()
    assert "Task backupy.finalize" in worker_b.log()


# --------------------------------------------------------------------------- 9: beat, watchdog


def preseed_beat_schedule(world: Deployment, path: Path, last_run_at: datetime) -> None:
    """Write beat's schedule file as if every entry last ran at ``last_run_at``.

    Beat keeps ``last_run_at`` of entries it finds in its file (it only updates their task,
    schedule and arguments from the config), so an every-minute job whose last run is two
    minutes old is due at beat's first tick: the test does not wait for a minute boundary.
    When a cron entry falls due is Celery's own check, tested in the unit tests.
    """
    app = client_app(world)
    app.conf.beat_schedule = build_schedule(load_config(world.config_path), world.control_queue)
    scheduler = PersistentScheduler(app=app, schedule_filename=str(path))
    try:
        for entry in scheduler.schedule.values():
            entry.last_run_at = last_run_at
        scheduler.sync()
    finally:
        scheduler.close()
        app.close()


def test_beat_starts_a_due_job_and_the_watchdog_ends_an_overdue_run(
    world: Deployment, source_db: Path
) -> None:
    queue = world.queue()
    world.write_config([sqlite_job(JOB, source_db, queue, schedule="* * * * *")])
    store = store_of(world)
    # An overdue run of another job, holding that job's lock: beat's watchdog must end it.
    overdue = running_run(store, "ghost", deadline_in=-5)
    lock = JobLock(store.client, world.prefix)
    assert lock.acquire("ghost", overdue, 600)

    preseed_beat_schedule(
        world, world.tmp / "beat-schedule", datetime.now(UTC) - timedelta(minutes=2)
    )
    world.worker([queue])
    beat = world.beat()
    beat.wait_log(f"Sending due task backupy-job-{JOB} (backupy.start_run)", timeout=20)
    beat.wait_log("Sending due task backupy-watchdog (backupy.watchdog)", timeout=20)

    def beat_run() -> dict[str, Any] | None:
        for run in store.list_runs(JOB):
            if run.get("trigger") == "beat" and run.get("status") in FINAL_STATES:
                return run
        return None

    run = wait_for(beat_run, 20, "a run triggered by beat to finish", interval=0.1)
    assert run["status"] == "success", run
    assert run["digest"] == load_config(world.config_path).job_digest(JOB)

    lost = wait_final(world, overdue, timeout=20)
    assert lost["status"] == "lost"
    assert "deadline" in lost["reason"]
    assert lock.holder("ghost") is None
    assert store.client.hget(f"{world.prefix}stats:ghost", "runs_total:lost") == b"1"


@pytest.fixture
def in_process_context(world: Deployment, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's tasks.context pointed at the world (for calling a task body directly)."""
    for name in list(os.environ):
        if name.startswith("BACKUPY_"):
            monkeypatch.delenv(name)
    for name, value in world.env().items():
        if name.startswith("BACKUPY_"):
            monkeypatch.setenv(name, value)
    context.reset()
    yield
    context.reset()


def test_watchdog_marks_an_overdue_run_lost_once(
    world: Deployment, source_db: Path, in_process_context: None
) -> None:
    from workers.watchdog import mark_overdue_runs_lost

    world.write_config([sqlite_job(JOB, source_db, world.queue())])
    store = store_of(world)
    lock = JobLock(store.client, world.prefix)
    overdue = running_run(store, JOB, deadline_in=-1)
    assert lock.acquire(JOB, overdue, 600)
    on_time = running_run(store, "other-job", deadline_in=600)
    assert lock.acquire("other-job", on_time, 600)
    stats_key = f"{world.prefix}stats:{JOB}"

    assert mark_overdue_runs_lost() == [overdue]

    run = store.get(overdue)
    assert run is not None and run["status"] == "lost"
    assert "no final state by its deadline" in run["reason"]
    assert lock.holder(JOB) is None
    assert store.client.hget(stats_key, "runs_total:lost") == b"1"
    assert overdue not in store.in_progress()
    # The run still on time is left alone, lock and all.
    other = store.get(on_time)
    assert other is not None and other["status"] == "running"
    assert lock.holder("other-job") == on_time

    # A second pass changes nothing: the run is not lost twice, nor counted twice.
    assert mark_overdue_runs_lost() == []
    assert store.get(overdue) == run
    assert store.client.hget(stats_key, "runs_total:lost") == b"1"

    # A newer run's lock is never freed by the old run's watchdog entry.
    newer = new_run_id()
    assert lock.acquire(JOB, newer, 600)
    assert mark_overdue_runs_lost() == []
    assert lock.holder(JOB) == newer


def test_watchdog_leaves_a_run_finished_meanwhile(
    world: Deployment, source_db: Path, in_process_context: None
) -> None:
    """finalize and the watchdog race: the first final state wins and is the only one counted."""
    from workers.watchdog import mark_overdue_runs_lost

    world.write_config([sqlite_job(JOB, source_db, world.queue())])
    store = store_of(world)
    run_id = running_run(store, JOB, deadline_in=-1)
    assert store.finish(run_id, "success", "")
    assert mark_overdue_runs_lost() == []
    run = store.get(run_id)
    assert run is not None and run["status"] == "success"
    assert store.client.hget(f"{world.prefix}stats:{JOB}", "runs_total:lost") is None
