"""Shared fixtures: real services when the machine has them, fakeredis for fast unit tests.

Under CI (``CI=true``) a test may not skip for want of a service this machine has: the fixture
fails instead, so a broken service shows up as a red build, not as a quietly smaller suite.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

# boto3's default credential chain ends with the EC2 metadata service at 169.254.169.254: tests
# (and the worker processes they start, which inherit this environment) must never reach out
# of this machine, so that lookup is switched off for the whole suite.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

REDIS_URL = os.environ.get("BACKUPY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
UNDER_CI = os.environ.get("CI", "").lower() == "true"


def need_service(name: str, why: str) -> None:
    """Skip for want of a service, or fail under CI where the machine must have it."""
    message = f"{name} is not reachable: {why}"
    if UNDER_CI:
        pytest.fail(f"{message} (CI=true: services of this machine may not be skipped)")
    pytest.skip(message)


@pytest.fixture
def key_prefix() -> str:
    """A fresh Redis key prefix per test, so tests (and parallel runs) never share keys."""
    return f"backupy-test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def real_redis(key_prefix: str) -> Iterator[redis.Redis]:
    """The real Redis at 127.0.0.1:6379; the test's keys are deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        need_service("Redis", f"{REDIS_URL}: {exc}")
    yield client
    keys = list(client.scan_iter(match=f"{key_prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def fake_redis() -> redis.Redis:
    """fakeredis with Lua (lupa): fast unit tests only; every script also runs on real Redis."""
    import fakeredis

    return fakeredis.FakeRedis()


@pytest.fixture(params=["fake", "real"])
def any_redis(request: pytest.FixtureRequest) -> redis.Redis:
    """Both: the same test body once on fakeredis and once on the real server."""
    if request.param == "fake":
        return request.getfixturevalue("fake_redis")
    return request.getfixturevalue("real_redis")
