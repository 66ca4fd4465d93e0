"""Step claims: a hook or a dump runs at most once per run, whatever the broker redelivers.

``acks_late`` + ``reject_on_worker_lost`` make the broker deliver a task again when the pool
process running it dies; without a claim the hook would then run twice. Each step therefore
claims ``claim:{run_id}:{step}`` before it starts and beats a heartbeat into it while it runs. A
delivery that finds a claim:

- already settled (the step finished): a duplicate, dropped;
- running with a heartbeat that moves during one watch period: a live duplicate, dropped;
- running with a heartbeat that stands still: its owner died. The delivery takes the claim over
  (atomically, only if the heartbeat it watched is still the one stored) and the step is recorded
  ``interrupted``, so the chain goes on and the post-hooks still run.

The claim lives until the run's deadline (not a few heartbeats) so that a redelivery that comes
late still finds it: an expired claim would look like a step never started and run it again.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Literal

import psutil
import redis

from tasks.redis_keys import Keys
from tasks.scripts import script

# How many heartbeat periods a watcher waits for a beat before it calls the owner dead.
WATCH_PERIODS = 2.5
# How often the watcher looks at the heartbeat while it waits.
WATCH_POLL_SECONDS = 0.1

Verdict = Literal["taken", "duplicate", "orphaned"]


@dataclass
class ClaimOutcome:
    """What a delivery found: run the step, drop the message, or record the step interrupted."""

    verdict: Verdict
    claim: Claim | None = None


class Claim:
    """A claim this process holds; beats its heartbeat from a thread until settled."""

    def __init__(self, client: redis.Redis, key: str, token: str, heartbeat: float) -> None:
        self.client = client
        self.key = key
        self.token = token
        self.heartbeat = heartbeat
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(
            target=self._beat, name=f"heartbeat {self.key}", daemon=True
        )
        self._thread.start()

    def _beat(self) -> None:
        beat = script(self.client, "claim_beat")
        while not self._stop.wait(self.heartbeat):
            try:
                if not beat(keys=[self.key], args=[self.token, _now_ms()]):
                    return
            except redis.RedisError:
                continue  # Redis away for a moment: keep trying; the watcher allows 2.5 periods

    def record_process_group(self, pgid: int) -> None:
        """The hook's process group, so a supervisor can end it if this process dies."""
        self.client.hset(self.key, "pgid", pgid)

    def settle(self, state: str) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        script(self.client, "claim_settle")(keys=[self.key], args=[self.token, state, ""])


class Claims:
    """Takes step claims for this process."""

    def __init__(
        self, client: redis.Redis, prefix: str = "backupy:", heartbeat: float = 1.0
    ) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.heartbeat = heartbeat
        self.host = socket.gethostname()

    def acquire(self, run_id: str, step: str, ttl_seconds: float) -> ClaimOutcome:
        """Claim the step, or say why not (after watching a running claim's heartbeat)."""
        key = self.keys.claim(run_id, step)
        token = secrets.token_hex(8)
        me = psutil.Process()
        found = script(self.client, "claim_take")(
            keys=[key, self.keys.host_claims(self.host)],
            args=[
                token,
                self.host,
                me.pid,
                me.create_time(),
                _now_ms(),
                max(1000, int(ttl_seconds * 1000)),
            ],
        )
        if int(found[0]) == 1:
            claim = Claim(self.client, key, token, self.heartbeat)
            claim.start_heartbeat()
            return ClaimOutcome("taken", claim)
        state, heartbeat = _text(found[1]), _text(found[2])
        if state != "running":
            return ClaimOutcome("duplicate")
        return self._watch(key, token, heartbeat)

    def _watch(self, key: str, token: str, heartbeat: str) -> ClaimOutcome:
        deadline = time.monotonic() + WATCH_PERIODS * self.heartbeat
        while time.monotonic() < deadline:
            state, now_beat = (_text(v) for v in self.client.hmget(key, "state", "hb"))
            if state != "running" or now_beat != heartbeat:
                return ClaimOutcome("duplicate")
            time.sleep(WATCH_POLL_SECONDS)  # pacing a poll with a deadline, not synchronisation
        settled = script(self.client, "claim_settle")(
            keys=[key], args=[token, "interrupted", heartbeat]
        )
        return ClaimOutcome("orphaned" if settled else "duplicate")


def claim_owner_alive(pid: int, started: float) -> bool:
    """Is the process that took a claim on this host still the same process and alive?"""
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - started) < 0.01 and process.status() != "zombie"
    except psutil.Error:
        return False


def _now_ms() -> int:
    return int(time.time() * 1000)


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def current_pid() -> int:
    return os.getpid()
