"""The interface every database driver implements (one module per database, like borgmatic's
``hooks/data_source/*.py``), and what they share.

A driver writes a raw, uncompressed dump to a binary stream: compression, encryption, hashing
and storage are the artifact stream's job (``tasks/artifacts.py``), so a driver stays small and
the same pipeline serves every database. ``target`` is duck-typed (any object with the fields
the driver reads), so drivers do not depend on the config schema.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from tasks.storage import AtomicFileWriter

#: ``progress(raw_bytes_so_far)``; advisory, called about once per MiB.
ProgressFn = Callable[[int], None]


class DriverError(Exception):
    """The database cannot be dumped, restored or reached; the message holds no secret."""


@dataclass(frozen=True)
class DumpInfo:
    """What a dump produced, for the manifest (tool versions matter when restoring years on)."""

    raw_bytes: int
    server_version: str
    tool: str
    tool_version: str


class Driver(Protocol):
    """Dump to a stream, restore from a stream, check connectivity, report the server version."""

    name: str
    extension: str

    def dump(self, target: Any, out: BinaryIO, *, progress: ProgressFn | None = None) -> DumpInfo:
        """Write the raw dump to ``out`` (not closed: the caller owns it)."""
        ...

    def restore(self, target_or_path: Any, source: BinaryIO) -> None:
        """Load a raw dump read from ``source`` into a new database."""
        ...

    def check(self, target: Any) -> None:
        """Raise :class:`DriverError` with a clear message if the database is unreachable."""
        ...

    def server_version(self, target: Any) -> str: ...


def new_file_writer(path: Path, what: str) -> AtomicFileWriter:
    """An atomic writer for a restore into a NEW file: an existing ``what`` is never replaced,
    and a missing directory is a clear error rather than a stray traceback."""
    if path.exists():
        raise DriverError(f"refusing to overwrite existing {what} {path}; restore to a new path")
    if not path.parent.is_dir():
        raise DriverError(f"cannot restore to {path}: directory {path.parent} does not exist")
    try:
        return AtomicFileWriter(path)
    except OSError as exc:
        raise DriverError(f"cannot restore to {path}: {exc.strerror}") from None
