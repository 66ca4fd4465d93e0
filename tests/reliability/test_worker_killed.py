"""Result 3 of the reliability issue: the whole worker (main process and pool) killed with -9.

Two ways a run still ends, and in both the job lock is freed and nothing of the dead attempt is
left under the artifact's final name nor as a partial file:

- A new worker finishes the chains. The Redis transport delivers an unacked message again only
  once its ``visibility_timeout`` has passed; the redelivery finds the dead owner's claim, the
  step is recorded ``interrupted``, the post-hooks run and finalize sweeps the partial files. The
  new worker's supervisor also ends the hook the dead worker left running (its claims are in
  ``hostclaims:{host}``): nothing else on the host could.
- No worker comes back for the run: the watchdog marks it ``lost`` once its deadline passes.

The visibility timeout cannot be set to a few seconds: the worker refuses one not above its
longest hard time limit, and finalize's alone is 65 s. Rather than wait that long, the test moves
the dead worker's entries in the transport's unacked index back by the visibility timeout, as
if that time had passed (the test owns this Redis); the new worker's first restore sweep (when it
starts polling) then redelivers them through the transport's own code.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.redis_keys import Keys
from tasks.runs import RunStore
from tests.harness import Deployment, sqlite_job, wait_for
from tests.integration.processes import processes_with, unique_sleep
from tests.integration.runs import start, store_of, wait_final
from tests.reliability.test_redis_restart import (
    OwnRedis,
    lines,
    run_files,
    running_redis,
    slow_db,
    world_on,
)
from workers.processes import PROJECT_ROOT

pytestmark = pytest.mark.integration

# Above the longest hard time limit of these jobs (finalize: 60 s + 5 s), as the worker demands.
VISIBILITY_TIMEOUT_SECONDS = 70
# kombu's Redis transport keeps unacked deliveries here (no prefix: one per Redis database).
UNACKED_INDEX = "unacked_index"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    yield from running_redis(tmp_path)


def private_tmp(tmp: Path) -> str:
    """The workers' TMPDIR: a killed SQLite dump leaves its snapshot (the database in clear) in
    its temporary directory, and nothing removes it; keep that inside the test's own directory."""
    path = tmp / "worker-tmp"
    path.mkdir(exist_ok=True)
    return str(path)


def dump_running(store: RunStore, run_id: str) -> bool:
    return bool((store.get(run_id) or {}).get("progress", {}).get("dump"))


def partials(world: Deployment, run_id: str) -> list[str]:
    return [name for name in run_files(world.storage, run_id) if ".partial-" in name]


def age_unacked_past_visibility(server: OwnRedis) -> int:
    """Make the unacked deliveries look VISIBILITY_TIMEOUT_SECONDS + 1 s old."""
    client = server.client()
    try:
        tags = client.zrange(UNACKED_INDEX, 0, -1)
        long_ago = time.time() - VISIBILITY_TIMEOUT_SECONDS - 1
        if tags:
            client.zadd(UNACKED_INDEX, {tag: long_ago for tag in tags})
        return len(tags)
    finally:
        client.close()


def test_new_worker_finishes_the_chains_and_reaps_the_dead_workers_hook(
    own_redis: OwnRedis, tmp_path: Path
) -> None:
    slow = slow_db(tmp_path / "slow.db")
    sleeper = unique_sleep(300)
    starts, dump_posts, hook_posts = tmp_path / "starts", tmp_path / "dposts", tmp_path / "hposts"
    with world_on(own_redis, tmp_path) as world:
        queue = world.queue()
        world.write_config(
            [
                sqlite_job(
                    "dumped",
                    slow,
                    queue,
                    timeout="30s",
                    compression={"type": "zstd", "level": 19},
                    post_hooks=[
                        {"command": f"echo $BACKUPY_STATUS >> {dump_posts}", "timeout": "10s"}
                    ],
                ),
                sqlite_job(
                    "hooked",
                    slow,
                    queue,
                    timeout="30s",
                    pre_hooks=[{"command": f"echo start >> {starts}; {sleeper}", "timeout": "30s"}],
                    post_hooks=[
                        {"command": f"echo $BACKUPY_STATUS >> {hook_posts}", "timeout": "10s"}
                    ],
                ),
            ]
        )
        env = {
            "BACKUPY_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_SECONDS),
            "TMPDIR": private_tmp(tmp_path),
        }
        first = world.worker([queue], name="first", **env)
        dumped, hooked = start(world, "dumped"), start(world, "hooked")
        store = store_of(world)
        wait_for(lambda: dump_running(store, dumped), 30, "the dump to be under way")
        wait_for(lambda: processes_with(sleeper), 30, "the hook's sleep")

        first.kill()  # SIGKILL to the worker's session: main process and pool, not the hook
        assert processes_with(sleeper), "the hook should have outlived its worker"
        assert partials(world, dumped), "the killed dump should have left a partial file"
        assert age_unacked_past_visibility(own_redis) >= 2

        world.worker([queue], name="second", **env)
        wait_for(lambda: not processes_with(sleeper), 5, "the new worker to end the orphan hook")
        runs = {run_id: wait_final(world, run_id, timeout=30) for run_id in (dumped, hooked)}

    dump_run, hook_run = runs[dumped], runs[hooked]
    assert dump_run["steps"]["dump"]["state"] == "interrupted", dump_run["steps"]["dump"]
    assert dump_run["steps"]["post.0"]["state"] == "ok"
    assert dump_run["status"] == "failed"
    assert lines(dump_posts) == ["failed"]
    assert hook_run["steps"]["pre.0"]["state"] == "interrupted", hook_run["steps"]["pre.0"]
    assert hook_run["steps"]["dump"]["state"] == "skipped"
    assert hook_run["status"] == "failed"
    assert lines(hook_posts) == ["failed"]
    assert lines(starts) == ["start"], "the hook ran more than once"

    keys = Keys(world.prefix)
    for run_id, run in runs.items():
        assert run["finished_at"] <= run["deadline"]
        assert store.client.get(keys.lock(run["job"])) is None, "the job lock was not freed"
        assert run_files(world.storage, run_id) == [], "the dead attempt left files behind"
    assert store.in_progress() == []


def test_watchdog_marks_the_run_lost_when_no_worker_comes_back(
    own_redis: OwnRedis, tmp_path: Path
) -> None:
    slow = slow_db(tmp_path / "slow.db")
    with world_on(own_redis, tmp_path) as world:
        queue = world.queue()
        # Deadline = budget 1 s + timeout 5 s + 2 steps x 5 s hard-limit margin + slack 1 s.
        world.write_config(
            [
                sqlite_job(
                    "lonely",
                    slow,
                    queue,
                    timeout="5s",
                    hooks_budget="1s",
                    compression={"type": "zstd", "level": 19},
                )
            ]
        )
        env = world.env(BACKUPY_DEADLINE_SLACK="1")
        worker = world.worker([queue], BACKUPY_DEADLINE_SLACK="1", TMPDIR=private_tmp(tmp_path))
        run_id = start(world, "lonely")
        store = store_of(world)
        wait_for(lambda: dump_running(store, run_id), 30, "the dump to be under way")
        worker.kill()
        assert partials(world, run_id), "the killed dump should have left a partial file"

        deadline = float(store.get(run_id)["deadline"])
        assert deadline - time.time() < 25
        wait_for(lambda: time.time() > deadline, 30, "the run's deadline to pass", interval=0.2)
        called = subprocess.run(
            [
                sys.executable,
                "-c",
                "from workers.watchdog import mark_overdue_runs_lost; "
                "print(' '.join(mark_overdue_runs_lost()))",
            ],
            env=env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert called.returncode == 0, called.stderr
        assert called.stdout.split() == [run_id]

    run = store.get(run_id)
    assert run["status"] == "lost", run
    assert run["finished_at"] - deadline < 10
    keys = Keys(world.prefix)
    assert store.client.get(keys.lock("lonely")) is None
    # The dead worker's dump message is still unacked: the transport delivers it again once the
    # visibility timeout (6 h here) has passed, long after this deadline. The claim must still be
    # there then, or the late delivery would find no claim and run the dump again.
    assert store.client.ttl(keys.claim(run_id, "dump")) > 6 * 3600
    assert run_files(world.storage, run_id) == [], "the dead attempt left files behind"
    assert store.in_progress() == []
