"""Result 6 of the Celery issue: backups into a real S3 server (SeaweedFS), by a real worker.

A full backup of an SQLite job lands in S3 (artifact and manifest, no upload left open) and
`backupy restore` brings back a database equal to the source. A dump whose pool processes are
killed mid-upload leaves no object; the multipart upload a killed process could not abort is
removed by the sweep that finalize runs for the run (``sweep_run_uploads``), and then nothing
at all is left under the job's prefix.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.s3_storage import S3Storage, run_key_prefix, sweep_run_uploads
from tasks.storage import storage_from_config
from tests import s3server
from tests.harness import Deployment, sqlite_job, wait_for
from tests.integration.runs import start, wait_final
from tests.s3server import S3Server
from workers.processes import PROJECT_ROOT

pytestmark = pytest.mark.integration

s3_server = s3server.s3_server
s3_bucket = s3server.s3_bucket

RESTORE = [sys.executable, "-c", "from workers.cli_restore import restore; restore()"]
PREFIX = "backupy"


def rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT id, name, length(data) FROM items ORDER BY id").fetchall()


def write_s3_config(world: Deployment, server: S3Server, bucket: str, jobs: list[dict]) -> None:
    document = {
        "storage": server.storage_config(bucket, PREFIX),
        "encryption": {"recipients": [world.recipient]},
        "jobs": jobs,
    }
    world.config_path.write_text(yaml.safe_dump(document, sort_keys=False))


def bucket_state(server: S3Server, bucket: str) -> tuple[list[str], list[str]]:
    client = server.client()
    objects = client.list_objects_v2(Bucket=bucket).get("Contents") or []
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads") or []
    return sorted(o["Key"] for o in objects), sorted(u["Key"] for u in uploads)


def test_backup_into_s3_and_restore(
    world: Deployment, s3_server: S3Server, s3_bucket: str, source_db: Path, tmp_path: Path
) -> None:
    queue = world.queue()
    write_s3_config(world, s3_server, s3_bucket, [sqlite_job("app-db", source_db, queue)])
    world.worker([queue], **s3_server.env())
    run = wait_final(world, start(world, "app-db"))

    assert run["status"] == "success", run
    artifact = run["artifact"]
    assert artifact["storage"] == f"s3://{s3_bucket}/{PREFIX} ({s3_server.endpoint})"
    objects, uploads = bucket_state(s3_server, s3_bucket)
    assert objects == sorted([f"{PREFIX}/{artifact['key']}", f"{PREFIX}/{artifact['manifest']}"])
    assert uploads == []
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=f"{PREFIX}/{artifact['key']}")
    assert head["ContentLength"] == artifact["stored_bytes"]

    target = tmp_path / "restored.db"
    done = subprocess.run(
        [*RESTORE, run["run_id"], "--to", str(target), "-i", str(world.identity)],
        env=world.env(**s3_server.env()),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert rows(target) == rows(source_db)

    # Without the storage keys the restore says so in one line, naming no secret.
    denied = subprocess.run(
        [*RESTORE, run["run_id"], "--to", str(tmp_path / "x.db"), "-i", str(world.identity)],
        env=world.env(),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert denied.returncode == 1, denied.stderr
    assert denied.stderr.count("\n") == 1 and "BACKUPY_TEST_S3_ACCESS_KEY" in denied.stderr
    assert s3_server.secret_key not in denied.stderr + denied.stdout
    assert not (tmp_path / "x.db").exists()


@pytest.fixture
def big_db(tmp_path: Path) -> Path:
    """32 MiB of random blobs: incompressible, so four 8 MiB parts after zstd and age."""
    path = tmp_path / "big.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, data BLOB)")
        db.executemany(
            "INSERT INTO items (name, data) VALUES (?, ?)",
            [(f"blob-{i}", os.urandom(1 << 20)) for i in range(32)],
        )
    return path


def test_dump_killed_mid_upload_leaves_nothing_after_the_sweep(
    world: Deployment, s3_server: S3Server, s3_bucket: str, big_db: Path
) -> None:
    queue = world.queue()
    # zstd level 19 runs at a few MB/s on random data: the upload stays open for seconds.
    job = sqlite_job("big-db", big_db, queue, compression={"type": "zstd", "level": 19})
    write_s3_config(world, s3_server, s3_bucket, [job])
    # The killed process cannot remove the driver's snapshot: keep it in the test's tmp.
    worker = world.worker([queue], TMPDIR=str(world.tmp), **s3_server.env())
    run_id = start(world, "big-db")

    def upload_open() -> list[str]:
        return bucket_state(s3_server, s3_bucket)[1]

    (upload_key,) = wait_for(upload_open, 60, "a multipart upload in progress", interval=0.02)
    assert upload_key.startswith(f"{PREFIX}/big-db/") and run_id in upload_key
    pool = worker.pool_pids()
    assert pool
    for pid in pool:
        os.kill(pid, signal.SIGKILL)

    run = wait_final(world, run_id, timeout=120)
    assert run["status"] in ("failed", "lost"), run
    assert run["steps"]["dump"]["state"] == "interrupted", run["steps"]["dump"]
    objects, uploads = bucket_state(s3_server, s3_bucket)
    assert objects == []  # the killed upload was never completed: no object, not even partial

    # What finalize does for a run whose dump did not end ok (see the hook in finalize_task):
    # the killed process could not abort its upload, so the run's own uploads are aborted.
    env = s3_server.env()
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        storage = storage_from_config(yaml.safe_load(world.config_path.read_text())["storage"])
    finally:
        _restore_env(saved)
    assert isinstance(storage, S3Storage)
    swept = sweep_run_uploads(storage, "big-db", run_id, run["created_at"])
    assert swept == [] if not uploads else swept == [upload_key.removeprefix(f"{PREFIX}/")]
    assert bucket_state(s3_server, s3_bucket) == ([], [])
    assert upload_key.removeprefix(f"{PREFIX}/").startswith(
        run_key_prefix("big-db", run_id, _utc(run["created_at"]))
    )


def _restore_env(saved: dict[str, Any]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _utc(timestamp: float) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp, UTC)
