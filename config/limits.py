"""The hook security limits: one place, each value with the reason it has.

These are ported from the reference hook runner (``shared/reference/hooks.go.txt``). They are
enforced twice: when the job config is loaded (``config.jobs``) and again by the worker right
before it runs a hook (``tasks.hooks`` / ``tasks.hook_task``), so a message or a config that
slipped past one check still meets the other.

A job may ask for lower values, never higher. The operator of a worker host may move the caps
themselves through environment variables (``BACKUPY_HOOK_COMMAND_MAX_BYTES`` and friends): the
host owner is the one whose machine the hooks run on, so the host owner has the last word.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

# A hook command is at most this many bytes of UTF-8 (bytes, not characters: "é" counts 2).
# 4 KiB is far above any realistic shell pipeline and well inside every OS's argv headroom, so a
# longer string is a generated or hostile config, not a hook.
HOOK_COMMAND_MAX_BYTES = 4 * 1024

# At most this many hooks per job, pre and post together. 16 covers any sane workflow
# (checkpoint → quiesce → snapshot → undo → notify) and stops a runaway config from turning one
# run into dozens of processes on every host that serves the job.
HOOKS_MAX_COUNT = 16

# Per-hook timeout when the job does not set one: long enough for a checkpoint or a snapshot,
# short enough that a wedged hook is noticed the same night.
HOOK_TIMEOUT_DEFAULT_SECONDS = 5 * 60

# No hook may ask for more than this, whatever the job says: one hostile or broken hook must not
# pin a worker process for hours.
HOOK_TIMEOUT_MAX_SECONDS = 15 * 60

# All hooks of one run (pre and post together) share this much wall time, metered in Redis across
# every worker that runs them. The reference kept it per process; we keep it per run.
HOOKS_TOTAL_BUDGET_SECONDS = 30 * 60

# Each of stdout and stderr keeps only its last 8 KiB: enough for the error a hook prints at the
# end, small enough to keep many concurrent hooks in memory and in run records.
HOOK_OUTPUT_BYTES = 8 * 1024

# After SIGTERM to a hook's process group, this long before SIGKILL. Short: a hook that is being
# stopped has already overrun, and the post-hooks are waiting.
HOOK_KILL_GRACE_SECONDS = 2.0

# Celery's hard ``time_limit`` sits this far past the soft one (= the hook's timeout). The soft
# limit's handler needs at most HOOK_KILL_GRACE_SECONDS to stop the group; the rest is margin so
# that the hard limit (which kills the pool process) fires only when that cleanup itself hung.
HARD_TIME_LIMIT_MARGIN_SECONDS = HOOK_KILL_GRACE_SECONDS + 3.0

# The budget is charged in ticks this long while a hook runs. Concurrent hooks of one run can
# overshoot the budget by at most one tick each, so the tick bounds the overshoot; a tick is one
# Redis round trip, so it also bounds the cost. 100 ms keeps both small.
BUDGET_TICK_SECONDS = 0.1


@dataclass(frozen=True)
class Limits:
    """The caps in force on this host (defaults above, moved by the operator's environment)."""

    command_max_bytes: int = HOOK_COMMAND_MAX_BYTES
    hooks_max_count: int = HOOKS_MAX_COUNT
    hook_timeout_default: float = HOOK_TIMEOUT_DEFAULT_SECONDS
    hook_timeout_max: float = HOOK_TIMEOUT_MAX_SECONDS
    hooks_total_budget: float = HOOKS_TOTAL_BUDGET_SECONDS
    output_bytes: int = HOOK_OUTPUT_BYTES
    kill_grace: float = HOOK_KILL_GRACE_SECONDS
    hard_limit_margin: float = HARD_TIME_LIMIT_MARGIN_SECONDS
    budget_tick: float = BUDGET_TICK_SECONDS


# Environment variable → (field, parser). Durations accept the same forms as the config file.
ENV_OVERRIDES: dict[str, str] = {
    "BACKUPY_HOOK_COMMAND_MAX_BYTES": "command_max_bytes",
    "BACKUPY_HOOKS_MAX_COUNT": "hooks_max_count",
    "BACKUPY_HOOK_TIMEOUT_MAX": "hook_timeout_max",
    "BACKUPY_HOOKS_TOTAL_BUDGET": "hooks_total_budget",
    "BACKUPY_HOOK_OUTPUT_BYTES": "output_bytes",
}

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class LimitError(ValueError):
    """An operator override that is not a positive number: the worker must not start on it."""


def parse_duration(value: str | int | float) -> float:
    """``30s``, ``5m``, ``2h``, ``1d`` or a number of seconds → seconds (float, > 0).

    One parser for the config file and the operator's environment, so both read the same way.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        unit = _DURATION_UNITS.get(text[-1:]) if text else None
        number = text[:-1] if unit else text
        try:
            seconds = float(number) * (unit or 1)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a duration (use 30s, 5m, 2h, 1d or seconds)"
            ) from None
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"{value!r} is not a positive duration")
    return seconds


def load_limits(environ: Mapping[str, str] | None = None) -> Limits:
    """The caps for this host: the defaults, with the operator's environment overrides applied."""
    environ = os.environ if environ is None else environ
    values: dict[str, float | int] = {}
    for variable, field in ENV_OVERRIDES.items():
        raw = environ.get(variable)
        if raw is None or raw == "":
            continue
        try:
            if field in ("command_max_bytes", "hooks_max_count", "output_bytes"):
                number = int(raw)
                if number <= 0:
                    raise ValueError
                values[field] = number
            else:
                values[field] = parse_duration(raw)
        except ValueError:
            raise LimitError(f"{variable}={raw!r}: must be a positive number") from None
    return Limits(**values)
