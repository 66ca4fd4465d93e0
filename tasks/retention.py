"""Retention: which backups of a job to keep, and deleting the others from storage.

Applied after each successful run (by finalize) and by ``backupy prune JOB [--dry-run]``.

Selection (:func:`select_keep`) is a pure function, in the manner of ``borg prune``:

* ``keep_last: N`` keeps the N newest backups;
* ``keep_daily`` / ``keep_weekly`` / ``keep_monthly: N`` keep the newest backup in each of the N
  most recent days / ISO weeks / months *that have a backup* (a day without a backup does not
  use up one of the N: after a two-week outage ``keep_daily: 7`` still keeps seven backups);
* what each rule keeps is kept (the union). Unlike borg, the rules are independent of each other:
  a period whose newest backup another rule already keeps still counts as one of the N. This is
  the simpler rule to reason about ("the newest backup of each of the last 7 days is here"), and
  it never keeps fewer backups than any single rule asks for;
* periods are UTC calendar days, ISO weeks (``isocalendar()``: 2026-12-31 and 2027-01-01 are in
  the same week 2026-W53) and calendar months of the backup's ``finished_at``;
* a rule left out (``None``) or set to 0 keeps nothing by itself; a policy with no rule set at all
  keeps everything (nothing limits);
* the newest backup is always kept, whatever the policy.

Only ``success`` runs whose artifact is still in storage are candidates. Failed, skipped and lost
runs are left alone, including a ``failed`` run whose artifact was stored (a post-hook failed): an
operator must look at that one, retention does not silently remove it.

Deleting (:func:`apply_retention`) keeps storage and run records in agreement:

1. the run is marked ``prune_started_at`` (intent) before anything is deleted;
2. the artifact, then its manifest, are deleted (an already missing object counts as deleted);
3. the run is marked ``pruned_at``, ``artifact_deleted: true`` (its ``artifact`` field, with the
   key, stays for history) and any earlier ``prune_error`` is removed.

A delete that fails leaves ``prune_error`` (and ``prune_failed_at``) on the run, is reported in
:class:`PruneReport.failed`, and is retried at the next prune. A run whose deletion has started
is never counted as kept again, even when a later prune would keep it: part of it may already be
gone, and a half-deleted backup kept "for the policy" would be a lie. A run already pruned is not
deleted again. Running it twice gives the same result as running it once.

Two prunes of one job (finalize and an operator's ``backupy prune``) are serialised by a Redis
lock ``{prefix}prune:{job_id}``; a dry run takes no lock and changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import redis

from tasks.runs import RunStore
from tasks.storage import MANIFEST_SUFFIX, Storage, StorageError

log = logging.getLogger("backupy.retention")

#: The rules in the order they are reported; ``last`` first, like borg.
RULES = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly")

#: How long a prune may hold the job's prune lock (it expires if the process dies), and how long
#: another prune waits for it before giving up (the next run's finalize prunes again).
PRUNE_LOCK_SECONDS = 600.0
PRUNE_LOCK_WAIT_SECONDS = 30.0

#: Run ids read from Redis per round trip.
READ_BATCH = 500


class PruneBusyError(Exception):
    """Another prune of the same job holds the lock."""


@dataclass
class PruneReport:
    """What a prune kept, deleted (or would delete, in a dry run) and failed to delete.

    ``kept`` and ``deleted`` are run ids, newest first; ``failed`` maps a run id to the error.
    ``reasons`` says which rules keep each kept run (``keep_daily #3``...); ``keys`` the storage
    keys of each deleted run; ``finished_at`` the epoch seconds of every run listed.
    """

    job_id: str
    kept: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, list[str]] = field(default_factory=dict)
    keys: dict[str, list[str]] = field(default_factory=dict)
    finished_at: dict[str, float] = field(default_factory=dict)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        return (
            f"{self.job_id}: kept {len(self.kept)}, {verb} {len(self.deleted)}, "
            f"failed {len(self.failed)}"
        )


# ---------------------------------------------------------------------------------------------
# Selection


def policy_counts(policy: Any) -> dict[str, int | None]:
    """``{rule: N or None}`` from a :class:`config.jobs.Retention`, a mapping or any object."""
    counts: dict[str, int | None] = {}
    for rule in RULES:
        value = policy.get(rule) if isinstance(policy, Mapping) else getattr(policy, rule, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{rule} must be an integer or None, got {value!r}")
        if value is not None and value < 0:
            raise ValueError(f"{rule} must be 0 or more, got {value}")
        counts[rule] = value
    return counts


def has_rules(policy: Any) -> bool:
    """False for no policy, or one with every rule left out: such a policy deletes nothing."""
    if policy is None:
        return False
    return any(value is not None for value in policy_counts(policy).values())


def _utc(when: datetime) -> datetime:
    """Naive datetimes are taken as UTC (run records store epoch seconds)."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _day(when: datetime) -> date:
    return when.date()


def _iso_week(when: datetime) -> tuple[int, int]:
    iso = when.isocalendar()
    return (iso.year, iso.week)


def _month(when: datetime) -> tuple[int, int]:
    return (when.year, when.month)


PERIODS: dict[str, Callable[[datetime], Hashable]] = {
    "keep_daily": _day,
    "keep_weekly": _iso_week,
    "keep_monthly": _month,
}


def explain_keep(runs: Iterable[tuple[str, datetime]], policy: Any) -> dict[str, list[str]]:
    """Every kept run id with the rules that keep it (``["keep_daily #1", "newest"]``)."""
    ordered = sorted(((_utc(at), run_id) for run_id, at in runs), reverse=True)
    reasons: dict[str, list[str]] = {}
    if not ordered:
        return reasons
    counts = policy_counts(policy) if policy is not None else dict.fromkeys(RULES)
    if all(value is None for value in counts.values()):
        return {run_id: ["no retention rule"] for _at, run_id in ordered}

    def keep(run_id: str, why: str) -> None:
        reasons.setdefault(run_id, []).append(why)

    for index, (_at, run_id) in enumerate(ordered[: counts["keep_last"] or 0]):
        keep(run_id, f"keep_last #{index + 1}")
    for rule, period_of in PERIODS.items():
        wanted = counts[rule] or 0
        seen = 0
        last_period: Hashable = None
        for at, run_id in ordered:  # newest first: the first of each period is its newest
            if seen >= wanted:
                break
            period = period_of(at)
            if period != last_period:
                last_period = period
                seen += 1
                keep(run_id, f"{rule} #{seen}")
    newest = ordered[0][1]
    if newest not in reasons:
        keep(newest, "newest")
    return reasons


def select_keep(runs: Iterable[tuple[str, datetime]], policy: Any) -> set[str]:
    """The run ids to keep among ``runs`` ((run_id, finished_at) of successful backups)."""
    return set(explain_keep(runs, policy))


# ---------------------------------------------------------------------------------------------
# Applying


def _flag(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def is_pruned(run: Mapping[str, Any]) -> bool:
    return _flag(run.get("artifact_deleted"))


def is_pruning(run: Mapping[str, Any]) -> bool:
    """Deletion started (and perhaps failed) but not finished: to be finished, never kept."""
    return bool(run.get("prune_started_at")) and not is_pruned(run)


def artifact_keys(run: Mapping[str, Any]) -> list[str]:
    """The artifact's key and its manifest's (derived from the layout when not recorded)."""
    artifact = run.get("artifact") or {}
    key = artifact.get("key") if isinstance(artifact, Mapping) else None
    if not key:
        return []
    manifest = artifact.get("manifest")
    if not manifest:
        folder, _, _name = key.rpartition("/")
        manifest = f"{folder}/{run['run_id']}{MANIFEST_SUFFIX}" if folder else None
    return [key] + ([manifest] if manifest else [])


def is_candidate(run: Mapping[str, Any]) -> bool:
    """A successful run whose artifact is still stored, and not on its way out."""
    return (
        run.get("status") == "success"
        and bool(artifact_keys(run))
        and run.get("finished_at") is not None
        and not is_pruned(run)
        and not is_pruning(run)
    )


def job_runs(store: RunStore, job_id: str) -> list[dict[str, Any]]:
    """Every run record of the job (oldest first), in batches."""
    ids = [i.decode() for i in store.client.zrange(store.keys.runs(job_id), 0, -1)]
    found: list[dict[str, Any]] = []
    for start in range(0, len(ids), READ_BATCH):
        batch = store.get_many(ids[start : start + READ_BATCH])
        found += [run for run in batch if run is not None and run.get("job") == job_id]
    return found


def prune_lock_key(store: RunStore, job_id: str) -> str:
    return store.keys.prune_lock(job_id)


def apply_retention(
    store: RunStore,
    storage: Storage,
    job_id: str,
    policy: Any,
    *,
    dry_run: bool = False,
    now: float | datetime | None = None,
) -> PruneReport:
    """Delete the backups of ``job_id`` that ``policy`` does not keep; see the module doc.

    ``now`` is the ``pruned_at`` written on pruned runs (epoch seconds or a datetime; default the
    current time). Raises :class:`PruneBusyError` when another prune of the job holds the lock
    for longer than :data:`PRUNE_LOCK_WAIT_SECONDS`, and ``redis.RedisError`` when Redis fails.
    """
    report = PruneReport(job_id=job_id, dry_run=dry_run)
    if dry_run:
        _plan(store, job_id, policy, report)
        return report
    lock = store.client.lock(
        prune_lock_key(store, job_id),
        timeout=PRUNE_LOCK_SECONDS,
        blocking_timeout=PRUNE_LOCK_WAIT_SECONDS,
    )
    if not lock.acquire():
        raise PruneBusyError(f"another prune of {job_id} is running (lock held)")
    try:
        for run in _plan(store, job_id, policy, report):
            _delete_run(store, storage, run, _epoch(now), report)
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:  # expired meanwhile: nothing to release
            log.warning("prune of %s outlived its lock", job_id)
    return report


def _epoch(now: float | datetime | None) -> float:
    if now is None:
        return time.time()
    if isinstance(now, datetime):
        return _utc(now).timestamp()
    return float(now)


def _plan(
    store: RunStore, job_id: str, policy: Any, report: PruneReport
) -> Sequence[dict[str, Any]]:
    """Fill ``report.kept``/``reasons``/``deleted``; return the runs to delete, newest first."""
    runs = job_runs(store, job_id)
    candidates = {run["run_id"]: run for run in runs if is_candidate(run)}
    finished = [
        (run_id, datetime.fromtimestamp(float(run["finished_at"]), UTC))
        for run_id, run in candidates.items()
    ]
    reasons = (
        explain_keep(finished, policy)
        if has_rules(policy)
        else {run_id: ["no retention rule"] for run_id in candidates}
    )
    by_age = sorted(finished, key=lambda item: (item[1], item[0]), reverse=True)
    report.kept = [run_id for run_id, _at in by_age if run_id in reasons]
    report.reasons = {run_id: reasons[run_id] for run_id in report.kept}
    doomed = [candidates[run_id] for run_id, _at in by_age if run_id not in reasons]
    unfinished = [run for run in runs if is_pruning(run)]  # earlier deletes to finish
    unfinished.sort(key=lambda run: (float(run["finished_at"] or 0), run["run_id"]), reverse=True)
    to_delete = unfinished + doomed
    report.deleted = [run["run_id"] for run in to_delete]
    report.keys = {run["run_id"]: artifact_keys(run) for run in to_delete}
    report.finished_at = {
        run["run_id"]: float(run["finished_at"])
        for run in [*to_delete, *(candidates[run_id] for run_id in report.kept)]
        if run.get("finished_at") is not None
    }
    return to_delete


def _delete_run(
    store: RunStore,
    storage: Storage,
    run: Mapping[str, Any],
    now: float,
    report: PruneReport,
) -> None:
    run_id = run["run_id"]
    record = store.keys.run(run_id)
    if not run.get("prune_started_at"):
        store.set_fields(run_id, prune_started_at=now)
    try:
        for key in artifact_keys(run):
            storage.delete(key)  # False when already gone: a retry after a partial delete
    except (StorageError, OSError) as exc:
        message = f"{type(exc).__name__}: {exc}"
        store.set_fields(run_id, prune_error=message, prune_failed_at=now)
        report.deleted.remove(run_id)
        report.failed[run_id] = message
        log.warning("prune of run %s failed: %s", run_id, message)
        return
    pipe = store.client.pipeline(transaction=True)
    pipe.hset(record, mapping={"pruned_at": now, "artifact_deleted": "true"})
    pipe.hdel(record, "prune_error", "prune_failed_at")
    pipe.execute()
    log.info("pruned run %s of %s: %s", run_id, run.get("job"), ", ".join(artifact_keys(run)))


def prune_after_run(store: RunStore, config: Any, job_id: str) -> PruneReport | None:
    """Finalize's hook: apply the job's policy, never raise (the run is already final).

    Returns None when the job has no policy or the prune could not run (logged).
    """
    try:
        policy = config.job(job_id).retention
        if not has_rules(policy):
            return None
        from tasks.storage import storage_from_config

        report = apply_retention(store, storage_from_config(config.storage), job_id, policy)
    except Exception:
        log.warning("retention of %s after its run failed", job_id, exc_info=True)
        return None
    if report.failed:
        log.warning("retention of %s: %s", job_id, report.summary())
    else:
        log.info("retention of %s: %s", job_id, report.summary())
    return report
