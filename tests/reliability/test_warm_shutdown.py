"""Result 2 of the reliability issue: warm shutdown (SIGTERM to the worker's main process) while a
hook runs and while a dump runs.

Celery's warm shutdown stops taking messages and waits for the tasks it is running. With
``acks_late`` those tasks finish, are recorded and acked; the steps they queue next (post-hooks,
finalize) wait in the broker. A worker started afterwards finishes both runs. No step may run
twice and nothing may be left without a final state.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.redis_keys import Keys
from tests.harness import sqlite_job, wait_for
from tests.integration.processes import processes_with, unique_sleep
from tests.integration.runs import start, store_of, wait_final
from tests.reliability.test_redis_restart import (
    OwnRedis,
    lines,
    run_files,
    running_redis,
    slow_db,
    small_db,
    world_on,
)

pytestmark = pytest.mark.integration

HOOK_SECONDS = 6


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    yield from running_redis(tmp_path)


def test_warm_shutdown_finishes_running_steps_and_a_new_worker_finishes_the_runs(
    own_redis: OwnRedis, tmp_path: Path
) -> None:
    small, slow = small_db(tmp_path / "small.db"), slow_db(tmp_path / "slow.db")
    sleeper = unique_sleep(HOOK_SECONDS)
    starts, hook_posts, dump_posts = tmp_path / "starts", tmp_path / "hposts", tmp_path / "dposts"
    with world_on(own_redis, tmp_path) as world:
        queue = world.queue()
        world.write_config(
            [
                sqlite_job(
                    "hooked",
                    small,
                    queue,
                    pre_hooks=[
                        {
                            "command": f"echo start >> {starts}; {sleeper}",
                            "timeout": "1m",
                        }
                    ],
                    post_hooks=[{"command": f"echo $BACKUPY_STATUS >> {hook_posts}"}],
                ),
                sqlite_job(
                    "dumped",
                    slow,
                    queue,
                    compression={"type": "zstd", "level": 19},
                    post_hooks=[{"command": f"echo $BACKUPY_STATUS >> {dump_posts}"}],
                ),
            ]
        )
        first = world.worker([queue], name="first")
        hooked, dumped = start(world, "hooked"), start(world, "dumped")
        store = store_of(world)
        wait_for(lambda: lines(starts), 30, "the hook to start")
        wait_for(lambda: (store.get(dumped) or {}).get("progress", {}).get("dump"), 30, "the dump")

        assert first.process is not None
        assert processes_with(sleeper), "the hook ended before the signal"
        sigterm_at = time.time()
        first.process.send_signal(signal.SIGTERM)
        try:
            code = first.process.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail("the warm shutdown did not end within 60 s")
        assert code == 0, first.log()[-2000:]

        # The running steps finished and were recorded; what they queued next is still queued.
        before = {run_id: store.get(run_id) for run_id in (hooked, dumped)}
        assert before[hooked]["steps"]["pre.0"]["state"] == "ok", before[hooked]["steps"]
        assert before[hooked]["steps"]["pre.0"]["duration"] >= HOOK_SECONDS - 0.5
        assert before[dumped]["steps"]["dump"]["state"] == "ok", before[dumped]["steps"]
        # Both were still running when the signal came.
        assert before[dumped]["steps"]["dump"]["finished_at"] > sigterm_at
        assert "dump" not in before[hooked]["steps"] and "post.0" not in before[dumped]["steps"]

        world.worker([queue], name="second")
        runs = {run_id: wait_final(world, run_id, timeout=40) for run_id in (hooked, dumped)}

    for run_id, run in runs.items():
        assert run["status"] == "success", run
        assert run["finished_at"] <= run["deadline"]
        for name, result in run["steps"].items():
            assert result["state"] == "ok", (run_id, name, result)
        # A step run again would have written its result again, here with a later finish time.
        for name, result in before[run_id]["steps"].items():
            assert run["steps"][name] == result, (run_id, name)
        stored = run_files(world.storage, run_id)
        assert len([f for f in stored if f.endswith(".age")]) == 1, stored
        assert not [f for f in stored if ".partial-" in f], stored
    assert lines(starts) == ["start"], "the hook ran more than once"
    assert lines(hook_posts) == ["success"], "the post-hook ran other than once"
    assert lines(dump_posts) == ["success"], "the post-hook ran other than once"
    assert store.in_progress() == [], "a run was left without a final state"
    keys = Keys(world.prefix)
    assert store.client.get(keys.lock("hooked")) is None
    assert store.client.get(keys.lock("dumped")) is None
