"""The Celery application: ``celery -A workers worker`` and ``celery -A workers beat``.

Importing this module reads only the environment (``config.settings``), never the job config:
the CLI must be able to say "your config is invalid" without crashing on import. Workers load
and check the config when they start (``workers.checks``), beat when it builds its schedule.
"""

from __future__ import annotations

from celery import Celery

from config.celery_config import celery_settings
from config.settings import Settings, load_settings


def create_app(settings: Settings) -> Celery:
    """An app for these settings: the worker's own, or a client's (CLI, tests, demo)."""
    celery_app = Celery("backupy", set_as_current=False)
    celery_app.conf.update(celery_settings(settings))
    return celery_app


app = create_app(load_settings())
app.set_current()
app.set_default()

# Start-up checks and the orphan supervisor hook into the worker's signals.
import workers.checks  # noqa: E402,F401
