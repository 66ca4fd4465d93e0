"""Result 7 of the reliability issue: bad input is one line naming it, exit 2, no traceback.

Everything runs the real ``backupy`` CLI (or a real worker) as a subprocess. Two documented
exceptions to "one line": ``backupy validate`` lists every violation under a count (its contract,
DESIGN.md "CLI"), and click's own usage errors (a missing argument) print a usage block.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import Deployment, ProcessHandle, sqlite_job, wait_for
from tests.integration.runs import start, wait_final
from workers.processes import worker_argv

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
UNKNOWN_RUN = "20261203T031500Z-4f9c2a1b"
SYNTAX = 'jobs:\n  - id: a\n    schedule: "0 3 * * *\n'


def backupy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    if env is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKUPY_", "CELERY_"))}
    return subprocess.run(
        [sys.executable, "-c", "from workers.cli import main; main()", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line_error(done: subprocess.CompletedProcess[str], *names: str) -> str:
    """Exit 2, no traceback, exactly one line on stderr naming every one of ``names``."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture
def bad_configs(world: Deployment, source_db: Path) -> dict[str, Path]:
    """A YAML syntax error, and a config whose fields have the wrong types."""
    world.write_config([sqlite_job("app-db", source_db, world.queue())])
    syntax = world.tmp / "syntax.yaml"
    syntax.write_text(SYNTAX)
    types = world.tmp / "types.yaml"
    document = yaml.safe_load(world.config_path.read_text())
    document["jobs"][0] |= {"schedule": 5, "queue": ["q"], "timeout": "banana"}
    types.write_text(yaml.safe_dump(document))
    return {"syntax": syntax, "types": types}


def test_a_malformed_config_is_refused_by_every_command(
    world: Deployment, bad_configs: dict[str, Path]
) -> None:
    env = world.env()
    syntax, types = bad_configs["syntax"], bad_configs["types"]
    for args in (["jobs"], ["run", "app-db"]):
        one_line_error(backupy(*args, "-c", str(syntax), env=env), str(syntax), "YAML syntax")
        line = one_line_error(backupy(*args, "-c", str(types), env=env), "3 violation(s)")
        assert "schedule" in line and "queue" in line and "'banana' is not a duration" in line
    restore = ["restore", UNKNOWN_RUN, "--to", str(world.tmp / "out.db")]
    one_line_error(backupy(*restore, "-c", str(syntax), env=env), "YAML syntax")

    # validate lists every violation under a count (its contract): still exit 2, no traceback.
    done = backupy("validate", "-c", str(types), env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[0] == f"{types}: 3 violation(s)"
    assert len(done.stderr.splitlines()) == 4
    done = backupy("validate", "-c", str(syntax), env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "YAML syntax error at line 4" in done.stderr


def test_unknown_job_and_run_ids(world: Deployment, source_db: Path) -> None:
    world.write_config([sqlite_job("app-db", source_db, world.queue())])
    env = world.env()
    one_line_error(backupy("run", "no-such-job", env=env), "no job 'no-such-job'", "app-db")
    one_line_error(backupy("show", UNKNOWN_RUN, env=env), f"no run {UNKNOWN_RUN}")
    one_line_error(backupy("show", "not-a-run", env=env), "'not-a-run' is not a run id")
    restore = ["restore", UNKNOWN_RUN, "--to", str(world.tmp / "out.db")]
    one_line_error(backupy(*restore, env=env), f"no run {UNKNOWN_RUN}")

    # A missing argument is click's usage error: exit 2 and no traceback, but a usage block.
    done = backupy("show", env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "Error: Missing argument 'RUN_ID'." in done.stderr
    assert len(done.stderr.strip().splitlines()) > 1  # Usage, Try, Error: not ours to change


def test_bad_key_files_and_unwritable_outputs(world: Deployment, source_db: Path) -> None:
    """One real run gives an artifact; then restore and decrypt meet bad keys and bad outputs."""
    world.write_config([sqlite_job("app-db", source_db, world.queue())])
    world.worker([world.queue()], concurrency=1)
    run = wait_final(world, start(world, "app-db"))
    assert run["status"] == "success", run
    env, artifact = world.env(), str(world.storage / run["artifact"]["key"])
    not_a_key = world.tmp / "not-a-key.txt"
    not_a_key.write_text("this is not an age identity\n")
    binary_key = world.tmp / "binary-key"
    binary_key.write_bytes(b"\xff\xfe\x00garbage")
    blocked = world.tmp / "file.txt"  # a regular file where a directory should be: root-proof
    blocked.write_text("")

    restore = ["restore", run["run_id"], "-i"]
    for key in (not_a_key, binary_key):
        out = str(world.tmp / f"restored-{key.name}.db")
        one_line_error(backupy(*restore, str(key), "--to", out, env=env), str(key))
        one_line_error(backupy("decrypt", artifact, "-o", out, "-i", str(key)), str(key))
        assert not Path(out).exists()
    missing = world.tmp / "missing-key.txt"
    one_line_error(
        backupy("decrypt", artifact, "-o", str(world.tmp / "x.db"), "-i", str(missing)),
        "key file not found",
    )

    unwritable = f"{blocked}/backups/restored.db"
    one_line_error(
        backupy("decrypt", artifact, "-o", unwritable, "-i", str(world.identity)), unwritable
    )
    one_line_error(backupy(*restore, str(world.identity), "--to", unwritable, env=env), unwritable)


def test_a_worker_refuses_to_start_on_unwritable_local_storage(
    world: Deployment, source_db: Path
) -> None:
    blocked = world.tmp / "file.txt"
    blocked.write_text("")
    storage = blocked / "backups"
    world.write_config([sqlite_job("app-db", source_db, world.queue())])
    document: dict[str, Any] = yaml.safe_load(world.config_path.read_text())
    document["storage"]["path"] = str(storage)
    world.config_path.write_text(yaml.safe_dump(document))

    argv = worker_argv([world.queue(), world.control_queue], f"bad-{world.tag}@%h")
    worker = ProcessHandle(argv, world.env(), world.tmp / "worker-bad.log").start()
    world.processes.append(worker)
    assert worker.process is not None
    code = wait_for(lambda: worker.process.poll(), 60, "the worker to refuse to start")
    assert code == 2, worker.log()
    lines = [line for line in worker.log().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert (
        "refusing to start" in lines[0] and str(storage) in lines[0] and "Traceback" not in lines[0]
    )
    assert "not writable" in lines[0]
