"""Helpers for integration tests: trigger a run through the real broker and wait for its end."""

from __future__ import annotations

from typing import Any

from celery import Celery

from config.jobs import load_config
from config.settings import load_settings
from tasks.runs import FINAL_STATES, RunStore
from tests.harness import Deployment, wait_for
from workers.app import create_app
from workers.trigger import trigger_run


def client_app(world: Deployment) -> Celery:
    return create_app(load_settings(world.env()))


def start(world: Deployment, job_id: str) -> str:
    cfg = load_config(world.config_path)
    app = client_app(world)
    try:
        return trigger_run(app, cfg, job_id, trigger="test")
    finally:
        app.close()


def store_of(world: Deployment) -> RunStore:
    import redis

    return RunStore(redis.Redis.from_url(world.redis_url), world.prefix)


def wait_final(world: Deployment, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
    store = store_of(world)

    def final() -> dict[str, Any] | None:
        run = store.get(run_id)
        return run if run and run.get("status") in FINAL_STATES else None

    return wait_for(final, timeout, f"run {run_id} to reach a final state", interval=0.1)
