"""SQLite: a consistent copy of a live database through the online backup API.

Copying the file with ``cp`` while an application writes can capture a torn database (pages
from before and after a transaction, or a WAL not yet checkpointed). ``sqlite3``'s backup API
copies a consistent snapshot under a read transaction; writers are blocked only in rollback
journal mode, never in WAL mode. The snapshot goes to a private temporary directory (mode 0700,
it is the whole database in clear) and is streamed from there, then removed: the temporary
needs as much disk as the database.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import psutil

from tasks.drivers.base import DriverError, DumpInfo, ProgressFn, new_file_writer
from tasks.storage import AtomicFileWriter, StorageError

#: Snapshot folders are named ``backupy-sqlite-{pid}-…`` so a later dump can remove a dead one's.
SNAPSHOT_DIR_PREFIX = "backupy-sqlite-"
#: The first 16 bytes of every SQLite database file.
SQLITE_HEADER = b"SQLite format 3\x00"
#: Copy granularity for streaming the snapshot, and the progress granularity.
COPY_CHUNK = 1 << 20
#: How long to wait for a lock held by the application before giving up, in seconds.
BUSY_TIMEOUT_SECONDS = 30.0
#: ``pages=-1`` copies in one step: a single read transaction, hence one consistent snapshot.
#: (Stepping would let a writer in between, and SQLite would restart the copy: on a busy
#: database, forever.)
BACKUP_ALL_PAGES = -1


class SqliteDriver:
    """Driver for ``target.type == "sqlite"``; the target has ``.path``."""

    name = "sqlite"
    extension = "sqlite"

    def __init__(self, temp_dir: str | os.PathLike[str] | None = None) -> None:
        self.temp_dir = temp_dir

    def server_version(self, target: Any) -> str:
        return sqlite3.sqlite_version

    def check(self, target: Any) -> None:
        path = _db_path(target)
        with _open_readonly(path) as conn:
            _query(conn, path, "SELECT count(*) FROM sqlite_master")

    def dump(self, target: Any, out: BinaryIO, *, progress: ProgressFn | None = None) -> DumpInfo:
        """Snapshot the database into a private temporary, stream it to ``out``, remove it."""
        path = _db_path(target)
        sweep_stale_snapshots(self.temp_dir)
        prefix = f"{SNAPSHOT_DIR_PREFIX}{os.getpid()}-"
        with tempfile.TemporaryDirectory(prefix=prefix, dir=self.temp_dir) as tmp:
            snapshot = Path(tmp) / "snapshot.sqlite"  # mkdtemp made ``tmp`` mode 0700
            _snapshot(path, snapshot)
            raw_bytes = _stream_file(snapshot, out, progress)
        return DumpInfo(
            raw_bytes=raw_bytes,
            server_version=sqlite3.sqlite_version,
            tool="python-sqlite3-backup",
            tool_version=f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}",
        )

    def restore(self, target_or_path: Any, source: BinaryIO) -> None:
        """Write a NEW database file from ``source``; an existing file is never replaced.

        The bytes go to a temporary beside the destination, which must pass
        ``PRAGMA integrity_check`` before it is linked into place (a link, not a rename, so a
        file that appeared meanwhile is not replaced either).
        """
        path = _db_path(target_or_path)
        with new_file_writer(path, "database") as writer:
            _copy_into(source, writer)
            writer.sync()
            _verify_database(writer.temp_path, path)
            try:
                writer.commit(overwrite=False)
            except StorageError as exc:
                raise DriverError(str(exc)) from None
            except OSError as exc:
                raise DriverError(f"cannot restore to {path}: {exc.strerror}") from None


def _db_path(target: Any) -> Path:
    raw = getattr(target, "path", target)
    if not isinstance(raw, str | os.PathLike):
        raise DriverError("sqlite target needs a path")
    return Path(raw).expanduser()


def _uri(path: Path, **params: str) -> str:
    query = "&".join(f"{key}={value}" for key, value in params.items())
    return f"file:{quote(str(path.absolute()), safe='/')}?{query}"


@contextlib.contextmanager
def _open_readonly(path: Path) -> Iterator[sqlite3.Connection]:
    """Open read-only through a URI: a missing file is an error, never a new empty database."""
    if not path.is_file():
        raise DriverError(f"sqlite database not found: {path}")
    try:
        conn = sqlite3.connect(_uri(path, mode="ro"), uri=True, timeout=BUSY_TIMEOUT_SECONDS)
    except sqlite3.Error as exc:
        raise DriverError(f"sqlite database {path} cannot be opened: {exc}") from None
    try:
        yield conn
    finally:
        conn.close()


def _query(conn: sqlite3.Connection, path: Path, sql: str) -> list[Any]:
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.Error as exc:
        raise DriverError(f"sqlite database {path} cannot be read: {exc}") from None


def _snapshot(path: Path, snapshot: Path) -> None:
    with _open_readonly(path) as src:
        _query(src, path, "SELECT count(*) FROM sqlite_master")  # "file is not a database" here
        dst = sqlite3.connect(snapshot)
        try:
            src.backup(dst, pages=BACKUP_ALL_PAGES)
        except sqlite3.Error as exc:
            raise DriverError(f"sqlite backup of {path} failed: {exc}") from None
        finally:
            dst.close()


def sweep_stale_snapshots(temp_dir: str | os.PathLike[str] | None) -> list[Path]:
    """Remove the snapshot folders of dumps whose process died (a killed worker cannot clean
    up, and a snapshot is the whole database in clear). The folder names carry the pid."""
    removed = []
    root = Path(temp_dir or tempfile.gettempdir())
    for folder in root.glob(f"{SNAPSHOT_DIR_PREFIX}*-*"):
        pid = folder.name[len(SNAPSHOT_DIR_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _stream_file(path: Path, out: BinaryIO, progress: ProgressFn | None) -> int:
    total = 0
    with open(path, "rb") as stream:
        path.unlink()  # gone from the file system now; the open file is freed if we die
        while chunk := stream.read(COPY_CHUNK):
            out.write(chunk)
            total += len(chunk)
            if progress is not None:
                progress(total)
    out.flush()
    return total


def _copy_into(source: BinaryIO, writer: AtomicFileWriter) -> None:
    while chunk := source.read(COPY_CHUNK):
        writer.write(chunk)


def _verify_database(candidate: Path, final: Path) -> None:
    """The restored bytes must be an SQLite database that passes ``integrity_check``.

    Opened with ``immutable=1``: nothing else can be using the temporary, and SQLite then
    creates no ``-wal``/``-shm`` files beside it.
    """
    with open(candidate, "rb") as stream:
        if stream.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            raise DriverError(f"cannot restore {final}: the data is not an SQLite database")
    try:
        conn = sqlite3.connect(_uri(candidate, mode="ro", immutable="1"), uri=True)
        try:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise DriverError(f"cannot restore {final}: integrity check failed: {exc}") from None
    if rows != [("ok",)]:
        problems = "; ".join(str(row[0]) for row in rows[:3])
        raise DriverError(f"cannot restore {final}: integrity check failed: {problems}")
