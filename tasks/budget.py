"""The total hook-time budget of one run, metered in Redis.

All hooks of a run (pre and post together) share one budget, and they run as separate Celery
tasks, possibly on different worker hosts at the same time. A per-process counter (what the
reference runner kept) cannot see the others, so the meter lives in Redis and every change to it
is one Lua script: the read-add-compare of a charge is atomic across every host, and two hooks
charging at once can never both read the old total.

The meter is a hash at ``{prefix}budget:{run_id}`` holding integer milliseconds:

- ``total_ms``  the run's budget, fixed at :meth:`BudgetMeter.open`;
- ``spent_ms``  the hook time charged so far (real elapsed time, not capped, so it can pass
  ``total_ms`` by the overshoot of the ticks in flight when the budget ran out);
- ``exhausted`` ``1`` from the first moment ``spent_ms >= total_ms`` (kept even if a reader only
  looks later), for run records and ``backupy_hook_budget_exhausted_total``.

Integer milliseconds, because thousands of 0.1 s float additions drift (``0.1 * 3 != 0.3``) and
Lua numbers on the server are doubles: integers below 2**53 are exact there, fractions are not.

The key expires at the run's deadline: ``open`` sets the TTL and nothing else touches it, so a
crashed or forgotten run leaks nothing and a hook that keeps charging cannot keep its meter alive
forever.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import redis

from config.limits import BUDGET_TICK_SECONDS
from tasks.redis_keys import Keys
from tasks.scripts import script

log = logging.getLogger("backupy.budget")

DEFAULT_PREFIX = "backupy:"

# The scripts, as files beside this module (shipped as package data): one name per operation.
OPEN_SCRIPT = "budget_open"
CHARGE_SCRIPT = "budget_charge"
READ_SCRIPT = "budget_read"
SCRIPT_NAMES = (OPEN_SCRIPT, CHARGE_SCRIPT, READ_SCRIPT)

MS_PER_SECOND = 1000


@runtime_checkable
class Meter(Protocol):
    """What the hook runner needs from a budget: ask before a hook, charge while it runs."""

    tick: float

    def remaining(self) -> float: ...

    def charge(self, seconds: float) -> float: ...


@dataclass(frozen=True)
class BudgetSnapshot:
    """One consistent reading of a run's budget, in seconds, for run records and ``backupy show``.

    ``known`` is False when the run has no meter (never opened, or expired after its deadline);
    all numbers are then 0, which is also what the hooks are told: no budget, no permission.
    """

    total: float
    spent: float
    remaining: float
    exhausted: bool
    known: bool = True
    # Seconds until the meter expires (None: no TTL). Left out of ==: it changes by the moment.
    expires_in: float | None = field(default=None, compare=False)

    @property
    def overshoot(self) -> float:
        """How far the hooks ran past the budget: at most one tick per hook that was running."""
        return max(0.0, self.spent - self.total)


def _to_ms(seconds: float, what: str) -> int:
    """Seconds → integer milliseconds, refusing what would corrupt the meter (NaN, inf, < 0)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"{what} must be a number of seconds, not {seconds!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{what} must be a finite number of seconds >= 0, not {seconds!r}")
    return round(seconds * MS_PER_SECOND)


def _to_seconds(ms: int) -> float:
    return ms / MS_PER_SECOND


class BudgetMeter:
    """The hook budgets of all runs, on one Redis client.

    The Lua scripts are registered once per client, however many meters are made on it (a task
    may make one per call): ``register_script`` hashes the text once, and each call is then an
    ``EVALSHA`` of a few bytes, with the text sent (``SCRIPT LOAD``) only when the server does
    not know it yet (first use, restart, failover). A meter is safe to share between threads.
    """

    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self._keys = Keys(prefix)
        self._scripts = {name: script(client, name) for name in SCRIPT_NAMES}

    def key(self, run_id: str) -> str:
        """The Redis key of a run's meter."""
        if not run_id:
            raise ValueError("run_id must not be empty")
        return self._keys.budget(run_id)

    def _run(self, name: str, run_id: str, *args: int) -> Any:
        return self._scripts[name](keys=[self.key(run_id)], args=list(args))

    def open(self, run_id: str, total_seconds: float, ttl_seconds: float) -> bool:
        """Create the run's meter: ``total_seconds`` of hook time, expiring in ``ttl_seconds``.

        ``ttl_seconds`` should reach the run's deadline: the meter is needed until the last
        post-hook has charged, and not a moment after. Idempotent: a second open of the same
        run (a redelivered start, a retry) changes nothing, neither what was spent nor the
        deadline, and returns False.
        """
        total_ms = _to_ms(total_seconds, "total_seconds")
        ttl_ms = _to_ms(ttl_seconds, "ttl_seconds")
        if ttl_ms <= 0:
            raise ValueError(f"ttl_seconds must be at least 1 ms, not {ttl_seconds!r}")
        return self._run(OPEN_SCRIPT, run_id, total_ms, ttl_ms) == 1

    def charge(self, run_id: str, seconds: float) -> float:
        """Add ``seconds`` of hook time; return the seconds left after it.

        The result is negative once the budget is overspent (the overshoot), so the caller can
        tell "just ran out" from "far past". A run without a meter charges nothing and returns
        0: the caller stops its hook, since time nobody can account for is time not granted.
        """
        left_ms = self._run(CHARGE_SCRIPT, run_id, _to_ms(seconds, "seconds"))
        return 0.0 if left_ms is None else _to_seconds(int(left_ms))

    def snapshot(self, run_id: str) -> BudgetSnapshot:
        """Total, spent, remaining and the exhausted flag, read together in one script."""
        reply = self._run(READ_SCRIPT, run_id)
        if reply is None:
            return BudgetSnapshot(total=0.0, spent=0.0, remaining=0.0, exhausted=False, known=False)
        total_ms, spent_ms, left_ms, exhausted, pttl_ms = (int(value) for value in reply)
        return BudgetSnapshot(
            total=_to_seconds(total_ms),
            spent=_to_seconds(spent_ms),
            remaining=_to_seconds(max(0, left_ms)),
            exhausted=exhausted == 1,
            expires_in=_to_seconds(pttl_ms) if pttl_ms >= 0 else None,
        )

    def remaining(self, run_id: str) -> float:
        """Seconds of budget left, never below 0.

        An unknown or expired run has 0 left: a meter missing by mistake must stop hooks, not
        let them run unmetered (no budget is no permission).
        """
        return self.snapshot(run_id).remaining

    def spent(self, run_id: str) -> float:
        """Seconds of hook time charged so far (0 for an unknown run)."""
        return self.snapshot(run_id).spent

    def for_run(self, run_id: str, tick: float = BUDGET_TICK_SECONDS) -> RunBudget:
        """The budget of one run, in the shape the hook runner takes (:class:`Meter`)."""
        self.key(run_id)  # refuse an empty run id now, not at the first tick
        if not (math.isfinite(tick) and tick > 0):
            raise ValueError(f"tick must be a positive number of seconds, not {tick!r}")
        return RunBudget(meter=self, run_id=run_id, tick=tick)


@dataclass(frozen=True)
class RunBudget:
    """One run's budget bound to its id: the :class:`Meter` a hook runner charges.

    ``tick`` is how often the runner charges a running hook. It bounds the overshoot: each hook
    running when the budget runs out can add at most one tick past the total.
    """

    meter: BudgetMeter
    run_id: str
    tick: float = BUDGET_TICK_SECONDS

    def remaining(self) -> float:
        """Seconds left for this run (0 when spent, unknown or expired)."""
        return self.meter.remaining(self.run_id)

    def charge(self, seconds: float) -> float:
        """Charge elapsed hook time; seconds left after it (<= 0 means stop the hook)."""
        return self.meter.charge(self.run_id, seconds)

    def snapshot(self) -> BudgetSnapshot:
        """Everything about this run's budget in one reading, for its run record."""
        return self.meter.snapshot(self.run_id)


class OutageTolerantBudgetMeter(BudgetMeter):
    """A meter whose charges ride out a short Redis outage (a restart, a failover).

    The hook runner charges every tick and stops the hook when a charge raises, which would turn
    a Redis restart into a killed hook and a step that cannot even be recorded. Here a charge
    that cannot reach Redis is kept and added to the next one, so no time goes unpaid once Redis
    answers again, and the hook keeps running meanwhile: its own deadline, fixed before it
    started to min(its timeout, the budget left then), still bounds it. While Redis is away the
    answer is this meter's own estimate (the last budget Redis reported minus what is owed), so
    a hook that has used up what was left is still stopped as ``budget_exceeded``. Time still
    owed when the hook ends inside the outage is lost (logged). Asking for the budget before a
    hook starts is not covered: no answer is no permission.
    """

    def __init__(self, client: redis.Redis, prefix: str = "backupy:") -> None:
        super().__init__(client, prefix)
        self._owed: dict[str, float] = {}
        self._last_left: dict[str, float] = {}
        self._lock = threading.Lock()

    def charge(self, run_id: str, seconds: float) -> float:
        with self._lock:
            owed = self._owed.pop(run_id, 0.0) + seconds
        try:
            left = super().charge(run_id, owed)
        except redis.RedisError as exc:
            with self._lock:
                total = self._owed[run_id] = self._owed.get(run_id, 0.0) + owed
            if owed == seconds:  # the first failure of this outage: say so once
                log.warning(
                    "run %s: cannot charge the hook budget (%s); the hook goes on and the "
                    "charge is retried next tick",
                    run_id,
                    type(exc).__name__,
                )
            last = self._last_left.get(run_id)
            return math.inf if last is None else last - total
        with self._lock:
            self._last_left[run_id] = left
        return left
