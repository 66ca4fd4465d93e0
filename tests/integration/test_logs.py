"""Result 3 of the Operations issue: JSON logs that follow one run across two workers, and no
secret in any log line.

Two workers (one pool process each) share the job's queue; two pre-hooks wait for each other,
so they can only finish when they run at the same time, hence on both workers. A third pre-hook
prints three kinds of secret to stdout, which Celery logs in its ``Task … succeeded`` line:

- the database password of a job in the config (``password_env``, a variable whose name has no
  "secret" word in it, so only the config says it is a password), read from a file;
- an age identity (``backupy keygen``'s file);
- a URL with credentials; the same credentials are in an unrelated variable of the workers'
  environment.

The broker's own credentials cannot be shown here: the shared Redis has no password, and a
``redis://default:pw@`` URL would make AUTH fail. The RabbitMQ test (``test_rabbitmq.py``) runs
with ``amqp://guest:guest@`` and checks that no log line shows it.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Deployment, sqlite_job
from tests.integration.runs import start, wait_final

pytestmark = pytest.mark.integration

JOB = "logs-db"


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON records of a worker's log; anything else must be Celery's start-up banner."""
    records = []
    for line in text.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))  # a record that does not parse fails the test
    return records


def barrier_hook(marks: Path, me: int) -> dict[str, Any]:
    """Finishes only once both barrier hooks have started: they must run concurrently."""
    wait = f"until [ -e {marks}/b0 ] && [ -e {marks}/b1 ]; do sleep 0.05; done"
    return {"command": f"touch {marks}/b{me}; {wait}; echo barrier {me} passed", "timeout": "30s"}


def test_one_run_is_followed_by_run_id_across_two_workers_and_secrets_are_masked(
    world: Deployment, source_db: Path, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    db_password = f"pw-{uuid.uuid4().hex}"
    url_password = f"url-{uuid.uuid4().hex[:16]}"
    secret_file = tmp_path / "pw.txt"
    secret_file.write_text(db_password + "\n")
    identity = world.identity.read_text().strip().splitlines()[-1]
    assert identity.startswith("AGE-SECRET-KEY-1")

    queue = world.queue()
    loud = f"cat {secret_file} {world.identity}; echo https://mirror:{url_password}@mirror.example/"
    world.write_config(
        [
            sqlite_job(
                JOB,
                source_db,
                queue,
                pre_hooks=[barrier_hook(marks, 0), barrier_hook(marks, 1), {"command": loud}],
                post_hooks=[{"command": "echo post $BACKUPY_STATUS"}],
            ),
            # Never run: it makes LOGS_TEST_DBPW a password the config names.
            sqlite_job("other", source_db, queue)
            | {
                "target": {
                    "type": "postgresql",
                    "host": "127.0.0.1",
                    "database": "app",
                    "user": "backup",
                    "password_env": "LOGS_TEST_DBPW",
                }
            },
        ]
    )
    env = {
        "BACKUPY_LOG_FORMAT": "json",
        "LOGS_TEST_DBPW": db_password,
        "UPSTREAM_MIRROR": f"https://mirror:{url_password}@mirror.example/",
    }
    worker_a = world.worker([queue], name="a", concurrency=1, **env)
    worker_b = world.worker([queue], name="b", concurrency=1, **env)

    run_id = start(world, JOB)
    run = wait_final(world, run_id)
    assert run["status"] == "success", run

    logs = {"a": worker_a.log(), "b": worker_b.log()}
    # No secret in any line of either log, JSON or not.
    for name, text in logs.items():
        for secret in (db_password, url_password, identity, identity.lower()):
            assert secret not in text, f"worker {name}'s log shows a secret"

    records = {name: json_lines(text) for name, text in logs.items()}
    for name, lines in records.items():
        assert lines, f"worker {name} wrote no JSON line"
        assert all({"ts", "level", "logger", "message", "host"} <= set(r) for r in lines)
        assert any(r["message"].endswith("ready.") for r in lines), name
    ours = {
        name: [r for r in lines if r.get("run_id") == run_id] for name, lines in records.items()
    }
    steps = {name: {r["step"] for r in lines if "step" in r} for name, lines in ours.items()}
    # Each worker ran one of the two barrier hooks (they had to run at the same time, and each
    # worker has one pool process), so each log has the run's lines of one of them.
    for name in ("a", "b"):
        assert ours[name], f"worker {name} logged nothing with run_id {run_id}"
        assert steps[name] & {"pre.0", "pre.1"}, (name, steps[name])
        assert all(r["job_id"] == JOB for r in ours[name])
    every_step = steps["a"] | steps["b"]
    assert {"start", "pre.0", "pre.1", "pre.2", "dump", "post.0", "finalize"} <= every_step

    # Merged by time, the run reads in order: start, pre-hooks, dump, post-hooks, finalize.
    merged = sorted(ours["a"] + ours["b"], key=lambda r: r["ts"])
    first_seen: dict[str, str] = {}
    for record in merged:
        first_seen.setdefault(record["step"], record["ts"])
    assert first_seen["start"] <= first_seen["pre.0"] <= first_seen["dump"]
    assert first_seen["dump"] <= first_seen["post.0"] <= first_seen["finalize"]
    assert any(r.get("task_id") for r in merged)

    # The line that printed the secrets is there, masked.
    loud_lines = [r for r in merged if r["step"] == "pre.2" and "succeeded" in r["message"]]
    assert loud_lines, "Celery's success line of the secret-printing hook is missing"
    message = loud_lines[0]["message"]
    assert "***" in message and "AGE-SECRET-KEY-1***" in message
    assert "https://mirror:***@mirror.example/" in message
