"""Result 2 of the retention issue: apply_retention and `backupy prune` on the real Redis and a
LocalStorage in tmp, over a generated year of run records with their artifact files."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from config.jobs import Retention
from tasks import context
from tasks.retention import apply_retention, select_keep
from tasks.runs import RunStore
from tasks.storage import LocalStorage, StorageError, artifact_key, manifest_key
from tests.harness import Deployment, sqlite_job
from workers.cli_ops import prune

pytestmark = pytest.mark.integration

JOB = "app-db"
POLICY = Retention(keep_last=3, keep_daily=7, keep_weekly=4, keep_monthly=6)


def all_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def empty_dirs(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_dir() and not any(p.iterdir())]


def write_year(store: RunStore, storage: LocalStorage, seed: int = 7) -> dict[str, dict[str, Any]]:
    """A year of nightly runs, with gaps and failures, each written as the real code writes it:
    the run record through RunStore.create, the artifact and manifest at their real keys."""
    rng = random.Random(seed)
    start = datetime(2025, 3, 1, 3, 0, tzinfo=UTC)
    runs: dict[str, dict[str, Any]] = {}
    for day in range(365):
        if rng.random() < 0.1 or 120 <= day < 135:  # missed nights, and a two-week outage
            continue
        for extra in range(1 if rng.random() < 0.9 else 2):
            started = start + timedelta(days=day, hours=extra * 9, seconds=rng.randrange(600))
            run_id = f"{started:%Y%m%dT%H%M%SZ}-{rng.getrandbits(32):08x}"
            kind = rng.choices(["success", "failed", "skipped", "post-failed"], [85, 7, 5, 3])[0]
            fields: dict[str, Any] = {
                "status": "failed" if kind == "post-failed" else kind,
                "reason": kind,
                "created_at": started.timestamp(),
                "started_at": started.timestamp(),
                "finished_at": started.timestamp() + 90,
                "deadline": started.timestamp() + 3600,
            }
            if kind in ("success", "post-failed"):
                names = (JOB, run_id, started, "sqlite", "zstd", True)
                key, manifest = artifact_key(*names), manifest_key(*names)
                storage.put_bytes(key, f"artifact {run_id}".encode())
                storage.put_bytes(manifest, b'{"run": "%s"}' % run_id.encode())
                fields["artifact"] = {"key": key, "manifest": manifest, "stored_bytes": 20}
            store.create(run_id, JOB, fields)
            runs[run_id] = {"run_id": run_id, **fields}
    return runs


def expected_keep(runs: dict[str, dict[str, Any]], policy: Any) -> set[str]:
    successes = [
        (run_id, datetime.fromtimestamp(run["finished_at"], UTC))
        for run_id, run in runs.items()
        if run["status"] == "success"
    ]
    return select_keep(successes, policy)


def files_of(runs: dict[str, dict[str, Any]], run_ids: set[str]) -> set[str]:
    return {
        key
        for run_id in run_ids
        for key in (runs[run_id]["artifact"]["key"], runs[run_id]["artifact"]["manifest"])
    }


class FlakyStorage(LocalStorage):
    """LocalStorage whose delete fails for the keys in ``broken``."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.broken: set[str] = set()
        self.deletes: list[str] = []

    def delete(self, key: str) -> bool:
        self.deletes.append(key)
        if key in self.broken:
            raise StorageError(f"{self.describe()}: cannot delete {key}: injected fault")
        return super().delete(key)


@pytest.fixture
def store(real_redis: redis.Redis, key_prefix: str) -> RunStore:
    return RunStore(real_redis, key_prefix)


@pytest.fixture
def storage(tmp_path: Path) -> FlakyStorage:
    return FlakyStorage(tmp_path / "backups")


def test_a_year_is_pruned_to_exactly_what_the_policy_keeps(
    store: RunStore, storage: FlakyStorage
) -> None:
    runs = write_year(store, storage)
    keep = expected_keep(runs, POLICY)
    successes = {r for r, run in runs.items() if run["status"] == "success"}
    with_artifacts = {r for r, run in runs.items() if "artifact" in run}
    assert len(successes) > 250 and 7 <= len(keep) <= 3 + 7 + 4 + 6

    report = apply_retention(store, storage, JOB, POLICY, now=1_800_000_000.0)

    assert set(report.kept) == keep
    assert set(report.deleted) == successes - keep
    assert report.failed == {}
    # storage: the kept backups and every failed run's artifact (left alone), nothing else
    assert all_files(storage.root) == files_of(runs, keep | (with_artifacts - successes))
    assert empty_dirs(storage.root) == []
    # the run records agree with the storage
    for run_id, run in runs.items():
        record = store.get(run_id)
        assert record is not None
        if run_id in successes - keep:
            assert record["artifact_deleted"] is True
            assert float(record["pruned_at"]) == 1_800_000_000.0
            assert record["artifact"]["key"] == run["artifact"]["key"]  # kept for history
            assert "prune_error" not in record
        else:
            assert "pruned_at" not in record and "artifact_deleted" not in record, run_id
            assert record["status"] == run["status"]

    # idempotent: a second prune deletes nothing and changes nothing
    before = {r: store.get(r) for r in runs}
    deletes = len(storage.deletes)
    again = apply_retention(store, storage, JOB, POLICY)
    assert set(again.kept) == keep and again.deleted == [] and again.failed == {}
    assert len(storage.deletes) == deletes  # a pruned run is not deleted again
    assert {r: store.get(r) for r in runs} == before
    assert all_files(storage.root) == files_of(runs, keep | (with_artifacts - successes))


def test_a_failed_delete_is_reported_recorded_and_retried(
    store: RunStore, storage: FlakyStorage
) -> None:
    runs = write_year(store, storage, seed=11)
    keep = expected_keep(runs, POLICY)
    doomed = sorted(r for r, run in runs.items() if run["status"] == "success" and r not in keep)
    stuck, half = doomed[10], doomed[20]
    storage.broken = {runs[stuck]["artifact"]["key"], runs[half]["artifact"]["manifest"]}

    first = apply_retention(store, storage, JOB, POLICY)

    assert set(first.failed) == {stuck, half}
    assert "injected fault" in first.failed[stuck]
    assert set(first.deleted) == set(doomed) - {stuck, half}
    for run_id in (stuck, half):
        record = store.get(run_id)
        assert "injected fault" in record["prune_error"]
        assert "artifact_deleted" not in record and "pruned_at" not in record
    # the stuck run's files are all there; the half-deleted one lost its artifact only
    files = all_files(storage.root)
    assert files_of(runs, {stuck}) <= files
    assert runs[half]["artifact"]["key"] not in files
    assert runs[half]["artifact"]["manifest"] in files

    # the fault is still there: retried and reported again, nothing else is touched
    storage.deletes.clear()
    second = apply_retention(store, storage, JOB, POLICY)
    assert set(second.failed) == {stuck, half} and second.deleted == []
    assert set(storage.deletes) == {runs[stuck]["artifact"]["key"], *files_of(runs, {half})}

    # the fault is gone: both are deleted, even under a policy that would now keep everything
    # (a deletion once begun is finished: a half-deleted backup is never counted as kept)
    storage.broken = set()
    third = apply_retention(store, storage, JOB, Retention(keep_last=100_000))
    assert set(third.deleted) == {stuck, half} and third.failed == {}
    assert stuck not in third.kept and half not in third.kept
    for run_id in (stuck, half):
        record = store.get(run_id)
        assert record["artifact_deleted"] is True and "prune_error" not in record
    successes = {r for r, run in runs.items() if run["status"] == "success"}
    failed_with_artifacts = {r for r, run in runs.items() if "artifact" in run} - successes
    assert all_files(storage.root) == files_of(runs, keep | failed_with_artifacts)


def test_dry_run_deletes_nothing(store: RunStore, storage: FlakyStorage) -> None:
    runs = write_year(store, storage, seed=3)
    keep = expected_keep(runs, POLICY)
    files = all_files(storage.root)
    records = {r: store.client.hgetall(store.keys.run(r)) for r in runs}

    report = apply_retention(store, storage, JOB, POLICY, dry_run=True)

    successes = {r for r, run in runs.items() if run["status"] == "success"}
    assert set(report.kept) == keep and set(report.deleted) == successes - keep
    assert storage.deletes == []
    assert all_files(storage.root) == files
    assert {r: store.client.hgetall(store.keys.run(r)) for r in runs} == records


def test_the_newest_success_stays_even_when_newer_runs_failed(
    store: RunStore, storage: FlakyStorage
) -> None:
    runs = write_year(store, storage, seed=5)
    newest_success = max(
        (run for run in runs.values() if run["status"] == "success"),
        key=lambda run: run["finished_at"],
    )
    later = newest_success["finished_at"] + 86400
    for i, status in enumerate(("failed", "skipped")):
        store.create(
            f"29990101T00000{i}Z-0000000{i}",
            JOB,
            {"status": status, "created_at": later + i, "finished_at": later + i + 1},
        )
    report = apply_retention(store, storage, JOB, {"keep_daily": 0, "keep_last": 0})
    assert report.kept == [newest_success["run_id"]]
    assert files_of(runs, {newest_success["run_id"]}) <= all_files(storage.root)


# --- the CLI -----------------------------------------------------------------------------------


@pytest.fixture
def cli_env(world: Deployment, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    for name, value in world.env().items():
        monkeypatch.setenv(name, value)
    context.reset()
    yield world.env()
    context.reset()


def invoke(*args: str) -> Any:
    context.reset()
    return CliRunner().invoke(prune, list(args), catch_exceptions=False)


def test_cli_prune_exit_codes(
    world: Deployment, cli_env: dict[str, str], store: RunStore, tmp_path: Path
) -> None:
    world.write_config(
        [
            sqlite_job(JOB, tmp_path / "app.db", "q", retention=POLICY.model_dump()),
            sqlite_job("no-policy", tmp_path / "other.db", "q"),
        ]
    )
    storage = FlakyStorage(world.storage)
    runs = write_year(store, storage, seed=9)
    keep = expected_keep(runs, POLICY)
    successes = {r for r, run in runs.items() if run["status"] == "success"}
    files = all_files(world.storage)

    dry = invoke(JOB, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.output.count("would delete  ") == len(successes - keep)
    assert dry.output.count("keep  ") == len(keep)
    assert "dry run: nothing deleted" in dry.output
    assert all_files(world.storage) == files

    # a delete that fails (a directory where the artifact file should be: unlink refuses it)
    # → exit 1, the run named on stdout, said on stderr
    victim = sorted(successes - keep)[0]
    artifact = world.storage / runs[victim]["artifact"]["key"]
    artifact.unlink()
    (artifact / "in-the-way").mkdir(parents=True)
    failing = invoke(JOB)
    assert failing.exit_code == 1, failing.output
    failed_lines = [line for line in failing.output.splitlines() if line.startswith("FAILED")]
    assert len(failed_lines) == 1 and victim in failed_lines[0], failing.output
    assert "retried at the next prune" in failing.stderr
    assert store.get(victim)["prune_error"]

    (artifact / "in-the-way").rmdir()
    artifact.rmdir()
    artifact.write_bytes(b"back")
    retry = invoke(JOB)
    assert retry.exit_code == 0, retry.output
    assert f"delete  {victim}" in retry.output  # deleted now that the fault is gone
    assert all_files(world.storage) == files - files_of(runs, successes - keep)

    unknown = invoke("nope")
    assert unknown.exit_code == 2
    assert unknown.stderr.startswith("backupy: no job 'nope'") and unknown.stderr.count("\n") == 1
    no_policy = invoke("no-policy")
    assert no_policy.exit_code == 2
    assert "has no retention policy" in no_policy.stderr and no_policy.stderr.count("\n") == 1
    bad_config = invoke(JOB, "-c", str(tmp_path / "missing.yaml"))
    assert bad_config.exit_code == 2


def test_prune_after_run_the_finalize_hook_never_raises(
    world: Deployment, store: RunStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from config.jobs import load_config
    from tasks.retention import prune_after_run

    world.write_config(
        [
            sqlite_job(JOB, tmp_path / "app.db", "q", retention={"keep_daily": 3}),
            sqlite_job("no-policy", tmp_path / "other.db", "q"),
        ]
    )
    cfg = load_config(world.config_path)
    runs = write_year(store, LocalStorage(world.storage), seed=13)
    keep = expected_keep(runs, Retention(keep_daily=3))
    assert len(keep) == 3

    report = prune_after_run(store, cfg, JOB)
    assert report is not None and set(report.kept) == keep and report.failed == {}
    failed_with_artifacts = {
        r for r, run in runs.items() if "artifact" in run and run["status"] != "success"
    }
    assert all_files(world.storage) == files_of(runs, keep | failed_with_artifacts)

    assert prune_after_run(store, cfg, "no-policy") is None  # nothing to do, nothing said
    assert prune_after_run(store, cfg, "unknown") is None  # logged, never raised
    assert "retention of unknown after its run failed" in caplog.text
