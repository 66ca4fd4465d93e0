"""Result 4 of the Celery issue: the failure semantics of DESIGN.md, with real workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import Deployment, sqlite_job
from tests.integration.runs import start, wait_final

pytestmark = pytest.mark.integration


def status_hook(marks: Path, name: str, when: str = "always") -> dict[str, str]:
    return {"command": f'echo "$BACKUPY_STATUS|$BACKUPY_ERROR" > {marks}/{name}', "when": when}


def test_failure_semantics(world: Deployment, source_db: Path, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    queue = world.queue()
    jobs = [
        sqlite_job(
            "pre-fails",
            source_db,
            queue,
            pre_hooks=[{"command": "exit 3"}, {"command": "true"}],
            post_hooks=[status_hook(marks, "pre-fails")],
        ),
        sqlite_job(
            "tempfail",
            source_db,
            queue,
            pre_hooks=[{"command": "exit 75"}],
            post_hooks=[status_hook(marks, "tempfail")],
        ),
        sqlite_job(
            "continue",
            source_db,
            queue,
            pre_hooks=[{"command": "exit 3", "on_error": "continue"}],
            post_hooks=[status_hook(marks, "continue")],
        ),
        sqlite_job(
            "when-failed",
            source_db,
            queue,
            pre_hooks=[{"command": "exit 1"}],
            post_hooks=[
                status_hook(marks, "when-failed-success", "success"),
                status_hook(marks, "when-failed-failure", "failure"),
            ],
        ),
        sqlite_job(
            "when-ok",
            source_db,
            queue,
            post_hooks=[
                status_hook(marks, "when-ok-success", "success"),
                status_hook(marks, "when-ok-failure", "failure"),
            ],
        ),
        sqlite_job(
            "dump-fails",
            tmp_path / "missing.db",
            queue,
            post_hooks=[status_hook(marks, "dump-fails")],
        ),
    ]
    world.write_config(jobs)
    world.worker([queue], concurrency=2)
    run_ids = {job["id"]: start(world, job["id"]) for job in jobs}
    runs = {job_id: wait_final(world, run_id) for job_id, run_id in run_ids.items()}

    def mark(name: str) -> str:
        return (marks / name).read_text().strip()

    pre_fails = runs["pre-fails"]
    assert pre_fails["status"] == "failed"
    assert "pre.0" in pre_fails["reason"]
    assert pre_fails["steps"]["pre.0"]["exit_code"] == 3
    assert pre_fails["steps"]["dump"]["state"] == "skipped"
    assert mark("pre-fails").startswith("failed|pre-hook pre.0")

    tempfail = runs["tempfail"]
    assert tempfail["status"] == "skipped", tempfail["reason"]
    assert tempfail["steps"]["dump"]["state"] == "skipped"
    assert mark("tempfail").startswith("skipped|")

    cont = runs["continue"]
    assert cont["status"] == "success"
    assert cont["steps"]["pre.0"]["state"] == "failed"
    assert cont["steps"]["dump"]["state"] == "ok"
    assert mark("continue") == "success|"

    failed = runs["when-failed"]
    assert failed["steps"]["post.0"]["state"] == "skipped"
    assert failed["steps"]["post.1"]["state"] == "ok"
    assert not (marks / "when-failed-success").exists()
    assert mark("when-failed-failure").startswith("failed|")

    succeeded = runs["when-ok"]
    assert succeeded["status"] == "success"
    assert succeeded["steps"]["post.0"]["state"] == "ok"
    assert succeeded["steps"]["post.1"]["state"] == "skipped"
    assert not (marks / "when-ok-failure").exists()

    dump_fails = runs["dump-fails"]
    assert dump_fails["status"] == "failed"
    assert dump_fails["steps"]["dump"]["state"] == "failed"
    assert "not found" in dump_fails["steps"]["dump"]["reason"]
    assert mark("dump-fails").startswith("failed|dump failed")
    dead = world.storage / "dump-fails"
    assert not dead.exists() or not [p for p in dead.rglob("*") if p.is_file()]
