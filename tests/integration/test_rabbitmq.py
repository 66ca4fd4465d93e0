"""Result 5 of the Operations issue: a full backup through RabbitMQ as the broker.

Only the broker moves: the run store, budgets, claims, locks and Celery's results stay in Redis
(``BACKUPY_REDIS_URL``). The worker's start-up check on ``visibility_timeout`` is the Redis
transport's; on RabbitMQ a worker starts even with a visibility timeout below the longest hard
time limit (the broker's ``consumer_timeout`` plays that part: see the README/DESIGN note).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from kombu import Connection

from config.jobs import load_config
from config.settings import load_settings
from tests.conftest import need_service
from tests.harness import Deployment, sqlite_job
from tests.integration.runs import wait_final
from workers.app import create_app
from workers.trigger import trigger_run

pytestmark = pytest.mark.integration

AMQP_URL = os.environ.get("BACKUPY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.fixture
def amqp_url() -> str:
    try:
        with Connection(AMQP_URL, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as exc:
        need_service("RabbitMQ", f"{AMQP_URL.split('@')[-1]}: {type(exc).__name__}: {exc}")
    return AMQP_URL


def delete_queues(url: str, names: list[str]) -> None:
    """The test's queues are durable: remove them from the shared RabbitMQ afterwards."""
    with Connection(url, connect_timeout=3) as connection:
        for name in names:
            try:
                connection.channel().queue_delete(name)
            except Exception:  # never declared, or already gone: nothing to delete
                continue


def test_a_full_backup_runs_through_rabbitmq(
    world: Deployment, source_db: Path, tmp_path: Path, amqp_url: str
) -> None:
    try:
        run_backup_through_rabbitmq(world, source_db, tmp_path, amqp_url)
    finally:
        world.stop_all()  # before the queues go, or the worker sees its consumer cancelled
        delete_queues(amqp_url, [world.queue("amqp"), world.control_queue])


def run_backup_through_rabbitmq(
    world: Deployment, source_db: Path, tmp_path: Path, amqp_url: str
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    queue = world.queue("amqp")
    world.write_config(
        [
            sqlite_job(
                "rabbit-db",
                source_db,
                queue,
                pre_hooks=[{"command": f"touch {marks}/pre0"}, {"command": f"touch {marks}/pre1"}],
                post_hooks=[{"command": f'echo "$BACKUPY_STATUS" > {marks}/post0'}],
                timeout="2h",
            )
        ]
    )
    env = {
        "BACKUPY_BROKER_URL": amqp_url,
        "BACKUPY_LOG_FORMAT": "json",
        # Far below the 2 h dump limit: refused on Redis, irrelevant on RabbitMQ.
        "BACKUPY_VISIBILITY_TIMEOUT": "10m",
    }
    worker = world.worker([queue], **env)
    assert "amqp://" in worker.log()

    app = create_app(load_settings(world.env(**env)))
    try:
        assert app.conf.broker_url.startswith("amqp://")
        run_id = trigger_run(app, load_config(world.config_path), "rabbit-db", trigger="test")
    finally:
        app.close()
    run = wait_final(world, run_id)

    assert run["status"] == "success", run
    for step in ("pre.0", "pre.1", "dump", "post.0"):
        assert run["steps"][step]["state"] == "ok", (step, run["steps"][step])
    assert (marks / "post0").read_text().strip() == "success"
    assert (world.storage / run["artifact"]["key"]).is_file()
    log = worker.log()
    assert "guest:guest" not in log and ":guest@" not in log
