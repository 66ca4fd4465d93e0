"""Result 1 of the reliability issue: Redis restarted in the middle of a run.

The test owns its Redis (broker, result backend and run store at once), with AOF on and fsync on
every write as production has it (docker-compose runs Redis with ``appendonly``), so the run
store, the claims, the budget meters and the broker's unacked messages survive the restart. Redis
is stopped while two runs' pre-hooks are running and started again on the same port two seconds
later. The workers must reconnect on their own, the runs must end within their deadlines, no hook
may start twice, and the hook budget must still be enforced: the budget charges that fail while
Redis is away are owed and paid at the next tick that reaches it (``tasks.context``).

Also home of the helpers the other reliability tests share: a Redis the test owns and can stop
and start, a Deployment on it, and a SQLite database slow to dump.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tasks.redis_keys import Keys
from tests.harness import Deployment, sqlite_job, wait_for
from tests.integration.runs import start, store_of, wait_final
from workers.embedded_redis import free_port, redis_server_binary

pytestmark = pytest.mark.integration

# How long Redis stays down: longer than the claim watch (2.5 heartbeats of 0.5 s) and many budget
# ticks, shorter than the hooks that run through it.
OUTAGE_SECONDS = 2.0


class OwnRedis:
    """A redis-server this test starts, stops and starts again on the same port and directory."""

    def __init__(self, directory: Path, persistent: bool = True) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> OwnRedis:
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else []
        argv = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--dir", str(self.directory), *aof,
        ]  # fmt: skip
        with open(self.directory / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        client = redis.Redis.from_url(self.url)

        def answers() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.process.returncode}")
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False
            except redis.BusyLoadingError:
                return False

        try:
            wait_for(answers, 15, f"redis-server on port {self.port}", interval=0.05)
        finally:
            client.close()
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: Redis fsyncs its AOF and exits
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


def running_redis(tmp: Path) -> Iterator[OwnRedis]:
    """The body of each reliability test file's ``own_redis`` fixture."""
    server = OwnRedis(tmp / "redis").start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    yield from running_redis(tmp_path)


@contextmanager
def world_on(server: OwnRedis, tmp: Path) -> Iterator[Deployment]:
    world = Deployment(tmp, server.url, "backupy-test:reliability:")
    try:
        yield world
    finally:
        world.stop_all()


def small_db(path: Path) -> Path:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        db.executemany("INSERT INTO items (name) VALUES (?)", [(f"item-{i}",) for i in range(200)])
    return path


def slow_db(path: Path, megabytes: int = 12) -> Path:
    """Random blobs: zstd at level 19 gets through them at a few MB/s, so a dump takes seconds."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)")
        db.executemany(
            "INSERT INTO blobs (data) VALUES (?)",
            [(os.urandom(256 * 1024),) for _ in range(megabytes * 4)],
        )
    return path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def run_files(storage: Path, run_id: str) -> list[str]:
    """Every file under storage whose name mentions the run (artifact, manifest, partials)."""
    if not storage.exists():
        return []
    return sorted(str(p.relative_to(storage)) for p in storage.rglob("*") if run_id in p.name)


def test_redis_restart_mid_hook_runs_end_once_and_the_budget_holds(
    own_redis: OwnRedis, tmp_path: Path
) -> None:
    db = small_db(tmp_path / "small.db")
    starts, posts, metered = tmp_path / "starts", tmp_path / "posts", tmp_path / "metered"
    with world_on(own_redis, tmp_path) as world:
        queue = world.queue()
        world.write_config(
            [
                sqlite_job(
                    "steady",
                    db,
                    queue,
                    pre_hooks=[{"command": f"echo start >> {starts}; sleep 4", "timeout": "30s"}],
                    post_hooks=[{"command": f"echo $BACKUPY_STATUS >> {posts}"}],
                ),
                # A budget smaller than its hooks: 3 s of the first leave 1 s for the second.
                sqlite_job(
                    "metered",
                    db,
                    queue,
                    hook_order="sequential",
                    hooks_budget="4s",
                    pre_hooks=[
                        {"command": f"echo first >> {metered}; sleep 3", "timeout": "30s"},
                        {"command": f"echo second >> {metered}; sleep 3", "timeout": "30s"},
                    ],
                ),
            ]
        )
        worker = world.worker([queue])
        steady, budgeted = start(world, "steady"), start(world, "metered")
        wait_for(lambda: lines(starts) and lines(metered), 30, "both first hooks to start")

        own_redis.stop()
        time.sleep(OUTAGE_SECONDS)  # the length of the outage, not a wait for anything
        own_redis.start()

        run = wait_final(world, steady, timeout=40)
        other = wait_final(world, budgeted, timeout=20)
        assert worker.process is not None and worker.process.poll() is None, "the worker died"

    assert run["status"] == "success", run
    assert run["steps"]["pre.0"]["state"] == "ok", run["steps"]["pre.0"]
    assert run["finished_at"] <= run["deadline"]
    assert lines(starts) == ["start"], "the hook started more than once"
    assert lines(posts) == ["success"], "the post-hook ran other than once"
    assert [name for name in run_files(world.storage, steady) if name.endswith(".age")]

    assert other["steps"]["pre.0"]["state"] == "ok", other["steps"]["pre.0"]
    assert other["steps"]["pre.1"]["state"] == "budget_exceeded", other["steps"]["pre.1"]
    assert other["status"] == "failed", other
    assert other["budget"]["exhausted"] is True, other["budget"]
    # Time charged through the outage was not lost: the 3 s hook and the cut-off second one.
    assert other["budget"]["spent"] >= 3.9, other["budget"]
    assert other["finished_at"] <= other["deadline"]
    assert lines(metered) == ["first", "second"], "a hook started more than once"

    store = store_of(world)
    assert store.in_progress() == [], "a run was left without a final state"
    keys = Keys(world.prefix)
    assert store.client.get(keys.lock("steady")) is None
    assert store.client.get(keys.lock("metered")) is None
