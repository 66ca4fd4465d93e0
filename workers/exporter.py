"""The Prometheus exporter: metrics read from the run store in Redis at scrape time.

Nothing is counted in this process: every value comes from Redis when Prometheus scrapes, so the
numbers are the same whichever host ran the runs, survive restarts of the exporter and of the
workers, and several exporters on one Redis agree. The sources (DESIGN.md "Metrics"):

=========================================== ==================================================
``backupy_runs_total{job,status}``          ``stats:{job}`` field ``runs_total:{status}``
``backupy_last_success_timestamp_seconds``  ``last_success_timestamp_seconds`` (0: never)
``backupy_last_run_duration_seconds``       ``last_run_duration_seconds`` (absent until a run)
``backupy_last_backup_size_bytes``          ``last_backup_size_bytes``: the stored (compressed,
                                            encrypted) bytes of the last successful backup
``backupy_hook_failures_total{phase,reason}`` ``hook_failures:{phase}:{state}``
``backupy_hook_budget_exhausted_total``     ``hook_budget_exhausted``
``backupy_runs_in_progress{job}``           the ``active`` zset (queued and running runs),
                                            each run's ``job`` field
``backupy_build_info{version}``             the installed package's version; value 1
=========================================== ==================================================

Jobs are those of the config plus those with a ``stats:{job}`` key: a job removed from the config
keeps its history until its keys are deleted. Every final status and every hook failure reason is
exported at 0 from the start, so ``increase()`` sees the first failure. A job that never
succeeded has ``backupy_last_success_timestamp_seconds 0``, so that an alert on
``time() - backupy_last_success_timestamp_seconds`` fires for it too.

When Redis cannot be read the scrape answers 503 with one line (Prometheus then records
``up == 0``): partial numbers would look like counter resets.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from tasks.redis_keys import Keys
from tasks.runs import FINAL_STATES
from tasks.stats import HOOK_FAILURE_STATES

log = logging.getLogger("backupy.exporter")

DEFAULT_PORT = 9808
DEFAULT_ADDR = "0.0.0.0"
PACKAGE = "backupy-workers"
HOOK_PHASES = ("pre", "post")
SCAN_COUNT = 1000

# Run states in the order they are exported (the final ones: runs_total counts finished runs).
STATUSES = ("success", "failed", "skipped", "lost")
assert set(STATUSES) == set(FINAL_STATES)


def build_version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def _glob_escape(text: str) -> str:
    """Escape Redis MATCH glob characters, so a prefix is matched literally."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _number(value: bytes | str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class BackupyCollector:
    """A custom collector: each ``collect()`` reads ``stats:*`` and ``active`` from Redis.

    ``job_ids`` is the config's jobs (an iterable, or a callable returning one, read at every
    scrape); jobs found as ``stats:{job}`` keys are added to them.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "backupy:",
        job_ids: Iterable[str] | Callable[[], Iterable[str]] = (),
        version: str | None = None,
    ) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self._job_ids = job_ids
        self.version = version or build_version()

    def configured_jobs(self) -> list[str]:
        jobs = self._job_ids() if callable(self._job_ids) else self._job_ids
        return list(jobs)

    def stats_jobs(self) -> list[str]:
        """Every job that has counters (the index is kept by ``tasks.stats``): no key scan."""
        return [job.decode() for job in self.client.smembers(self.keys.stats_index())]

    def read(self) -> tuple[dict[str, dict[str, str]], dict[str, int]]:
        """``({job: stats fields}, {job: runs in progress})`` from one consistent-enough read."""
        jobs = sorted(set(self.configured_jobs()) | set(self.stats_jobs()))
        pipe = self.client.pipeline(transaction=False)
        for job in jobs:
            pipe.hgetall(self.keys.stats(job))
        stats = {
            job: {k.decode(): v.decode() for k, v in raw.items()}
            for job, raw in zip(jobs, pipe.execute(), strict=True)
        }
        active = [i.decode() for i in self.client.zrange(self.keys.active(), 0, -1)]
        pipe = self.client.pipeline(transaction=False)
        for run_id in active:
            pipe.hget(self.keys.run(run_id), "job")
        in_progress = dict.fromkeys(jobs, 0)
        for job_b in pipe.execute() if active else []:
            if job_b is not None:  # a record deleted under the index: not a run any more
                job = job_b.decode()
                in_progress[job] = in_progress.get(job, 0) + 1
        return stats, in_progress

    def describe(self) -> Iterator[Metric]:
        """The families without samples: registration must not need Redis."""
        yield from self._families()

    def _families(self) -> list[Any]:
        return [
            CounterMetricFamily(
                "backupy_runs_total",
                "Finished runs by final status (success, failed, skipped, lost).",
                labels=["job", "status"],
            ),
            GaugeMetricFamily(
                "backupy_last_success_timestamp_seconds",
                "When the last successful run of the job finished (Unix time; 0: never).",
                labels=["job"],
            ),
            GaugeMetricFamily(
                "backupy_last_run_duration_seconds",
                "Duration of the job's last finished run, start to final state.",
                labels=["job"],
            ),
            GaugeMetricFamily(
                "backupy_last_backup_size_bytes",
                "Stored size (compressed, encrypted) of the job's last successful backup.",
                labels=["job"],
            ),
            CounterMetricFamily(
                "backupy_hook_failures_total",
                "Hooks that did not succeed, by phase (pre, post) and reason (their step state).",
                labels=["job", "phase", "reason"],
            ),
            CounterMetricFamily(
                "backupy_hook_budget_exhausted_total",
                "Runs whose total hook-time budget ran out.",
                labels=["job"],
            ),
            GaugeMetricFamily(
                "backupy_runs_in_progress",
                "Runs of the job not yet final (queued or running).",
                labels=["job"],
            ),
            GaugeMetricFamily(
                "backupy_build_info",
                "The backupy version of this exporter; value 1.",
                labels=["version"],
            ),
        ]

    def collect(self) -> Iterator[Metric]:
        stats, in_progress = self.read()
        (runs, last_success, duration, size, hooks, budget, progress, info) = self._families()
        for job in sorted(stats):
            fields = stats[job]
            statuses = list(STATUSES) + sorted(
                name.split(":", 1)[1]
                for name in fields
                if name.startswith("runs_total:") and name.split(":", 1)[1] not in STATUSES
            )
            for status in statuses:
                runs.add_metric([job, status], _number(fields.get(f"runs_total:{status}")) or 0)
            last_success.add_metric(
                [job], _number(fields.get("last_success_timestamp_seconds")) or 0
            )
            for family, name in (
                (duration, "last_run_duration_seconds"),
                (size, "last_backup_size_bytes"),
            ):
                value = _number(fields.get(name))
                if value is not None:
                    family.add_metric([job], value)
            failures = {
                (phase, state): 0.0
                for phase in HOOK_PHASES
                for state in sorted(HOOK_FAILURE_STATES)
            }
            for name, raw in fields.items():
                parts = name.split(":")
                if len(parts) == 3 and parts[0] == "hook_failures":
                    failures[(parts[1], parts[2])] = _number(raw) or 0
            for (phase, state), value in failures.items():
                hooks.add_metric([job, phase, state], value)
            budget.add_metric([job], _number(fields.get("hook_budget_exhausted")) or 0)
        for job in sorted(in_progress):
            progress.add_metric([job], in_progress[job])
        info.add_metric([self.version], 1)
        yield from (runs, last_success, duration, size, hooks, budget, progress, info)


def make_registry(collector: BackupyCollector) -> CollectorRegistry:
    """A registry with ``collector`` and prometheus_client's process, platform and GC metrics."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(collector)
    return registry


def metrics_app(registry: CollectorRegistry) -> Callable[..., Iterable[bytes]]:
    """prometheus_client's WSGI app; a Redis failure answers 503 in one line, not a traceback."""
    inner = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            return inner(environ, start_response)
        except redis.RedisError as exc:
            message = f"backupy exporter: cannot read the run store: {type(exc).__name__}"
            log.warning("%s: %s", message, exc)
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [message.encode() + b"\n"]

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """One line per scrape would drown the log."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def serve(registry: CollectorRegistry, addr: str, port: int) -> WSGIServer:
    """A bound (not yet serving) HTTP server for ``/metrics`` on ``addr:port`` (0: any port)."""
    family = socket.getaddrinfo(addr or None, port, type=socket.SOCK_STREAM)[0][0]

    class Server(_ThreadingServer):
        address_family = family

    return make_server(addr, port, metrics_app(registry), Server, handler_class=_QuietHandler)


def run_until(server: WSGIServer, stop: threading.Event) -> None:
    """Serve in a thread until ``stop`` is set (by a signal handler), then close the socket."""
    thread = threading.Thread(target=server.serve_forever, name="exporter-http", daemon=True)
    thread.start()
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
