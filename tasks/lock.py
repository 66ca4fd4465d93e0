"""The job lock: runs of one job never overlap, across every host.

``SET NX`` with the run's deadline as TTL: if a run's finalize never comes (its worker and the
watchdog both gone), the lock still frees itself at the deadline rather than blocking the job
forever. Release is compare-and-delete, so a late finalize cannot free a newer run's lock.
"""

from __future__ import annotations

import redis

from tasks.redis_keys import Keys
from tasks.scripts import script


class JobLock:
    def __init__(self, client: redis.Redis, prefix: str = "backupy:") -> None:
        self.client = client
        self.keys = Keys(prefix)

    def acquire(self, job_id: str, run_id: str, ttl_seconds: float) -> bool:
        ttl_ms = max(1000, int(ttl_seconds * 1000))
        return bool(self.client.set(self.keys.lock(job_id), run_id, nx=True, px=ttl_ms))

    def holder(self, job_id: str) -> str | None:
        value = self.client.get(self.keys.lock(job_id))
        return value.decode() if value is not None else None

    def release(self, job_id: str, run_id: str) -> bool:
        release = script(self.client, "lock_release")
        return bool(release(keys=[self.keys.lock(job_id)], args=[run_id]))
