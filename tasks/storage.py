"""Where artifacts live: the key layout and storage backends whose writes are atomic.

A backup that is visible under its final name must be complete: a reader (restore, retention,
an operator copying files away) may never see half an artifact. Every backend therefore writes
through an :class:`AtomicWriter` that makes the object visible only on ``commit()``; leaving the
writer's context without a commit, or with an exception, removes every trace of the attempt.

Keys are ``/``-separated relative names (``{job_id}/{YYYY}/{MM}/{DD}/{run_id}.{ext}…``), the same
for every backend, so that S3 can be added without touching the callers.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Protocol, Self

#: Suffix of the zstd layer in a key; the artifact is a zstd stream when present.
ZSTD_SUFFIX = ".zst"
#: Suffix of the age layer in a key; the artifact is an age file when present.
AGE_SUFFIX = ".age"
#: Name of the manifest stored beside each artifact.
MANIFEST_SUFFIX = ".manifest.json"
#: Temporaries start with a dot, so they are hidden from ``ls`` and from :meth:`Storage.list`;
#: keys may therefore never contain a component that starts with a dot.
PARTIAL_MARKER = ".partial-"
#: Artifacts can hold a whole database in clear (``encryption: none``): owner-only by default.
FILE_MODE = 0o600
#: Directories under the root: owner-only, for the same reason.
DIR_MODE = 0o700
#: Chunk size for copies done by this module (``get_bytes`` reads whole objects on purpose).
COPY_CHUNK = 1 << 20
#: Partials older than this are left-overs of a killed process, not a write in progress.
STALE_PARTIAL_SECONDS = 24 * 3600

COMPRESSIONS = ("zstd", "none")


class StorageError(Exception):
    """A storage operation failed; the message names the backend, the key and the rule."""


class StorageKeyError(StorageError, ValueError):
    """A key that is not a safe relative name (it could escape the storage root)."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The key does not exist in the storage."""


# ---------------------------------------------------------------------------------------------
# Key layout


def artifact_key(
    job_id: str,
    run_id: str,
    started_at: datetime,
    ext: str,
    compression: str,
    encrypted: bool,
) -> str:
    """``{job_id}/{YYYY}/{MM}/{DD}/{run_id}.{ext}[.zst][.age]``.

    The date folders come from the run's start (UTC when the datetime is aware), so that a run
    crossing midnight keeps its artifact and manifest together.
    """
    if compression not in COMPRESSIONS:
        raise StorageKeyError(f"unknown compression {compression!r} (known: {COMPRESSIONS})")
    name = f"{run_id}.{ext}"
    if compression == "zstd":
        name += ZSTD_SUFFIX
    if encrypted:
        name += AGE_SUFFIX
    key = f"{_day_folder(job_id, started_at)}/{name}"
    validate_key(key)
    return key


def manifest_key(job_id: str, run_id: str, started_at: datetime, *_artifact_args: object) -> str:
    """``{job_id}/{YYYY}/{MM}/{DD}/{run_id}.manifest.json``: the same folder as the artifact.

    Extra positional arguments (``ext, compression, encrypted``, as for :func:`artifact_key`)
    are accepted and ignored, so both keys can be built from one argument list.
    """
    key = f"{_day_folder(job_id, started_at)}/{run_id}{MANIFEST_SUFFIX}"
    validate_key(key)
    return key


def _day_folder(job_id: str, started_at: datetime) -> str:
    when = started_at.astimezone(UTC) if started_at.tzinfo is not None else started_at
    return f"{job_id}/{when:%Y}/{when:%m}/{when:%d}"


def validate_key(key: str) -> str:
    """Refuse any key that could name something outside the storage root, or a temporary.

    Rules: a non-empty ``str``; no NUL; not absolute; no backslash (a separator on Windows-like
    S3 clients); no empty, ``.`` or ``..`` component; no component starting with ``.`` (that
    namespace belongs to temporaries).
    """
    if not isinstance(key, str) or not key:
        raise StorageKeyError(f"storage key must be a non-empty string, got {key!r}")
    if "\x00" in key:
        raise StorageKeyError(f"storage key {key!r} contains a NUL byte")
    if key.startswith("/"):
        raise StorageKeyError(f"storage key {key!r} is absolute; keys are relative to the root")
    if "\\" in key:
        raise StorageKeyError(f"storage key {key!r} contains a backslash")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise StorageKeyError(f"storage key {key!r} has an empty, '.' or '..' component")
        if part.startswith("."):
            raise StorageKeyError(
                f"storage key {key!r} has a component starting with '.' "
                "(reserved for temporary files)"
            )
    return key


def _validate_prefix(prefix: str) -> str:
    """A list prefix is a key prefix: '' (everything) or the start of a valid key."""
    if prefix == "":
        return prefix
    validate_key(prefix.rstrip("/") or "x")
    return prefix


# ---------------------------------------------------------------------------------------------
# Protocols


class AtomicWriter(Protocol):
    """A write that becomes visible under its final key only on :meth:`commit`."""

    key: str
    bytes_written: int

    def write(self, data: bytes) -> int: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Storage(Protocol):
    """What the dump, restore and retention code need from a backend."""

    def open_write(self, key: str) -> AtomicWriter: ...
    def open_read(self, key: str) -> BinaryIO: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def size(self, key: str) -> int: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def describe(self) -> str: ...


# ---------------------------------------------------------------------------------------------
# Local files


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable: without it a crash can undo the rename."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AbortOnExit:
    """Leaving the ``with`` block without ``commit()`` aborts: nothing half-written stays.

    (``abort`` after ``commit`` does nothing, so the normal path is unaffected.)"""

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


class AtomicFileWriter(AbortOnExit):
    """Write ``final_path`` through ``.{name}.partial-{random}`` in the same directory.

    Same directory, so the final ``os.replace`` is a rename within one filesystem (atomic).
    ``commit()`` fsyncs the file, renames it and fsyncs the directory; ``abort()`` (also on an
    exception or a context exit without commit) unlinks the temporary. ``overwrite=False`` at
    commit links instead of renaming, so an existing file is never replaced, even by a race.
    """

    def __init__(self, final_path: Path, *, key: str | None = None, mode: int = FILE_MODE) -> None:
        self.final_path = Path(final_path)
        self.key = key if key is not None else str(final_path)
        self.bytes_written = 0
        name = f".{self.final_path.name}{PARTIAL_MARKER}{secrets.token_hex(8)}"
        self.temp_path = self.final_path.with_name(name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        self._fd: int | None = os.open(self.temp_path, flags, mode)
        self._done = False

    def write(self, data: bytes) -> int:
        """Write all of ``data`` (``os.write`` may write less than asked: loop)."""
        if self._fd is None or self._done:
            raise StorageError(f"write to {self.key} after commit or abort")
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.bytes_written += len(data)
        return len(data)

    def sync(self) -> None:
        """fsync the temporary: after this its content survives a crash (not yet its name)."""
        if self._fd is not None:
            os.fsync(self._fd)

    def commit(self, *, overwrite: bool = True) -> None:
        """Make the data visible under the final name; on any failure nothing is left behind."""
        if self._done:
            raise StorageError(f"{self.key} was already committed or aborted")
        try:
            self.sync()
            self._close_fd()
            if overwrite:
                os.replace(self.temp_path, self.final_path)
            else:
                self._link_no_overwrite()
            fsync_dir(self.final_path.parent)
        except BaseException:
            self.abort()
            raise
        self._done = True

    def _link_no_overwrite(self) -> None:
        try:
            os.link(self.temp_path, self.final_path)
        except FileExistsError:
            raise StorageError(f"refusing to overwrite existing file {self.final_path}") from None
        os.unlink(self.temp_path)

    def abort(self) -> None:
        """Drop the temporary; idempotent, and a no-op after a successful commit."""
        if self._done:
            return
        self._done = True
        self._close_fd()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp_path)

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class LocalStorage:
    """A directory; keys are relative paths under it.

    The root is created (mode 0700) when missing and must be a directory this process can write
    to: a backup that fails at its first write, hours after start, is worse than a clear error
    when the worker starts.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self._ensure_root()
        self._real_root = Path(os.path.realpath(self.root))

    def _ensure_root(self) -> None:
        try:
            self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StorageError(
                f"local storage root {self.root} cannot be created: {exc.strerror} "
                "(rule: storage.path must be a directory the worker can write to)"
            ) from None
        if not self.root.is_dir():
            raise StorageError(
                f"local storage root {self.root} is not a directory "
                "(rule: storage.path must be a directory the worker can write to)"
            )
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(
                f"local storage root {self.root} is not writable by uid {os.geteuid()} "
                "(rule: storage.path must be a directory the worker can write to)"
            )

    def _path(self, key: str) -> Path:
        """The file for ``key``, checked to stay under the root even through symlinks."""
        validate_key(key)
        path = self.root.joinpath(*key.split("/"))
        parent = Path(os.path.realpath(path.parent))
        if parent != self._real_root and self._real_root not in parent.parents:
            raise StorageKeyError(f"storage key {key!r} resolves outside {self.root}")
        return path

    def describe(self) -> str:
        return f"local:{self.root}"

    def open_write(self, key: str) -> AtomicFileWriter:
        path = self._path(key)
        self._make_parents(path.parent)
        try:
            return AtomicFileWriter(path, key=key)
        except OSError as exc:
            raise StorageError(f"{self.describe()}: cannot write {key}: {exc.strerror}") from exc

    def _make_parents(self, directory: Path) -> None:
        try:
            directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"{self.describe()}: cannot create directory {directory}: {exc.strerror}"
            ) from exc
        self._path_check_dir(directory)

    def _path_check_dir(self, directory: Path) -> None:
        real = Path(os.path.realpath(directory))
        if real != self._real_root and self._real_root not in real.parents:
            raise StorageKeyError(f"{directory} resolves outside {self.root}")

    def open_read(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb")  # the caller owns and closes the stream
        except FileNotFoundError:
            raise StorageNotFoundError(f"{self.describe()}: no such key {key}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> bool:
        """Remove ``key``; False when it was already gone. Empty day folders are pruned."""
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        self._prune_empty_dirs(path.parent)
        return True

    def _prune_empty_dirs(self, directory: Path) -> None:
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def list(self, prefix: str = "") -> list[str]:
        """Every key starting with ``prefix``, sorted; temporaries are never listed."""
        _validate_prefix(prefix)
        start = self.root
        head, _, _ = prefix.rpartition("/")
        if head:
            start = self.root.joinpath(*head.split("/"))
        return sorted(key for key in self._walk(start) if key.startswith(prefix))

    def _walk(self, start: Path) -> Iterator[str]:
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root)
            for name in filenames:
                if not name.startswith("."):
                    yield (rel / name).as_posix()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise StorageNotFoundError(f"{self.describe()}: no such key {key}") from None

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.open_write(key) as writer:
            writer.write(data)
            writer.commit()

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as stream:
            return stream.read()

    def cleanup_partials(self, older_than: float = STALE_PARTIAL_SECONDS) -> list[str]:
        """Remove temporaries left by killed processes; returns the removed paths (relative).

        Only files older than ``older_than`` seconds go, so a write in progress is never hit.
        """
        removed: list[str] = []
        cutoff = time.time() - older_than
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for name in filenames:
                if not (name.startswith(".") and PARTIAL_MARKER in name):
                    continue
                path = Path(dirpath) / name
                with contextlib.suppress(FileNotFoundError):
                    info = path.lstat()
                    if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                        path.unlink()
                        removed.append(path.relative_to(self.root).as_posix())
        return removed


# ---------------------------------------------------------------------------------------------
# Factory


def storage_from_config(storage_cfg: Any) -> Storage:
    """The backend for the config's ``storage`` section (a pydantic model or a mapping)."""
    kind = _field(storage_cfg, "type")
    if kind == "local":
        path = _field(storage_cfg, "path")
        if not path:
            raise StorageError("storage.path is required for type 'local'")
        return LocalStorage(path)
    if kind == "s3":
        from tasks.s3_storage import s3_storage_from_config  # boto3 only where S3 is used

        return s3_storage_from_config(storage_cfg)
    raise StorageError(f"unknown storage type {kind!r} (known: local, s3)")


def _field(cfg: Any, name: str) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(name)
    return getattr(cfg, name, None)
