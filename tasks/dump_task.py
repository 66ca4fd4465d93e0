"""The dump step: database → driver → zstd → age → SHA-256 → storage, then the manifest.

The driver writes the raw dump into one end of a pipe from a thread while the artifact stream
reads the other end, so the stages overlap and memory stays bounded. The run is only ever
``success`` after both the artifact and its manifest are stored (atomically, each).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, BinaryIO

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from config.jobs import Config, Job
from tasks import context
from tasks.artifacts import (
    F_SETPIPE_SZ,
    PIPE_SIZE,
    ArtifactError,
    build_manifest,
    write_artifact,
    write_manifest,
)
from tasks.claims import Claim
from tasks.drivers import get_driver
from tasks.drivers.base import Driver, DriverError
from tasks.outcome import pre_hooks_verdict
from tasks.references import StepRef
from tasks.step_runner import run_step, step_result
from tasks.storage import StorageError, artifact_key, manifest_key, storage_from_config

# Progress goes into the run record at most this often: `backupy run --wait` shows it live.
PROGRESS_INTERVAL_SECONDS = 1.0


@shared_task(name="backupy.dump", bind=True)
def dump_step(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return run_step(args, kwargs, ("dump",), run_dump_step)


def run_dump_step(ref: StepRef, job: Job, run: dict[str, Any], claim: Claim) -> dict[str, Any]:
    steps = context.run_store().get(ref.run_id)["steps"]
    stopped = pre_hooks_verdict(job, steps)
    if stopped is not None:
        return step_result("skipped", f"not run: {stopped.reason}")
    try:
        progress = ProgressRecorder(ref.run_id)
        result = dump_to_storage(
            context.config(), job, ref.run_id, float(run["created_at"]), progress
        )
        progress.store.record_progress(ref.run_id, "dump", result["artifact"]["raw_bytes"])
        return result
    except (ArtifactError, DriverError, StorageError) as exc:
        return step_result("failed", failure_reason(exc))
    except SoftTimeLimitExceeded:
        return step_result("timed_out", f"the dump ran past its timeout of {job.timeout:g}s")


def failure_reason(exc: Exception) -> str:
    """The driver's own words when the driver failed (which tool, and why), else the stage's."""
    cause = exc.__cause__
    if isinstance(exc, ArtifactError) and isinstance(cause, DriverError):
        return f"{cause} (nothing was stored)"
    return str(exc)


class ProgressRecorder:
    """Writes bytes-read-so-far into the run record, at most once per interval."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.store = context.run_store()
        self.last = 0.0

    def __call__(self, raw_bytes: int) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_INTERVAL_SECONDS:
            self.last = now
            self.store.record_progress(self.run_id, "dump", raw_bytes)


def dump_to_storage(
    cfg: Config,
    job: Job,
    run_id: str,
    created_at: float,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Dump ``job``'s database into storage with its manifest; the step's ``ok`` result.

    Free of Celery and of the run store, so a benchmark can run it directly as the reference.
    """
    driver = get_driver(job.target.type)
    storage = storage_from_config(cfg.storage)
    recipients = None if cfg.encryption == "none" else list(cfg.encryption.recipients)
    level = job.compression.level if job.compression.type == "zstd" else None
    started = datetime.fromtimestamp(created_at, UTC)
    names = (job.id, run_id, started, driver.extension, job.compression.type, bool(recipients))
    key = artifact_key(*names)
    version = driver.server_version(job.target)
    began = time.monotonic()
    feed = DumpFeed(driver, job.target, run_id)
    with feed:
        info = write_artifact(
            feed.source,
            storage,
            key,
            compression_level=level,
            recipients=recipients,
            progress=progress,
            before_commit=feed.check,
            on_interrupt=feed.interrupt,
        )
    elapsed = time.monotonic() - began
    manifest = build_manifest(
        job_id=job.id,
        run_id=run_id,
        driver=driver.name,
        server_version=version,
        info=info,
        timings={"dump_seconds": round(elapsed, 3)},
    )
    mkey = manifest_key(*names)
    write_manifest(storage, mkey, manifest)
    artifact = {
        "key": info.key,
        "manifest": mkey,
        "raw_bytes": info.raw_bytes,
        "stored_bytes": info.stored_bytes,
        "sha256": info.sha256,
        "compression": job.compression.type,
        "encrypted": recipients is not None,
        "storage": storage.describe(),
    }
    return step_result(
        "ok", f"stored {info.stored_bytes} bytes", artifact=artifact, duration=round(elapsed, 3)
    )


class DumpInterrupted(Exception):
    """The step was interrupted (soft time limit) while the driver was still writing."""


class _CancellableWriter:
    """The pipe's write end as the driver sees it: refuses writes once the step is stopped."""

    def __init__(self, out: BinaryIO, cancelled: threading.Event) -> None:
        self.out = out
        self.cancelled = cancelled

    def write(self, data: bytes) -> int:
        if self.cancelled.is_set():
            raise DumpInterrupted("the dump step was stopped")
        return self.out.write(data)

    def fileno(self) -> int:
        """The pipe itself, so a tool's output can be spliced into it (``tasks.drivers.tool``)."""
        return self.out.fileno()

    def flush(self) -> None:
        self.out.flush()


class DumpFeed:
    """The driver writing the raw dump into a pipe from a thread; the read end is ``source``.

    ``check`` runs before the artifact is committed: EOF on the pipe also comes from a dump
    that failed, so it joins the driver and raises its error, and the artifact is aborted rather
    than stored looking complete.
    """

    def __init__(self, driver: Driver, target: Any, run_id: str) -> None:
        self.driver = driver
        self.target = target
        self.error: BaseException | None = None
        self.cancelled = threading.Event()
        read_fd, self._write_fd = os.pipe()
        with contextlib.suppress(OSError):  # a 1 MiB pipe: fewer wake-ups per MiB (best effort)
            fcntl.fcntl(self._write_fd, F_SETPIPE_SZ, PIPE_SIZE)
        self.source: BinaryIO = os.fdopen(read_fd, "rb")
        self.thread = threading.Thread(target=self._produce, name=f"dump {run_id}", daemon=True)

    def __enter__(self) -> DumpFeed:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancelled.set()
        self.source.close()  # a driver still writing gets EPIPE and stops
        self.thread.join()

    def _produce(self) -> None:
        with os.fdopen(self._write_fd, "wb") as out:
            try:
                self.driver.dump(self.target, _CancellableWriter(out, self.cancelled))
            except BaseException as exc:  # reported by check() in the consuming thread
                self.error = exc

    def check(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error

    def interrupt(self) -> None:
        self.cancelled.set()
        cancel = getattr(self.driver, "cancel", None)
        if cancel is not None:
            cancel()
