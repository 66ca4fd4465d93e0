"""What a worker process holds once: its settings, its validated config, its Redis client.

The config is read once per process and never from a message: the broker carries references
(job id, hook index) that are looked up here, so whoever can write to the broker still cannot
make a worker run a command of their choosing.
"""

from __future__ import annotations

import os
from functools import cache

import redis

from config.jobs import Config, load_config
from config.limits import Limits, load_limits
from config.settings import Settings, load_settings
from tasks.budget import BudgetMeter, OutageTolerantBudgetMeter
from tasks.claims import Claims
from tasks.lock import JobLock
from tasks.runs import RunStore


@cache
def settings() -> Settings:
    return load_settings()


@cache
def limits() -> Limits:
    return load_limits()


@cache
def config() -> Config:
    return load_config(settings().config_path, limits=limits())


_clients: dict[int, redis.Redis] = {}


def redis_client() -> redis.Redis:
    """One client per process (pool processes are forked: never share a parent's sockets)."""
    pid = os.getpid()
    client = _clients.get(pid)
    if client is None:
        client = _clients[pid] = redis.Redis.from_url(
            settings().redis_url, health_check_interval=10, socket_keepalive=True
        )
    return client


def run_store() -> RunStore:
    return RunStore(redis_client(), settings().prefix)


def claims() -> Claims:
    return Claims(redis_client(), settings().prefix, settings().heartbeat)


def budget_meter() -> BudgetMeter:
    return OutageTolerantBudgetMeter(redis_client(), settings().prefix)


def job_lock() -> JobLock:
    return JobLock(redis_client(), settings().prefix)


def reset_clients() -> None:
    _clients.clear()


def reset() -> None:
    """Forget cached settings and config (tests, and a worker told to reload)."""
    settings.cache_clear()
    limits.cache_clear()
    config.cache_clear()
    _clients.clear()
