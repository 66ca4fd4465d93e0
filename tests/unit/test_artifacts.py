"""The artifact stream, keys and the SQLite driver: round trips, failures, bounded memory."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import sqlite3
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO

import psutil
import pytest

from tasks.artifacts import (
    WRONG_KEY,
    ZSTD_MAGIC,
    ArtifactError,
    ArtifactInfo,
    ChecksumError,
    DecryptionError,
    build_manifest,
    decrypt_file,
    read_artifact,
    read_manifest,
    write_artifact,
    write_manifest,
)
from tasks.drivers import DriverError, get_driver
from tasks.drivers.sqlite import SqliteDriver
from tasks.keys import KeyFileError, generate_identity, load_identities
from tasks.storage import LocalStorage, StorageError

MIB = 1 << 20
AGE_MAGIC = b"age-encryption.org/v1"
#: The design's bound: memory may not grow with the dump.
MAX_RSS_GROWTH = 64 * MIB
BIG_STREAM = 300 * MIB
KEY = "job/2024/01/01/run.db"


# --- helpers ----------------------------------------------------------------------------------


def all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def sample_data(size: int = 3 * MIB) -> bytes:
    """Half random, half text: exercises both incompressible and compressible input."""
    half = size // 2
    text = (b"INSERT INTO t VALUES (1, 'caf\xc3\xa9');\n" * (half // 30 + 1))[:half]
    return os.urandom(size - half) + text


class GeneratedSource:
    """A readable stream of ``size`` fresh bytes (half random, half text, so it compresses
    about 2:1 like a real dump) that never holds more than one chunk in memory."""

    def __init__(self, size: int, *, fail_after: int | None = None) -> None:
        self.left = size
        self.produced = 0
        self.fail_after = fail_after

    def read(self, size: int = -1) -> bytes:
        if self.fail_after is not None and self.produced >= self.fail_after:
            raise OSError("connection to the database lost")
        size = MIB if size is None or size < 0 else min(size, MIB)
        size = min(size, self.left)
        random_part = os.urandom(size // 2)
        text = f"row {self.produced} caf\u00e9;\n".encode() * (size // 16 + 1)
        chunk = random_part + text[: size - len(random_part)]
        self.left -= size
        self.produced += size
        return chunk


class FailingStorage(LocalStorage):
    """Local storage whose writes fail with ENOSPC after ``limit`` bytes."""

    def __init__(self, root: Path, limit: int) -> None:
        super().__init__(root)
        self.limit = limit

    def open_write(self, key: str) -> Any:
        writer = super().open_write(key)
        original = writer.write

        def write(data: bytes) -> int:
            if writer.bytes_written + len(data) > self.limit:
                raise OSError(28, "No space left on device")
            return original(data)

        writer.write = write  # type: ignore[method-assign]
        return writer


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "backups")


@pytest.fixture
def key_file(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "key.txt"
    return path, generate_identity(path)


@pytest.fixture
def no_thread_left() -> Iterator[None]:
    before = threading.active_count()
    yield
    assert threading.active_count() == before, [t.name for t in threading.enumerate()]


def store(
    storage: LocalStorage, data: bytes, level: int | None, recipients: list[str] | None
) -> ArtifactInfo:
    return write_artifact(
        io.BytesIO(data), storage, KEY, compression_level=level, recipients=recipients
    )


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [None, 3])
@pytest.mark.parametrize("encrypted", [False, True])
@pytest.mark.parametrize("size", [0, 1, 3 * MIB + 7])
def test_round_trip(
    storage: LocalStorage,
    key_file: tuple[Path, str],
    level: int | None,
    encrypted: bool,
    size: int,
    no_thread_left: None,
) -> None:
    path, recipient = key_file
    data = sample_data(size) if size > 1 else b"x" * size
    info = store(storage, data, level, [recipient] if encrypted else None)

    stored = storage.get_bytes(KEY)
    assert info.raw_bytes == len(data)
    assert info.stored_bytes == len(stored)
    assert info.sha256 == hashlib.sha256(stored).hexdigest()
    assert info.compression == ("zstd" if level else "none")
    assert info.encrypted is encrypted
    assert info.recipients == ((recipient,) if encrypted else ())
    if encrypted:
        assert stored.startswith(AGE_MAGIC)
    elif level:
        assert stored.startswith(ZSTD_MAGIC)
    else:
        assert stored == data

    out = io.BytesIO()
    read = read_artifact(
        storage,
        KEY,
        identities=load_identities(path) if encrypted else None,
        compressed=level is not None,
        expected_sha256=info.sha256,
        out=out,
    )
    assert out.getvalue() == data
    assert (read.raw_bytes, read.stored_bytes, read.sha256) == (
        len(data),
        info.stored_bytes,
        info.sha256,
    )
    assert all_files(storage.root) == [KEY]


def test_progress_is_reported_about_once_per_mib(storage: LocalStorage) -> None:
    seen: list[int] = []
    write_artifact(
        GeneratedSource(5 * MIB + 10),  # type: ignore[arg-type]
        storage,
        KEY,
        compression_level=1,
        recipients=None,
        progress=seen.append,
        chunk_size=256 * 1024,
    )
    assert seen == sorted(seen)
    assert seen[-1] == 5 * MIB + 10
    assert 5 <= len(seen) <= 7


def test_a_failing_progress_callback_does_not_fail_the_backup(storage: LocalStorage) -> None:
    def progress(_: int) -> None:
        raise RuntimeError("redis blip")

    info = write_artifact(
        io.BytesIO(b"x" * 3 * MIB),
        storage,
        KEY,
        compression_level=None,
        recipients=None,
        progress=progress,
    )
    assert info.raw_bytes == 3 * MIB


# --- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("encrypted", [False, True])
def test_source_failing_midway_stores_nothing(
    storage: LocalStorage, key_file: tuple[Path, str], encrypted: bool, no_thread_left: None
) -> None:
    source = GeneratedSource(50 * MIB, fail_after=5 * MIB)
    with pytest.raises(ArtifactError, match=r"reading the dump failed after 5\.0 MiB.*lost"):
        write_artifact(
            source,  # type: ignore[arg-type]
            storage,
            KEY,
            compression_level=3,
            recipients=[key_file[1]] if encrypted else None,
        )
    assert not storage.exists(KEY)
    assert all_files(storage.root) == []


@pytest.mark.parametrize("encrypted", [False, True])
def test_storage_failing_midway_stores_nothing(
    tmp_path: Path, key_file: tuple[Path, str], encrypted: bool, no_thread_left: None
) -> None:
    storage = FailingStorage(tmp_path / "full", limit=2 * MIB)
    with pytest.raises(ArtifactError, match=r"writing to storage failed.*No space left"):
        write_artifact(
            GeneratedSource(40 * MIB),  # type: ignore[arg-type]
            storage,
            KEY,
            compression_level=None,
            recipients=[key_file[1]] if encrypted else None,
        )
    assert all_files(storage.root) == []


def test_bad_recipient_is_refused_before_writing(storage: LocalStorage) -> None:
    with pytest.raises(ArtifactError, match="not an age X25519 recipient"):
        store(storage, b"data", 3, ["age1notakey"])
    with pytest.raises(ArtifactError, match="at least one recipient"):
        store(storage, b"data", 3, [])
    with pytest.raises(ArtifactError, match="zstd level"):
        store(storage, b"data", 99, None)
    assert all_files(storage.root) == []


def test_before_commit_failure_stores_nothing(
    storage: LocalStorage, key_file: tuple[Path, str], no_thread_left: None
) -> None:
    def dump_failed() -> None:
        raise RuntimeError("pg_dump exited 1")

    with pytest.raises(ArtifactError, match="pg_dump exited 1"):
        write_artifact(
            io.BytesIO(sample_data()),
            storage,
            KEY,
            compression_level=3,
            recipients=[key_file[1]],
            before_commit=dump_failed,
        )
    assert all_files(storage.root) == []


class Interrupted(BaseException):
    """Stands for Celery's SoftTimeLimitExceeded, raised in the calling thread by a signal."""


def test_interrupt_unblocks_the_source_joins_and_stores_nothing(
    storage: LocalStorage, key_file: tuple[Path, str], no_thread_left: None
) -> None:
    read_fd, write_fd = os.pipe()
    feeder = os.fdopen(write_fd, "wb")
    feeder.write(b"some of the dump")
    feeder.flush()  # then nothing more: the dump "hangs", the source blocks in read()

    def on_alarm(signum: int, frame: Any) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        with os.fdopen(read_fd, "rb") as source, pytest.raises(Interrupted):
            write_artifact(
                source,
                storage,
                KEY,
                compression_level=3,
                recipients=[key_file[1]],
                on_interrupt=feeder.close,
            )
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert feeder.closed
    assert all_files(storage.root) == []


def test_memory_stays_bounded_for_a_large_stream(
    storage: LocalStorage, key_file: tuple[Path, str], no_thread_left: None
) -> None:
    process = psutil.Process()
    store(storage, sample_data(MIB), 3, [key_file[1]])  # warm up codecs and allocators
    storage.delete(KEY)
    baseline = process.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    try:
        info = write_artifact(
            GeneratedSource(BIG_STREAM),  # type: ignore[arg-type]
            storage,
            KEY,
            compression_level=3,
            recipients=[key_file[1]],
        )
    finally:
        done.set()
        sampler.join()
    elapsed = time.monotonic() - started
    growth = peak - baseline
    print(
        f"\n300 MiB zstd-3+age: {elapsed:.2f}s, {BIG_STREAM / MIB / elapsed:.0f} MiB/s, "
        f"peak RSS growth {growth / MIB:.1f} MiB, stored {info.stored_bytes / MIB:.0f} MiB"
    )
    assert info.raw_bytes == BIG_STREAM
    assert growth < MAX_RSS_GROWTH


# --- reading: checksums and keys --------------------------------------------------------------


@pytest.mark.parametrize("encrypted", [False, True])
def test_flipped_byte_fails_the_checksum_before_any_output(
    storage: LocalStorage, key_file: tuple[Path, str], encrypted: bool
) -> None:
    path, recipient = key_file
    info = store(storage, sample_data(), 3, [recipient] if encrypted else None)
    file = storage.root / KEY
    damaged = bytearray(file.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    file.write_bytes(bytes(damaged))
    out = io.BytesIO()
    with pytest.raises(ChecksumError, match="nothing was restored"):
        read_artifact(
            storage,
            KEY,
            identities=load_identities(path) if encrypted else None,
            compressed=True,
            expected_sha256=info.sha256,
            out=out,
        )
    assert out.getvalue() == b""


def test_corrupt_ciphertext_without_checksum_is_a_decryption_error(
    storage: LocalStorage, key_file: tuple[Path, str]
) -> None:
    path, recipient = key_file
    store(storage, sample_data(), 3, [recipient])
    file = storage.root / KEY
    damaged = bytearray(file.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    file.write_bytes(bytes(damaged))
    with pytest.raises(DecryptionError, match="corrupt or truncated"):
        read_artifact(
            storage,
            KEY,
            identities=load_identities(path),
            compressed=True,
            expected_sha256=None,
            out=io.BytesIO(),
        )


def test_truncated_zstd_is_detected(storage: LocalStorage) -> None:
    store(storage, sample_data(), 3, None)
    file = storage.root / KEY
    file.write_bytes(file.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="truncated"):
        read_artifact(
            storage,
            KEY,
            identities=None,
            compressed=True,
            expected_sha256=None,
            out=io.BytesIO(),
        )


def test_wrong_key_is_a_clear_decryption_error(
    storage: LocalStorage, key_file: tuple[Path, str], tmp_path: Path
) -> None:
    info = store(storage, sample_data(), 3, [key_file[1]])
    other = tmp_path / "other.txt"
    generate_identity(other)
    out = io.BytesIO()
    with pytest.raises(DecryptionError) as caught:
        read_artifact(
            storage,
            KEY,
            identities=load_identities(other),
            compressed=True,
            expected_sha256=info.sha256,
            out=out,
        )
    assert WRONG_KEY in str(caught.value)
    assert "AGE-SECRET-KEY" not in str(caught.value)
    assert out.getvalue() == b""


# --- manifest ---------------------------------------------------------------------------------


def test_manifest_round_trip(storage: LocalStorage, key_file: tuple[Path, str]) -> None:
    from datetime import UTC, datetime

    info = store(storage, sample_data(), 3, [key_file[1]])
    manifest = build_manifest(
        job_id="job",
        run_id="run",
        driver="sqlite",
        server_version="3.45.0",
        info=info,
        started_at=datetime(2024, 1, 1, tzinfo=UTC),
        finished_at=datetime(2024, 1, 1, 0, 0, 5, tzinfo=UTC),
        timings={"dump_seconds": 4.5},
        dump_tool="python-sqlite3-backup",
        dump_tool_version="x",
    )
    write_manifest(storage, "job/2024/01/01/run.manifest.json", manifest)
    loaded = read_manifest(storage, "job/2024/01/01/run.manifest.json")
    assert loaded == manifest
    assert loaded["format_version"] == 1
    assert loaded["artifact"] == KEY
    assert loaded["sizes"] == {"raw": info.raw_bytes, "stored": info.stored_bytes}
    assert loaded["sha256"] == info.sha256
    assert loaded["encryption"] == {"type": "age", "recipients": [key_file[1]]}
    assert loaded["compression"] == {"type": "zstd", "level": 3}
    assert loaded["timings"]["dump_seconds"] == 4.5
    assert {"python", "zstandard", "pyrage", "python-sqlite3-backup"} <= set(
        loaded["tool_versions"]
    )
    assert all_files(storage.root) == [KEY, "job/2024/01/01/run.manifest.json"]


# --- offline decrypt --------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "level"), [("a.db.zst.age", 3), ("a.bin", 3), ("a.db.age", None)])
def test_decrypt_file(
    storage: LocalStorage, key_file: tuple[Path, str], tmp_path: Path, name: str, level: int | None
) -> None:
    path, recipient = key_file
    data = sample_data()
    store(storage, data, level, [recipient])
    encrypted = tmp_path / name
    encrypted.write_bytes(storage.get_bytes(KEY))
    out = tmp_path / "out" / "restored.db"
    out.parent.mkdir()
    info = decrypt_file(encrypted, out, path)
    assert out.read_bytes() == data
    assert info.raw_bytes == len(data)
    assert all_files(out.parent) == ["restored.db"]
    with pytest.raises(ArtifactError, match="refusing to overwrite"):
        decrypt_file(encrypted, out, path)


def test_decrypt_file_failure_leaves_nothing(
    storage: LocalStorage, key_file: tuple[Path, str], tmp_path: Path
) -> None:
    store(storage, sample_data(), 3, [key_file[1]])
    encrypted = tmp_path / "a.db.zst.age"
    encrypted.write_bytes(storage.get_bytes(KEY))
    other = tmp_path / "other.txt"
    generate_identity(other)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(DecryptionError, match=WRONG_KEY):
        decrypt_file(encrypted, out_dir / "restored.db", other)
    truncated = tmp_path / "cut.db.zst.age"
    truncated.write_bytes(encrypted.read_bytes()[:-100])
    with pytest.raises(DecryptionError, match="corrupt or truncated"):
        decrypt_file(truncated, out_dir / "restored.db", key_file[0])
    plain = tmp_path / "plain.db"
    plain.write_bytes(b"SQLite format 3\x00")
    with pytest.raises(DecryptionError, match="not an age-encrypted file"):
        decrypt_file(plain, out_dir / "restored.db", key_file[0])
    assert all_files(out_dir) == []


# --- keys -------------------------------------------------------------------------------------


def test_keygen_writes_an_age_keygen_file_0600(tmp_path: Path) -> None:
    path = tmp_path / "key.txt"
    recipient = generate_identity(path)
    assert recipient.startswith("age1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# created: ")
    assert lines[1] == f"# public key: {recipient}"
    assert lines[2].startswith("AGE-SECRET-KEY-1")
    assert str(load_identities(path)[0].to_public()) == recipient


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "key.txt"
    generate_identity(path)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        generate_identity(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "content",
    [
        "hunter2 is my database password\n",
        "# only a comment\n\n",
        "AGE-SECRET-KEY-1HUNTER2SECRETMATERIAL\n",
        "",
    ],
)
def test_load_identities_refuses_a_non_identity_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "not-a-key.txt"
    path.write_text(content)
    with pytest.raises(KeyFileError) as caught:
        load_identities(path)
    message = str(caught.value)
    assert str(path) in message
    assert "hunter2" not in message.lower()
    assert caught.value.__cause__ is None  # pyrage's error (which may quote input) is dropped
    assert caught.value.__context__ is None or caught.value.__suppress_context__


def test_load_identities_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="not found"):
        load_identities(tmp_path / "nope.txt")


# --- SQLite driver ----------------------------------------------------------------------------

ROWS = 10_000


def make_database(path: Path, *, wal: bool = False) -> None:
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(
        """
        CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, photo BLOB, note TEXT, score REAL);
        CREATE TABLE audit (id INTEGER PRIMARY KEY, person INTEGER, what TEXT);
        CREATE VIEW high AS SELECT name, score FROM people WHERE score > 0.5;
        CREATE TRIGGER people_audit AFTER INSERT ON people
            BEGIN INSERT INTO audit (person, what) VALUES (new.id, 'insert'); END;
        CREATE INDEX people_name ON people (name);
        """
    )
    conn.executemany(
        "INSERT INTO people (name, photo, note, score) VALUES (?, ?, ?, ?)",
        (
            (
                f"Zoë Ødegård 東京 {i} 🚀",
                os.urandom(i % 300) if i % 7 else None,
                None if i % 3 == 0 else "l'été\x00nul" * (i % 5),
                i / ROWS,
            )
            for i in range(ROWS)
        ),
    )
    conn.commit()
    conn.close()


def database_content(path: Path) -> dict[str, Any]:
    """Schema and every row of every table and view, for equality checks."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        schema = conn.execute(
            "SELECT type, name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
        content: dict[str, Any] = {"schema": schema}
        for kind, name, _ in schema:
            if kind in ("table", "view"):
                content[name] = conn.execute(f'SELECT * FROM "{name}" ORDER BY 1, 2').fetchall()
        return content
    finally:
        conn.close()


def dump_through_pipe(
    driver: SqliteDriver, target: Any, write: Callable[[BinaryIO, Callable[[], None]], Any]
) -> Any:
    """The dump task's composition: driver.dump into one end of a pipe, in a thread;
    ``write(source, before_commit)`` reads the other end. ``before_commit`` joins the dump and
    raises if it failed, so a failed dump never stands as a complete artifact."""
    read_fd, write_fd = os.pipe()
    errors: list[BaseException] = []

    def produce() -> None:
        with os.fdopen(write_fd, "wb") as out:
            try:
                driver.dump(target, out)
            except BaseException as exc:
                errors.append(exc)

    thread = threading.Thread(target=produce, name="dump")
    thread.start()

    def before_commit() -> None:
        thread.join()
        if errors:
            raise errors[0]

    try:
        with os.fdopen(read_fd, "rb") as source:
            return write(source, before_commit)
    finally:
        thread.join()


@pytest.mark.parametrize("wal", [False, True])
def test_sqlite_dump_restore_round_trip_through_the_artifact_stream(
    tmp_path: Path, storage: LocalStorage, key_file: tuple[Path, str], wal: bool
) -> None:
    source_db = tmp_path / "app.db"
    make_database(source_db, wal=wal)
    driver = get_driver("sqlite")
    assert isinstance(driver, SqliteDriver)
    target = SimpleNamespace(type="sqlite", path=str(source_db))
    driver.check(target)

    info = dump_through_pipe(
        driver,
        target,
        lambda source, before_commit: write_artifact(
            source,
            storage,
            KEY,
            compression_level=3,
            recipients=[key_file[1]],
            before_commit=before_commit,
        ),
    )
    restored_raw = tmp_path / "raw.sqlite"
    with open(restored_raw, "wb") as out:
        read_artifact(
            storage,
            KEY,
            identities=load_identities(key_file[0]),
            compressed=True,
            expected_sha256=info.sha256,
            out=out,
        )
    restored = tmp_path / "restored.db"
    with open(restored_raw, "rb") as stream:
        driver.restore(restored, stream)
    assert database_content(restored) == database_content(source_db)
    assert len(database_content(restored)["people"]) == ROWS
    assert len(database_content(restored)["audit"]) == ROWS
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_failed_dump_through_pipe_stores_nothing(
    tmp_path: Path, storage: LocalStorage, no_thread_left: None
) -> None:
    target = SimpleNamespace(path=str(tmp_path / "missing.db"))
    with pytest.raises(ArtifactError, match="sqlite database not found"):
        dump_through_pipe(
            SqliteDriver(),
            target,
            lambda source, before_commit: write_artifact(
                source,
                storage,
                KEY,
                compression_level=3,
                recipients=None,
                before_commit=before_commit,
            ),
        )
    assert all_files(storage.root) == []


def test_sqlite_missing_database_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    driver = SqliteDriver()
    with pytest.raises(DriverError, match=f"sqlite database not found: {missing}"):
        driver.dump(SimpleNamespace(path=str(missing)), io.BytesIO())
    with pytest.raises(DriverError, match="not found"):
        driver.check(SimpleNamespace(path=str(missing)))
    assert not missing.exists()
    assert list(tmp_path.iterdir()) == []


def test_sqlite_not_a_database(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DriverError, match="cannot be read"):
        SqliteDriver().dump(SimpleNamespace(path=str(bogus)), io.BytesIO())


def test_sqlite_dump_uses_a_private_temp_and_removes_it(tmp_path: Path) -> None:
    source_db = tmp_path / "app.db"
    make_database(source_db)
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    modes: list[int] = []

    def progress(_: int) -> None:
        modes.extend(stat.S_IMODE(p.stat().st_mode) for p in temp_root.iterdir())

    out = io.BytesIO()
    info = SqliteDriver(temp_dir=temp_root).dump(
        SimpleNamespace(path=str(source_db)), out, progress=progress
    )
    assert modes and set(modes) == {0o700}
    assert list(temp_root.iterdir()) == []
    assert info.raw_bytes == len(out.getvalue()) > 0
    assert info.server_version == sqlite3.sqlite_version


def test_sqlite_restore_refuses_existing_and_garbage(tmp_path: Path) -> None:
    source_db = tmp_path / "app.db"
    make_database(source_db)
    driver = SqliteDriver()
    with pytest.raises(DriverError, match="refusing to overwrite"):
        driver.restore(source_db, io.BytesIO(b"SQLite format 3\x00"))
    with pytest.raises(DriverError, match="not an SQLite database"):
        driver.restore(tmp_path / "new.db", io.BytesIO(b"garbage" * 1000))
    dump = io.BytesIO()
    driver.dump(SimpleNamespace(path=str(source_db)), dump)
    damaged = bytearray(dump.getvalue())
    damaged[len(damaged) // 2 : len(damaged) // 2 + 4096] = b"\xff" * 4096
    with pytest.raises(DriverError, match="integrity check failed"):
        driver.restore(tmp_path / "new.db", io.BytesIO(bytes(damaged)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]


def test_unknown_driver_type() -> None:
    with pytest.raises(DriverError, match=r"no driver for target type 'oracle' \(known: .*sqlite"):
        get_driver("oracle")


def test_storage_open_failure_is_an_artifact_error(tmp_path: Path) -> None:
    class Broken(LocalStorage):
        def open_write(self, key: str) -> Any:
            raise StorageError("bucket gone")

    with pytest.raises(ArtifactError, match="bucket gone"):
        store(Broken(tmp_path / "b"), b"x", None, None)


def test_a_stage_that_cannot_start_does_not_hang_the_other(
    storage: LocalStorage,
    key_file: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch,
    no_thread_left: None,
) -> None:
    original = threading.Thread.start
    calls: list[str] = []

    def start(self: threading.Thread) -> None:
        calls.append(self.name)
        if self.name == "artifact-encrypt":
            raise RuntimeError("can't start new thread")
        original(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        write_artifact(
            GeneratedSource(20 * MIB),  # type: ignore[arg-type]
            storage,
            KEY,
            compression_level=None,
            recipients=[key_file[1]],
        )
    assert calls == ["artifact-compress", "artifact-encrypt"]
    assert all_files(storage.root) == []


def test_sqlite_snapshot_of_a_dead_dump_is_swept(tmp_path: Path) -> None:
    """A worker killed mid-dump leaves its snapshot (the database in clear): the next dump
    removes it, and leaves alone the snapshot folders of processes still alive."""
    from tasks.drivers.sqlite import SNAPSHOT_DIR_PREFIX, sweep_stale_snapshots

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"{SNAPSHOT_DIR_PREFIX}{dead.pid}-abc"
    stale.mkdir()
    (stale / "snapshot.sqlite").write_bytes(b"secret rows")
    alive = tmp_path / f"{SNAPSHOT_DIR_PREFIX}{os.getpid()}-def"
    alive.mkdir()
    assert sweep_stale_snapshots(tmp_path) == [stale]
    assert not stale.exists()
    assert alive.exists()
