"""Integration fixtures: a Deployment (config, keys, storage) on the real Redis."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import REDIS_URL
from tests.harness import Deployment, deployment


@pytest.fixture
def world(tmp_path: Path, real_redis: redis.Redis, key_prefix: str) -> Iterator[Deployment]:
    with deployment(tmp_path, REDIS_URL, key_prefix) as built:
        yield built


@pytest.fixture
def source_db(tmp_path: Path) -> Path:
    """A small SQLite database with text, unicode, blobs and NULLs."""
    path = tmp_path / "source.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, data BLOB)")
        db.executemany(
            "INSERT INTO items (name, data) VALUES (?, ?)",
            [(f"item-{i} ✓ ünïcødé", bytes([i % 256]) * 32 if i % 7 else None) for i in range(500)],
        )
    return path
