"""Result 1 of the Celery issue: pre-hooks, SQLite dump, post-hooks end `success`, and the
artifact decrypts with the Debian `age` CLI and `zstd -d` into a database equal to the source."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.harness import Deployment, sqlite_job
from tests.integration.runs import start, wait_final

pytestmark = pytest.mark.integration


def rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT id, name, data FROM items ORDER BY id").fetchall()


def test_full_run_succeeds_and_restores_with_standard_tools(
    world: Deployment, source_db: Path, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    queue = world.queue()
    world.write_config(
        [
            sqlite_job(
                "app-db",
                source_db,
                queue,
                pre_hooks=[
                    {"command": f"echo checkpoint > {marks}/pre0"},
                    {"command": f"echo quiesce > {marks}/pre1"},
                    {"command": f"echo snapshot > {marks}/pre2"},
                ],
                post_hooks=[
                    {"command": f'echo "$BACKUPY_STATUS $BACKUPY_ARTIFACT" > {marks}/post0'},
                    {"command": "echo notify"},
                ],
            )
        ]
    )
    world.worker([queue])
    run_id = start(world, "app-db")
    run = wait_final(world, run_id)

    assert run["status"] == "success", run
    for name in ("pre.0", "pre.1", "pre.2", "dump", "post.0", "post.1"):
        assert run["steps"][name]["state"] == "ok", (name, run["steps"][name])
    artifact = run["artifact"]
    assert artifact["key"].endswith(".sqlite.zst.age")
    assert (marks / "post0").read_text().split() == ["success", artifact["key"]]

    env = world.env()
    shown = CliRunner().invoke(
        __import__("workers.cli", fromlist=["main"]).main, ["show", run_id], env=env
    )
    assert shown.exit_code == 0, shown.output
    for name in ("pre.0", "pre.1", "pre.2", "dump", "post.0", "post.1"):
        assert name in shown.output

    age, zstd = shutil.which("age"), shutil.which("zstd")
    if not age or not zstd:
        pytest.fail("the Debian age and zstd CLIs are needed (.ci/run installs them)")
    stored = world.storage / artifact["key"]
    restored = tmp_path / "restored.db"
    decrypted = subprocess.run(
        [age, "-d", "-i", str(world.identity), str(stored)], check=True, capture_output=True
    ).stdout
    restored.write_bytes(
        subprocess.run([zstd, "-d"], input=decrypted, check=True, capture_output=True).stdout
    )
    assert rows(restored) == rows(source_db)
