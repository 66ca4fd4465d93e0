"""Database drivers, looked up by the config's ``target.type``.

Each driver lives in its own module; add a line to ``_DRIVERS`` for a new one. Modules are
imported on first use, so a worker that never dumps MongoDB never imports its driver.
"""

from __future__ import annotations

import importlib

from tasks.drivers.base import Driver, DriverError, DumpInfo

__all__ = ["Driver", "DriverError", "DumpInfo", "get_driver", "known_driver_types"]

#: target.type → "module:Class".
_DRIVERS: dict[str, str] = {
    "sqlite": "tasks.drivers.sqlite:SqliteDriver",
    "postgresql": "tasks.drivers.postgresql:PostgresDriver",
    "mysql": "tasks.drivers.mysql:MySQLDriver",
    "mariadb": "tasks.drivers.mysql:MariaDBDriver",
    "redis": "tasks.drivers.redisdb:RedisDriver",
    "mongodb": "tasks.drivers.mongodb:MongoDriver",
}


def known_driver_types() -> list[str]:
    return sorted(_DRIVERS)


def get_driver(type_name: str) -> Driver:
    """A driver instance for ``type_name``; :class:`DriverError` for an unknown type."""
    spec = _DRIVERS.get(type_name)
    if spec is None:
        known = ", ".join(known_driver_types())
        raise DriverError(f"no driver for target type {type_name!r} (known: {known})")
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DriverError(f"the {type_name} driver cannot be loaded: {exc}") from exc
    driver: Driver = getattr(module, class_name)()
    return driver
