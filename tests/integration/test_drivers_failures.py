"""Result 5 of the drivers issue: a dump that cannot be made fails the run with a message
naming the tool and the reason, stores nothing under the artifact's name (no ``.age`` file and
no ``.partial`` temporary left for the job), holds no password, and the post-hooks still run.

Cases: wrong password (MariaDB; PostgreSQL on a private cluster with scram auth, because the
machine's server trusts 127.0.0.1 and accepts any password), a role that does not exist, a
closed port, a dump tool missing from the worker's PATH, and a dump tool killed by SIGKILL in
the middle of its output (a fake ``pg_dump`` chosen with ``BACKUPY_PG_DUMP_PATH``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need_service
from tests.harness import Deployment
from tests.integration.runs import start, wait_final
from tests.integration.test_drivers_roundtrip import (
    PG_HOST,
    base_job,
    free_port,
    my_user_and_db,
    need_postgres,
    pg_role_and_db,
    private_redis,
    random_password,
)

pytestmark = pytest.mark.integration

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def status_hook(marks: Path, name: str) -> dict[str, str]:
    return {"command": f'echo "$BACKUPY_STATUS|$BACKUPY_ERROR" > {marks}/{name}'}


def assert_failed_cleanly(
    world: Deployment,
    run: dict[str, Any],
    job_id: str,
    marks: Path,
    expected: list[str],
    password: str | None = None,
) -> str:
    """The run failed at the dump with every ``expected`` text in the reason; nothing stored."""
    assert run["status"] == "failed", run
    dump = run["steps"]["dump"]
    assert dump["state"] == "failed", dump
    reason = dump["reason"]
    for text in expected:
        assert text in reason, reason
    if password:
        assert password not in reason and password not in str(run)
    left = [p.name for p in (world.storage / job_id).rglob("*")] if (
        world.storage / job_id
    ).exists() else []  # fmt: skip
    assert not [name for name in left if name.endswith(".age")], left
    assert not [name for name in left if ".partial" in name], left
    assert not [name for name in left if name.endswith(".manifest.json")], left
    hook = (marks / job_id).read_text()  # the post-hook ran, and saw the failure
    assert hook.startswith("failed|"), hook
    if password:
        assert password not in hook
    return reason


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    path = tmp_path / "marks"
    path.mkdir()
    return path


def test_wrong_credentials_and_unreachable_servers(
    world: Deployment, marks: Path, tmp_path: Path
) -> None:
    need_postgres()
    redis_password = random_password("right")
    with (
        my_user_and_db(events_rows=10) as my,
        pg_role_and_db(events_rows=10) as pg,
        private_redis(password=redis_password) as cache,
    ):
        queue = world.queue()
        closed = free_port()
        jobs = [
            base_job(
                "my-wrong-pw", queue, my.target(), post_hooks=[status_hook(marks, "my-wrong-pw")],
            ),
            base_job(
                "pg-no-role", queue, pg.target(user="backupy_no_such_role"),
                post_hooks=[status_hook(marks, "pg-no-role")],
            ),
            base_job(
                "pg-closed-port", queue, pg.target(port=closed),
                post_hooks=[status_hook(marks, "pg-closed-port")],
            ),
            base_job(
                "redis-wrong-pw", queue,
                {"type": "redis", "host": "127.0.0.1", "port": cache.port,
                 "password_env": "BACKUP_REDIS_PASSWORD"},
                post_hooks=[status_hook(marks, "redis-wrong-pw")],
            ),
        ]  # fmt: skip
        world.write_config(jobs)
        wrong = random_password("wrong")
        world.worker(
            [queue],
            BACKUP_MY_PASSWORD=wrong,
            BACKUP_PG_PASSWORD=pg.password,
            BACKUP_REDIS_PASSWORD=wrong,
        )
        run_ids = {job["id"]: start(world, job["id"]) for job in jobs}
        runs = {job_id: wait_final(world, run_id) for job_id, run_id in run_ids.items()}

    reason = assert_failed_cleanly(
        world, runs["my-wrong-pw"], "my-wrong-pw", marks,
        ["failed with exit code 1", "Access denied for user", "(using password: YES)"], wrong,
    )  # fmt: skip
    assert reason.startswith(("mariadb", "mysql")), reason  # the tool that failed, first
    assert my.password not in reason
    reason = assert_failed_cleanly(
        world, runs["pg-no-role"], "pg-no-role", marks,
        ['role "backupy_no_such_role" does not exist'], pg.password,
    )  # fmt: skip
    assert reason.startswith(("psql", "pg_dump")), reason
    assert_failed_cleanly(
        world, runs["pg-closed-port"], "pg-closed-port", marks,
        [f'"{PG_HOST}", port {closed} failed', "Connection refused"], pg.password,
    )  # fmt: skip
    assert_failed_cleanly(
        world, runs["redis-wrong-pw"], "redis-wrong-pw", marks,
        ["redis-cli", "WRONGPASS"], wrong,
    )  # fmt: skip


@contextlib.contextmanager
def scram_postgres() -> Iterator[tuple[int, str, str]]:
    """A private PostgreSQL cluster that checks passwords (scram-sha-256 on 127.0.0.1).

    Yields (port, role, password); the role owns database ``app``. Needs root (to run initdb
    as the ``postgres`` user) and the server binaries.
    """
    initdb, pg_ctl = PG_BIN / "initdb", PG_BIN / "pg_ctl"
    runuser = shutil.which("runuser")
    try:
        pwd.getpwnam("postgres")
        usable = os.geteuid() == 0 and initdb.exists() and pg_ctl.exists() and runuser
    except KeyError:
        usable = False
    if not usable:
        need_service("PostgreSQL private cluster", "needs root, runuser and initdb/pg_ctl")
    base = Path(tempfile.mkdtemp(prefix="backupy-test-pg-"))
    shutil.chown(base, "postgres")
    data, port = base / "data", free_port()
    role, password = "backupy_scram", random_password("Scr:am\\pw#é")

    def as_postgres(*argv: str) -> None:
        done = subprocess.run(
            [runuser, "-u", "postgres", "--", *argv], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise AssertionError(f"{argv[0]} failed: {done.stdout}{done.stderr}")

    started = False
    try:
        as_postgres(str(initdb), "-D", str(data), "-U", "postgres", "--auth-local=trust",
                    "--auth-host=scram-sha-256", "-N")  # fmt: skip
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
        as_postgres(str(pg_ctl), "-D", str(data), "-o", options, "-l", str(base / "log"), "-w",
                    "start")  # fmt: skip
        started = True
        quoted = password.replace("'", "''")
        sql = f"CREATE ROLE {role} LOGIN PASSWORD '{quoted}'; CREATE DATABASE app OWNER {role};"
        for statement in sql.split("; "):
            as_postgres("psql", "-X", "-h", str(base), "-p", str(port), "-U", "postgres",
                        "-v", "ON_ERROR_STOP=1", "-c", statement)  # fmt: skip
        yield port, role, password
    finally:
        if started:
            with contextlib.suppress(AssertionError, subprocess.SubprocessError):
                as_postgres(str(pg_ctl), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def test_postgresql_wrong_password(world: Deployment, marks: Path) -> None:
    need_postgres()
    with scram_postgres() as (port, role, password):
        queue = world.queue()
        target = {"type": "postgresql", "host": PG_HOST, "port": port, "database": "app",
                  "user": role, "password_env": "BACKUP_PG_PASSWORD"}  # fmt: skip
        world.write_config(
            [
                base_job(
                    "pg-wrong-pw", queue, target, post_hooks=[status_hook(marks, "pg-wrong-pw")]
                ),
                base_job(
                    "pg-right-pw", queue, target, post_hooks=[status_hook(marks, "pg-right-pw")]
                ),
            ]
        )
        wrong = random_password("not-it")
        world.worker([queue], name="wrong", BACKUP_PG_PASSWORD=wrong)
        run = wait_final(world, start(world, "pg-wrong-pw"))
        reason = assert_failed_cleanly(
            world, run, "pg-wrong-pw", marks,
            [f'password authentication failed for user "{role}"'], wrong,
        )  # fmt: skip
        assert password not in reason


def test_missing_dump_tool(world: Deployment, marks: Path, tmp_path: Path) -> None:
    with pg_role_and_db(events_rows=10) as pg:
        # The worker's PATH has psql (the version query works) but no pg_dump.
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        psql = shutil.which("psql")
        assert psql
        (bin_dir / "psql").symlink_to(psql)
        queue = world.queue()
        world.write_config(
            [
                base_job(
                    "pg-no-tool", queue, pg.target(), post_hooks=[status_hook(marks, "pg-no-tool")]
                )
            ]
        )
        world.worker([queue], BACKUP_PG_PASSWORD=pg.password, PATH=str(bin_dir))
        run = wait_final(world, start(world, "pg-no-tool"))
    reason = assert_failed_cleanly(
        world, run, "pg-no-tool", marks,
        ["pg_dump not found on PATH (install postgresql-client)"], pg.password,
    )  # fmt: skip
    # The driver's own reason, and that nothing was stored.
    assert reason == "pg_dump not found on PATH (install postgresql-client) (nothing was stored)"


def test_dump_tool_killed_mid_output(world: Deployment, marks: Path, tmp_path: Path) -> None:
    with pg_role_and_db(events_rows=10) as pg:
        fake = tmp_path / "pg_dump"
        # 3 MiB of output (the artifact stream is well under way: a .partial file exists),
        # then SIGKILL, as the OOM killer would do it.
        fake.write_text("#!/bin/sh\nhead -c 3145728 /dev/urandom\nkill -9 $$\n")
        fake.chmod(0o755)
        queue = world.queue()
        world.write_config(
            [
                base_job(
                    "pg-killed", queue, pg.target(), post_hooks=[status_hook(marks, "pg-killed")]
                )
            ]
        )
        world.worker([queue], BACKUP_PG_PASSWORD=pg.password, BACKUPY_PG_DUMP_PATH=str(fake))
        run = wait_final(world, start(world, "pg-killed"))
    assert_failed_cleanly(
        world, run, "pg-killed", marks,
        ["pg_dump was killed by signal 9 (SIGKILL) after 3145728 bytes"], pg.password,
    )  # fmt: skip
    assert (marks / "pg-killed").read_text().startswith("failed|dump failed")


def test_dump_timeout_kills_the_tool(world: Deployment, marks: Path, tmp_path: Path) -> None:
    """The dump's soft time limit reaches the driver's cancel(): the tool's whole process group
    is killed (a blocked pg_dump does not outlive its step), nothing is stored."""
    import psutil

    from tests.harness import wait_for

    pids = tmp_path / "pids"
    with pg_role_and_db(events_rows=10) as pg:
        fake = tmp_path / "pg_dump"
        fake.write_text(
            f"#!/bin/sh\necho $$ > {pids}\nprintf PGDMP\nsleep 60 &\necho $! >> {pids}\nwait\n"
        )
        fake.chmod(0o755)
        queue = world.queue()
        job = base_job(
            "pg-stuck", queue, pg.target(), timeout="2s",
            post_hooks=[status_hook(marks, "pg-stuck")],
        )  # fmt: skip
        world.write_config([job])
        world.worker([queue], BACKUP_PG_PASSWORD=pg.password, BACKUPY_PG_DUMP_PATH=str(fake))
        run = wait_final(world, start(world, "pg-stuck"))

    assert run["status"] == "failed", run
    assert run["steps"]["dump"]["state"] == "timed_out", run["steps"]["dump"]
    assert (marks / "pg-stuck").read_text().startswith("failed|")
    folder = world.storage / "pg-stuck"
    stored = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    assert stored == []
    started = [int(line) for line in pids.read_text().split()]
    assert len(started) == 2  # the fake and its sleep

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    wait_for(lambda: not any(alive(pid) for pid in started), 10, "the fake pg_dump to be killed")
