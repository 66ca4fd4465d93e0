"""RedBeat: beat's schedule and lock in Redis, so beat can run on several hosts (one sends).

    celery -A workers beat -S workers.redbeat:ConfigRedBeatScheduler
    BACKUPY_BEAT_SCHEDULER=redbeat celery -A workers beat          # the same, from the env

The default scheduler (``workers.beat:ConfigScheduler``) keeps when each entry last ran in a local
file: two such beats would both send every due job (the job lock then turns the second trigger
into a ``skipped`` run, but the overlap is noise and each beat is a single point of failure).
With RedBeat each beat loads the same schedule as ``workers.beat.build_schedule`` (the jobs of
the config and the watchdog) into Redis at start, under ``{prefix}redbeat:``; entries of jobs
removed from the config are deleted. Only the beat holding the lock ``{prefix}redbeat::lock``
ticks; the others wait in ``beat_init`` for it. The holder renews the lock every tick; if it
dies, a standby takes over once the lock expires (``BACKUPY_REDBEAT_LOCK_TIMEOUT``, 30 s by
default), and it sees when each entry last ran because that is in Redis, not in a file.

Settings (``config/celery_config.py``): ``redbeat_redis_url`` = ``BACKUPY_REDIS_URL``,
``redbeat_key_prefix`` = ``{BACKUPY_PREFIX}redbeat:``, ``redbeat_lock_timeout``.

Ticks are at most :data:`MAX_INTERVAL_SECONDS` apart (Celery's default is 5 min), so the lock is
renewed well within its timeout and a standby polls for it that often.
"""

from __future__ import annotations

import logging
from typing import Any

from redbeat import RedBeatScheduler
from redbeat.schedulers import RedBeatSchedulerEntry, get_redis

from workers.beat import build_schedule

log = logging.getLogger("backupy.beat")

# How long beat may sleep between ticks; the lock timeout must be well above it.
MAX_INTERVAL_SECONDS = 5.0
# Entry names this module owns (workers.beat.build_schedule): others are left alone.
OWNED_ENTRY_PREFIX = "backupy-"


class ConfigRedBeatScheduler(RedBeatScheduler):
    """RedBeatScheduler whose static entries come from the job config."""

    max_interval = MAX_INTERVAL_SECONDS

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(app, *args, **kwargs)
        if self.lock_timeout <= 2 * self.max_interval:
            log.warning(
                "redbeat lock timeout %ss is not above twice the tick interval %ss: the lock "
                "may expire between two renewals and a standby beat send as well",
                self.lock_timeout,
                self.max_interval,
            )

    def setup_schedule(self) -> None:
        from tasks import context

        schedule = build_schedule(context.config(), context.settings().control_queue)
        self.app.conf.beat_schedule = schedule
        removed = remove_stale_entries(self.app, set(schedule))
        if removed:
            log.info("beat: removed schedule entries of jobs no longer configured: %s", removed)
        super().setup_schedule()


def entry_key(app: Any, name: str) -> str:
    """The Redis key of one entry: ``{prefix}redbeat:{name}``."""
    return RedBeatSchedulerEntry.generate_key(app, name)


def remove_stale_entries(app: Any, current: set[str]) -> list[str]:
    """Delete our entries whose names are not in ``current`` (jobs removed from the config).

    RedBeat itself forgets static entries it installed and no longer sees, through its
    ``statics`` set; this also catches entries that set does not list (lost, or written by an
    older version), as long as their name is one of ours.
    """
    conf = app.redbeat_conf
    client = get_redis(app)
    removed = []
    for key in client.zrange(conf.schedule_key, 0, -1):
        name = key[len(conf.key_prefix) :] if key.startswith(conf.key_prefix) else None
        if name is None or not name.startswith(OWNED_ENTRY_PREFIX) or name in current:
            continue
        with client.pipeline() as pipe:
            pipe.zrem(conf.schedule_key, key)
            pipe.delete(key)
            pipe.srem(conf.statics_key, name)
            pipe.execute()
        removed.append(name)
    return sorted(removed)
