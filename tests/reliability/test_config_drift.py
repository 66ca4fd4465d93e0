"""Result 6 of the reliability issue: config drift between two workers is reported, not guessed.

Two workers serve one job's queue with configs that differ by one pre-hook command. The run is
triggered from the first config; the first worker takes the start and the first pre-hook, then
stops consuming (Celery's ``cancel_consumer``, confirmed by its reply), so the next step reaches
the drifted worker, deterministically. That worker refuses it, and the run record names its host,
its worker node and both digests.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.jobs import load_config
from tests.harness import Deployment, sqlite_job, wait_for
from tests.integration.runs import client_app, start, store_of

pytestmark = pytest.mark.integration

JOB = "app-db"
REPO_ROOT = Path(__file__).resolve().parents[2]


def jobs(world: Deployment, source_db: Path, gate: Path, second_hook: str) -> list[dict[str, Any]]:
    started = world.tmp / "pre0-started"
    return [
        sqlite_job(
            JOB,
            source_db,
            world.queue(),
            hook_order="sequential",
            pre_hooks=[
                {"command": f"touch {started}; until [ -e {gate} ]; do sleep 0.05; done"},
                {"command": second_hook},
            ],
        )
    ]


def drifted_config(world: Deployment, source_db: Path, gate: Path) -> Path:
    """The world's config with the second pre-hook's command changed: nothing else."""
    path = world.tmp / "jobs-drifted.yaml"
    document = yaml.safe_load(world.config_path.read_text())
    document["jobs"] = jobs(world, source_db, gate, f"touch {world.tmp}/drifted-ran")
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def validate(path: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", "from workers.cli import main; main()", "validate", "-c", str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_a_step_reaching_a_drifted_worker_is_refused_naming_host_and_digest(
    world: Deployment, source_db: Path
) -> None:
    gate = world.tmp / "gate"
    world.write_config(jobs(world, source_db, gate, f"touch {world.tmp}/original-ran"))
    drifted = drifted_config(world, source_db, gate)
    ours = load_config(world.config_path).job_digest(JOB)
    theirs = load_config(drifted).job_digest(JOB)
    assert ours != theirs

    queue = world.queue()
    first = world.worker([queue], name="wa", concurrency=1)
    run_id = start(world, JOB)
    wait_for((world.tmp / "pre0-started").exists, 30, "pre.0 to start on the first worker")
    world.worker([queue], name="wb", concurrency=1, BACKUPY_CONFIG=str(drifted))

    app = client_app(world)
    try:
        node_a = f"wa-{world.tag}@{socket.gethostname()}"
        replies = app.control.cancel_consumer(queue, destination=[node_a], reply=True, timeout=10)
        assert replies and node_a in replies[0], replies
    finally:
        app.close()
    gate.touch()  # pre.0 ends on the first worker; pre.1 can only reach the drifted one

    store = store_of(world)

    def refused_pre1() -> dict[str, Any] | None:
        run = store.get(run_id)
        step = (run or {}).get("steps", {}).get("pre.1")
        return run if step else None

    run = wait_for(refused_pre1, 30, "pre.1 to be handled", interval=0.1)
    assert run["steps"]["pre.0"]["state"] == "ok"
    assert run["digest"] == ours
    step = run["steps"]["pre.1"]
    assert step["state"] == "refused", step
    reason = step["reason"]
    assert reason.startswith("config drift: ")
    assert f"host {socket.gethostname()}" in reason
    assert f"worker wb-{world.tag}@" in reason  # the node: two workers on one host differ by it
    assert f"has digest {theirs[:12]}" in reason and ours[:12] in reason
    assert step["host"] == socket.gethostname()
    # Neither version of the hook ran: the drifted worker refused before looking it up.
    assert not (world.tmp / "drifted-ran").exists() and not (world.tmp / "original-ran").exists()
    assert "Task backupy.hook" in first.log()


def test_validate_prints_the_digests_that_differ(world: Deployment, source_db: Path) -> None:
    gate = world.tmp / "gate"
    world.write_config(jobs(world, source_db, gate, "echo original"))
    drifted = drifted_config(world, source_db, gate)
    cfg_a, cfg_b = load_config(world.config_path), load_config(drifted)

    lines_a, lines_b = validate(world.config_path), validate(drifted)
    assert f"digest {cfg_a.job_digest(JOB)[:12]}" in lines_a[0]
    assert f"digest {cfg_b.job_digest(JOB)[:12]}" in lines_b[0]
    assert lines_a[-1] == f"config digest {cfg_a.digest}"
    assert lines_b[-1] == f"config digest {cfg_b.digest}"
    assert lines_a[0] != lines_b[0] and lines_a[-1] != lines_b[-1]
