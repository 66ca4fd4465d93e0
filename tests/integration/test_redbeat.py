"""Result 6 of the Operations issue: two beats with RedBeat on one Redis send a due job once, and
the standby takes over when the lock holder is killed.

The job's cron is once a year (``0 0 1 1 *``) and the test makes it due by moving the RedBeat
entry's ``last_run_at`` back past its previous due time, through RedBeat's own entry API, while
both beats run. An every-minute cron would also fire at every minute boundary the test happens to
straddle, so "one send per due time" could not be counted exactly; here there is exactly one due
time per seeding.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from redbeat.schedulers import RedBeatSchedulerEntry

from config.settings import load_settings
from tests.harness import Deployment, ProcessHandle, celery_argv, sqlite_job, wait_for
from tests.integration.runs import store_of
from workers.app import create_app
from workers.redbeat import entry_key

pytestmark = pytest.mark.integration

JOB = "ha-db"
ENTRY = f"backupy-job-{JOB}"
SENT = f"Sending due task {ENTRY} (backupy.start_run)"
REDBEAT_ENV = {"BACKUPY_BEAT_SCHEDULER": "redbeat", "BACKUPY_REDBEAT_LOCK_TIMEOUT": "12"}


@pytest.fixture
def beat_app(world: Deployment) -> Iterator[Celery]:
    """A client app with the beats' RedBeat settings (key prefix, Redis URL)."""
    app = create_app(load_settings(world.env(**REDBEAT_ENV)))
    try:
        yield app
    finally:
        app.close()


def start_beat(world: Deployment, name: str) -> ProcessHandle:
    argv = celery_argv("beat", "-l", "DEBUG", "-s", str(world.tmp / f"beat-{name}-schedule"))
    handle = ProcessHandle(argv, world.env(**REDBEAT_ENV), world.tmp / f"beat-{name}.log")
    world.processes.append(handle.start())
    return handle


def make_due(app: Celery) -> None:
    """Move the job's last run back past its previous due time: it is due at the next tick."""
    entry = RedBeatSchedulerEntry.from_key(entry_key(app, ENTRY), app=app)
    entry.reschedule(last_run_at=datetime.now(UTC) - timedelta(days=400))


def beat_runs(world: Deployment) -> list[dict[str, Any]]:
    return [run for run in store_of(world).list_runs(JOB) if run.get("trigger") == "beat"]


def wait_beat_runs_final(world: Deployment, count: int) -> list[dict[str, Any]]:
    def final() -> list[dict[str, Any]] | None:
        runs = beat_runs(world)
        done = len(runs) >= count and all(r.get("finished_at") for r in runs)
        return runs if done else None

    return wait_for(final, 30, f"{count} beat-triggered run(s) to finish", interval=0.1)


def test_two_redbeat_beats_send_a_due_job_once_and_the_standby_takes_over(
    world: Deployment, source_db: Path, beat_app: Celery
) -> None:
    queue = world.queue()
    world.write_config([sqlite_job(JOB, source_db, queue, schedule="0 0 1 1 *")])
    client = redis.Redis.from_url(world.redis_url)
    # An entry of a job no longer in the config: beat must delete it when it loads the schedule.
    stale = RedBeatSchedulerEntry(
        "backupy-job-gone", "backupy.start_run", timedelta(hours=1), app=beat_app
    ).save()
    assert client.exists(stale.key)

    world.worker([queue])
    beats = {"one": start_beat(world, "one"), "two": start_beat(world, "two")}
    for beat in beats.values():
        beat.wait_log("beat: Starting...", timeout=30)

    def holder() -> str | None:
        owners = [name for name, beat in beats.items() if "beat: Acquired lock" in beat.log()]
        assert len(owners) <= 1, "both beats hold the lock"
        return owners[0] if owners else None

    first = wait_for(holder, 30, "one beat to take the RedBeat lock")
    standby = "two" if first == "one" else "one"
    beats[first].wait_log("beat: Extending lock", timeout=20)  # it ticks

    # Entries live under the test's prefix; the stale one is gone, ours are there.
    prefix = world.prefix
    assert entry_key(beat_app, ENTRY) == f"{prefix}redbeat:{ENTRY}"
    assert client.exists(f"{prefix}redbeat:{ENTRY}")
    assert client.exists(f"{prefix}redbeat:backupy-watchdog")
    assert not client.exists(stale.key)
    assert client.exists(f"{prefix}redbeat::lock")
    assert beat_runs(world) == []  # a new entry waits for its next due time

    # Due once, while both beats run: one start_run, one run, no "skipped: overlap" twin.
    make_due(beat_app)
    (run,) = wait_beat_runs_final(world, 1)
    assert run["status"] == "success", run
    assert beats[first].log().count(SENT) == 1
    assert SENT not in beats[standby].log()
    assert "beat: Acquired lock" not in beats[standby].log()

    # Kill the holder (no clean release): the standby takes the lock once it expires, and its
    # first ticks do not send the job again (when it last ran is in Redis, not in a file).
    beats[first].kill()
    beats[standby].wait_log("beat: Acquired lock", timeout=40)

    def ticks_after_takeover() -> bool:
        text = beats[standby].log()
        return text.split("beat: Acquired lock", 1)[1].count("beat: Extending lock") >= 2

    wait_for(ticks_after_takeover, 20, "two ticks of the beat that took over")
    assert len(beat_runs(world)) == 1
    assert SENT not in beats[standby].log()

    # Due again: now the former standby sends it, once.
    make_due(beat_app)
    runs = wait_beat_runs_final(world, 2)
    assert len(runs) == 2 and all(r["status"] == "success" for r in runs), runs
    assert beats[standby].log().count(SENT) == 1
    assert not [r for r in store_of(world).list_runs(JOB) if r.get("status") == "skipped"]
