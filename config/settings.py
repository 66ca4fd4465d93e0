"""Process settings from the environment: where Redis is, the key prefix, the broker, queues.

These belong to the host, not to the job config: the same validated config file runs on every
host, while each host knows its own Redis URL (which may hold credentials, so it never goes into
the config file, a run record or a log line).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from config.limits import parse_duration

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "backupy:"
DEFAULT_CONFIG_PATH = "config/jobs.yaml"

# The queue that start_run of unrouted triggers, the watchdog and other control tasks use. At
# least one worker must serve it (the docker-compose worker does).
DEFAULT_CONTROL_QUEUE = "backups"

# Redis transport: a message not acked within this long is delivered again. It must exceed the
# longest hard time limit of any task, or a long dump is run twice: the worker checks at start.
DEFAULT_VISIBILITY_TIMEOUT_SECONDS = 6 * 3600

# A running step refreshes its claim this often; a claim whose heartbeat has not moved for two
# periods belongs to a dead process. Short enough that a lost worker is noticed within seconds,
# long enough to cost one small Redis write a second per running step.
DEFAULT_HEARTBEAT_SECONDS = 1.0

# Slack added to a run's deadline beyond its hook budget and dump timeout: queueing, worker
# start-up and the steps' own bookkeeping. The watchdog marks a run lost only past the deadline.
DEFAULT_DEADLINE_SLACK_SECONDS = 10 * 60

# Beat's scheduler (``BACKUPY_BEAT_SCHEDULER``): ``config`` keeps its state in a local file (one
# beat only); ``redbeat`` keeps it in Redis under the prefix, so several beats can run and only
# the holder of the lock sends (workers/redbeat.py).
BEAT_SCHEDULERS = {
    "config": "workers.beat:ConfigScheduler",
    "redbeat": "workers.redbeat:ConfigRedBeatScheduler",
}
# RedBeat's lock: the holder renews it every tick (at most 5 s apart); a standby takes over at
# most this long after the holder died without releasing it.
DEFAULT_REDBEAT_LOCK_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Settings:
    """What this process needs to reach the shared state; read once from the environment."""

    redis_url: str = DEFAULT_REDIS_URL
    broker_url: str = DEFAULT_REDIS_URL
    prefix: str = DEFAULT_PREFIX
    config_path: str = DEFAULT_CONFIG_PATH
    control_queue: str = DEFAULT_CONTROL_QUEUE
    visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT_SECONDS
    heartbeat: float = DEFAULT_HEARTBEAT_SECONDS
    deadline_slack: float = DEFAULT_DEADLINE_SLACK_SECONDS
    beat_scheduler: str = BEAT_SCHEDULERS["config"]
    redbeat_lock_timeout: float = DEFAULT_REDBEAT_LOCK_TIMEOUT_SECONDS


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``BACKUPY_*`` variables; the broker defaults to the run store's Redis."""
    env = os.environ if environ is None else environ
    redis_url = env.get("BACKUPY_REDIS_URL") or DEFAULT_REDIS_URL
    return Settings(
        redis_url=redis_url,
        broker_url=env.get("BACKUPY_BROKER_URL") or redis_url,
        prefix=env.get("BACKUPY_PREFIX") or DEFAULT_PREFIX,
        config_path=env.get("BACKUPY_CONFIG") or DEFAULT_CONFIG_PATH,
        control_queue=env.get("BACKUPY_CONTROL_QUEUE") or DEFAULT_CONTROL_QUEUE,
        visibility_timeout=_duration(
            env, "BACKUPY_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT_SECONDS
        ),
        heartbeat=_duration(env, "BACKUPY_HEARTBEAT", DEFAULT_HEARTBEAT_SECONDS),
        deadline_slack=_duration(env, "BACKUPY_DEADLINE_SLACK", DEFAULT_DEADLINE_SLACK_SECONDS),
        beat_scheduler=_beat_scheduler(env.get("BACKUPY_BEAT_SCHEDULER") or "config"),
        redbeat_lock_timeout=_duration(
            env, "BACKUPY_REDBEAT_LOCK_TIMEOUT", DEFAULT_REDBEAT_LOCK_TIMEOUT_SECONDS
        ),
    )


def _beat_scheduler(name: str) -> str:
    if name in BEAT_SCHEDULERS.values():
        return name
    if name not in BEAT_SCHEDULERS:
        choices = ", ".join(BEAT_SCHEDULERS)
        raise ValueError(f"BACKUPY_BEAT_SCHEDULER: {name!r} is not one of {choices}")
    return BEAT_SCHEDULERS[name]


def _duration(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def redact_url(url: str) -> str:
    """``redis://user:secret@host/0`` → ``redis://user:***@host/0``: for logs and errors."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://***@{host}"
