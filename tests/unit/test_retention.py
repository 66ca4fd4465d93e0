"""Retention selection: generated run histories against an independent reference, and small
cases checked by hand (tasks/retention.py)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from config.jobs import Retention
from tasks.retention import explain_keep, has_rules, is_candidate, select_keep

# --- an independent reference --------------------------------------------------------------
#
# Written from the rule's words, not from the code under test: "the newest backup in each of the
# N most recent periods that have a backup", per rule, then the union, then the newest backup.


def reference_keep(runs: list[tuple[str, datetime]], policy: dict[str, int | None]) -> set[str]:
    if not runs:
        return set()
    if all(policy.get(rule) is None for rule in RULE_PERIODS):
        return {run_id for run_id, _ in runs}
    kept: set[str] = set()
    by_time = sorted(runs, key=lambda run: run[1])
    last_n = policy.get("keep_last") or 0
    if last_n:
        kept |= {run_id for run_id, _ in by_time[-last_n:]}
    for rule, period_of in RULE_PERIODS.items():
        n = policy.get(rule) or 0
        if rule == "keep_last" or n == 0:
            continue
        newest_in: dict[Any, tuple[datetime, str]] = {}
        for run_id, at in runs:
            period = period_of(at.astimezone(UTC))
            if period not in newest_in or newest_in[period] < (at, run_id):
                newest_in[period] = (at, run_id)
        recent_periods = sorted(newest_in, reverse=True)[:n]
        kept |= {newest_in[period][1] for period in recent_periods}
    kept.add(max(runs, key=lambda run: (run[1], run[0]))[0])
    return kept


RULE_PERIODS: dict[str, Any] = {
    "keep_last": None,
    "keep_daily": lambda at: at.strftime("%Y-%m-%d"),
    "keep_weekly": lambda at: f"{at.isocalendar()[0]:04d}-W{at.isocalendar()[1]:02d}",
    "keep_monthly": lambda at: at.strftime("%Y-%m"),
}


# --- generated histories -------------------------------------------------------------------


def history(seed: int, days: int = 365) -> list[dict[str, Any]]:
    """A year of nightly runs: missing days, outages of weeks, extra runs, failures mixed in."""
    rng = random.Random(seed)
    start = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=rng.randrange(0, 200))
    records: list[dict[str, Any]] = []
    day = 0
    while day < days:
        if rng.random() < 0.02:  # an outage: one to three weeks without any run
            day += rng.randrange(7, 22)
            continue
        if rng.random() < 0.12:  # a missed night
            day += 1
            continue
        for _ in range(1 if rng.random() < 0.85 else rng.randrange(2, 4)):
            at = start + timedelta(days=day, seconds=rng.randrange(0, 86400))
            status = rng.choices(
                ["success", "failed", "skipped", "post-failed", "lost"], [80, 8, 6, 4, 2]
            )[0]
            run_id = f"{at:%Y%m%dT%H%M%SZ}-{rng.getrandbits(32):08x}"
            record: dict[str, Any] = {
                "run_id": run_id,
                "status": "failed" if status == "post-failed" else status,
                "finished_at": at.timestamp(),
            }
            if status in ("success", "post-failed"):
                record["artifact"] = {"key": f"j/{at:%Y/%m/%d}/{run_id}.sqlite.zst.age"}
            records.append(record)
        day += 1
    return records


def candidates(records: list[dict[str, Any]]) -> list[tuple[str, datetime]]:
    return [
        (r["run_id"], datetime.fromtimestamp(r["finished_at"], UTC))
        for r in records
        if is_candidate(r)
    ]


POLICIES: list[dict[str, int | None]] = [
    {"keep_daily": 7},
    {"keep_last": 3},
    {"keep_weekly": 4},
    {"keep_monthly": 6},
    {"keep_last": 7, "keep_daily": 14, "keep_weekly": 8, "keep_monthly": 12},
    {"keep_daily": 30, "keep_monthly": 24},
    {"keep_last": 0, "keep_daily": 3},
    {"keep_weekly": 60},  # more weeks than the history has
    {"keep_last": 1},
    {"keep_daily": 400, "keep_weekly": 1},
]


def as_model(policy: dict[str, int | None]) -> Retention:
    return Retention(**policy)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(
    "policy", POLICIES, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items())
)
def test_generated_histories_match_the_reference(seed: int, policy: dict[str, int | None]) -> None:
    records = history(seed)
    runs = candidates(records)
    assert len(runs) > 150  # the generator made a real year
    kept = select_keep(runs, as_model(policy))
    assert kept == reference_keep(runs, policy)
    # only candidates are ever kept, and the newest backup always is
    assert kept <= {run_id for run_id, _ in runs}
    assert max(runs, key=lambda run: run[1])[0] in kept
    # the order of the input does not matter
    shuffled = list(runs)
    random.Random(seed).shuffle(shuffled)
    assert select_keep(shuffled, as_model(policy)) == kept
    # a fixpoint: pruning what a prune kept keeps all of it (prune is idempotent)
    assert select_keep([run for run in runs if run[0] in kept], as_model(policy)) == kept


@pytest.mark.parametrize("seed", range(6))
def test_each_rule_keeps_one_backup_per_period_up_to_n(seed: int) -> None:
    runs = candidates(history(seed))
    days = {at.date() for _, at in runs}
    weeks = {at.isocalendar()[:2] for _, at in runs}
    months = {(at.year, at.month) for _, at in runs}
    for rule, periods in (("keep_daily", days), ("keep_weekly", weeks), ("keep_monthly", months)):
        for n in (1, 5, 13, len(periods), len(periods) + 5):
            reasons = explain_keep(runs, {rule: n})
            by_rule = [r for r, why in reasons.items() if any(w.startswith(rule) for w in why)]
            assert len(by_rule) == min(n, len(periods)), (rule, n)
            # more of a rule never keeps less
            assert select_keep(runs, {rule: n}) <= select_keep(runs, {rule: n + 1})


def test_failed_skipped_lost_and_pruned_runs_are_not_candidates() -> None:
    records = history(3)
    runs = dict(candidates(records))
    for record in records:
        is_success_with_artifact = record["status"] == "success" and "artifact" in record
        assert (record["run_id"] in runs) == is_success_with_artifact
    stored = {"status": "success", "finished_at": 1.0, "run_id": "r", "artifact": {"key": "j/r.x"}}
    assert is_candidate(stored)
    assert not is_candidate({**stored, "artifact_deleted": "true"})
    assert not is_candidate({**stored, "prune_started_at": "5.0"})  # deletion under way
    assert not is_candidate({**stored, "artifact": None})
    assert not is_candidate({**stored, "status": "failed"})  # a post-hook failed: left alone


# --- hand-checked cases ----------------------------------------------------------------------


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_keep_daily_7_over_ten_days_with_a_gap() -> None:
    runs = [(f"d{day}", at(f"2026-01-{day:02d}T03:00:00")) for day in range(1, 11) if day != 8]
    runs.append(("d10-late", at("2026-01-10T15:00:00")))
    # days with a backup, newest first: 10, 9, 7, 6, 5, 4, 3 | 2, 1; day 10's newest is 15:00
    assert select_keep(runs, Retention(keep_daily=7)) == {
        "d10-late", "d9", "d7", "d6", "d5", "d4", "d3",
    }  # fmt: skip


def test_keep_weekly_uses_iso_weeks_across_the_year_boundary() -> None:
    first = at("2026-12-20T02:00:00")
    runs = [(f"{first + timedelta(days=i):%m%d}", first + timedelta(days=i)) for i in range(22)]
    # ISO: 2027-W01 = Jan 4–10, 2026-W53 = Dec 28 – Jan 3 (one week across New Year),
    # 2026-W52 = Dec 21–27. A calendar-year week would split Dec 31 / Jan 1 instead.
    assert select_keep(runs, Retention(keep_weekly=3)) == {"0110", "0103", "1227"}
    assert select_keep(runs, Retention(keep_weekly=4)) == {"0110", "0103", "1227", "1220"}


def test_keep_monthly_skips_months_without_a_backup() -> None:
    runs = [
        ("jan-a", at("2026-01-05T03:00:00")),
        ("jan-b", at("2026-01-31T23:59:59")),
        ("feb", at("2026-02-14T03:00:00")),
        # no backup in March
        ("apr-a", at("2026-04-01T00:00:00")),
        ("apr-b", at("2026-04-30T03:00:00")),
        ("may", at("2026-05-02T03:00:00")),
    ]
    assert select_keep(runs, Retention(keep_monthly=3)) == {"may", "apr-b", "feb"}
    assert select_keep(runs, Retention(keep_monthly=4)) == {"may", "apr-b", "feb", "jan-b"}


def test_keep_last_zero_with_only_daily() -> None:
    runs = [
        ("a1", at("2026-03-01T01:00:00")),
        ("a2", at("2026-03-01T02:00:00")),
        ("a3", at("2026-03-01T03:00:00")),
        ("b1", at("2026-03-02T01:00:00")),
        ("b2", at("2026-03-02T02:00:00")),
    ]
    assert select_keep(runs, Retention(keep_last=0, keep_daily=2)) == {"b2", "a3"}
    assert select_keep(runs, Retention(keep_last=2, keep_daily=2)) == {"b2", "b1", "a3"}


def test_the_newest_backup_is_always_kept() -> None:
    runs = [("old", at("2026-01-01T00:00:00")), ("new", at("2026-01-02T00:00:00"))]
    # all zeros (the config refuses it; the function must still not delete everything)
    zeros = {"keep_last": 0, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}
    assert select_keep(runs, zeros) == {"new"}
    assert explain_keep(runs, zeros) == {"new": ["newest"]}
    assert select_keep(runs, Retention(keep_last=0, keep_monthly=0, keep_daily=1)) == {"new"}
    assert select_keep(runs[:1], Retention(keep_daily=1)) == {"old"}


def test_no_rule_keeps_everything_and_no_run_keeps_nothing() -> None:
    runs = [("a", at("2026-01-01T00:00:00")), ("b", at("2026-01-02T00:00:00"))]
    assert select_keep(runs, Retention()) == {"a", "b"}
    assert select_keep(runs, None) == {"a", "b"}
    assert not has_rules(Retention()) and not has_rules(None)
    assert has_rules(Retention(keep_daily=0, keep_last=1))
    assert select_keep([], Retention(keep_daily=3)) == set()


def test_days_are_utc_days_whatever_the_timezone_of_the_input() -> None:
    plus_two = timezone(timedelta(hours=2))
    runs = [
        # 01:30 at +02:00 is 23:30 UTC the day before: the same UTC day as "early"
        ("late", datetime(2026, 6, 2, 1, 30, tzinfo=plus_two)),
        ("early", at("2026-06-01T08:00:00")),
        ("next", at("2026-06-02T08:00:00")),
    ]
    assert select_keep(runs, Retention(keep_daily=2)) == {"next", "late"}


def test_explain_names_every_rule_that_keeps_a_run() -> None:
    runs = [("a", at("2026-01-01T00:00:00")), ("b", at("2026-01-08T00:00:00"))]
    reasons = explain_keep(runs, Retention(keep_last=1, keep_daily=2, keep_monthly=1))
    assert reasons == {
        "b": ["keep_last #1", "keep_daily #1", "keep_monthly #1"],
        "a": ["keep_daily #2"],
    }


def test_bad_policies_are_refused() -> None:
    runs = [("a", at("2026-01-01T00:00:00"))]
    with pytest.raises(ValueError):
        select_keep(runs, {"keep_daily": -1})
    with pytest.raises(TypeError):
        select_keep(runs, {"keep_daily": "7"})
