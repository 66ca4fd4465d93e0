"""The artifact stream: raw dump → zstd → age → SHA-256 → storage, and back again.

Writing (:func:`write_artifact`) runs two stages in threads joined by an ``os.pipe``::

    source ──read──► [compress thread: zstd stream_writer] ──pipe──►
        [encrypt thread: pyrage.encrypt_io] ──► HashingWriter (SHA-256) ──► storage AtomicWriter

``pyrage.encrypt_io(reader, writer, recipients)`` streams (checked on pyrage 1.4: it is
``std::io::copy`` between Python file objects through 8 KiB buffers, so memory stays flat; 300
MB went through with under 1 MB of RSS growth). It pulls from a *reader*, while zstd's
``stream_writer`` pushes into a *writer*: the pipe turns one into the other, and running the two
ends in threads lets compression, encryption and the storage write overlap (zstd and the file
writes release the GIL). Memory is bounded by the chunk size, the pipe and the codecs' windows,
whatever the dump size. Without encryption there is one stage (compress straight into storage).

The result is a standard age file of a zstd stream: ``age -d -i key.txt FILE | zstd -d``.

Failure handling: every stage records the first error it sees; the storage writer is aborted
(nothing appears under the final key), all threads are joined, and :class:`ArtifactError` names
the stage that failed first (the root cause, not the broken pipe that follows it).

Reading (:func:`read_artifact`) is two passes on purpose: pass 1 hashes the stored bytes and
compares them with the manifest *before a single byte is handed to the caller*, so a corrupt
artifact never starts loading into a database; pass 2 decrypts and decompresses. It costs one
extra read of the artifact: correctness over speed. Pass 2 hashes again, so an artifact that
changed between the passes is caught too; the restore side writes to a temporary and renames
only on success, so that late detection still leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import pyrage
import zstandard
from pyrage import x25519

from tasks.keys import RecipientError, load_identities, parse_recipients
from tasks.storage import AGE_SUFFIX, ZSTD_SUFFIX, AtomicFileWriter, Storage, StorageError

log = logging.getLogger(__name__)

#: Read size from the dump, and the granularity of hashing and copying.
CHUNK_SIZE = 1 << 20
#: ``progress`` is called each time the raw byte count crosses a multiple of this.
PROGRESS_EVERY = 1 << 20
#: Wider pipe between compression and encryption: fewer context switches (best effort).
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
#: Manifest schema version; bump on an incompatible change.
FORMAT_VERSION = 1
ZSTD_LEVEL_RANGE = range(1, 23)
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_SKIPPABLE = range(0x184D2A50, 0x184D2A60)
AGE_MAGICS = (b"age-encryption.org/", b"-----BEGIN AGE ENCRYPTED FILE-----")
WRONG_KEY = "the key does not match this artifact's recipients"


class ArtifactError(Exception):
    """An artifact could not be written or read; the message says which stage and why."""


class ChecksumError(ArtifactError):
    """The stored bytes do not hash to the expected SHA-256."""


class DecryptionError(ArtifactError):
    """age decryption failed: wrong key, not an age file, or corrupt ciphertext."""


class _Cancelled(Exception):
    """A stage was told to stop because another stage (or the caller) failed."""


@dataclass(frozen=True)
class ArtifactInfo:
    """What was stored; ``sha256`` is over the stored bytes (what ``sha256sum FILE`` prints)."""

    key: str
    raw_bytes: int
    stored_bytes: int
    sha256: str
    compression: str
    compression_level: int | None
    encrypted: bool
    recipients: tuple[str, ...]
    durations: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["recipients"] = list(self.recipients)
        return data


@dataclass(frozen=True)
class ReadInfo:
    """What :func:`read_artifact` / :func:`decrypt_file` read and produced."""

    stored_bytes: int
    raw_bytes: int
    sha256: str


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


# ---------------------------------------------------------------------------------------------
# Shared plumbing


class _Failures:
    """The errors of a pipeline's stages, first one first (that is the root cause)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[tuple[str, BaseException]] = []

    def record(self, stage: str, exc: BaseException) -> None:
        with self._lock:
            if all(seen is not exc for _, seen in self._items):
                self._items.append((stage, exc))

    def root(self) -> tuple[str, BaseException] | None:
        """The first error that is a cause, not a consequence (cancel, broken pipe)."""
        with self._lock:
            for item in self._items:
                if not isinstance(item[1], _Cancelled | BrokenPipeError):
                    return item
            return self._items[0] if self._items else None


class _HashingWriter:
    """SHA-256 and a byte count over everything written, then on to ``sink``.

    pyrage calls ``write`` from Rust and turns any exception into its own error (and ignores one
    raised by its final buffer flush), so the original exception is recorded here first.
    """

    def __init__(
        self,
        sink: _Writable,
        failures: _Failures,
        stage: str,
        cancel: threading.Event | None = None,
    ) -> None:
        self._sink = sink
        self._failures = failures
        self._stage = stage
        self._cancel = cancel
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        if self._cancel is not None and self._cancel.is_set():
            raise _Cancelled(self._stage)
        try:
            self._sink.write(data)
        except BaseException as exc:
            self._failures.record(self._stage, exc)
            raise
        self.sha256.update(data)
        self.bytes += len(data)
        return len(data)

    def flush(self) -> None:
        """pyrage and zstd call flush; durability is the AtomicWriter's commit."""


class _CancellableReader:
    """Lets the encrypt stage notice a cancel between two reads of the pipe."""

    def __init__(self, source: BinaryIO, cancel: threading.Event) -> None:
        self._source = source
        self._cancel = cancel

    def read(self, size: int = -1) -> bytes:
        if self._cancel.is_set():
            raise _Cancelled("encrypt")
        return self._source.read(size)


class _HashingReader:
    """SHA-256 and a byte count over everything read from ``source``."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.sha256.update(data)
        self.bytes += len(data)
        return data


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _mib(count: int) -> str:
    return f"{count / (1 << 20):.1f} MiB"


# ---------------------------------------------------------------------------------------------
# Writing


@dataclass
class _ProduceStats:
    raw_bytes: int = 0
    source_wait: float = 0.0


def write_artifact(
    source: BinaryIO,
    storage: Storage,
    key: str,
    *,
    compression_level: int | None,
    recipients: list[str] | None,
    progress: Callable[[int], None] | None = None,
    chunk_size: int = CHUNK_SIZE,
    before_commit: Callable[[], None] | None = None,
    on_interrupt: Callable[[], None] | None = None,
) -> ArtifactInfo:
    """Stream ``source`` to ``storage[key]`` as ``[zstd][age]``, in bounded memory.

    ``compression_level=None`` stores without compression; ``recipients=None`` without
    encryption. ``progress(raw_bytes_so_far)`` is advisory: about once per MiB, and its errors
    are logged, never fatal.

    ``before_commit`` runs after the source hit EOF and before the artifact becomes visible:
    when the source is one end of a pipe fed by a dump thread, EOF also comes from a dump that
    *failed*, so the caller joins the dump there and raises if it failed (the artifact is then
    aborted). ``on_interrupt`` runs if this call is interrupted (e.g. Celery's soft time limit
    raising in the calling thread): the compress thread may be blocked in ``source.read()``, and
    only the caller can unblock it (stop the dump, close the pipe's write end) before the join.
    """
    parsed = _parse_recipients(recipients)
    _check_level(compression_level)
    started = time.monotonic()
    try:
        writer = storage.open_write(key)
    except (StorageError, OSError) as exc:
        raise ArtifactError(f"artifact {key}: cannot open storage for writing: {exc}") from exc
    with writer:
        failures = _Failures()
        cancel = threading.Event()
        hashing = _HashingWriter(writer, failures, "writing to storage", cancel)
        stats = _ProduceStats()
        pipeline = _Pipeline(source, hashing, failures, cancel, stats)
        pipeline.run(parsed, compression_level, chunk_size, progress, on_interrupt)
        _raise_on_failure(key, failures, stats)
        _run_before_commit(key, before_commit)
        commit_started = time.monotonic()
        try:
            writer.commit()
        except (StorageError, OSError) as exc:
            raise ArtifactError(f"artifact {key}: storing failed at commit: {exc}") from exc
    finished = time.monotonic()
    return ArtifactInfo(
        key=key,
        raw_bytes=stats.raw_bytes,
        stored_bytes=hashing.bytes,
        sha256=hashing.sha256.hexdigest(),
        compression="none" if compression_level is None else "zstd",
        compression_level=compression_level,
        encrypted=bool(parsed),
        recipients=tuple(recipients or ()),
        durations={
            "total": round(finished - started, 6),
            "source_wait": round(stats.source_wait, 6),
            "commit": round(finished - commit_started, 6),
        },
    )


def _parse_recipients(recipients: list[str] | None) -> list[x25519.Recipient]:
    if recipients is None:
        return []
    try:
        return parse_recipients(recipients)
    except RecipientError as exc:
        raise ArtifactError(f"encryption: {exc}") from None


def _check_level(level: int | None) -> None:
    if level is not None and level not in ZSTD_LEVEL_RANGE:
        raise ArtifactError(
            f"zstd level {level} is out of range {ZSTD_LEVEL_RANGE.start}..{ZSTD_LEVEL_RANGE[-1]}"
        )


def _raise_on_failure(key: str, failures: _Failures, stats: _ProduceStats) -> None:
    root = failures.root()
    if root is None:
        return
    stage, exc = root
    raise ArtifactError(
        f"artifact {key} was not stored: {stage} failed after {_mib(stats.raw_bytes)} "
        f"of dump: {_describe(exc)}"
    ) from exc


def _run_before_commit(key: str, before_commit: Callable[[], None] | None) -> None:
    if before_commit is None:
        return
    try:
        before_commit()
    except Exception as exc:
        raise ArtifactError(f"artifact {key} was not stored: {_describe(exc)}") from exc


class _Pipeline:
    """The stages' threads of one write; :meth:`run` joins them all, whatever happens."""

    def __init__(
        self,
        source: BinaryIO,
        hashing: _HashingWriter,
        failures: _Failures,
        cancel: threading.Event,
        stats: _ProduceStats,
    ) -> None:
        self.source = source
        self.hashing = hashing
        self.failures = failures
        self.cancel = cancel
        self.stats = stats

    def run(
        self,
        recipients: list[x25519.Recipient],
        level: int | None,
        chunk_size: int,
        progress: Callable[[int], None] | None,
        on_interrupt: Callable[[], None] | None,
    ) -> None:
        files: list[BinaryIO] = []
        stages: list[tuple[threading.Thread, Callable[[], None] | None]] = []

        def produce(sink: _Writable) -> None:
            _produce(
                self.source,
                sink,
                level,
                chunk_size,
                progress,
                self.stats,
                self.cancel,
                self.failures,
            )

        try:
            if recipients:
                pipe_in, pipe_out = _open_pipe()
                files += [pipe_in, pipe_out]

                def compress() -> None:
                    produce(pipe_out)
                    pipe_out.close()  # flush inside the stage, so a failed flush is recorded

                def encrypt() -> None:
                    reader = _CancellableReader(pipe_in, self.cancel)
                    pyrage.encrypt_io(reader, self.hashing, recipients)

                for name, body, own_end in (
                    ("compress", compress, pipe_out.close),
                    ("encrypt", encrypt, pipe_in.close),
                ):
                    stages.append((_stage(name, body, self.failures, own_end), own_end))
            else:
                compress_only = _stage("compress", lambda: produce(self.hashing), self.failures)
                stages.append((compress_only, None))
            for thread, _ in stages:
                thread.start()
            _join_all([thread for thread, _ in stages])
        except BaseException:
            self.cancel.set()
            for thread, cleanup in stages:
                if thread.ident is None and cleanup is not None:
                    # A stage that never started cannot close its pipe end: do it for it, or
                    # the started stage could block on the pipe forever.
                    with contextlib.suppress(OSError):
                        cleanup()
            if on_interrupt is not None:
                with contextlib.suppress(Exception):
                    on_interrupt()
            _join_all([thread for thread, _ in stages], uninterruptible=True)
            raise
        finally:
            for stream in files:
                with contextlib.suppress(OSError):
                    stream.close()


def _stage(
    name: str,
    body: Callable[[], None],
    failures: _Failures,
    cleanup: Callable[[], None] | None = None,
) -> threading.Thread:
    """A thread that records its error instead of dying with it, and always runs cleanup.

    The cleanup closes the stage's own end of the pipe: EOF for the reader, EPIPE for the
    writer, so the other stage can never block forever on a stage that is gone.
    """

    def run() -> None:
        try:
            body()
        except BaseException as exc:
            failures.record(name, exc)
        finally:
            if cleanup is not None:
                with contextlib.suppress(OSError):
                    cleanup()

    return threading.Thread(target=run, name=f"artifact-{name}", daemon=True)


def _join_all(threads: list[threading.Thread], *, uninterruptible: bool = False) -> None:
    for thread in threads:
        while thread.ident is not None and thread.is_alive():
            try:
                thread.join()
            except BaseException:
                if not uninterruptible:
                    raise


def _open_pipe() -> tuple[BinaryIO, BinaryIO]:
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, PIPE_SIZE)
    return os.fdopen(read_fd, "rb", buffering=CHUNK_SIZE), os.fdopen(write_fd, "wb")


def _produce(
    source: BinaryIO,
    sink: _Writable,
    level: int | None,
    chunk_size: int,
    progress: Callable[[int], None] | None,
    stats: _ProduceStats,
    cancel: threading.Event,
    failures: _Failures,
) -> None:
    """Read the dump and push it (compressed or not) into ``sink`` until EOF.

    ``read1`` when the source has it: it returns what is available instead of waiting for a
    full chunk, so a slow dump is reported (and cancelled) promptly.
    """
    read = getattr(source, "read1", None) or source.read
    out: _Writable = sink
    compressor = None
    if level is not None:
        cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
        compressor = cctx.stream_writer(sink, closefd=False)  # content size unknown
        out = compressor
    next_report = PROGRESS_EVERY
    while not cancel.is_set():
        waited = time.monotonic()
        try:
            chunk = read(chunk_size)
        except BaseException as exc:
            failures.record("reading the dump", exc)
            raise
        stats.source_wait += time.monotonic() - waited
        if not chunk:
            break
        out.write(chunk)
        stats.raw_bytes += len(chunk)
        if stats.raw_bytes >= next_report:
            next_report = (stats.raw_bytes // PROGRESS_EVERY + 1) * PROGRESS_EVERY
            _report(progress, stats.raw_bytes)
    else:
        raise _Cancelled("compress")
    if compressor is not None:
        compressor.close()  # ends the frame (with its checksum); sink stays open
    _report(progress, stats.raw_bytes)


def _report(progress: Callable[[int], None] | None, raw_bytes: int) -> None:
    if progress is None:
        return
    try:
        progress(raw_bytes)
    except Exception:
        log.warning("progress callback failed (ignored)", exc_info=True)


# ---------------------------------------------------------------------------------------------
# Manifest


def tool_versions() -> dict[str, str]:
    """Versions of what wrote the artifact: needed to read it back in five years."""
    versions = {
        "python": platform.python_version(),
        "zstandard": zstandard.__version__,
        "zstd": ".".join(str(part) for part in zstandard.ZSTD_VERSION),
        "sqlite": sqlite3.sqlite_version,
    }
    for dist in ("backupy-workers", "pyrage"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return versions


def build_manifest(
    *,
    job_id: str,
    run_id: str,
    driver: str,
    server_version: str,
    info: ArtifactInfo,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
    timings: Mapping[str, float] | None = None,
    dump_tool: str | None = None,
    dump_tool_version: str | None = None,
) -> dict[str, Any]:
    """The JSON document stored beside an artifact: enough to verify and restore it alone."""
    tools = tool_versions()
    if dump_tool:
        tools[dump_tool] = dump_tool_version or "unknown"
    return {
        "format_version": FORMAT_VERSION,
        "job": job_id,
        "run": run_id,
        "driver": driver,
        "server_version": server_version,
        "artifact": info.key,
        "sizes": {"raw": info.raw_bytes, "stored": info.stored_bytes},
        "sha256": info.sha256,
        "compression": {"type": info.compression, "level": info.compression_level},
        "encryption": {
            "type": "age" if info.encrypted else "none",
            "recipients": list(info.recipients),
        },
        "started_at": _iso(started_at),
        "finished_at": _iso(finished_at or datetime.now(UTC)),
        "timings": {**info.durations, **(timings or {})},
        "tool_versions": tools,
    }


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.isoformat()


def write_manifest(storage: Storage, key: str, manifest: Mapping[str, Any]) -> None:
    """Store the manifest atomically; written after the artifact, so a manifest means done."""
    data = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8") + b"\n"
    try:
        storage.put_bytes(key, data)
    except (StorageError, OSError) as exc:
        raise ArtifactError(f"manifest {key} was not stored: {exc}") from exc


def read_manifest(storage: Storage, key: str) -> dict[str, Any]:
    try:
        manifest = json.loads(storage.get_bytes(key))
    except (StorageError, OSError) as exc:
        raise ArtifactError(f"manifest {key} cannot be read: {exc}") from exc
    except ValueError as exc:
        raise ArtifactError(f"manifest {key} is not valid JSON: {exc}") from exc
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise ArtifactError(f"manifest {key}: unsupported format_version {version!r}")
    return manifest


# ---------------------------------------------------------------------------------------------
# Reading


def read_artifact(
    storage: Storage,
    key: str,
    *,
    identities: list[x25519.Identity] | None,
    compressed: bool,
    expected_sha256: str | None,
    out: BinaryIO,
    chunk_size: int = CHUNK_SIZE,
) -> ReadInfo:
    """Verify, decrypt and decompress ``storage[key]`` into ``out`` (two passes, see module).

    ``identities=None`` for an unencrypted artifact. With ``expected_sha256`` the first pass
    proves the stored bytes intact before anything is written to ``out``.
    """
    expected = expected_sha256.lower() if expected_sha256 else None
    if expected is not None:
        digest, _ = _hash_stored(storage, key, chunk_size)
        if digest != expected:
            raise ChecksumError(
                f"artifact {key} is corrupt: its SHA-256 is {digest}, the manifest says "
                f"{expected}; nothing was restored"
            )
    try:
        stream = storage.open_read(key)
    except (StorageError, OSError) as exc:
        raise ArtifactError(f"artifact {key} cannot be read: {exc}") from exc
    with stream:
        reader = _HashingReader(stream)
        raw = _decode(reader, out, identities, compressed, key, chunk_size)
    digest = reader.sha256.hexdigest()
    if expected is not None and digest != expected:
        raise ChecksumError(f"artifact {key} changed while it was being read; discard the output")
    return ReadInfo(stored_bytes=reader.bytes, raw_bytes=raw, sha256=digest)


def _hash_stored(storage: Storage, key: str, chunk_size: int) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    try:
        with storage.open_read(key) as stream:
            while chunk := stream.read(chunk_size):
                digest.update(chunk)
                size += len(chunk)
    except (StorageError, OSError) as exc:
        raise ArtifactError(f"artifact {key} cannot be read: {exc}") from exc
    return digest.hexdigest(), size


class _ZstdFrameTracker:
    """Follows zstd frame and block headers to tell whether the stream ends on a frame end.

    python-zstandard's ``stream_writer`` accepts a truncated frame without a word (checked on
    0.25), so a cut artifact would restore as a shorter file with no error. Parsing headers
    (not content) costs nothing and turns that into a clear error.
    """

    def __init__(self) -> None:
        self._pending = bytearray()
        self._need = 4
        self._skip = 0
        self._state = "magic"
        self._checksum = False
        self.frames = 0

    @property
    def complete(self) -> bool:
        return self._state == "magic" and not self._pending and not self._skip and self.frames > 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._skip:
                step = min(self._skip, len(view))
                self._skip -= step
                view = view[step:]
                continue
            take = min(self._need - len(self._pending), len(view))
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) == self._need:
                header = bytes(self._pending)
                self._pending.clear()
                self._advance(header)

    def _advance(self, header: bytes) -> None:
        if self._state == "magic":
            self._on_magic(header)
        elif self._state == "descriptor":
            self._on_descriptor(header[0])
        elif self._state == "block":
            self._on_block(int.from_bytes(header, "little"))
        else:  # skippable frame size
            self._skip, self._state, self._need = int.from_bytes(header, "little"), "magic", 4

    def _on_magic(self, header: bytes) -> None:
        if header == ZSTD_MAGIC:
            self._state, self._need = "descriptor", 1
        elif int.from_bytes(header, "little") in ZSTD_SKIPPABLE:
            self._state, self._need = "skippable", 4
        else:
            raise ArtifactError("the data is not a zstd stream (bad frame magic)")

    def _on_descriptor(self, descriptor: int) -> None:
        fcs_flag, single = descriptor >> 6, (descriptor >> 5) & 1
        self._checksum = bool((descriptor >> 2) & 1)
        did_size = (0, 1, 2, 4)[descriptor & 3]
        fcs_size = (single, 2, 4, 8)[fcs_flag]
        self._skip = (0 if single else 1) + did_size + fcs_size
        self._state, self._need = "block", 3

    def _on_block(self, header: int) -> None:
        last, kind, size = header & 1, (header >> 1) & 3, header >> 3
        if kind == 3:
            raise ArtifactError("the zstd stream is corrupt (reserved block type)")
        self._skip = 1 if kind == 1 else size
        if last:
            self._skip += 4 if self._checksum else 0
            self._state, self._need = "magic", 4
            self.frames += 1


class _DecodeSink:
    """Where decrypted bytes go: zstd decompression (decided now or by sniffing) then ``out``.

    ``compressed=None`` sniffs the first four bytes for the zstd magic (``backupy decrypt`` on
    a file whose name says nothing). Errors of ``out`` or of zstd are recorded, because pyrage
    would replace them with a bare "I/O error".
    """

    def __init__(self, out: _Writable, compressed: bool | None, failures: _Failures) -> None:
        self._out = _HashingWriter(out, failures, "writing the output")
        self._failures = failures
        self._compressed = compressed
        self._head = bytearray()
        self._target: _Writable | None = None
        self._tracker: _ZstdFrameTracker | None = None
        self._decompressor: Any = None
        if compressed is not None:
            self._choose(compressed)

    @property
    def raw_bytes(self) -> int:
        return self._out.bytes

    def _choose(self, compressed: bool) -> None:
        if compressed:
            self._tracker = _ZstdFrameTracker()
            dctx = zstandard.ZstdDecompressor()
            self._decompressor = dctx.stream_writer(self._out, closefd=False)
            self._target = self._decompressor
        else:
            self._target = self._out

    def write(self, data: bytes) -> int:
        if self._target is None:
            self._head += data
            if len(self._head) < len(ZSTD_MAGIC):
                return len(data)
            self._choose(self._head.startswith(ZSTD_MAGIC))
            data, self._head = bytes(self._head), bytearray()
        self._feed(data)
        return len(data)

    def _feed(self, data: bytes) -> None:
        assert self._target is not None
        try:
            if self._tracker is not None:
                self._tracker.feed(data)
            self._target.write(data)
        except BaseException as exc:
            self._failures.record("decompressing", exc)
            raise

    def flush(self) -> None:
        """Buffers are flushed by :meth:`finish`; pyrage calls this at its end."""

    def finish(self) -> None:
        if self._target is None:
            self._choose(False)
            self._feed(bytes(self._head))
        if self._decompressor is not None:
            self._decompressor.flush()
        if self._tracker is not None and not self._tracker.complete:
            raise ArtifactError("the zstd stream is truncated (it ends inside a frame)")


def _decode(
    reader: _HashingReader,
    out: _Writable,
    identities: list[x25519.Identity] | None,
    compressed: bool | None,
    label: str,
    chunk_size: int,
) -> int:
    """Decrypt (when ``identities``) and decompress ``reader`` into ``out``; returns raw bytes."""
    failures = _Failures()
    sink = _DecodeSink(out, compressed, failures)
    try:
        if identities:
            pyrage.decrypt_io(reader, sink, identities)
        else:
            while chunk := reader.read(chunk_size):
                sink.write(chunk)
        _raise_recorded(label, failures)
        sink.finish()
    except ArtifactError:
        raise
    except pyrage.DecryptError as exc:
        raise _decryption_error(label, exc) from None
    except Exception as exc:
        _raise_recorded(label, failures)
        if identities:
            raise DecryptionError(
                f"{label}: decryption failed: the ciphertext is corrupt or truncated "
                "(age authentication failed)"
            ) from None
        raise ArtifactError(f"{label}: reading failed: {_describe(exc)}") from exc
    return sink.raw_bytes


def _raise_recorded(label: str, failures: _Failures) -> None:
    root = failures.root()
    if root is not None:
        stage, exc = root
        raise ArtifactError(f"{label}: {stage} failed: {_describe(exc)}") from exc


def _decryption_error(label: str, exc: pyrage.DecryptError) -> DecryptionError:
    text = str(exc).lower()
    if "no matching keys" in text:
        return DecryptionError(f"{label}: {WRONG_KEY}")
    if "header" in text or "fill whole buffer" in text:
        return DecryptionError(f"{label}: not a valid age file (bad or missing header)")
    return DecryptionError(f"{label}: decryption failed ({exc})")


def decrypt_file(
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    identity_path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> ReadInfo:
    """Offline ``backupy decrypt``: age-decrypt (and zstd-decompress) a file into ``out_path``.

    Decompression happens when the name ends in ``.zst.age`` / ``.zst`` or the plaintext starts
    with the zstd magic. The output goes through a temporary beside ``out_path`` and is renamed
    only on success; an existing ``out_path`` is refused unless ``overwrite`` (a restore tool
    that silently replaces a file is one typo away from destroying the live database).
    """
    source, target = Path(in_path), Path(out_path)
    identities = load_identities(identity_path)
    if target.exists() and not overwrite:
        raise ArtifactError(f"refusing to overwrite existing file {target}")
    _require_age_file(source)
    name = source.name
    compressed = True if name.endswith((ZSTD_SUFFIX + AGE_SUFFIX, ZSTD_SUFFIX)) else None
    try:
        writer = AtomicFileWriter(target)
    except OSError as exc:
        raise ArtifactError(f"cannot write {target}: {exc.strerror}") from None
    with writer, open(source, "rb") as stream:
        reader = _HashingReader(stream)
        raw = _decode(reader, writer, identities, compressed, str(source), CHUNK_SIZE)
        try:
            writer.commit(overwrite=overwrite)
        except (StorageError, OSError) as exc:
            raise ArtifactError(f"cannot write {target}: {exc}") from exc
    return ReadInfo(stored_bytes=reader.bytes, raw_bytes=raw, sha256=reader.sha256.hexdigest())


def _require_age_file(source: Path) -> None:
    try:
        with open(source, "rb") as stream:
            head = stream.read(max(len(magic) for magic in AGE_MAGICS))
    except FileNotFoundError:
        raise ArtifactError(f"no such file: {source}") from None
    except OSError as exc:
        raise ArtifactError(f"cannot read {source}: {exc.strerror}") from None
    if not head.startswith(AGE_MAGICS):
        raise DecryptionError(f"{source} is not an age-encrypted file")
