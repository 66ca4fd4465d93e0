"""Reliability tests: the integration fixtures (a real Redis, real worker processes)."""

from __future__ import annotations

from tests.integration.conftest import source_db, world

__all__ = ["source_db", "world"]
