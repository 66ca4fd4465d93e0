"""The Celery settings every worker, beat and CLI process shares (DESIGN.md, "Reliability").

- JSON only, both ways: a pickle message could carry code; JSON carries data.
- ``acks_late`` + ``reject_on_worker_lost`` + prefetch 1: a task whose pool process dies is
  delivered again (step claims make that safe), and no worker sits on messages it has not begun.
- The Redis transport's ``visibility_timeout`` must exceed the longest hard time limit, or a
  long dump still running is delivered a second time: the worker checks this when it starts.
"""

from __future__ import annotations

from typing import Any

from config.settings import Settings

# Chord bookkeeping lives in the result backend; results older than this are of no use.
RESULT_EXPIRES_SECONDS = 24 * 3600
# How often the watchdog looks for runs past their deadline.
WATCHDOG_INTERVAL_SECONDS = 30.0


def celery_settings(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.redis_url,
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout},
        "result_backend_transport_options": {"visibility_timeout": settings.visibility_timeout},
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": settings.control_queue,
        "task_track_started": False,
        "result_expires": RESULT_EXPIRES_SECONDS,
        "timezone": "UTC",
        "enable_utc": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "beat_scheduler": settings.beat_scheduler,
        # RedBeat (BACKUPY_BEAT_SCHEDULER=redbeat): its entries and lock in the run store's Redis,
        # under the prefix; the client gets no broker transport options (those are the broker's).
        "redbeat_redis_url": settings.redis_url,
        "redbeat_key_prefix": f"{settings.prefix}redbeat:",
        "redbeat_lock_timeout": settings.redbeat_lock_timeout,
        "redbeat_redis_options": {"health_check_interval": 10},
        "imports": (
            "tasks.start_task",
            "tasks.hook_task",
            "tasks.dump_task",
            "tasks.finalize_task",
            "workers.watchdog",
        ),
    }
