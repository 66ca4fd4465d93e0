"""S3 storage: any S3-compatible endpoint, with the same atomic-write contract as local files.

An artifact is written as a multipart upload: the bytes are buffered one part at a time (memory
stays at one part, ``part_size``, whatever the dump size) and each full part is uploaded as it
fills. ``commit()`` completes the upload, so the object appears under its key whole or not at all;
``abort()`` (also on an exception, or on leaving the writer's context without a commit) calls
AbortMultipartUpload, so a failed write leaves neither an object nor an incomplete upload whose
parts the bucket would keep (and bill) forever. A write that never fills one part is stored with
a single PutObject at commit: no multipart upload exists at all.

A process killed with SIGKILL cannot abort its own upload. :meth:`S3Storage.abort_stale_uploads`
is the sweep for that case: finalize calls it for the run's own key prefix (see
:func:`sweep_run_uploads`), and a periodic sweep with an age limit catches the rest. A bucket
lifecycle rule ``AbortIncompleteMultipartUpload`` is a good second line of defence.

Credentials come from the environment variables named by ``access_key_env`` and
``secret_key_env``, or else from boto3's default chain (env, shared files, instance role). They
are never logged and never put into an error message: errors name the endpoint, the bucket and
the key, and say which rule failed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, BinaryIO, Self

from tasks.storage import (
    PARTIAL_MARKER,
    STALE_PARTIAL_SECONDS,
    AbortOnExit,
    LocalStorage,
    StorageError,
    StorageKeyError,
    StorageNotFoundError,
    _validate_prefix,
    validate_key,
)

log = logging.getLogger(__name__)

MIB = 1 << 20
#: S3's floor for every part but the last (5 MiB); a smaller part fails at completion.
MIN_PART_SIZE = 5 * MIB
#: Default part size: 8 MiB parts allow artifacts up to 80 GB (10,000 parts, S3's cap).
DEFAULT_PART_SIZE = 8 * MIB
#: S3 allows at most this many parts in one upload.
MAX_PARTS = 10_000
#: Uploads older than this are left-overs of a killed process, not a write in progress.
STALE_UPLOAD_SECONDS = STALE_PARTIAL_SECONDS
#: Network timeouts of the client, in seconds.
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 120
#: Attempts per request (botocore "standard" retry mode: backoff with jitter).
MAX_ATTEMPTS = 4

_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_DENIED_CODES = frozenset(
    {
        "403",
        "AccessDenied",
        "Forbidden",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "AllAccessDisabled",
    }
)


def normalize_prefix(prefix: str | None) -> str:
    """``""`` or ``"a/b/"``: the config's prefix with slashes trimmed and one added at the end."""
    stripped = (prefix or "").strip("/")
    if not stripped:
        return ""
    try:
        validate_key(stripped)
    except StorageKeyError as exc:
        raise StorageError(f"storage.prefix {prefix!r} is not usable: {exc}") from None
    return stripped + "/"


def redact_endpoint(url: str | None) -> str:
    """The endpoint for messages: ``http://key:secret@host`` loses its user part."""
    if not url:
        return "AWS"
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


class S3Storage:
    """A bucket (and optional prefix) on an S3-compatible endpoint; keys as for LocalStorage.

    ``client`` may be given (tests); otherwise a boto3 client is built from the arguments. The
    constructor checks nothing over the network: the first request tells whether the bucket and
    the credentials work, with a clear error.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_env: str | None = None,
        secret_key_env: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        client: Any = None,
    ) -> None:
        if not bucket:
            raise StorageError("storage.bucket is required for type 's3'")
        if part_size < MIN_PART_SIZE:
            raise StorageError(
                f"S3 part size {part_size} is below S3's minimum of {MIN_PART_SIZE} bytes"
            )
        self.bucket = bucket
        self.prefix = normalize_prefix(prefix)
        self.endpoint_url = endpoint_url
        self.region = region
        self.part_size = part_size
        self._secrets: tuple[str, ...] = ()
        self.client = (
            client if client is not None else self._make_client(access_key_env, secret_key_env)
        )

    # -- construction ---------------------------------------------------------------------------

    def _make_client(self, access_key_env: str | None, secret_key_env: str | None) -> Any:
        import boto3
        from botocore.config import Config as BotoConfig

        keys: dict[str, str] = {}
        if access_key_env or secret_key_env:
            keys = {
                "aws_access_key_id": self._env_secret(access_key_env, "access_key_env"),
                "aws_secret_access_key": self._env_secret(secret_key_env, "secret_key_env"),
            }
            self._secrets = tuple(keys.values())
        config = BotoConfig(
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
            # Most S3-compatible servers want path-style addressing; AWS accepts both.
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
        )
        try:
            session = boto3.session.Session()
            return session.client(
                "s3",
                endpoint_url=self.endpoint_url or None,
                region_name=self.region or None,
                config=config,
                **keys,
            )
        except Exception as exc:
            raise StorageError(
                f"{self.describe()}: cannot set up the S3 client: {type(exc).__name__}"
            ) from None

    def _env_secret(self, name: str | None, field: str) -> str:
        if not name:
            raise StorageError(
                f"{self.describe()}: storage.access_key_env and storage.secret_key_env go together"
            )
        value = os.environ.get(name, "")
        if not value:
            raise StorageError(
                f"{self.describe()}: storage.{field} names ${name}, which is not set in this "
                "process's environment"
            )
        return value

    # -- naming and errors ----------------------------------------------------------------------

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{where} ({redact_endpoint(self.endpoint_url)})"

    def _full(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) :]

    def _error(self, action: str, key: str | None, exc: BaseException) -> StorageError:
        """A StorageError naming bucket and key; never credentials, never a server's echo."""
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        what = f"s3://{self.bucket}/{self.prefix}{key}" if key else f"bucket {self.bucket}"
        head = f"{self.describe()}: cannot {action} {what}"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return StorageError(f"{head}: no such bucket {self.bucket!r}")
            if code in _NOT_FOUND_CODES:
                return StorageNotFoundError(f"{head}: no such key")
            if code in _DENIED_CODES:
                return StorageError(
                    f"{head}: access denied ({code}): check the credentials and the bucket policy"
                )
            message = self._scrub(str(error.get("Message", "")))[:200]
            return StorageError(
                f"{head}: S3 error {code or '?'} (HTTP {status}) {message}".rstrip()
            )
        if isinstance(exc, EndpointConnectionError):
            return StorageError(f"{head}: endpoint unreachable")
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StorageError(
                f"{head}: no S3 credentials (set storage.access_key_env and secret_key_env, "
                "or configure boto3's default chain)"
            )
        text = self._scrub(str(exc))[:200]
        return StorageError(f"{head}: {type(exc).__name__}: {text}".rstrip(": "))

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "***")
        return text

    def _call(self, action: str, key: str | None, method: str, **params: Any) -> Any:
        try:
            return getattr(self.client, method)(Bucket=self.bucket, **params)
        except Exception as exc:
            raise self._error(action, key, exc) from None

    # -- the Storage protocol -------------------------------------------------------------------

    def open_write(self, key: str) -> S3MultipartWriter:
        return S3MultipartWriter(self, key)

    def open_read(self, key: str) -> BinaryIO:
        response = self._call("read", key, "get_object", Key=self._full(key))
        return _S3ReadStream(self, key, response["Body"])  # type: ignore[return-value]

    def exists(self, key: str) -> bool:
        try:
            self._call("look up", key, "head_object", Key=self._full(key))
        except StorageNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        response = self._call("look up", key, "head_object", Key=self._full(key))
        return int(response["ContentLength"])

    def delete(self, key: str) -> bool:
        """Remove ``key``; False when it was already gone (S3's DELETE does not say: HEAD first)."""
        if not self.exists(key):
            return False
        self._call("delete", key, "delete_object", Key=self._full(key))
        return True

    def list(self, prefix: str = "") -> list[str]:
        """Every key starting with ``prefix``, sorted; temporary-looking names are skipped."""
        _validate_prefix(prefix)
        found = []
        for item in self._paginate("list_objects_v2", "Contents", self.prefix + prefix):
            key = self._relative(item["Key"])
            if key and not any(part.startswith(".") for part in key.split("/")):
                found.append(key)
        return sorted(found)

    def _paginate(self, method: str, field: str, full_prefix: str) -> Iterator[dict[str, Any]]:
        try:
            paginator = self.client.get_paginator(method)
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                yield from page.get(field) or []
        except Exception as exc:
            raise self._error("list", self._relative(full_prefix) or None, exc) from None

    def put_bytes(self, key: str, data: bytes) -> None:
        """Small objects (manifests) in one PutObject: atomic by S3's own contract."""
        self._call("write", key, "put_object", Key=self._full(key), Body=bytes(data))

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as stream:
            return stream.read()

    # -- the sweep ------------------------------------------------------------------------------

    def incomplete_uploads(self, prefix: str = "") -> list[dict[str, Any]]:
        """Multipart uploads in progress (or abandoned) under ``prefix``: key, id, initiated."""
        uploads = []
        for item in self._paginate("list_multipart_uploads", "Uploads", self.prefix + prefix):
            uploads.append(
                {
                    "key": self._relative(item["Key"]),
                    "upload_id": item["UploadId"],
                    "initiated": item.get("Initiated"),
                }
            )
        return uploads

    def abort_stale_uploads(
        self, older_than: float = STALE_UPLOAD_SECONDS, prefix: str = ""
    ) -> list[str]:
        """Abort multipart uploads under ``prefix`` started over ``older_than`` seconds ago.

        The left-overs of a process killed mid-upload. ``older_than=0`` aborts every upload
        under ``prefix``: only for a prefix whose writer is known to be gone (finalize, for its
        own run). Returns the keys whose uploads were aborted.
        """
        cutoff = time.time() - older_than
        aborted = []
        for upload in self.incomplete_uploads(prefix):
            initiated = upload["initiated"]
            recent = isinstance(initiated, datetime) and initiated.timestamp() > cutoff
            if older_than > 0 and recent:
                continue
            try:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket,
                    Key=self.prefix + upload["key"],
                    UploadId=upload["upload_id"],
                )
            except Exception as exc:
                error = self._error("abort the upload of", upload["key"], exc)
                if isinstance(error, StorageNotFoundError) or "NoSuchUpload" in str(exc):
                    continue  # aborted or completed meanwhile
                raise error from None
            aborted.append(upload["key"])
            log.warning("aborted an abandoned multipart upload of %s", upload["key"])
        return aborted


class _S3ReadStream:
    """A GetObject body as a binary stream; network errors become StorageError."""

    def __init__(self, storage: S3Storage, key: str, body: Any) -> None:
        self._storage = storage
        self._key = key
        self._body = body
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        try:
            data: bytes = self._body.read(None if size is None or size < 0 else size)
            return data
        except Exception as exc:
            raise self._storage._error("read", self._key, exc) from None

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                self._body.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class S3MultipartWriter(AbortOnExit):
    """An :class:`~tasks.storage.AtomicWriter` on a multipart upload, one part in memory.

    The upload is created when the first part is full; a write that never fills a part is one
    PutObject at commit. Not thread-safe: one thread writes, then commits (write_artifact joins
    its stages before it commits).
    """

    def __init__(self, storage: S3Storage, key: str) -> None:
        self.storage = storage
        self.key = key
        self.full_key = storage._full(key)
        self.bytes_written = 0
        self.upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._buffer = bytearray()
        self._done = False

    def write(self, data: bytes) -> int:
        if self._done:
            raise StorageError(f"write to {self.key} after commit or abort")
        size = len(data)
        self._buffer += data
        self.bytes_written += size
        part_size = self.storage.part_size
        while len(self._buffer) >= part_size:
            self._upload_part(bytes(self._buffer[:part_size]))
            del self._buffer[:part_size]
        return size

    def _upload_part(self, body: bytes) -> None:
        storage = self.storage
        if self.upload_id is None:
            response = storage._call(
                "start an upload of", self.key, "create_multipart_upload", Key=self.full_key
            )
            self.upload_id = response["UploadId"]
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise StorageError(
                f"{storage.describe()}: {self.key} needs more than {MAX_PARTS} parts of "
                f"{storage.part_size} bytes"
            )
        response = storage._call(
            f"upload part {number} of",
            self.key,
            "upload_part",
            Key=self.full_key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=body,
        )
        self._parts.append({"PartNumber": number, "ETag": response["ETag"]})

    def commit(self) -> None:
        """Complete the upload (or PutObject a small one); on any failure, abort it."""
        if self._done:
            raise StorageError(f"{self.key} was already committed or aborted")
        storage = self.storage
        try:
            if self.upload_id is None:
                storage._call(
                    "write", self.key, "put_object", Key=self.full_key, Body=bytes(self._buffer)
                )
            else:
                if self._buffer or not self._parts:
                    self._upload_part(bytes(self._buffer))
                storage._call(
                    "complete the upload of",
                    self.key,
                    "complete_multipart_upload",
                    Key=self.full_key,
                    UploadId=self.upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
            self._buffer = bytearray()
            stored = storage.size(self.key)
            if stored != self.bytes_written:
                with contextlib.suppress(StorageError):
                    storage._call("delete", self.key, "delete_object", Key=self.full_key)
                raise StorageError(
                    f"{storage.describe()}: {self.key} holds {stored} bytes after the upload, "
                    f"{self.bytes_written} were written; the object was removed"
                )
        except BaseException:
            self.abort()
            raise
        self._done = True

    def abort(self) -> None:
        """Abort the multipart upload; idempotent, and a no-op after a successful commit."""
        if self._done:
            return
        self._done = True
        self._buffer = bytearray()
        if self.upload_id is None:
            return
        try:
            self.storage.client.abort_multipart_upload(
                Bucket=self.storage.bucket, Key=self.full_key, UploadId=self.upload_id
            )
        except Exception as exc:
            # Never mask the error that made us abort; the sweep removes what is left.
            log.warning("%s", self.storage._error("abort the upload of", self.key, exc))


def s3_storage_from_config(storage_cfg: Any) -> S3Storage:
    """The backend for a ``storage: {type: s3, …}`` section (pydantic model or mapping)."""

    def field(name: str) -> Any:
        if isinstance(storage_cfg, Mapping):
            return storage_cfg.get(name)
        return getattr(storage_cfg, name, None)

    return S3Storage(
        field("bucket") or "",
        field("prefix") or "",
        endpoint_url=field("endpoint_url"),
        region=field("region"),
        access_key_env=field("access_key_env"),
        secret_key_env=field("secret_key_env"),
    )


def run_key_prefix(job_id: str, run_id: str, started_at: datetime) -> str:
    """``{job}/{YYYY}/{MM}/{DD}/{run_id}.``: what every object of one run starts with."""
    when = started_at.astimezone(UTC) if started_at.tzinfo is not None else started_at
    return f"{job_id}/{when:%Y}/{when:%m}/{when:%d}/{run_id}."


def sweep_run_uploads(storage: Any, job_id: str, run_id: str, created_at: float) -> list[str]:
    """Remove what a killed dump of this run left behind, on any backend; returns what went.

    For finalize (and the watchdog) once the run's dump can no longer be running: S3 aborts the
    run's incomplete multipart uploads; local storage removes the run's partial files (which
    :meth:`LocalStorage.cleanup_partials` would only remove after a day). Never raises for a
    storage problem: it logs it, because the run must still be finished.
    """
    prefix = run_key_prefix(job_id, run_id, datetime.fromtimestamp(created_at, UTC))
    try:
        if isinstance(storage, S3Storage):
            return storage.abort_stale_uploads(older_than=0, prefix=prefix)
        if isinstance(storage, LocalStorage):
            return _remove_local_partials(storage, prefix)
    except (StorageError, OSError) as exc:
        log.warning("sweep of run %s left-overs failed: %s", run_id, exc)
    return []


def _remove_local_partials(storage: LocalStorage, prefix: str) -> list[str]:
    folder, _, stem = prefix.rpartition("/")
    directory = storage.root.joinpath(*folder.split("/"))
    if not directory.is_dir():
        return []
    removed = []
    for path in directory.iterdir():
        name = path.name
        if name.startswith("." + stem) and PARTIAL_MARKER in name and path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(f"{folder}/{name}")
    return removed
