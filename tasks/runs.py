"""The run store: one Redis hash per run, the single source of truth for every host.

Each step writes only its own field (``step:pre.0``, ``step:dump``…), so steps running at once on
different hosts never overwrite each other, and the next step decides from what is recorded
here, not from what a message says. Final states are written by one Lua script so that finalize
and the watchdog can race without a run ever being finished twice.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import redis

from tasks.redis_keys import Keys
from tasks.scripts import script

RUN_STATES = ("queued", "running", "success", "failed", "skipped", "lost")
FINAL_STATES = frozenset({"success", "failed", "skipped", "lost"})
STEP_STATES = (
    "ok",
    "failed",
    "timed_out",
    "budget_exceeded",
    "skipped",
    "interrupted",
    "refused",
)
STEP_PREFIX = "step:"
PROGRESS_PREFIX = "progress:"

# Run ids sort by creation time and carry a random tail: ``20261203T031500Z-4f9c2a1b``.
RUN_ID_PATTERN = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")

# Timestamps (epoch seconds).
FLOAT_FIELDS = frozenset(
    {
        "created_at",
        "started_at",
        "finished_at",
        "deadline",
        "pruned_at",
        "prune_started_at",
        "prune_failed_at",
    }
)
# Fields holding JSON rather than plain strings.
JSON_FIELDS = frozenset({"artifact", "budget", "warnings", "steps_planned", "artifact_deleted"})


def new_run_id(now: float | None = None) -> str:
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return f"{stamp:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def is_run_id(value: object) -> bool:
    return isinstance(value, str) and bool(RUN_ID_PATTERN.fullmatch(value))


class RunStore:
    """Reads and writes run records under ``{prefix}run:{run_id}``."""

    def __init__(self, client: redis.Redis, prefix: str = "backupy:") -> None:
        self.client = client
        self.keys = Keys(prefix)

    def create(self, run_id: str, job_id: str, fields: Mapping[str, Any]) -> None:
        """Write a new run and index it by job, by time, and (until final) by deadline."""
        created = float(fields.get("created_at", time.time()))
        record = {"run_id": run_id, "job": job_id, "created_at": created, **fields}
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.keys.run(run_id), mapping=_encode(record))
        pipe.zadd(self.keys.runs(job_id), {run_id: created})
        pipe.zadd(self.keys.all_runs(), {run_id: created})
        if record.get("status") not in FINAL_STATES:
            pipe.zadd(self.keys.active(), {run_id: float(record["deadline"])})
        pipe.execute()

    def exists(self, run_id: str) -> bool:
        return bool(self.client.exists(self.keys.run(run_id)))

    def get(self, run_id: str) -> dict[str, Any] | None:
        """The run with ``steps`` ({name: result}) and ``progress`` ({name: bytes}) gathered."""
        raw = self.client.hgetall(self.keys.run(run_id))
        if not raw:
            return None
        return _decode(raw)

    def set_fields(self, run_id: str, **fields: Any) -> None:
        self.client.hset(self.keys.run(run_id), mapping=_encode(fields))

    def mark_running(self, run_id: str) -> None:
        """queued → running, only if still queued (a late message never revives a final run)."""
        key = self.keys.run(run_id)
        with self.client.pipeline() as pipe:
            try:
                pipe.watch(key)
                if pipe.hget(key, "status") != b"queued":
                    return
                pipe.multi()
                pipe.hset(key, mapping={"status": "running", "started_at": time.time()})
                pipe.execute()
            except redis.WatchError:
                return

    def record_step(self, run_id: str, step: str, result: Mapping[str, Any]) -> None:
        self.client.hset(self.keys.run(run_id), STEP_PREFIX + step, json.dumps(result))

    def record_progress(self, run_id: str, step: str, raw_bytes: int) -> None:
        self.client.hset(self.keys.run(run_id), PROGRESS_PREFIX + step, raw_bytes)

    def finish(
        self, run_id: str, status: str, reason: str, extra: Mapping[str, Any] | None = None
    ) -> bool:
        """Write the final state once; False when the run was already final (or unknown)."""
        if status not in FINAL_STATES:
            raise ValueError(f"{status!r} is not a final run state")
        args: list[Any] = [run_id, status, reason, time.time()]
        for field, value in _encode(extra or {}).items():
            args += [field, value]
        finish = script(self.client, "run_finish")
        done = finish(keys=[self.keys.run(run_id), self.keys.active()], args=args)
        return bool(done)

    def overdue(self, now: float | None = None, limit: int = 500) -> list[str]:
        """Unfinished runs whose deadline has passed: the watchdog's work list."""
        now = time.time() if now is None else now
        ids = self.client.zrangebyscore(self.keys.active(), "-inf", now, start=0, num=limit)
        return [i.decode() for i in ids]

    def in_progress(self) -> list[str]:
        return [i.decode() for i in self.client.zrange(self.keys.active(), 0, -1)]

    def list_runs(self, job_id: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """Newest first."""
        if limit <= 0:
            return []
        index = self.keys.runs(job_id) if job_id else self.keys.all_runs()
        ids = [i.decode() for i in self.client.zrevrange(index, 0, limit - 1)]
        return [run for run in self.get_many(ids) if run is not None]

    def get_many(self, run_ids: Iterable[str]) -> list[dict[str, Any] | None]:
        pipe = self.client.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hgetall(self.keys.run(run_id))
        return [_decode(raw) if raw else None for raw in pipe.execute()]


def _encode(fields: Mapping[str, Any]) -> dict[str, str | float | int]:
    out: dict[str, str | float | int] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if name in JSON_FIELDS or isinstance(value, dict | list | bool):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def _decode(raw: Mapping[bytes, bytes]) -> dict[str, Any]:
    run: dict[str, Any] = {"steps": {}, "progress": {}}
    for name_b, value_b in raw.items():
        name, value = name_b.decode(), value_b.decode()
        if name.startswith(STEP_PREFIX):
            run["steps"][name[len(STEP_PREFIX) :]] = json.loads(value)
        elif name.startswith(PROGRESS_PREFIX):
            run["progress"][name[len(PROGRESS_PREFIX) :]] = int(float(value))
        elif name in JSON_FIELDS:
            run[name] = json.loads(value)
        elif name in FLOAT_FIELDS:
            run[name] = float(value)
        else:
            run[name] = value
    return run
