"""The run's shared state in Redis: run store, job lock, step claims, counters.

Every test runs twice (``any_redis``): on fakeredis, fast, and on the real server, where the Lua
scripts and transactions actually run in production. Keys live under the test's own prefix.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from tasks.claims import WATCH_PERIODS, Claim, ClaimOutcome, Claims
from tasks.lock import JobLock
from tasks.redis_keys import Keys
from tasks.runs import RunStore, is_run_id, new_run_id
from tasks.scripts import script
from tasks.stats import record_finished_run
from tests.harness import wait_for

# A small heartbeat keeps the claim tests fast: a watcher decides within 2.5 periods.
HEARTBEAT = 0.2
JOB = "app-db"


@pytest.fixture
def store(any_redis: redis.Redis, key_prefix: str) -> RunStore:
    return RunStore(any_redis, key_prefix)


@pytest.fixture
def lock(any_redis: redis.Redis, key_prefix: str) -> JobLock:
    return JobLock(any_redis, key_prefix)


@pytest.fixture
def claims(any_redis: redis.Redis, key_prefix: str) -> Claims:
    return Claims(any_redis, key_prefix, heartbeat=HEARTBEAT)


def make_run(
    store: RunStore,
    job: str = JOB,
    *,
    created: float | None = None,
    deadline_in: float = 600.0,
    **fields: Any,
) -> str:
    created = time.time() if created is None else created
    run_id = new_run_id(created)
    record = {
        "status": "queued",
        "trigger": "test",
        "created_at": created,
        "deadline": created + deadline_in,
        "steps_planned": ["pre.0", "dump", "post.0"],
        **fields,
    }
    store.create(run_id, job, record)
    return run_id


def text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


# --------------------------------------------------------------------------- run ids


def test_run_ids_sort_by_time_and_are_recognised() -> None:
    earlier, later = new_run_id(1_700_000_000), new_run_id(1_700_000_001)
    assert earlier.startswith("20231114T221320Z-")
    assert is_run_id(earlier) and is_run_id(later)
    assert earlier < later
    assert not is_run_id("20231114T221320Z-XYZ")
    assert not is_run_id(12345)


def test_run_id_with_a_trailing_newline_is_not_a_run_id() -> None:
    assert not is_run_id(new_run_id() + "\n")


# --------------------------------------------------------------------------- run store


def test_create_and_get_decode_every_field(store: RunStore) -> None:
    created = time.time()
    run_id = make_run(store, created=created, host="h1", queue="backups")
    run = store.get(run_id)
    assert run is not None
    assert run["run_id"] == run_id
    assert run["job"] == JOB
    assert run["status"] == "queued"
    assert run["trigger"] == "test"
    assert run["host"] == "h1"
    assert isinstance(run["created_at"], float)
    assert run["created_at"] == pytest.approx(created)
    assert run["deadline"] == pytest.approx(created + 600)
    assert run["steps_planned"] == ["pre.0", "dump", "post.0"]
    assert run["steps"] == {} and run["progress"] == {}
    assert store.exists(run_id)


def test_get_of_an_unknown_run_is_none(store: RunStore) -> None:
    assert store.get(new_run_id()) is None
    assert not store.exists(new_run_id())


def test_create_indexes_by_job_by_time_and_by_deadline(store: RunStore) -> None:
    run_id = make_run(store, deadline_in=100)
    run = store.get(run_id)
    assert run is not None
    keys, client = store.keys, store.client
    assert client.zscore(keys.runs(JOB), run_id) == pytest.approx(run["created_at"])
    assert client.zscore(keys.all_runs(), run_id) == pytest.approx(run["created_at"])
    assert client.zscore(keys.active(), run_id) == pytest.approx(run["deadline"])
    assert store.in_progress() == [run_id]


def test_a_run_created_final_is_not_active(store: RunStore) -> None:
    run_id = make_run(store, status="skipped", reason="overlap: run x holds the lock")
    assert store.in_progress() == []
    assert store.overdue(time.time() + 10_000) == []
    run = store.get(run_id)
    assert run is not None and run["status"] == "skipped"


def test_record_step_and_progress(store: RunStore) -> None:
    run_id = make_run(store)
    store.record_step(run_id, "pre.0", {"state": "ok", "exit_code": 0, "stdout": "héllo\n"})
    store.record_step(run_id, "dump", {"state": "failed", "reason": "db away"})
    store.record_progress(run_id, "dump", 1234)
    store.record_progress(run_id, "dump", 5678)
    run = store.get(run_id)
    assert run is not None
    assert run["steps"] == {
        "pre.0": {"state": "ok", "exit_code": 0, "stdout": "héllo\n"},
        "dump": {"state": "failed", "reason": "db away"},
    }
    assert run["progress"] == {"dump": 5678}
    # A step writes only its own field: the record's other fields are untouched.
    assert run["status"] == "queued" and run["job"] == JOB


def test_set_fields_encodes_json_and_skips_none(store: RunStore) -> None:
    run_id = make_run(store)
    store.set_fields(run_id, warnings=["a", "b"], note="x", nothing=None)
    run = store.get(run_id)
    assert run is not None
    assert run["warnings"] == ["a", "b"]
    assert run["note"] == "x"
    assert "nothing" not in run


def test_finish_first_writer_wins(store: RunStore) -> None:
    run_id = make_run(store)
    artifact = {"key": "app-db/x.sqlite.zst.age", "stored_bytes": 42}
    assert store.finish(run_id, "success", "", {"artifact": artifact, "budget": {"spent": 1}})
    assert store.finish(run_id, "lost", "too late") is False
    run = store.get(run_id)
    assert run is not None
    assert run["status"] == "success"
    assert run["reason"] == ""
    assert run["artifact"] == artifact
    assert run["budget"] == {"spent": 1}
    assert isinstance(run["finished_at"], float)
    assert run["finished_at"] == pytest.approx(time.time(), abs=30)
    assert store.in_progress() == []


def test_finish_from_running(store: RunStore) -> None:
    run_id = make_run(store)
    store.mark_running(run_id)
    assert store.finish(run_id, "failed", "dump failed")
    run = store.get(run_id)
    assert run is not None and (run["status"], run["reason"]) == ("failed", "dump failed")


def test_concurrent_finishers_only_one_wins(store: RunStore) -> None:
    run_id = make_run(store)
    results: list[bool] = []
    barrier = threading.Barrier(4)

    def finisher(status: str) -> None:
        barrier.wait()
        results.append(store.finish(run_id, status, status))

    threads = [
        threading.Thread(target=finisher, args=(s,))
        for s in ("success", "lost", "failed", "skipped")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, False, False, True]
    run = store.get(run_id)
    assert run is not None and run["status"] == run["reason"]


def test_finish_of_unknown_run_is_false_and_creates_nothing(store: RunStore) -> None:
    ghost = new_run_id()
    assert store.finish(ghost, "lost", "gone") is False
    assert not store.exists(ghost)


def test_finish_refuses_a_non_final_state(store: RunStore) -> None:
    run_id = make_run(store)
    for state in ("queued", "running", "ok", ""):
        with pytest.raises(ValueError):
            store.finish(run_id, state, "")
    run = store.get(run_id)
    assert run is not None and run["status"] == "queued"


def test_overdue_lists_only_unfinished_runs_past_their_deadline(store: RunStore) -> None:
    now = time.time()
    late = make_run(store, created=now - 100, deadline_in=50)  # deadline 50 s ago
    later = make_run(store, created=now - 100, deadline_in=90)  # deadline 10 s ago
    on_time = make_run(store, created=now, deadline_in=600)
    finished_late = make_run(store, created=now - 100, deadline_in=10)
    store.finish(finished_late, "success", "")
    assert store.overdue(now) == [late, later]  # oldest deadline first
    assert store.overdue(now, limit=1) == [late]
    assert store.overdue(now + 601) == [late, later, on_time]
    assert on_time not in store.overdue()


def test_list_runs_newest_first_per_job_and_overall(store: RunStore) -> None:
    base = time.time() - 1000
    a1 = make_run(store, "job-a", created=base + 1)
    b1 = make_run(store, "job-b", created=base + 2)
    a2 = make_run(store, "job-a", created=base + 3)
    a3 = make_run(store, "job-a", created=base + 4)
    assert [r["run_id"] for r in store.list_runs("job-a")] == [a3, a2, a1]
    assert [r["run_id"] for r in store.list_runs("job-a", limit=2)] == [a3, a2]
    assert [r["run_id"] for r in store.list_runs("job-b")] == [b1]
    assert [r["run_id"] for r in store.list_runs()] == [a3, a2, b1, a1]
    assert store.list_runs("job-c") == []


def test_list_runs_with_a_zero_limit_lists_nothing(store: RunStore) -> None:
    make_run(store)
    assert store.list_runs(JOB, limit=0) == []


def test_list_runs_skips_a_record_that_is_gone(store: RunStore) -> None:
    kept = make_run(store, created=time.time() - 10)
    gone = make_run(store, created=time.time())
    store.client.delete(store.keys.run(gone))
    assert [r["run_id"] for r in store.list_runs(JOB)] == [kept]
    assert store.get_many([gone, kept])[0] is None


def test_mark_running_only_from_queued(store: RunStore) -> None:
    run_id = make_run(store)
    store.mark_running(run_id)
    run = store.get(run_id)
    assert run is not None and run["status"] == "running"
    started = run["started_at"]
    assert started == pytest.approx(time.time(), abs=30)

    store.mark_running(run_id)  # already running: started_at stays
    run = store.get(run_id)
    assert run is not None and run["started_at"] == started

    store.finish(run_id, "success", "")
    store.mark_running(run_id)  # a late message never revives a final run
    run = store.get(run_id)
    assert run is not None and run["status"] == "success"


def test_mark_running_of_unknown_run_creates_nothing(store: RunStore) -> None:
    ghost = new_run_id()
    store.mark_running(ghost)
    assert not store.exists(ghost)


# --------------------------------------------------------------------------- job lock


def test_lock_is_exclusive_and_names_its_holder(lock: JobLock) -> None:
    first, second = new_run_id(), new_run_id()
    assert lock.holder(JOB) is None
    assert lock.acquire(JOB, first, 60) is True
    assert lock.acquire(JOB, second, 60) is False
    assert lock.acquire(JOB, first, 60) is False  # NX: not even the holder re-takes it
    assert lock.holder(JOB) == first
    # Another job's lock is independent.
    assert lock.acquire("other-job", second, 60) is True


def test_lock_released_only_by_its_holder(lock: JobLock) -> None:
    holder, late = new_run_id(), new_run_id()
    lock.acquire(JOB, holder, 60)
    assert lock.release(JOB, late) is False
    assert lock.holder(JOB) == holder
    assert lock.release(JOB, holder) is True
    assert lock.holder(JOB) is None
    assert lock.release(JOB, holder) is False
    assert lock.acquire(JOB, late, 60) is True


def test_lock_has_the_run_deadline_as_ttl(lock: JobLock) -> None:
    run_id = new_run_id()
    lock.acquire(JOB, run_id, 120)
    ttl_ms = lock.client.pttl(lock.keys.lock(JOB))
    assert 110_000 < ttl_ms <= 120_000


def test_lock_ttl_is_at_least_a_second(lock: JobLock) -> None:
    lock.acquire(JOB, new_run_id(), 0.001)
    ttl_ms = lock.client.pttl(lock.keys.lock(JOB))
    assert 0 < ttl_ms <= 1000


def test_lock_frees_itself_at_its_ttl(lock: JobLock) -> None:
    first, second = new_run_id(), new_run_id()
    lock.acquire(JOB, first, 0.001)  # one second: the minimum
    wait_for(lambda: lock.holder(JOB) is None, 5, "the lock to expire")
    assert lock.acquire(JOB, second, 60) is True


# --------------------------------------------------------------------------- claims


def claim_fields(client: redis.Redis, key: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(key).items()}


def take_dead_claim(claims: Claims, run_id: str, step: str) -> str:
    """A claim taken by an owner that never beats again (its process died): the raw script."""
    key = claims.keys.claim(run_id, step)
    found = script(claims.client, "claim_take")(
        keys=[key, claims.keys.host_claims("elsewhere")],
        args=["dead-owner-token", "elsewhere", 999_999, 1.0, int(time.time() * 1000), 60_000],
    )
    assert int(found[0]) == 1
    return key


def test_take_a_free_claim(claims: Claims) -> None:
    run_id = new_run_id()
    outcome = claims.acquire(run_id, "pre.0", 60)
    try:
        assert outcome.verdict == "taken"
        assert isinstance(outcome.claim, Claim)
        key = claims.keys.claim(run_id, "pre.0")
        fields = claim_fields(claims.client, key)
        assert fields["state"] == "running"
        assert fields["host"] == claims.host
        assert int(fields["pid"]) > 0
        assert fields["token"] == outcome.claim.token
        ttl_ms = claims.client.pttl(key)
        assert 50_000 < ttl_ms <= 60_000
        assert claims.client.sismember(claims.keys.host_claims(claims.host), key)
    finally:
        assert outcome.claim is not None
        outcome.claim.settle("ok")


def test_heartbeat_thread_beats(claims: Claims) -> None:
    run_id = new_run_id()
    outcome = claims.acquire(run_id, "pre.0", 60)
    assert outcome.claim is not None
    key = outcome.claim.key
    try:
        first = text(claims.client.hget(key, "hb"))
        beats = {first}

        def moved_twice() -> bool:
            beats.add(text(claims.client.hget(key, "hb")))
            return len(beats) >= 3

        wait_for(moved_twice, 10 * HEARTBEAT, "two heartbeats", interval=0.02)
    finally:
        outcome.claim.settle("ok")


def test_settle_stops_the_heartbeat_and_records_the_state(claims: Claims) -> None:
    run_id = new_run_id()
    outcome = claims.acquire(run_id, "dump", 60)
    claim = outcome.claim
    assert claim is not None and claim._thread is not None
    claim.settle("failed")
    assert not claim._thread.is_alive()
    fields = claim_fields(claims.client, claim.key)
    assert fields["state"] == "failed"
    # The heartbeat script refuses a settled claim even to its owner.
    beat = script(claims.client, "claim_beat")
    assert beat(keys=[claim.key], args=[claim.token, 1]) == 0
    assert claim_fields(claims.client, claim.key)["hb"] == fields["hb"]


def test_second_delivery_of_a_live_claim_is_a_duplicate(claims: Claims) -> None:
    run_id = new_run_id()
    owner = claims.acquire(run_id, "pre.0", 60)
    assert owner.claim is not None
    try:
        started = time.monotonic()
        second = claims.acquire(run_id, "pre.0", 60)
        elapsed = time.monotonic() - started
        assert second == ClaimOutcome("duplicate")
        # It saw the heartbeat move: it did not need to watch the whole window.
        assert elapsed < WATCH_PERIODS * HEARTBEAT
        fields = claim_fields(claims.client, owner.claim.key)
        assert (fields["state"], fields["token"]) == ("running", owner.claim.token)
    finally:
        owner.claim.settle("ok")


def test_delivery_of_a_settled_claim_is_a_duplicate_at_once(claims: Claims) -> None:
    run_id = new_run_id()
    owner = claims.acquire(run_id, "post.1", 60)
    assert owner.claim is not None
    owner.claim.settle("ok")
    started = time.monotonic()
    assert claims.acquire(run_id, "post.1", 60).verdict == "duplicate"
    assert time.monotonic() - started < HEARTBEAT
    assert claim_fields(claims.client, owner.claim.key)["state"] == "ok"


def test_claim_with_a_still_heartbeat_is_orphaned(claims: Claims) -> None:
    run_id = new_run_id()
    key = take_dead_claim(claims, run_id, "pre.0")
    started = time.monotonic()
    outcome = claims.acquire(run_id, "pre.0", 60)
    elapsed = time.monotonic() - started
    assert outcome.verdict == "orphaned"
    assert outcome.claim is None
    # It watched for the whole window before it called the owner dead, and no much longer.
    assert WATCH_PERIODS * HEARTBEAT <= elapsed < WATCH_PERIODS * HEARTBEAT + 2
    assert claim_fields(claims.client, key)["state"] == "interrupted"
    # Once settled as interrupted, any later delivery is a duplicate.
    assert claims.acquire(run_id, "pre.0", 60).verdict == "duplicate"


def test_two_watchers_of_a_dead_claim_only_one_wins(claims: Claims) -> None:
    run_id = new_run_id()
    take_dead_claim(claims, run_id, "dump")
    other = Claims(claims.client, claims.keys.prefix, heartbeat=HEARTBEAT)
    verdicts: list[str] = []
    barrier = threading.Barrier(2)

    def watch(watcher: Claims) -> None:
        barrier.wait()
        verdicts.append(watcher.acquire(run_id, "dump", 60).verdict)

    threads = [threading.Thread(target=watch, args=(w,)) for w in (claims, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(verdicts) == ["duplicate", "orphaned"]


def test_owner_that_comes_back_after_a_takeover_cannot_beat_or_settle(claims: Claims) -> None:
    """A slow owner (not dead) whose claim was taken over must not overwrite the verdict."""
    run_id = new_run_id()
    outcome = claims.acquire(run_id, "pre.2", 60)
    claim = outcome.claim
    assert claim is not None
    # Freeze the owner's heartbeat as if its process had stalled (stop only the thread).
    claim._stop.set()
    assert claim._thread is not None
    claim._thread.join()
    assert claims.acquire(run_id, "pre.2", 60).verdict == "orphaned"
    claim.settle("ok")  # the stalled owner wakes and tries to settle
    assert claim_fields(claims.client, claim.key)["state"] == "interrupted"
    beat = script(claims.client, "claim_beat")
    assert beat(keys=[claim.key], args=[claim.token, int(time.time() * 1000)]) == 0


def test_claims_of_different_steps_and_runs_are_independent(claims: Claims) -> None:
    run_a, run_b = new_run_id(), new_run_id()
    held = [claims.acquire(r, s, 60) for r in (run_a, run_b) for s in ("pre.0", "pre.1", "dump")]
    try:
        assert [h.verdict for h in held] == ["taken"] * 6
    finally:
        for h in held:
            assert h.claim is not None
            h.claim.settle("ok")


# --------------------------------------------------------------------------- stats


def stats(client: redis.Redis, prefix: str, job: str = JOB) -> dict[str, str]:
    return claim_fields(client, Keys(prefix).stats(job))


def test_stats_count_a_successful_run(any_redis: redis.Redis, key_prefix: str) -> None:
    now = time.time()
    run = {
        "created_at": now - 20,
        "started_at": now - 12.5,
        "artifact": {"stored_bytes": 4096},
        "steps": {"pre.0": {"state": "ok"}, "dump": {"state": "ok"}, "post.0": {"state": "ok"}},
    }
    record_finished_run(any_redis, key_prefix, JOB, "success", run)
    found = stats(any_redis, key_prefix)
    assert found["runs_total:success"] == "1"
    assert float(found["last_run_duration_seconds"]) == pytest.approx(12.5, abs=5)
    assert float(found["last_success_timestamp_seconds"]) == pytest.approx(now, abs=30)
    assert found["last_backup_size_bytes"] == "4096"
    assert not any(name.startswith("hook_failures") for name in found)
    assert "hook_budget_exhausted" not in found

    record_finished_run(any_redis, key_prefix, JOB, "success", run)
    assert stats(any_redis, key_prefix)["runs_total:success"] == "2"


def test_stats_count_failures_by_phase_and_state(any_redis: redis.Redis, key_prefix: str) -> None:
    run = {
        "created_at": time.time() - 5,
        "steps": {
            "pre.0": {"state": "failed"},
            "pre.1": {"state": "timed_out"},
            "pre.2": {"state": "ok"},
            "dump": {"state": "skipped"},
            "post.0": {"state": "budget_exceeded"},
            "post.1": {"state": "skipped"},
            "refused.1": {"state": "refused"},
        },
    }
    record_finished_run(any_redis, key_prefix, JOB, "failed", run, budget_exhausted=True)
    found = stats(any_redis, key_prefix)
    assert found["runs_total:failed"] == "1"
    assert found["hook_failures:pre:failed"] == "1"
    assert found["hook_failures:pre:timed_out"] == "1"
    assert found["hook_failures:post:budget_exceeded"] == "1"
    assert found["hook_budget_exhausted"] == "1"
    assert "last_success_timestamp_seconds" not in found
    assert "last_backup_size_bytes" not in found
    assert not any(":skipped" in name or "refused." in name for name in found)


def test_stats_per_status_and_per_job(any_redis: redis.Redis, key_prefix: str) -> None:
    for status in ("lost", "skipped", "lost"):
        record_finished_run(any_redis, key_prefix, JOB, status, {"created_at": time.time()})
    record_finished_run(any_redis, key_prefix, "other", "success", {})
    found = stats(any_redis, key_prefix)
    assert (found["runs_total:lost"], found["runs_total:skipped"]) == ("2", "1")
    assert "runs_total:success" not in found
    other = stats(any_redis, key_prefix, "other")
    assert other["runs_total:success"] == "1"
    assert "last_run_duration_seconds" not in other  # no start time: no duration made up
