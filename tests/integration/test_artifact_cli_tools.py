"""An artifact is a standard age file of a zstd stream: the real ``age`` and ``zstd`` CLIs read
it without this project (and ``backupy decrypt`` reads what they write).

Runs the dump task's composition for real: the SQLite driver dumps into one end of a pipe in a
thread, ``write_artifact`` reads the other end. Without ``age``/``zstd`` the tests skip and say
why; under ``CI=true`` they fail instead, so a broken CI image cannot shrink the suite quietly.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tasks.artifacts import decrypt_file, write_artifact
from tasks.drivers.sqlite import SqliteDriver
from tasks.keys import generate_identity
from tasks.storage import LocalStorage, artifact_key

pytestmark = pytest.mark.integration

UNDER_CI = os.environ.get("CI", "").lower() == "true"
CLI_TIMEOUT_SECONDS = 120
ROWS = 20_000


def need_tool(name: str) -> str:
    """The tool's path; else skip with the reason (fail under CI=true)."""
    path = shutil.which(name) or (
        f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None
    )
    if path is None:
        reason = (
            f"`{name}` CLI not found on PATH or in /usr/bin (install the Debian package {name})"
        )
        if UNDER_CI:
            pytest.fail(f"{reason}; CI=true: required tools may not be skipped")
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture
def age() -> str:
    return need_tool("age")


@pytest.fixture
def zstd() -> str:
    return need_tool("zstd")


def make_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE items (id INTEGER PRIMARY KEY, label TEXT, payload BLOB, price REAL);
        CREATE TABLE log (id INTEGER PRIMARY KEY, item INTEGER, at TEXT);
        CREATE VIEW cheap AS SELECT label FROM items WHERE price < 10;
        CREATE TRIGGER items_log AFTER INSERT ON items
            BEGIN INSERT INTO log (item, at) VALUES (new.id, 'now'); END;
        """
    )
    conn.executemany(
        "INSERT INTO items (label, payload, price) VALUES (?, ?, ?)",
        (
            (f"article {i} – Größe ½ 🧀", os.urandom(i % 200) if i % 4 else None, i * 0.01)
            for i in range(ROWS)
        ),
    )
    conn.commit()
    conn.close()


def all_rows(path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        master = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
        rows = {"sqlite_master": master}
        for kind, name, _ in master:
            if kind in ("table", "view"):
                rows[name] = conn.execute(f'SELECT * FROM "{name}" ORDER BY 1').fetchall()
        return rows
    finally:
        conn.close()


def dump_to_artifact(db: Path, storage: LocalStorage, key: str, recipient: str) -> Any:
    """driver.dump → os.pipe → write_artifact, as the Celery dump task does it."""
    driver = SqliteDriver()
    read_fd, write_fd = os.pipe()
    errors: list[BaseException] = []

    def produce() -> None:
        with os.fdopen(write_fd, "wb") as out:
            try:
                driver.dump(SimpleNamespace(path=str(db)), out)
            except BaseException as exc:
                errors.append(exc)

    thread = threading.Thread(target=produce, name="sqlite-dump")
    thread.start()

    def before_commit() -> None:
        thread.join()
        if errors:
            raise errors[0]

    try:
        with os.fdopen(read_fd, "rb") as source:
            return write_artifact(
                source,
                storage,
                key,
                compression_level=3,
                recipients=[recipient],
                before_commit=before_commit,
            )
    finally:
        thread.join()


def test_age_and_zstd_clis_read_an_artifact(tmp_path: Path, age: str, zstd: str) -> None:
    from datetime import UTC, datetime

    db = tmp_path / "app.db"
    make_database(db)
    identity = tmp_path / "key.txt"
    recipient = generate_identity(identity)
    storage = LocalStorage(tmp_path / "backups")
    key = artifact_key("app", "run1", datetime.now(UTC), "sqlite", "zstd", True)
    info = dump_to_artifact(db, storage, key, recipient)

    artifact = storage.root / key
    assert hashlib.sha256(artifact.read_bytes()).hexdigest() == info.sha256
    restored = tmp_path / "restored.db"
    with open(restored, "wb") as out:
        decrypt = subprocess.Popen(
            [age, "-d", "-i", str(identity), str(artifact)], stdout=subprocess.PIPE
        )
        assert decrypt.stdout is not None
        decompress = subprocess.run(
            [zstd, "-d", "-q", "-c"],
            stdin=decrypt.stdout,
            stdout=out,
            check=False,
            timeout=CLI_TIMEOUT_SECONDS,
        )
        decrypt.stdout.close()
        assert decrypt.wait(timeout=CLI_TIMEOUT_SECONDS) == 0
    assert decompress.returncode == 0
    assert restored.stat().st_size == info.raw_bytes
    assert all_rows(restored) == all_rows(db)
    assert len(all_rows(restored)["items"]) == ROWS


def test_backupy_decrypt_reads_what_the_clis_write(tmp_path: Path, age: str, zstd: str) -> None:
    db = tmp_path / "app.db"
    make_database(db)
    identity = tmp_path / "key.txt"
    recipient = generate_identity(identity)
    compressed = tmp_path / "app.db.zst"
    subprocess.run([zstd, "-q", "-3", str(db), "-o", str(compressed)], check=True)
    encrypted = tmp_path / "app.db.zst.age"
    subprocess.run(
        [age, "-r", recipient, "-o", str(encrypted), str(compressed)],
        check=True,
        timeout=CLI_TIMEOUT_SECONDS,
    )
    restored = tmp_path / "out.db"
    decrypt_file(encrypted, restored, identity)
    assert restored.read_bytes() == db.read_bytes()
