"""Result 3 of the Celery issue: `backupy restore` of a run made by a real worker.

A restore into a new SQLite file gives the source's rows; a flipped byte in the stored artifact
stops at the checksum before anything is written; a wrong key is a clear decryption error; bad
input (unknown run, a key file that is no age identity, an existing target, a URL of the wrong
kind) is one line on stderr and exit 2. Nothing half-written is ever left beside the target.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

from config.jobs import load_config
from tasks.drivers import _DRIVERS, DriverError
from tasks.keys import generate_identity
from tasks.restore import RestoreFailed, RestoreInputError, restore_run
from tasks.storage import LocalStorage
from tests.harness import Deployment, sqlite_job
from tests.integration.runs import start, store_of, wait_final
from workers.processes import PROJECT_ROOT

pytestmark = pytest.mark.integration

RESTORE = [sys.executable, "-c", "from workers.cli_restore import restore; restore()"]


def rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT id, name, data FROM items ORDER BY id").fetchall()


def backupy_restore(world: Deployment, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RESTORE, *args],
        env=world.env(**env),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("backupy: "), lines
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def only(directory: Path) -> list[str]:
    """Everything in ``directory``, hidden temporaries included."""
    return sorted(path.name for path in directory.iterdir())


@pytest.fixture
def backed_up(world: Deployment, source_db: Path) -> dict[str, Any]:
    """A success run of an SQLite job by a real worker (local storage, age + zstd)."""
    queue = world.queue()
    world.write_config([sqlite_job("app-db", source_db, queue)])
    world.worker([queue])
    run = wait_final(world, start(world, "app-db"))
    assert run["status"] == "success", run
    return run


def test_restore_to_a_new_file_and_every_refusal(
    world: Deployment, source_db: Path, backed_up: dict[str, Any], tmp_path: Path
) -> None:
    run_id = backed_up["run_id"]
    out = tmp_path / "out"
    out.mkdir()
    target = out / "restored.db"

    done = backupy_restore(world, run_id, "--to", str(target), "-i", str(world.identity))
    assert done.returncode == 0, done.stderr
    assert "verified" in done.stdout and str(target) in done.stdout
    assert rows(target) == rows(source_db)
    assert only(out) == ["restored.db"]

    # The target exists: refused, even with --force (an SQLite database is never replaced).
    before = target.read_bytes()
    for extra in ([], ["--force"]):
        again = backupy_restore(
            world, run_id, "--to", str(target), "-i", str(world.identity), *extra
        )
        one_line_error(again, 2, "refusing to overwrite existing database")
    assert target.read_bytes() == before

    fresh = out / "second.db"
    # A wrong key (a fresh identity): a clear decryption error, nothing written.
    stranger = tmp_path / "stranger.txt"
    generate_identity(stranger)
    wrong = backupy_restore(world, run_id, "--to", str(fresh), "-i", str(stranger))
    one_line_error(wrong, 1, "decryption failed", "does not match")
    # A key file that is not an age identity: exit 2, and its content is not echoed.
    bogus = tmp_path / "bogus.txt"
    bogus.write_text("AGE-SECRET-KEY-1NOTAKEYATALLxyz\n")
    bad = backupy_restore(world, run_id, "--to", str(fresh), "-i", str(bogus))
    line = one_line_error(bad, 2, "not an age X25519 identity")
    assert "NOTAKEY" not in line
    # No key for an encrypted artifact.
    one_line_error(backupy_restore(world, run_id, "--to", str(fresh)), 2, "-i KEYFILE")
    # URL targets of the wrong kind.
    pg = backupy_restore(
        world, run_id, "--to", "postgresql://backup:s3cret@127.0.0.1:5432/app", "-i",
        str(world.identity),
    )  # fmt: skip
    assert "s3cret" not in one_line_error(pg, 2, "sqlite dump", "postgresql://")
    one_line_error(
        backupy_restore(world, run_id, "--to", "ftp://x/y", "-i", str(world.identity)),
        2,
        "unknown scheme",
    )
    # No such directory.
    one_line_error(
        backupy_restore(world, run_id, "--to", str(out / "no" / "x.db"), "-i", str(world.identity)),
        2,
        "no directory",
    )
    assert only(out) == ["restored.db"]

    # A flipped byte in the stored artifact: stopped by the checksum, nothing written.
    stored = world.storage / backed_up["artifact"]["key"]
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    corrupt = backupy_restore(world, run_id, "--to", str(fresh), "-i", str(world.identity))
    one_line_error(corrupt, 1, "checksum mismatch", backed_up["artifact"]["key"], "corrupt")
    assert not fresh.exists()
    assert only(out) == ["restored.db"]


def test_unknown_run_and_bad_run_id_exit_2(world: Deployment, source_db: Path) -> None:
    world.write_config([sqlite_job("app-db", source_db, world.queue())])
    unknown = backupy_restore(world, "20261203T031500Z-4f9c2a1b", "--to", "/tmp/x.db")
    one_line_error(unknown, 2, "no run 20261203T031500Z-4f9c2a1b")
    malformed = backupy_restore(world, "not-a-run", "--to", "/tmp/x.db")
    one_line_error(malformed, 2, "is not a run id")


class _ChangesBetweenPasses(LocalStorage):
    """The artifact is intact for the checksum pass and cut short on the second read."""

    def __init__(self, root: Path, key: str) -> None:
        super().__init__(root)
        self.key = key
        self.reads = 0

    def open_read(self, key: str):  # type: ignore[no-untyped-def]
        stream = super().open_read(key)
        if key != self.key:
            return stream
        self.reads += 1
        if self.reads < 2:
            return stream
        import io

        with stream:
            data = stream.read()
        return io.BytesIO(data[: len(data) * 2 // 3])


def test_a_stream_failing_after_the_checksum_leaves_no_database(
    world: Deployment, backed_up: dict[str, Any], tmp_path: Path
) -> None:
    """The driver sees an error, not a quiet end of input, and drops its temporary."""
    out = tmp_path / "late"
    out.mkdir()
    target = out / "restored.db"
    storage = _ChangesBetweenPasses(world.storage, backed_up["artifact"]["key"])
    with pytest.raises(RestoreFailed) as caught:
        restore_run(
            backed_up["run_id"],
            str(target),
            store=store_of(world),
            config=load_config(world.config_path),
            identity_path=world.identity,
            storage=storage,
        )
    assert storage.reads == 2
    assert "truncated" in str(caught.value) or "checksum" in str(caught.value), caught.value
    assert only(out) == []


def _retag(world: Deployment, run: dict[str, Any], driver: str) -> None:
    """Make the stored manifest say the dump came from ``driver`` (same bytes, same sha256)."""
    manifest_path = world.storage / run["artifact"]["manifest"]
    manifest = json.loads(manifest_path.read_text())
    manifest["driver"] = driver
    manifest_path.write_text(json.dumps(manifest))


def test_other_types_restore_to_a_plain_file_with_force(
    world: Deployment, source_db: Path, backed_up: dict[str, Any], tmp_path: Path
) -> None:
    _retag(world, backed_up, "redis")  # as if it were an RDB: the plain dump goes to the file
    run_id = backed_up["run_id"]
    target = tmp_path / "dump.rdb"
    target.write_bytes(b"older dump")
    refused = backupy_restore(world, run_id, "--to", str(target), "-i", str(world.identity))
    one_line_error(refused, 2, "refusing to overwrite existing file", "--force")
    assert target.read_bytes() == b"older dump"
    forced = backupy_restore(
        world, run_id, "--to", str(target), "-i", str(world.identity), "--force"
    )
    assert forced.returncode == 0, forced.stderr
    assert rows(target) == rows(source_db)  # the plain dump of an SQLite run is the database
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


class _UrlLessDriver:
    name = "redis"
    extension = "rdb"

    def restore(self, target: Any, source: Any) -> None:
        raise AssertionError("never called")


class _RecordingDriver(_UrlLessDriver):
    loaded: ClassVar[list[tuple[Any, bytes]]] = []

    def parse_restore_url(self, url: str) -> Any:
        if "bad" in url:
            raise ValueError(f"cannot parse {url}")
        return {"url": url}

    def restore(self, target: Any, source: Any) -> None:
        chunks = []
        while chunk := source.read(65536):
            chunks.append(chunk)
        self.loaded.append((target, b"".join(chunks)))


class _FailingDriver(_RecordingDriver):
    def restore(self, target: Any, source: Any) -> None:
        source.read(10)
        raise DriverError("redis refused the load: OOM")


def test_url_targets_go_through_the_driver(
    world: Deployment,
    source_db: Path,
    backed_up: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    _retag(world, backed_up, "redis")
    kwargs = {
        "store": store_of(world),
        "config": load_config(world.config_path),
        "identity_path": world.identity,
    }
    run_id = backed_up["run_id"]
    monkeypatch.setitem(_DRIVERS, "redis", f"{__name__}:_UrlLessDriver")
    with pytest.raises(RestoreInputError, match="no driver can restore redis from a URL"):
        restore_run(run_id, "redis://127.0.0.1:6390/0", **kwargs)
    monkeypatch.delitem(_DRIVERS, "redis")
    with pytest.raises(RestoreInputError, match="no driver for target type 'redis'"):
        restore_run(run_id, "redis://127.0.0.1:6390/0", **kwargs)

    monkeypatch.setitem(_DRIVERS, "redis", f"{__name__}:_RecordingDriver")
    with pytest.raises(RestoreInputError, match=r"bad target URL redis://u:\*\*\*@bad") as caught:
        restore_run(run_id, "redis://u:pw-secret@bad:1/0", **kwargs)
    assert "pw-secret" not in str(caught.value)
    result = restore_run(run_id, "redis://127.0.0.1:6390/0", **kwargs)
    # A driver that fails early: its error is reported, not the broken pipe that follows it.
    monkeypatch.setitem(_DRIVERS, "redis", f"{__name__}:_FailingDriver")
    with pytest.raises(RestoreFailed, match="loading failed: redis refused the load: OOM"):
        restore_run(run_id, "redis://127.0.0.1:6390/0", **kwargs)
    ((target, data),) = _RecordingDriver.loaded
    assert target == {"url": "redis://127.0.0.1:6390/0"}
    assert result.raw_bytes == len(data) and result.driver == "redis"
    loaded = tmp_path / "loaded.db"
    loaded.write_bytes(data)
    assert rows(loaded) == rows(source_db)
