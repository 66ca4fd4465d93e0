"""Ends the hooks whose pool process died (DESIGN.md, "Reliability").

A hook runs in its own session, so when the pool process running it is killed (OOM killer, hard
time limit, kill -9) the hook lives on as an orphan. Each claim records its owner (pid and start
time) and the hook's process group; this thread, in the worker's main process, watches its
host's claims and kills the group of any claim whose owner is gone. The redelivered message then
records the step ``interrupted``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

import redis

from tasks import context
from tasks.claims import claim_owner_alive
from tasks.redis_keys import Keys

log = logging.getLogger("backupy.supervisor")

# How often the claims of this host are looked at. An orphan lives at most this long (plus the
# kill grace) after its pool process died.
SCAN_INTERVAL_SECONDS = 1.0


def stop_process_group(pgid: int, grace: float) -> None:
    """SIGTERM the group, SIGKILL whatever is left after ``grace`` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)  # pacing the poll of a group we cannot wait() on
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return


class OrphanSupervisor:
    def __init__(self, client: redis.Redis, prefix: str, grace: float) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.host = socket.gethostname()
        self.grace = grace

    @classmethod
    def start_in_background(cls) -> threading.Thread:
        supervisor = cls(
            context.redis_client(), context.settings().prefix, context.limits().kill_grace
        )
        thread = threading.Thread(
            target=supervisor.run_forever, name="orphan-supervisor", daemon=True
        )
        thread.start()
        return thread

    def run_forever(self) -> None:
        while True:
            try:
                self.sweep()
            except redis.RedisError as exc:
                log.warning("orphan supervisor cannot reach Redis: %s", type(exc).__name__)
            time.sleep(SCAN_INTERVAL_SECONDS)  # a periodic scan, not synchronisation

    def sweep(self) -> list[int]:
        """One pass: returns the process groups it stopped."""
        stopped: list[int] = []
        host_key = self.keys.host_claims(self.host)
        for raw_key in self.client.smembers(host_key):
            key = raw_key.decode()
            state, pid, started, pgid = self.client.hmget(
                key, "state", "pid", "pid_started", "pgid"
            )
            if state != b"running":
                self.client.srem(host_key, key)
                continue
            if claim_owner_alive(int(pid), float(started)):
                continue
            if pgid is not None:
                log.warning("pool process %s died; stopping its hook's process group %s", pid, pgid)
                stop_process_group(int(pgid), self.grace)
                stopped.append(int(pgid))
            self.client.srem(host_key, key)
        return stopped
