"""Real worker and beat processes for integration tests.

Each test gets its own key prefix and its own queue names, so tests never see each other's
messages or records even on a shared Redis. Readiness and results are polled with deadlines;
nothing waits a fixed time.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from workers.processes import ProcessHandle, celery_argv, wait_for, worker_argv

__all__ = ["Deployment", "ProcessHandle", "deployment", "sqlite_job", "wait_for"]


class Deployment:
    """One test's world: a config file, keys, storage, env, and the processes it started."""

    def __init__(self, tmp: Path, redis_url: str, prefix: str) -> None:
        self.tmp = tmp
        self.redis_url = redis_url
        self.prefix = prefix
        self.tag = uuid.uuid4().hex[:8]
        self.control_queue = f"ctl-{self.tag}"
        self.storage = tmp / "backups"
        self.identity = tmp / "key.txt"
        self.config_path = tmp / "jobs.yaml"
        self.processes: list[ProcessHandle] = []
        from tasks.keys import generate_identity

        self.recipient = generate_identity(self.identity)

    def queue(self, name: str = "q") -> str:
        return f"{name}-{self.tag}"

    def write_config(self, jobs: list[dict[str, Any]]) -> Path:
        document = {
            "storage": {"type": "local", "path": str(self.storage)},
            "encryption": {"recipients": [self.recipient]},
            "jobs": jobs,
        }
        self.config_path.write_text(yaml.safe_dump(document, sort_keys=False))
        return self.config_path

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("BACKUPY_", "CELERY_"))
        }
        env.update(
            BACKUPY_REDIS_URL=self.redis_url,
            BACKUPY_PREFIX=self.prefix,
            BACKUPY_CONFIG=str(self.config_path),
            BACKUPY_CONTROL_QUEUE=self.control_queue,
            BACKUPY_HEARTBEAT="0.5",
            BACKUPY_DEADLINE_SLACK="60",
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def worker(
        self, queues: list[str], name: str = "w1", concurrency: int = 2, **env: str
    ) -> ProcessHandle:
        argv = worker_argv([*queues, self.control_queue], f"{name}-{self.tag}@%h", concurrency)
        handle = ProcessHandle(argv, self.env(**env), self.tmp / f"worker-{name}.log").start()
        self.processes.append(handle)
        handle.wait_log("ready.", timeout=60)
        return handle

    def beat(self, **env: str) -> ProcessHandle:
        argv = celery_argv("beat", "-l", "INFO", "-s", str(self.tmp / "beat-schedule"))
        handle = ProcessHandle(argv, self.env(**env), self.tmp / "beat.log").start()
        self.processes.append(handle)
        return handle

    def stop_all(self) -> None:
        for handle in reversed(self.processes):
            handle.stop()


@contextmanager
def deployment(tmp: Path, redis_url: str, prefix: str) -> Iterator[Deployment]:
    world = Deployment(tmp, redis_url, prefix)
    try:
        yield world
    finally:
        world.stop_all()


def sqlite_job(job_id: str, db_path: Path, queue: str, **fields: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "id": job_id,
        "schedule": "0 3 * * *",
        "queue": queue,
        "target": {"type": "sqlite", "path": str(db_path)},
        "timeout": "2m",
    }
    job.update(fields)
    return job
