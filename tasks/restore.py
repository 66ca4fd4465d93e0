"""Restore a run's artifact: verify, decrypt, decompress, then load into a database or a file.

The order is the point:

1. Everything an operator can get wrong is checked before a byte is read: the run exists and
   has an artifact, its job is in this config, the target is usable (a URL whose scheme fits
   the dump, or a path that does not exist yet in an existing directory), the key file holds an
   age identity, and that identity is one of the artifact's recipients.
2. The stored bytes are hashed and compared with the manifest (and the run record) *before*
   anything is loaded: a corrupt artifact never starts to load.
3. The artifact is decrypted and decompressed as a stream into the target: a database through
   its driver's ``restore(target, stream)``, or a new file (SQLite through its driver, which
   checks integrity; anything else as the plain dump: a pg custom-format file, a Redis ``.rdb``).
   Files are written to a temporary beside the target and renamed only on success. If the
   stream fails half-way (the artifact changed between the passes, the storage dropped), the
   driver sees an error, never a quiet end of input, so nothing half-written is kept.

Errors: :class:`RestoreInputError` (exit 2: nothing was read or loaded) and
:class:`RestoreFailed` (exit 1: verification, decryption, decompression or the load failed).
Messages never hold key material, storage credentials or a URL's password.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from config.jobs import Config
from config.settings import redact_url
from tasks.artifacts import ArtifactError, ChecksumError, read_artifact, read_manifest
from tasks.drivers import get_driver
from tasks.drivers.base import DriverError
from tasks.keys import KeyFileError, load_identities
from tasks.runs import RunStore, is_run_id
from tasks.storage import AtomicFileWriter, Storage, StorageError, storage_from_config

#: Read granularity of the verification pass.
CHUNK_SIZE = 1 << 20
#: URL scheme → driver type.
SCHEMES = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mariadb",
    "mongodb": "mongodb",
    "mongodb+srv": "mongodb",
    "redis": "redis",
    "rediss": "redis",
}
#: Dump types that load into each other (a mysqldump file loads into MariaDB and back).
COMPATIBLE = {"mysql": {"mysql", "mariadb"}, "mariadb": {"mysql", "mariadb"}}
#: Names of the function a driver module exposes to parse a restore URL into a target.
PARSE_FUNCTION = "parse_restore_url"
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INPUT = 2


class RestoreError(Exception):
    """A restore that did not happen; ``exit_code`` says whose fault."""

    exit_code = EXIT_FAILED


class RestoreInputError(RestoreError):
    """Bad input: unknown run, bad key file, existing target, bad URL… Nothing was loaded."""

    exit_code = EXIT_INPUT


class RestoreFailed(RestoreError):
    """Verification, decryption, decompression or the load failed. Nothing was kept."""

    exit_code = EXIT_FAILED


@dataclass(frozen=True)
class RestoreResult:
    run_id: str
    job: str
    driver: str
    key: str
    target: str
    raw_bytes: int
    stored_bytes: int
    sha256: str


@dataclass(frozen=True)
class _Plan:
    run_id: str
    job: str
    driver_type: str
    key: str
    sha256: str
    compressed: bool
    encrypted: bool
    recipients: tuple[str, ...]


def restore_run(
    run_id: str,
    to: str,
    *,
    store: RunStore,
    config: Config,
    identity_path: str | os.PathLike[str] | None = None,
    force: bool = False,
    storage: Storage | None = None,
) -> RestoreResult:
    """Restore run ``run_id`` into ``to`` (a database URL or a file path); see the module."""
    run = _find_run(store, run_id)
    artifact = _artifact_of(run, run_id)
    job_id = str(run.get("job", ""))
    try:
        job = config.job(job_id)
    except KeyError:
        raise RestoreInputError(
            f"run {run_id} is a run of job {job_id!r}, which is not in this config: its storage "
            "and driver are unknown here"
        ) from None
    if storage is None:
        storage = _open_storage(config)
    manifest = _read_manifest(storage, artifact, run_id)
    plan = _plan(run_id, job_id, job.target.type, artifact, manifest)
    identities = _identities(plan, identity_path)
    target = _Target.parse(to, plan, force)
    _require_key(storage, plan, artifact)
    stored = _verify(storage, plan)
    raw = target.load(storage, plan, identities)
    return RestoreResult(
        run_id=run_id,
        job=job_id,
        driver=plan.driver_type,
        key=plan.key,
        target=target.label,
        raw_bytes=raw,
        stored_bytes=stored,
        sha256=plan.sha256,
    )


# ---------------------------------------------------------------------------------------------
# What to restore


def _find_run(store: RunStore, run_id: str) -> dict[str, Any]:
    if not is_run_id(run_id):
        raise RestoreInputError(f"{run_id!r} is not a run id (like 20261203T031500Z-4f9c2a1b)")
    run = store.get(run_id)
    if run is None:
        raise RestoreInputError(f"no run {run_id} in the run store")
    return run


def _artifact_of(run: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The run's artifact; a run that is not ``success`` may still have one (a failed post-hook
    does not unmake a stored backup), but then it must be complete: key, manifest, sha256."""
    artifact = run.get("artifact") or (run.get("steps", {}).get("dump") or {}).get("artifact")
    status = run.get("status", "?")
    if not isinstance(artifact, dict) or not artifact.get("key"):
        raise RestoreInputError(f"run {run_id} ({status}) has no stored artifact to restore")
    for field in ("manifest", "sha256"):
        if not artifact.get(field):
            raise RestoreInputError(f"run {run_id} ({status}): its artifact record has no {field}")
    return artifact


def _open_storage(config: Config) -> Storage:
    try:
        return storage_from_config(config.storage)
    except StorageError as exc:
        raise RestoreFailed(f"storage cannot be opened: {exc}") from None


def _read_manifest(storage: Storage, artifact: dict[str, Any], run_id: str) -> dict[str, Any]:
    try:
        return read_manifest(storage, artifact["manifest"])
    except ArtifactError as exc:
        raise RestoreFailed(f"run {run_id}: {exc}{_moved_hint(storage, artifact)}") from None


def _moved_hint(storage: Storage, artifact: dict[str, Any]) -> str:
    recorded = artifact.get("storage")
    if recorded and recorded != storage.describe():
        return f" (the run stored it in {recorded}; this config's storage is {storage.describe()})"
    return ""


def _plan(
    run_id: str, job_id: str, job_type: str, artifact: dict[str, Any], manifest: dict[str, Any]
) -> _Plan:
    """Cross-check the run record and the manifest: they must describe the same artifact."""
    key = artifact["key"]
    if manifest.get("artifact") not in (None, key):
        raise RestoreFailed(
            f"run {run_id}: the manifest describes {manifest.get('artifact')}, not {key}"
        )
    sha = str(manifest.get("sha256", "")).lower()
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise RestoreFailed(f"run {run_id}: manifest {artifact['manifest']} has no valid sha256")
    if sha != str(artifact["sha256"]).lower():
        raise RestoreFailed(
            f"checksum mismatch: the manifest of {key} says {sha}, the run record says "
            f"{artifact['sha256']}; one of them was altered, nothing was restored"
        )
    compression = (manifest.get("compression") or {}).get("type", artifact.get("compression"))
    encryption = manifest.get("encryption") or {}
    encrypted = encryption.get("type") == "age" or bool(artifact.get("encrypted"))
    return _Plan(
        run_id=run_id,
        job=job_id,
        driver_type=str(manifest.get("driver") or job_type),
        key=key,
        sha256=sha,
        compressed=compression == "zstd",
        encrypted=encrypted,
        recipients=tuple(encryption.get("recipients") or ()),
    )


def _identities(plan: _Plan, identity_path: str | os.PathLike[str] | None) -> list[Any] | None:
    if not plan.encrypted:
        return None
    if identity_path is None:
        raise RestoreInputError(
            f"the artifact of run {plan.run_id} is encrypted: pass its age identity with -i KEYFILE"
        )
    try:
        identities = load_identities(identity_path)
    except KeyFileError as exc:
        raise RestoreInputError(str(exc)) from None
    if plan.recipients:
        ours = {str(identity.to_public()) for identity in identities}
        if not ours & set(plan.recipients):
            raise RestoreFailed(
                f"decryption failed: the key in {identity_path} does not match the recipients of "
                f"artifact {plan.key}; nothing was restored"
            )
    return identities


def _require_key(storage: Storage, plan: _Plan, artifact: dict[str, Any]) -> None:
    try:
        present = storage.exists(plan.key)
    except StorageError as exc:
        raise RestoreFailed(str(exc)) from None
    if not present:
        raise RestoreFailed(
            f"artifact {plan.key} is not in {storage.describe()} (deleted by retention?)"
            f"{_moved_hint(storage, artifact)}"
        )


def _verify(storage: Storage, plan: _Plan) -> int:
    """Pass 1: hash the stored bytes; a mismatch stops here, before anything is loaded."""
    digest = hashlib.sha256()
    size = 0
    try:
        with storage.open_read(plan.key) as stream:
            while chunk := stream.read(CHUNK_SIZE):
                digest.update(chunk)
                size += len(chunk)
    except (StorageError, OSError) as exc:
        raise RestoreFailed(f"artifact {plan.key} cannot be read: {exc}") from None
    if digest.hexdigest() != plan.sha256:
        raise RestoreFailed(
            f"checksum mismatch: artifact {plan.key} is corrupt (SHA-256 {digest.hexdigest()}, "
            f"the manifest says {plan.sha256}); nothing was restored"
        )
    return size


# ---------------------------------------------------------------------------------------------
# Where to restore


class _Target:
    """A database URL (through the driver) or a file path; built only from valid input."""

    def __init__(self, label: str, load: Callable[[Storage, _Plan, list[Any] | None], int]):
        self.label = label
        self._load = load

    def load(self, storage: Storage, plan: _Plan, identities: list[Any] | None) -> int:
        return self._load(storage, plan, identities)

    @classmethod
    def parse(cls, to: str, plan: _Plan, force: bool) -> _Target:
        if not to:
            raise RestoreInputError("--to needs a database URL or a file path")
        match = _URL.match(to)
        if match:
            return cls._url(to, match.group(1).lower(), plan)
        return cls._path(Path(to).expanduser(), plan, force)

    @classmethod
    def _url(cls, url: str, scheme: str, plan: _Plan) -> _Target:
        label = redact_url(url)
        kind = SCHEMES.get(scheme)
        if kind is None:
            known = ", ".join(sorted(SCHEMES))
            raise RestoreInputError(
                f"cannot restore into {label}: unknown scheme {scheme!r} (URLs: {known}; "
                "anything else is a file path)"
            )
        if kind not in COMPATIBLE.get(plan.driver_type, {plan.driver_type}):
            raise RestoreInputError(
                f"run {plan.run_id} is a {plan.driver_type} dump: it cannot be restored into a "
                f"{scheme}:// target"
            )
        driver, parse = _url_driver(kind)
        try:
            target = parse(url)
        except (DriverError, ValueError) as exc:
            raise RestoreInputError(f"bad target URL {label}: {_redacted(exc, url)}") from None

        def load(storage: Storage, plan: _Plan, identities: list[Any] | None) -> int:
            return _stream_into(storage, plan, identities, lambda src: driver.restore(target, src))

        return cls(label, load)

    @classmethod
    def _path(cls, path: Path, plan: _Plan, force: bool) -> _Target:
        if path.is_dir():
            raise RestoreInputError(f"cannot restore to {path}: it is a directory")
        if not path.parent.is_dir():
            raise RestoreInputError(f"cannot restore to {path}: no directory {path.parent}")
        if plan.driver_type == "sqlite":
            if path.exists() or path.is_symlink():
                raise RestoreInputError(
                    f"refusing to overwrite existing database {path}; restore to a new path "
                    "(--force never replaces an SQLite database)"
                )
            driver = _driver(plan.driver_type)

            def load_db(storage: Storage, plan: _Plan, identities: list[Any] | None) -> int:
                return _stream_into(storage, plan, identities, lambda s: driver.restore(path, s))

            return cls(str(path), load_db)
        if (path.exists() or path.is_symlink()) and not force:
            raise RestoreInputError(f"refusing to overwrite existing file {path} (use --force)")

        def load_file(storage: Storage, plan: _Plan, identities: list[Any] | None) -> int:
            return _write_file(storage, plan, identities, path, force)

        return cls(str(path), load_file)


def _driver(kind: str) -> Any:
    try:
        return get_driver(kind)
    except DriverError as exc:
        raise RestoreInputError(f"cannot restore a {kind} dump: {exc}") from None


def _url_driver(kind: str) -> tuple[Any, Callable[[str], Any]]:
    """The driver and its module's ``parse_restore_url`` (or the driver's own method)."""
    driver = _driver(kind)
    parse = getattr(driver, PARSE_FUNCTION, None)
    if parse is None:
        module = sys.modules.get(type(driver).__module__) or importlib.import_module(
            type(driver).__module__
        )
        parse = getattr(module, PARSE_FUNCTION, None)
    if parse is None or not hasattr(driver, "restore"):
        raise RestoreInputError(
            f"no driver can restore {kind} from a URL yet (the {kind} driver has no "
            f"{PARSE_FUNCTION}); restore to a file path to get the plain dump"
        )
    return driver, parse


def _redacted(exc: BaseException, url: str) -> str:
    text = str(exc)
    if url != redact_url(url):
        text = text.replace(url, redact_url(url))
        password = url.split("://", 1)[1].rsplit("@", 1)[0].partition(":")[2]
        if password:
            text = text.replace(password, "***")
    return text


# ---------------------------------------------------------------------------------------------
# Pass 2: decrypt, decompress, load


def _decode(
    storage: Storage, plan: _Plan, identities: list[Any] | None, out: Any
) -> tuple[int, str]:
    """Decrypt and decompress into ``out``; raises RestoreFailed, hash checked again."""
    try:
        info = read_artifact(
            storage,
            plan.key,
            identities=identities,
            compressed=plan.compressed,
            expected_sha256=None,  # pass 1 was ours; the digest is compared below
            out=out,
        )
    except ChecksumError as exc:
        raise RestoreFailed(f"checksum mismatch: {exc}") from None
    except ArtifactError as exc:
        raise RestoreFailed(str(exc)) from None
    if info.sha256 != plan.sha256:
        raise RestoreFailed(
            f"checksum mismatch: artifact {plan.key} changed while it was being restored; "
            "nothing was kept"
        )
    return info.raw_bytes, info.sha256


def _write_file(
    storage: Storage, plan: _Plan, identities: list[Any] | None, path: Path, force: bool
) -> int:
    """The plain dump into ``path`` through a temporary, renamed only when all went well."""
    try:
        writer = AtomicFileWriter(path)
    except OSError as exc:
        raise RestoreInputError(f"cannot write {path}: {exc.strerror}") from None
    with writer:
        raw, _ = _decode(storage, plan, identities, writer)
        try:
            writer.commit(overwrite=force)
        except (StorageError, OSError) as exc:
            raise RestoreFailed(f"cannot write {path}: {exc}") from None
    return raw


class _Feed:
    """Pass 2 in a thread, writing into a pipe whose read end is handed to a driver.

    The read end is wrapped: at end of input it joins the producer and raises the producer's
    error instead of returning EOF, so a driver never takes a cut stream for a complete dump
    (its temporary is dropped, its transaction rolled back). The producer records its error
    *before* it closes the pipe, so the error is there when the driver sees the end.
    """

    def __init__(self, storage: Storage, plan: _Plan, identities: list[Any] | None) -> None:
        self._args = (storage, plan, identities)
        self.error: RestoreError | None = None
        self.raw_bytes = 0
        read_fd, self._write_fd = os.pipe()
        self._read = os.fdopen(read_fd, "rb")
        self.thread = threading.Thread(target=self._produce, name="restore-decode", daemon=True)

    def _produce(self) -> None:
        out = os.fdopen(self._write_fd, "wb")
        try:
            self.raw_bytes, _ = _decode(*self._args, out)
            out.flush()
        except RestoreError as exc:
            self.error = exc
        except BaseException as exc:
            self.error = RestoreFailed(f"restore stream failed: {type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(OSError):
                out.close()

    def check(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error

    # The stream the driver reads -------------------------------------------------------------

    def read(self, size: int = -1) -> bytes:
        data = self._read.read(size)
        if not data and size != 0:
            self.check()
        return data

    def read1(self, size: int = -1) -> bytes:
        data = self._read.read1(size)
        if not data and size != 0:
            self.check()
        return data

    def readinto(self, buffer: Any) -> int:
        count = self._read.readinto(buffer)
        if not count and len(buffer):
            self.check()
        return count

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        """For a driver that hands the pipe to a tool's stdin: the end check is then ours."""
        return self._read.fileno()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._read.close()

    def __enter__(self) -> _Feed:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # a producer still writing gets EPIPE and stops
        self.thread.join()


def _stream_into(
    storage: Storage,
    plan: _Plan,
    identities: list[Any] | None,
    restore: Callable[[BinaryIO], None],
) -> int:
    feed = _Feed(storage, plan, identities)
    failure: BaseException | None = None
    with feed:
        try:
            restore(feed)  # type: ignore[arg-type]
        except Exception as exc:
            # When the stream failed first, the driver's error is only its consequence.
            failure = feed.error or _load_error(exc)
        feed.close()
    if failure is not None:
        raise failure
    if feed.error is not None:
        raise feed.error
    return feed.raw_bytes


def _load_error(exc: Exception) -> RestoreError:
    if isinstance(exc, RestoreError):
        return exc
    if isinstance(exc, DriverError | StorageError | OSError):
        return RestoreFailed(f"loading failed: {exc}")
    return RestoreFailed(f"loading failed: {type(exc).__name__}: {exc}")
