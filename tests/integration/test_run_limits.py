"""Results 2 and 3 of the Celery issue: per-hook time limits and the budget across workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.jobs import load_config
from config.limits import Limits
from tasks.pipeline import build_run
from tests.harness import Deployment, sqlite_job
from tests.integration.processes import processes_with, unique_sleep
from tests.integration.runs import start, wait_final

pytestmark = pytest.mark.integration
GRACE = Limits().kill_grace
TICK = Limits().budget_tick


def test_hook_timeout_maps_to_time_limits_and_ends_timed_out(
    world: Deployment, source_db: Path, tmp_path: Path
) -> None:
    queue = world.queue()
    sleeper = unique_sleep(60)
    marker = tmp_path / "post-ran"
    world.write_config(
        [
            sqlite_job(
                "slow-hook",
                source_db,
                queue,
                pre_hooks=[{"command": sleeper, "timeout": "2s"}],
                post_hooks=[{"command": f"echo $BACKUPY_STATUS > {marker}"}],
            )
        ]
    )
    job = load_config(world.config_path).job("slow-hook")
    canvas = build_run(job, "20261203T000000Z-00000000", "0" * 64, Limits())
    first = canvas.tasks[0]
    assert first.options["soft_time_limit"] == 2
    assert first.options["time_limit"] == 2 + Limits().hard_limit_margin

    world.worker([queue])
    run = wait_final(world, start(world, "slow-hook"))

    hook = run["steps"]["pre.0"]
    assert hook["state"] == "timed_out", hook
    assert hook["exit_code"] == -1
    assert hook["duration"] < 2 + GRACE + 0.5
    assert not processes_with(sleeper), "a process of the timed-out hook is still alive"
    assert run["steps"]["dump"]["state"] == "skipped"
    assert run["steps"]["post.0"]["state"] == "ok"
    assert marker.read_text().strip() == "failed"
    assert run["status"] == "failed"


def test_budget_is_shared_by_hooks_on_two_workers(world: Deployment, source_db: Path) -> None:
    queue = world.queue()
    hooks = 6
    world.write_config(
        [
            sqlite_job(
                "budgeted",
                source_db,
                queue,
                hooks_budget="8s",
                pre_hooks=[{"command": "sleep 5", "timeout": "30s"}] * hooks,
                post_hooks=[{"command": "echo undo"}],
            )
        ]
    )
    first = world.worker([queue], name="a", concurrency=2)
    second = world.worker([queue], name="b", concurrency=2)
    run = wait_final(world, start(world, "budgeted"), timeout=60)

    budget = run["budget"]
    assert budget["total"] == 8
    assert budget["spent"] <= 8 + hooks * TICK, budget
    assert budget["exhausted"]
    pre = [run["steps"][f"pre.{i}"] for i in range(hooks)]
    assert all(step["state"] == "budget_exceeded" for step in pre), pre
    started = [step for step in pre if step.get("duration", 0) > 0.5]
    assert len(started) == 4, "both workers' two processes each ran a hook at once"
    assert run["steps"]["post.0"]["state"] == "budget_exceeded"
    assert run["steps"]["post.0"]["reason"]
    assert run["steps"]["dump"]["state"] == "skipped"
    assert run["status"] == "failed"
    assert first.process and second.process  # both served the queue
