"""Backupy workers: the Celery app (``celery -A workers``), beat schedule, watchdog, CLI."""

from workers.app import app

__all__ = ["app"]
