"""The CLI against real workers, and result 10 of the Celery issue: `backupy demo` passes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import Deployment, sqlite_job
from tests.integration.runs import start, wait_final
from workers.processes import PROJECT_ROOT

pytestmark = pytest.mark.integration
BACKUPY = [sys.executable, "-c", "from workers.cli import main; main()"]


def backupy(world: Deployment, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*BACKUPY, *args],
        env=world.env(COLUMNS="200"),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_run_wait_exits_0_on_success_and_1_on_failure(
    world: Deployment, source_db: Path, tmp_path: Path
) -> None:
    queue = world.queue()
    world.write_config(
        [
            sqlite_job("good", source_db, queue, pre_hooks=[{"command": "echo hello"}]),
            sqlite_job("bad", source_db, queue, pre_hooks=[{"command": "echo broken >&2; exit 4"}]),
        ]
    )
    world.worker([queue])

    good = backupy(world, "run", "good", "--wait")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "pre.0" in good.stdout and "dump" in good.stdout and "success" in good.stdout

    bad = backupy(world, "run", "bad", "--wait")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "broken" in bad.stdout and "failed" in bad.stdout

    listed = backupy(world, "runs", "--json")
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)
    assert {run["job"] for run in runs} == {"good", "bad"}
    shown = backupy(world, "show", runs[0]["run_id"], "--json")
    assert json.loads(shown.stdout)["run_id"] == runs[0]["run_id"]


def test_bad_input_is_one_line_and_exit_2(world: Deployment, source_db: Path) -> None:
    world.write_config([sqlite_job("only", source_db, world.queue())])
    cases = [
        (("run", "nope"), "no job 'nope'"),
        (("show", "20261203T000000Z-00000000"), "no run 20261203T000000Z-00000000"),
        (("show", "not-a-run"), "is not a run id"),
    ]
    for args, message in cases:
        result = backupy(world, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_show_lists_every_step_of_a_finished_run(world: Deployment, source_db: Path) -> None:
    queue = world.queue()
    world.write_config(
        [sqlite_job("shown", source_db, queue, post_hooks=[{"command": "echo tail-of-output"}])]
    )
    world.worker([queue])
    run = wait_final(world, start(world, "shown"))
    shown = backupy(world, "show", run["run_id"])
    assert shown.returncode == 0, shown.stderr
    for text in ("dump", "post.0", "tail-of-output", run["artifact"]["sha256"][:16], "budget"):
        assert text in shown.stdout


def test_make_demo_command_passes() -> None:
    """`make demo` runs `backupy demo`: embedded Redis, worker, beat, a run, a restore check."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "COLUMNS": "120"}
    result = subprocess.run(
        [*BACKUPY, "demo"], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "equal to the source" in result.stdout
    assert "demo passed" in result.stdout
