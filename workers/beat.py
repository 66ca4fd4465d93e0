"""Beat's schedule, built from the jobs' cron schedules (UTC) plus the watchdog.

A scheduler subclass builds it when beat starts, not at import: importing the app must not need
a valid config (the CLI reports an invalid one), and beat must not start on an invalid one.
"""

from __future__ import annotations

from typing import Any

from celery.beat import PersistentScheduler
from celery.schedules import crontab

from config.celery_config import WATCHDOG_INTERVAL_SECONDS
from config.jobs import Config


def cron_schedule(expression: str) -> crontab:
    minute, hour, day_of_month, month_of_year, day_of_week = expression.split()
    return crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
    )


def build_schedule(config: Config, control_queue: str) -> dict[str, dict[str, Any]]:
    """One entry per job (its digest rides along so a drifted worker refuses it), one watchdog."""
    schedule: dict[str, dict[str, Any]] = {
        "backupy-watchdog": {
            "task": "backupy.watchdog",
            "schedule": WATCHDOG_INTERVAL_SECONDS,
            "options": {"queue": control_queue, "expires": WATCHDOG_INTERVAL_SECONDS},
        }
    }
    for job in config.jobs:
        schedule[f"backupy-job-{job.id}"] = {
            "task": "backupy.start_run",
            "schedule": cron_schedule(job.schedule),
            "kwargs": {"job_id": job.id, "trigger": "beat", "digest": config.job_digest(job.id)},
            "options": {"queue": job.queue},
        }
    return schedule


class ConfigScheduler(PersistentScheduler):
    """PersistentScheduler whose entries come from the job config."""

    def setup_schedule(self) -> None:
        from tasks import context

        self.app.conf.beat_schedule = build_schedule(
            context.config(), context.settings().control_queue
        )
        super().setup_schedule()
