"""Result 4 of the drivers issue: a database password never shows in any process's argv, the
run record, the worker's log or a hook's environment, while real workers dump PostgreSQL and
MariaDB as users with passwords.

A thread samples ``/proc/*/cmdline`` of EVERY process on the host for as long as the run lasts
(the dump is made big enough to last a while, and the sampler must have seen the dump tool
itself, or the test proves nothing). The dump tools' own ``/proc/PID/environ`` is checked too:
the password travels in a 0600 file, so not even the tool's environment holds it.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Deployment
from tests.integration.runs import start, store_of, wait_final
from tests.integration.test_drivers_roundtrip import base_job, my_user_and_db, pg_role_and_db

pytestmark = pytest.mark.integration

DUMP_TOOLS = {"pg_dump", "psql", "mariadb-dump", "mysqldump", "mariadb", "mysql"}


class ProcSampler(threading.Thread):
    """Reads every process's cmdline (and the dump tools' environ) until stopped."""

    def __init__(self, secret: str) -> None:
        super().__init__(daemon=True)
        self.needle = secret.encode("utf-8")
        self.halt = threading.Event()
        self.leaks: list[str] = []
        self.seen: dict[str, int] = {}
        self.rounds = 0

    def run(self) -> None:
        own = str(os.getpid())
        while not self.halt.is_set():
            for entry in os.scandir("/proc"):
                if entry.name.isdigit() and entry.name != own:
                    self._sample(entry.name)
            self.rounds += 1

    def _sample(self, pid: str) -> None:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as stream:
                cmdline = stream.read()
        except OSError:
            return
        if self.needle in cmdline:
            self.leaks.append(f"argv of {pid}: {cmdline[:200]!r}")
        name = os.path.basename(cmdline.split(b"\0", 1)[0].decode(errors="replace"))
        if name in DUMP_TOOLS:
            self.seen[name] = self.seen.get(name, 0) + 1
            try:
                with open(f"/proc/{pid}/environ", "rb") as stream:
                    environ = stream.read()
            except OSError:
                return
            if self.needle in environ:
                self.leaks.append(f"environ of {name} ({pid})")

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


def assert_no_secret_anywhere(
    world: Deployment, run: dict[str, Any], password: str, hook_env: Path, worker_log: str
) -> None:
    record = json.dumps(store_of(world).get(run["_run_id"]))
    assert password not in record
    assert password not in json.dumps(run)
    assert password not in worker_log
    manifest = world.storage / run["artifact"]["manifest"]
    assert password not in manifest.read_text()
    env_text = hook_env.read_text()
    assert "BACKUPY_STATUS=success" in env_text  # the post-hook ran and wrote its env
    assert password not in env_text


def run_sampled(
    world: Deployment, job_id: str, password: str
) -> tuple[dict[str, Any], ProcSampler]:
    sampler = ProcSampler(password)
    sampler.start()
    try:
        run_id = start(world, job_id)
        run = wait_final(world, run_id, timeout=90)
    finally:
        sampler.stop()
    run["_run_id"] = run_id
    return run, sampler


def test_postgresql_password_is_never_visible(world: Deployment, tmp_path: Path) -> None:
    hook_env = tmp_path / "post-env"
    with pg_role_and_db(events_rows=150_000, pad=8) as db:
        queue = world.queue()
        job = base_job(
            "pg-secret", queue, db.target(), post_hooks=[{"command": f"env > {hook_env}"}]
        )
        world.write_config([job])
        worker = world.worker([queue], BACKUP_PG_PASSWORD=db.password)
        run, sampler = run_sampled(world, "pg-secret", db.password)

    assert run["status"] == "success", run
    assert sampler.leaks == []
    assert sampler.seen.get("pg_dump", 0) >= 3, (sampler.seen, sampler.rounds)
    assert run["artifact"]["raw_bytes"] > 20_000_000
    assert_no_secret_anywhere(world, run, db.password, hook_env, worker.log())


def test_mariadb_password_is_never_visible(world: Deployment, tmp_path: Path) -> None:
    hook_env = tmp_path / "post-env"
    with my_user_and_db(events_rows=150_000, pad=8) as db:
        queue = world.queue()
        job = base_job(
            "my-secret", queue, db.target(), post_hooks=[{"command": f"env > {hook_env}"}]
        )
        world.write_config([job])
        worker = world.worker([queue], BACKUP_MY_PASSWORD=db.password)
        run, sampler = run_sampled(world, "my-secret", db.password)

    assert run["status"] == "success", run
    assert sampler.leaks == []
    dump_tool_samples = sampler.seen.get("mariadb-dump", 0) + sampler.seen.get("mysqldump", 0)
    assert dump_tool_samples >= 3, (sampler.seen, sampler.rounds)
    assert run["artifact"]["raw_bytes"] > 20_000_000
    assert_no_secret_anywhere(world, run, db.password, hook_env, worker.log())


def test_the_sampler_does_catch_a_password_in_argv() -> None:
    """The control: without it, an empty ``leaks`` could mean a blind sampler."""
    import subprocess

    from tests.harness import wait_for

    secret = "control-" + os.urandom(6).hex()
    sampler = ProcSampler(secret)
    sampler.start()
    child = subprocess.Popen(["/bin/sh", "-c", "sleep 5", "sh", f"--password={secret}"])
    try:
        wait_for(lambda: sampler.leaks, 5, "the sampler to see the password in argv")
    finally:
        child.kill()
        child.wait()
        sampler.stop()
    assert f"argv of {child.pid}" in sampler.leaks[0]
