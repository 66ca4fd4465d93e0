"""Storage: key layout, keys that must not escape the root, atomic writes."""

from __future__ import annotations

import os
import stat
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from tasks.storage import (
    PARTIAL_MARKER,
    AtomicFileWriter,
    LocalStorage,
    StorageError,
    StorageKeyError,
    StorageNotFoundError,
    artifact_key,
    manifest_key,
    storage_from_config,
)

STARTED = datetime(2024, 3, 7, 23, 59, 58, tzinfo=UTC)


def all_files(root: Path) -> list[str]:
    """Every file under root, hidden ones included: what an operator's ``find`` would show."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "backups")


# --- key layout -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("compression", "encrypted", "name"),
    [
        ("zstd", True, "run1.sqlite.zst.age"),
        ("zstd", False, "run1.sqlite.zst"),
        ("none", True, "run1.sqlite.age"),
        ("none", False, "run1.sqlite"),
    ],
)
def test_artifact_key_layout(compression: str, encrypted: bool, name: str) -> None:
    key = artifact_key("app-db", "run1", STARTED, "sqlite", compression, encrypted)
    assert key == f"app-db/2024/03/07/{name}"


def test_manifest_key_is_beside_the_artifact() -> None:
    artifact = artifact_key("app-db", "run1", STARTED, "dump", "zstd", True)
    manifest = manifest_key("app-db", "run1", STARTED)
    assert manifest == "app-db/2024/03/07/run1.manifest.json"
    assert manifest.rsplit("/", 1)[0] == artifact.rsplit("/", 1)[0]
    # The artifact's argument list is accepted too, so callers can share one.
    assert manifest_key("app-db", "run1", STARTED, "dump", "zstd", True) == manifest


def test_key_date_is_utc() -> None:
    plus_two = STARTED.astimezone(timezone(timedelta(hours=2)))  # 2024-03-08 01:59 local
    assert artifact_key("j", "r", plus_two, "db", "none", False) == "j/2024/03/07/r.db"


def test_unknown_compression_is_refused() -> None:
    with pytest.raises(StorageKeyError, match="compression"):
        artifact_key("j", "r", STARTED, "db", "gzip", False)


# --- keys that could escape -------------------------------------------------------------------

BAD_KEYS = [
    "",
    "../outside",
    "job/../../outside",
    "/etc/passwd",
    "job/\x00x",
    "job//x",
    "job/./x",
    "job/.hidden",
    f"job/.x{PARTIAL_MARKER}abc",
    "job\\..\\x",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_refused_everywhere(storage: LocalStorage, key: str) -> None:
    for operation in (
        lambda: storage.open_write(key),
        lambda: storage.open_read(key),
        lambda: storage.exists(key),
        lambda: storage.delete(key),
        lambda: storage.size(key),
        lambda: storage.put_bytes(key, b"x"),
    ):
        with pytest.raises(StorageKeyError):
            operation()
    assert all_files(storage.root) == []


def test_symlink_cannot_lead_out_of_the_root(storage: LocalStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (storage.root / "evil").symlink_to(outside)
    with pytest.raises(StorageKeyError, match="outside"):
        storage.put_bytes("evil/x", b"data")
    assert list(outside.iterdir()) == []


# --- atomic writes ----------------------------------------------------------------------------


def test_commit_leaves_exactly_the_final_file(storage: LocalStorage) -> None:
    with storage.open_write("job/2024/01/01/run.db") as writer:
        writer.write(b"hello ")
        writer.write(b"world")
        assert not storage.exists("job/2024/01/01/run.db")  # invisible until commit
        assert storage.list() == []
        writer.commit()
    assert all_files(storage.root) == ["job/2024/01/01/run.db"]
    assert storage.get_bytes("job/2024/01/01/run.db") == b"hello world"
    mode = stat.S_IMODE((storage.root / "job/2024/01/01/run.db").stat().st_mode)
    assert mode == 0o600


def test_leaving_without_commit_leaves_nothing(storage: LocalStorage) -> None:
    with storage.open_write("job/run.db") as writer:
        writer.write(b"half a backup")
    assert all_files(storage.root) == []


def test_exception_leaves_nothing(storage: LocalStorage) -> None:
    with pytest.raises(RuntimeError), storage.open_write("job/run.db") as writer:
        writer.write(b"half a backup")
        raise RuntimeError("dump died")
    assert all_files(storage.root) == []
    assert not storage.exists("job/run.db")


def test_abort_is_idempotent_and_write_after_abort_fails(storage: LocalStorage) -> None:
    writer = storage.open_write("job/run.db")
    writer.write(b"x")
    writer.abort()
    writer.abort()
    with pytest.raises(StorageError):
        writer.write(b"y")
    assert all_files(storage.root) == []


def test_commit_replaces_an_existing_key_atomically(storage: LocalStorage) -> None:
    storage.put_bytes("job/m.json", b"old")
    storage.put_bytes("job/m.json", b"new")
    assert storage.get_bytes("job/m.json") == b"new"
    assert all_files(storage.root) == ["job/m.json"]


def test_commit_without_overwrite_refuses_existing_file(tmp_path: Path) -> None:
    final = tmp_path / "db.sqlite"
    final.write_bytes(b"precious")
    with AtomicFileWriter(final) as writer:
        writer.write(b"other")
        with pytest.raises(StorageError, match="refusing to overwrite"):
            writer.commit(overwrite=False)
    assert final.read_bytes() == b"precious"
    assert all_files(tmp_path) == ["db.sqlite"]


# --- the rest of the interface ----------------------------------------------------------------


def test_list_size_delete(storage: LocalStorage) -> None:
    keys = ["a/2024/01/02/r2.db", "a/2024/01/01/r1.db", "b/2024/01/01/r3.db", "ab/x.db"]
    for index, key in enumerate(keys):
        storage.put_bytes(key, b"x" * index)
    assert storage.list() == sorted(keys)
    assert storage.list("a/") == ["a/2024/01/01/r1.db", "a/2024/01/02/r2.db"]
    assert storage.list("a") == ["a/2024/01/01/r1.db", "a/2024/01/02/r2.db", "ab/x.db"]
    assert storage.list("a/2024/01/01/") == ["a/2024/01/01/r1.db"]
    assert storage.list("zzz/") == []
    assert storage.size("b/2024/01/01/r3.db") == 2
    assert storage.delete("b/2024/01/01/r3.db") is True
    assert storage.delete("b/2024/01/01/r3.db") is False
    assert not (storage.root / "b").exists()  # empty folders pruned, the root kept
    assert storage.root.is_dir()


def test_missing_key(storage: LocalStorage) -> None:
    with pytest.raises(StorageNotFoundError):
        storage.open_read("job/none.db")
    with pytest.raises(StorageNotFoundError):
        storage.size("job/none.db")
    assert not storage.exists("job/none.db")


def test_describe_names_the_backend(storage: LocalStorage) -> None:
    assert storage.describe() == f"local:{storage.root}"


def test_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="not a directory"):
        LocalStorage(tmp_path / "file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere: no permission to deny")
def test_unwritable_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir(mode=0o500)
    with pytest.raises(StorageError, match=r"not writable.*rule"):
        LocalStorage(root)


def test_cleanup_partials_only_removes_stale_ones(storage: LocalStorage) -> None:
    stale = storage.open_write("job/old.db")
    stale.write(b"x")
    fresh = storage.open_write("job/new.db")
    old = time.time() - 3 * 24 * 3600
    os.utime(stale.temp_path, (old, old))
    removed = storage.cleanup_partials()
    assert removed == [stale.temp_path.relative_to(storage.root).as_posix()]
    assert fresh.temp_path.exists()
    fresh.abort()
    stale.abort()


def test_storage_from_config(tmp_path: Path) -> None:
    local = storage_from_config({"type": "local", "path": str(tmp_path / "new" / "root")})
    assert isinstance(local, LocalStorage)
    as_object = storage_from_config(SimpleNamespace(type="local", path=str(local.root)))
    assert isinstance(as_object, LocalStorage)
    s3 = storage_from_config({"type": "s3", "bucket": "b", "endpoint_url": "http://127.0.0.1:1"})
    assert s3.describe().startswith("s3://b")
    with pytest.raises(StorageError, match="unknown storage type"):
        storage_from_config({"type": "ftp"})
