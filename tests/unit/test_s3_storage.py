"""S3Storage against a real S3 server (SeaweedFS, started once per session: about a second)."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tasks.artifacts import read_artifact, write_artifact
from tasks.keys import generate_identity, load_identities
from tasks.s3_storage import (
    MIN_PART_SIZE,
    S3Storage,
    normalize_prefix,
    run_key_prefix,
    sweep_run_uploads,
)
from tasks.storage import (
    LocalStorage,
    StorageError,
    StorageKeyError,
    StorageNotFoundError,
    storage_from_config,
)
from tests import s3server
from tests.s3server import S3Server

# The session's S3 server and a fresh bucket per test (fixtures defined in tests/s3server.py).
s3_server = s3server.s3_server
s3_bucket = s3server.s3_bucket

KEY = "app-db/2026/12/03/20261203T031500Z-4f9c2a1b.sqlite.zst.age"


@pytest.fixture(autouse=True)
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The keys under the names the configs give, as a worker's environment would hold them."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)


def make(
    server: S3Server, bucket: str, prefix: str = "backups", part_size: int | None = None
) -> S3Storage:
    storage = storage_from_config(server.storage_config(bucket, prefix))
    assert isinstance(storage, S3Storage)
    if part_size is not None:
        storage.part_size = part_size
    return storage


def uploads(server: S3Server, bucket: str) -> list[dict]:
    return server.client().list_multipart_uploads(Bucket=bucket).get("Uploads") or []


def objects(server: S3Server, bucket: str) -> list[str]:
    listed = server.client().list_objects_v2(Bucket=bucket).get("Contents") or []
    return sorted(item["Key"] for item in listed)


def test_put_get_list_exists_size_delete(s3_server: S3Server, s3_bucket: str) -> None:
    storage = make(s3_server, s3_bucket)
    assert storage.list() == []
    storage.put_bytes(KEY, b"artifact bytes")
    storage.put_bytes("app-db/2026/12/03/20261203T031500Z-4f9c2a1b.manifest.json", b"{}")
    storage.put_bytes("other/2026/12/03/x.sqlite", b"x" * 10)

    assert objects(s3_server, s3_bucket) == sorted(
        [
            f"backups/{KEY}",
            "backups/app-db/2026/12/03/20261203T031500Z-4f9c2a1b.manifest.json",
            "backups/other/2026/12/03/x.sqlite",
        ]
    )
    assert storage.get_bytes(KEY) == b"artifact bytes"
    with storage.open_read(KEY) as stream:
        assert stream.read(8) == b"artifact"
        assert stream.read() == b" bytes"
    assert storage.exists(KEY)
    assert not storage.exists("app-db/missing")
    assert storage.size(KEY) == 14
    assert storage.list("app-db/") == [
        "app-db/2026/12/03/20261203T031500Z-4f9c2a1b.manifest.json",
        KEY,
    ]
    assert storage.list("other") == ["other/2026/12/03/x.sqlite"]
    assert storage.delete(KEY) is True
    assert storage.delete(KEY) is False
    assert not storage.exists(KEY)
    with pytest.raises(StorageNotFoundError, match="no such key"):
        storage.get_bytes(KEY)
    with pytest.raises(StorageNotFoundError):
        storage.size(KEY)


def test_keys_are_validated_and_prefix_normalised(s3_server: S3Server, s3_bucket: str) -> None:
    storage = make(s3_server, s3_bucket, prefix="/team/backups/")
    assert storage.prefix == "team/backups/"
    assert storage.describe() == f"s3://{s3_bucket}/team/backups ({s3_server.endpoint})"
    for bad in ("../x", "/abs", "a//b", "a/.hidden", ""):
        with pytest.raises(StorageKeyError):
            storage.put_bytes(bad, b"x")
    assert normalize_prefix("") == ""
    with pytest.raises(StorageError, match=r"storage\.prefix"):
        normalize_prefix("a/../b")
    no_prefix = make(s3_server, s3_bucket, prefix="")
    assert no_prefix.describe() == f"s3://{s3_bucket} ({s3_server.endpoint})"


def test_multipart_upload_in_several_parts(s3_server: S3Server, s3_bucket: str) -> None:
    storage = make(s3_server, s3_bucket, part_size=MIN_PART_SIZE)
    data = os.urandom(2 * MIN_PART_SIZE + 123_457)
    with storage.open_write(KEY) as writer:
        for start in range(0, len(data), 700_001):  # writes that straddle part boundaries
            writer.write(data[start : start + 700_001])
        assert writer.upload_id is not None
        assert len(writer._parts) == 2  # two full parts uploaded, the tail still buffered
        assert len(writer._buffer) < MIN_PART_SIZE  # memory: never more than one part
        assert not storage.exists(KEY)  # nothing visible before commit
        assert [u["Key"] for u in uploads(s3_server, s3_bucket)] == [f"backups/{KEY}"]
        writer.commit()
    assert storage.size(KEY) == len(data)
    assert hashlib.sha256(storage.get_bytes(KEY)).digest() == hashlib.sha256(data).digest()
    assert uploads(s3_server, s3_bucket) == []
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=f"backups/{KEY}")
    assert "-3" in head["ETag"]  # a multipart ETag names its part count


def test_small_write_is_one_put_and_exact_part_multiple(
    s3_server: S3Server, s3_bucket: str
) -> None:
    storage = make(s3_server, s3_bucket, part_size=MIN_PART_SIZE)
    with storage.open_write("a/small") as writer:
        writer.write(b"tiny")
        writer.commit()
    assert writer.upload_id is None
    assert storage.get_bytes("a/small") == b"tiny"
    data = os.urandom(MIN_PART_SIZE)
    with storage.open_write("a/exact") as writer:
        writer.write(data)
        writer.commit()
    assert storage.get_bytes("a/exact") == data
    with storage.open_write("a/empty") as writer:
        writer.commit()
    assert storage.get_bytes("a/empty") == b""
    with pytest.raises(StorageError, match="already committed"):
        writer.commit()
    with pytest.raises(StorageError, match="after commit"):
        writer.write(b"x")


def test_abort_on_exception_leaves_no_object_and_no_upload(
    s3_server: S3Server, s3_bucket: str
) -> None:
    storage = make(s3_server, s3_bucket, part_size=MIN_PART_SIZE)
    with pytest.raises(RuntimeError, match="dump failed"), storage.open_write(KEY) as writer:
        writer.write(os.urandom(MIN_PART_SIZE + 10))
        assert writer.upload_id is not None
        raise RuntimeError("dump failed")
    assert objects(s3_server, s3_bucket) == []
    assert uploads(s3_server, s3_bucket) == []

    # Leaving the context without commit is an abort too.
    with storage.open_write(KEY) as writer:
        writer.write(os.urandom(MIN_PART_SIZE))
    assert objects(s3_server, s3_bucket) == []
    assert uploads(s3_server, s3_bucket) == []


def test_write_artifact_and_read_artifact_round_trip(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    storage = make(s3_server, s3_bucket, part_size=MIN_PART_SIZE)
    recipient = generate_identity(tmp_path / "key.txt")
    raw = os.urandom(3 * MIN_PART_SIZE)  # incompressible: several parts after zstd and age
    source = tmp_path / "dump"
    source.write_bytes(raw)
    with open(source, "rb") as stream:
        info = write_artifact(stream, storage, KEY, compression_level=1, recipients=[recipient])
    assert info.stored_bytes == storage.size(KEY)
    out = tmp_path / "out"
    with open(out, "wb") as sink:
        read = read_artifact(
            storage,
            KEY,
            identities=load_identities(tmp_path / "key.txt"),
            compressed=True,
            expected_sha256=info.sha256,
            out=sink,
        )
    assert read.raw_bytes == len(raw)
    assert out.read_bytes() == raw


def test_abort_stale_uploads_sweeps_what_a_killed_writer_left(
    s3_server: S3Server, s3_bucket: str
) -> None:
    storage = make(s3_server, s3_bucket, part_size=MIN_PART_SIZE)
    client = s3_server.client()
    started = datetime(2026, 12, 3, 3, 15, tzinfo=UTC)
    run_prefix = run_key_prefix("app-db", "20261203T031500Z-4f9c2a1b", started)
    assert KEY.startswith(run_prefix)
    # A writer that "died": its upload is never completed nor aborted.
    writer = storage.open_write(KEY)
    writer.write(os.urandom(MIN_PART_SIZE))
    other = storage.open_write("other/2026/12/03/20261203T040000Z-00000000.sqlite")
    other.write(os.urandom(MIN_PART_SIZE))
    outside = client.create_multipart_upload(Bucket=s3_bucket, Key="not-ours/x")
    assert len(uploads(s3_server, s3_bucket)) == 3

    # Young uploads are a write in progress: an age-limited sweep leaves them alone.
    assert storage.abort_stale_uploads(older_than=3600) == []
    assert len(storage.incomplete_uploads()) == 2

    # finalize's sweep: only this run's uploads, whatever their age.
    created = started.timestamp()
    assert sweep_run_uploads(storage, "app-db", "20261203T031500Z-4f9c2a1b", created) == [KEY]
    assert [u["key"] for u in storage.incomplete_uploads()] == [
        "other/2026/12/03/20261203T040000Z-00000000.sqlite"
    ]
    assert storage.abort_stale_uploads(older_than=0) == [
        "other/2026/12/03/20261203T040000Z-00000000.sqlite"
    ]
    # Outside the storage's prefix: never touched.
    assert [u["Key"] for u in uploads(s3_server, s3_bucket)] == ["not-ours/x"]
    assert objects(s3_server, s3_bucket) == []
    client.abort_multipart_upload(Bucket=s3_bucket, Key="not-ours/x", UploadId=outside["UploadId"])
    # The dead writer's own abort (if it ever ran) is harmless after the sweep.
    writer.abort()
    other.abort()


def test_abort_stale_uploads_age_limit(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = make(s3_server, s3_bucket, part_size=MIN_PART_SIZE)
    writer = storage.open_write(KEY)
    writer.write(os.urandom(MIN_PART_SIZE))
    (upload,) = storage.incomplete_uploads()
    assert isinstance(upload["initiated"], datetime)
    assert storage.abort_stale_uploads(older_than=3600) == []
    # Two hours later the same upload is stale.
    later = time.time() + 7200
    monkeypatch.setattr("tasks.s3_storage.time.time", lambda: later)
    assert storage.abort_stale_uploads(older_than=3600) == [KEY]
    assert storage.incomplete_uploads() == []
    writer.abort()


def test_sweep_run_uploads_removes_local_partials(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    created = datetime(2026, 12, 3, 3, 15, tzinfo=UTC).timestamp()
    left = storage.open_write(KEY)  # a killed process never commits nor aborts
    left.write(b"half")
    mine = storage.open_write("app-db/2026/12/03/20261203T999999Z-ffffffff.sqlite")
    removed = sweep_run_uploads(storage, "app-db", "20261203T031500Z-4f9c2a1b", created)
    assert len(removed) == 1 and ".partial-" in removed[0]
    assert not left.temp_path.exists()
    assert mine.temp_path.exists()
    mine.abort()
    left.abort()


def test_errors_name_bucket_and_key_never_credentials(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = s3_server.secret_key
    access = s3_server.access_key
    storage = make(s3_server, s3_bucket)
    messages = [storage.describe()]

    missing = make(s3_server, f"{s3_bucket}-missing")
    with pytest.raises(StorageError, match="no such bucket") as caught:
        missing.put_bytes(KEY, b"x")
    assert f"{s3_bucket}-missing" in str(caught.value) and KEY in str(caught.value)
    messages.append(str(caught.value))

    monkeypatch.setenv("BACKUPY_TEST_S3_SECRET_KEY", "wrong-" + secret)
    denied = S3Storage(
        s3_bucket,
        "backups",
        endpoint_url=s3_server.endpoint,
        access_key_env="BACKUPY_TEST_S3_ACCESS_KEY",
        secret_key_env="BACKUPY_TEST_S3_SECRET_KEY",
    )
    for action in (lambda: denied.put_bytes(KEY, b"x"), lambda: denied.get_bytes(KEY)):
        with pytest.raises(StorageError, match="access denied") as caught:
            action()
        assert s3_bucket in str(caught.value)
        messages.append(str(caught.value))
    with pytest.raises(StorageError, match="access denied") as caught, denied.open_write(KEY) as w:
        w.write(b"x")
        w.commit()
    messages.append(str(caught.value))

    monkeypatch.delenv("BACKUPY_TEST_S3_SECRET_KEY")
    with pytest.raises(StorageError, match=r"\$BACKUPY_TEST_S3_SECRET_KEY, which is not set"):
        S3Storage(
            s3_bucket,
            endpoint_url=s3_server.endpoint,
            access_key_env="BACKUPY_TEST_S3_ACCESS_KEY",
            secret_key_env="BACKUPY_TEST_S3_SECRET_KEY",
        )

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    monkeypatch.setenv("BACKUPY_TEST_S3_SECRET_KEY", secret)
    unreachable = S3Storage(
        s3_bucket,
        endpoint_url=f"http://{access}:{secret}@127.0.0.1:{dead_port}",
        access_key_env="BACKUPY_TEST_S3_ACCESS_KEY",
        secret_key_env="BACKUPY_TEST_S3_SECRET_KEY",
    )
    assert unreachable.describe() == f"s3://{s3_bucket} (http://***@127.0.0.1:{dead_port})"
    with pytest.raises(StorageError, match="endpoint unreachable") as caught:
        unreachable.get_bytes(KEY)
    messages.append(str(caught.value))
    messages.append(unreachable.describe())

    for message in messages:
        assert secret not in message, message
        assert access not in message, message


def test_part_size_below_s3_minimum_is_refused() -> None:
    with pytest.raises(StorageError, match="minimum"):
        S3Storage("bucket", part_size=1024, client=object())
    described = S3Storage("bucket", "p", endpoint_url=None, client=object()).describe()
    assert described == "s3://bucket/p (AWS)"
