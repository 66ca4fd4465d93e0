"""The hook budget meter, on fakeredis and on the real Redis (``any_redis``).

Every behaviour runs on both: fakeredis's Lua (lupa) is fast but is not the server, and the
scripts must be right where they will actually run.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis

from config.limits import BUDGET_TICK_SECONDS
from tasks.budget import (
    SCRIPT_NAMES,
    BudgetMeter,
    BudgetSnapshot,
    Meter,
    RunBudget,
)
from tasks.scripts import _registered, _source

RUN = "run-1"
TOTAL = 5.0
TTL = 60.0
TTL_MS = int(TTL * 1000)
# How long a test waits for a key with a tiny TTL to expire before it calls that a failure.
EXPIRY_WAIT_SECONDS = 5.0
SHORT_TTL = 0.05


@pytest.fixture
def meter(any_redis: redis.Redis, key_prefix: str) -> BudgetMeter:
    return BudgetMeter(any_redis, prefix=key_prefix)


@pytest.fixture
def opened(meter: BudgetMeter) -> BudgetMeter:
    """A meter with RUN opened: TOTAL seconds, TTL seconds to live."""
    assert meter.open(RUN, TOTAL, TTL) is True
    return meter


def wait_until(condition: Callable[[], bool], timeout: float = EXPIRY_WAIT_SECONDS) -> bool:
    """Poll a condition against a deadline (used only for a server-side expiry)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() >= deadline:
            return False
        pause.wait(0.01)
    return True


# --- open -----------------------------------------------------------------------------------


def test_open_makes_a_full_budget(opened: BudgetMeter) -> None:
    assert opened.remaining(RUN) == TOTAL
    assert opened.spent(RUN) == 0.0
    snap = opened.snapshot(RUN)
    assert snap.total == TOTAL
    assert snap.spent == 0.0
    assert snap.remaining == TOTAL
    assert snap.exhausted is False
    assert snap.known is True
    assert snap.overshoot == 0.0


def test_the_key_is_a_hash_of_integer_ms_under_the_prefix(
    opened: BudgetMeter, any_redis: redis.Redis, key_prefix: str
) -> None:
    key = f"{key_prefix}budget:{RUN}"
    assert opened.key(RUN) == key
    assert any_redis.hgetall(key) == {b"total_ms": b"5000", b"spent_ms": b"0", b"exhausted": b"0"}


def test_a_second_open_changes_nothing(opened: BudgetMeter, any_redis: redis.Redis) -> None:
    opened.charge(RUN, 1.5)
    any_redis.pexpire(opened.key(RUN), 10_000)  # as if 50 s of the run had passed

    assert opened.open(RUN, 100.0, 3600.0) is False

    snap = opened.snapshot(RUN)
    assert (snap.total, snap.spent, snap.remaining) == (TOTAL, 1.5, 3.5)
    assert 0 < any_redis.pttl(opened.key(RUN)) <= 10_000


def test_a_zero_budget_is_exhausted_from_the_start(meter: BudgetMeter) -> None:
    assert meter.open(RUN, 0, TTL) is True
    snap = meter.snapshot(RUN)
    assert snap.exhausted is True
    assert snap.remaining == 0.0
    assert meter.charge(RUN, 0.1) == pytest.approx(-0.1)


@pytest.mark.parametrize(
    ("total", "ttl"),
    [(-1.0, TTL), (float("nan"), TTL), (float("inf"), TTL), (TOTAL, 0.0), (TOTAL, -5.0)],
)
def test_open_refuses_a_nonsense_budget_or_ttl(
    meter: BudgetMeter, total: float, ttl: float
) -> None:
    with pytest.raises(ValueError):
        meter.open(RUN, total, ttl)
    assert meter.snapshot(RUN).known is False


def test_an_empty_run_id_is_refused(meter: BudgetMeter) -> None:
    with pytest.raises(ValueError):
        meter.open("", TOTAL, TTL)
    with pytest.raises(ValueError):
        meter.for_run("")


# --- charge -----------------------------------------------------------------------------------


def test_charge_returns_what_is_left(opened: BudgetMeter) -> None:
    assert opened.charge(RUN, 1.25) == 3.75
    assert opened.charge(RUN, 0.75) == 3.0
    assert opened.spent(RUN) == 2.0
    assert opened.remaining(RUN) == 3.0


def test_many_small_ticks_add_up_exactly(opened: BudgetMeter) -> None:
    """Integer ms on the server: 30 charges of 0.1 s are 3 s, not 2.9999999999999996."""
    for _ in range(30):
        opened.charge(RUN, 0.1)
    assert opened.spent(RUN) == 3.0
    assert opened.remaining(RUN) == 2.0


def test_overshoot_is_reported_negative_and_remaining_stays_at_zero(opened: BudgetMeter) -> None:
    assert opened.charge(RUN, 4.9) == pytest.approx(0.1)
    assert opened.charge(RUN, 0.3) == pytest.approx(-0.2)
    assert opened.charge(RUN, 0.1) == pytest.approx(-0.3)
    snap = opened.snapshot(RUN)
    assert snap.remaining == 0.0
    assert snap.spent == 5.3
    assert snap.overshoot == pytest.approx(0.3)
    assert opened.remaining(RUN) == 0.0


def test_exhausted_is_set_when_spent_reaches_total_and_stays(opened: BudgetMeter) -> None:
    opened.charge(RUN, 4.999)
    assert opened.snapshot(RUN).exhausted is False
    assert opened.charge(RUN, 0.001) == 0.0  # exactly at the total: nothing left, exhausted
    assert opened.snapshot(RUN).exhausted is True
    opened.charge(RUN, 0.0)
    assert opened.snapshot(RUN).exhausted is True


def test_a_zero_charge_is_a_read(opened: BudgetMeter) -> None:
    assert opened.charge(RUN, 0) == TOTAL
    assert opened.spent(RUN) == 0.0


@pytest.mark.parametrize("seconds", [-0.1, float("nan"), float("inf")])
def test_charge_refuses_what_would_corrupt_the_meter(opened: BudgetMeter, seconds: float) -> None:
    with pytest.raises(ValueError):
        opened.charge(RUN, seconds)
    assert opened.spent(RUN) == 0.0


def test_charge_refuses_a_non_number(opened: BudgetMeter) -> None:
    with pytest.raises(TypeError):
        opened.charge(RUN, "1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        opened.charge(RUN, True)


def test_concurrent_charges_lose_nothing(opened: BudgetMeter) -> None:
    threads_count, charges_each = 8, 50
    barrier = threading.Barrier(threads_count)

    def work() -> None:
        barrier.wait()
        for _ in range(charges_each):
            opened.charge(RUN, 0.001)

    threads = [threading.Thread(target=work) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert opened.spent(RUN) == threads_count * charges_each * 0.001


# --- TTL --------------------------------------------------------------------------------------


def test_open_sets_the_ttl(opened: BudgetMeter, any_redis: redis.Redis) -> None:
    assert 0 < any_redis.pttl(opened.key(RUN)) <= TTL_MS
    expires_in = opened.snapshot(RUN).expires_in
    assert expires_in is not None
    assert 0 < expires_in <= TTL


def test_charge_never_extends_the_ttl(opened: BudgetMeter, any_redis: redis.Redis) -> None:
    key = opened.key(RUN)
    any_redis.pexpire(key, 3_000)  # as if the run were near its deadline
    for _ in range(20):
        opened.charge(RUN, 0.1)
    opened.remaining(RUN)
    assert 0 < any_redis.pttl(key) <= 3_000


def test_an_expired_meter_grants_nothing_and_is_not_recreated(
    meter: BudgetMeter, any_redis: redis.Redis
) -> None:
    meter.open(RUN, TOTAL, SHORT_TTL)
    key = meter.key(RUN)
    assert wait_until(lambda: not any_redis.exists(key)), "the meter never expired"

    assert meter.remaining(RUN) == 0.0
    assert meter.charge(RUN, 1.0) == 0.0
    assert not any_redis.exists(key), "a charge after expiry made a key without TTL"


# --- unknown runs -----------------------------------------------------------------------------


def test_an_unknown_run_has_no_budget(meter: BudgetMeter, any_redis: redis.Redis) -> None:
    assert meter.remaining("nobody") == 0.0
    assert meter.spent("nobody") == 0.0
    assert meter.charge("nobody", 2.0) == 0.0
    assert not any_redis.exists(meter.key("nobody"))
    assert meter.snapshot("nobody") == BudgetSnapshot(
        total=0.0, spent=0.0, remaining=0.0, exhausted=False, known=False
    )


def test_prefixes_keep_deployments_apart(any_redis: redis.Redis, key_prefix: str) -> None:
    one = BudgetMeter(any_redis, prefix=f"{key_prefix}one:")
    two = BudgetMeter(any_redis, prefix=f"{key_prefix}two:")
    one.open(RUN, TOTAL, TTL)
    assert two.remaining(RUN) == 0.0
    assert two.open(RUN, 1.0, TTL) is True
    two.charge(RUN, 0.5)
    assert one.spent(RUN) == 0.0


# --- RunBudget --------------------------------------------------------------------------------


def test_run_budget_is_the_hook_runners_meter(opened: BudgetMeter) -> None:
    budget = opened.for_run(RUN)
    assert isinstance(budget, RunBudget)
    assert isinstance(budget, Meter)
    assert budget.tick == BUDGET_TICK_SECONDS
    assert budget.remaining() == TOTAL
    assert budget.charge(0.4) == pytest.approx(4.6)
    assert opened.spent(RUN) == pytest.approx(0.4)
    assert budget.snapshot() == opened.snapshot(RUN)


def test_run_budget_takes_its_own_tick(opened: BudgetMeter) -> None:
    assert opened.for_run(RUN, tick=0.25).tick == 0.25
    for tick in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            opened.for_run(RUN, tick=tick)


def test_run_budget_of_an_unknown_run_stops_hooks(meter: BudgetMeter) -> None:
    budget = meter.for_run("nobody")
    assert budget.remaining() == 0.0
    assert budget.charge(0.1) <= 0


# --- scripts are registered once --------------------------------------------------------------


def counting(monkeypatch: pytest.MonkeyPatch, client: Any, name: str, calls: Counter[str]) -> None:
    """Wrap one client method so each call is counted under its name."""
    original = getattr(client, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(client, name, wrapper)


def test_scripts_are_registered_once_per_client_and_reused(
    any_redis: redis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task may make a meter per call (``context.budget_meter()``): registration is per client."""
    calls: Counter[str] = Counter()
    for name in ("register_script", "script_load", "evalsha", "eval"):
        counting(monkeypatch, any_redis, name, calls)
    _registered.pop(any_redis, None)  # as if this client were new

    meter = BudgetMeter(any_redis, prefix=key_prefix)
    scripts = dict(meter._scripts)
    assert calls["register_script"] == len(SCRIPT_NAMES)

    operations = 0
    meter.open(RUN, TOTAL, TTL)
    operations += 1
    for _ in range(10):
        meter.charge(RUN, 0.1)
        BudgetMeter(any_redis, prefix=key_prefix).remaining(RUN)  # a fresh meter each time
        operations += 2
    meter.snapshot(RUN)
    meter.for_run(RUN).charge(0.1)
    operations += 2

    assert calls["register_script"] == len(SCRIPT_NAMES), "scripts registered again"
    again = BudgetMeter(any_redis, prefix=key_prefix)._scripts
    assert all(again[name] is scripts[name] for name in SCRIPT_NAMES)
    # Each operation is one EVALSHA, plus one retry per script the server did not know yet.
    assert calls["eval"] == 0, "script text sent with every call (EVAL instead of EVALSHA)"
    assert calls["script_load"] <= len(SCRIPT_NAMES)
    assert calls["evalsha"] == operations + calls["script_load"]


def test_another_client_gets_its_own_scripts(fake_redis: redis.Redis, key_prefix: str) -> None:
    import fakeredis

    other = fakeredis.FakeRedis()
    mine, theirs = BudgetMeter(fake_redis, key_prefix), BudgetMeter(other, key_prefix)
    assert mine._scripts[SCRIPT_NAMES[0]] is not theirs._scripts[SCRIPT_NAMES[0]]
    assert theirs._scripts[SCRIPT_NAMES[0]].registered_client is other


def test_scripts_are_read_from_disk_once(any_redis: redis.Redis, key_prefix: str) -> None:
    BudgetMeter(any_redis, prefix=key_prefix)
    misses = _source.cache_info().misses
    BudgetMeter(any_redis, prefix=key_prefix)
    for name in SCRIPT_NAMES:
        _source(name)
    assert _source.cache_info().misses == misses
