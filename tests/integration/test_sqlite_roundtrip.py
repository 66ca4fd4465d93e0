"""Issue "Real dumps and restores", result 1 for SQLite: a live database with several tables
(unicode text, blobs, NULLs, 100 000 rows, a view and a trigger) backed up by a real worker and
restored by `backupy restore` into a new file whose contents are equal."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import Deployment, sqlite_job
from tests.integration.runs import start, wait_final
from workers.processes import PROJECT_ROOT

pytestmark = pytest.mark.integration
ROWS = 100_000


def build(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT, payload BLOB, note TEXT);
            CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, avatar BLOB);
            CREATE TABLE audit (id INTEGER PRIMARY KEY, person INTEGER, at TEXT);
            CREATE VIEW busy AS SELECT kind, count(*) AS n FROM events GROUP BY kind;
            CREATE TRIGGER people_audit AFTER INSERT ON people
              BEGIN INSERT INTO audit (person, at) VALUES (new.id, 'inserted'); END;
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
            INSERT INTO events (kind, payload, note)
              SELECT 'kind-' || (i % 17), randomblob(i % 64),
                     CASE WHEN i % 5 = 0 THEN NULL ELSE 'ünïcødé ✓ ' || i END FROM n;
            """
        )
        db.executemany(
            "INSERT INTO people (name, avatar) VALUES (?, ?)",
            [("Zoë 北京", bytes(range(256))), ("Ægir", None), ("", b"")],
        )


def contents(path: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        schema = db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
        return {
            "schema": schema,
            "events": db.execute("SELECT * FROM events ORDER BY id").fetchall(),
            "people": db.execute("SELECT * FROM people ORDER BY id").fetchall(),
            "audit": db.execute("SELECT * FROM audit ORDER BY id").fetchall(),
            "busy": db.execute("SELECT * FROM busy ORDER BY kind").fetchall(),
        }


def test_sqlite_round_trip_through_a_worker_and_backupy_restore(
    world: Deployment, tmp_path: Path
) -> None:
    source = tmp_path / "live.db"
    build(source)
    queue = world.queue()
    world.write_config([sqlite_job("sqlite-app", source, queue)])
    world.worker([queue])
    run = wait_final(world, start(world, "sqlite-app"))
    assert run["status"] == "success", run.get("reason")

    restored = tmp_path / "restored.db"
    result = subprocess.run(
        [sys.executable, "-c", "from workers.cli import main; main()", "restore",
         run["run_id"], "--to", str(restored), "-i", str(world.identity)],
        env=world.env(), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    original, copy = contents(source), contents(restored)
    assert len(copy["events"]) == ROWS
    assert copy == original
