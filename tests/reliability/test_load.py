"""Result 4 of the reliability issue: 300 jobs due in the same minute, two workers of two.

Every run ends in a final state, none lost, none duplicated; each job triggered twice gets one
success and one `skipped` (overlap). The figures are bench.scale's; this test holds the rules.
"""

from __future__ import annotations

import pytest
import redis

from bench.scale import JOBS, TWICE_EVERY, run

pytestmark = pytest.mark.integration


def test_three_hundred_jobs_due_at_once_all_end_once(real_redis: redis.Redis) -> None:
    result = run(JOBS)  # raises ScaleRuleBroken when a rule is broken
    statuses = result["statuses"]
    twice = len(range(0, JOBS, TWICE_EVERY))
    assert statuses["success"] == JOBS
    assert statuses["skipped"] == twice
    assert sum(statuses.values()) == JOBS + twice
    print(f"300 jobs drained in {result['drain_seconds']:.1f}s")
