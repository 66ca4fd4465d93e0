"""Result 6 of the Celery issue: kill -9 of the pool process running a long hook.

The run must still end (the redelivered message finds the dead owner's claim and records the
hook ``interrupted``), the post-hooks must run, the hook must have run exactly once, and the
supervisor in the worker's main process must have ended the orphaned hook's process group.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.harness import Deployment, sqlite_job, wait_for
from tests.integration.processes import processes_with, unique_sleep
from tests.integration.runs import start, wait_final

pytestmark = pytest.mark.integration


def test_killed_pool_process_interrupts_the_hook_and_the_run_goes_on(
    world: Deployment, source_db: Path, tmp_path: Path
) -> None:
    queue = world.queue()
    sleeper = unique_sleep(120)
    starts, owner = tmp_path / "starts", tmp_path / "owner"
    post = tmp_path / "post"
    world.write_config(
        [
            sqlite_job(
                "doomed",
                source_db,
                queue,
                pre_hooks=[{"command": f"echo start >> {starts}; echo $PPID > {owner}; {sleeper}"}],
                post_hooks=[{"command": f"echo $BACKUPY_STATUS > {post}"}],
            )
        ]
    )
    worker = world.worker([queue])
    run_id = start(world, "doomed")

    pool_pid = int(wait_for(lambda: owner.exists() and owner.read_text().strip(), 30, "hook"))
    assert pool_pid in worker.pool_pids()
    wait_for(lambda: processes_with(sleeper), 10, "the hook's sleep")
    killed_at = time.monotonic()
    os.kill(pool_pid, signal.SIGKILL)

    run = wait_final(world, run_id, timeout=30)
    assert time.monotonic() - killed_at < 30
    assert run["steps"]["pre.0"]["state"] == "interrupted", run["steps"]["pre.0"]
    assert run["steps"]["post.0"]["state"] == "ok"
    assert post.read_text().strip() == "failed"
    assert run["status"] == "failed"
    assert starts.read_text().splitlines() == ["start"], "the hook ran more than once"
    wait_for(lambda: not processes_with(sleeper), 5, "the orphaned hook to be ended")
