"""What a worker checks before it takes any message, and what it starts beside its pool.

A worker refuses to start (exit 2, one clear line) rather than run with a setting that breaks a
promise: another pool than prefork (Celery time limits need it, so a hook could never be cut
off), a visibility timeout shorter than the longest hard time limit (a long dump would be
delivered twice), an invalid config, or local storage it cannot write to (every run would fail
at its end, after the hooks and the dump).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from typing import Any

from celery import signals

log = logging.getLogger("backupy.worker")

PREFORK_NAMES = frozenset({"prefork", "processes"})


class StartupRefused(Exception):
    """A setting this worker will not run with."""


def pool_name(pool: Any) -> str:
    if pool is None:
        return "prefork"
    if isinstance(pool, str):
        return pool
    module = getattr(pool, "__module__", "")
    return "prefork" if module.endswith(".prefork") else module or repr(pool)


def check_worker(pool: Any) -> None:
    from config.jobs import ConfigError
    from config.limits import LimitError
    from tasks import context
    from tasks.pipeline import longest_hard_limit

    name = pool_name(pool)
    if name not in PREFORK_NAMES:
        raise StartupRefused(
            f"pool {name!r}: backupy workers need the prefork pool (--pool prefork), the only "
            "one where Celery's time limits can stop a hook"
        )
    try:
        cfg, limits = context.config(), context.limits()
    except (ConfigError, LimitError) as exc:
        detail = "; ".join(getattr(exc, "violations", [str(exc)]))
        raise StartupRefused(f"invalid config: {detail}") from None
    check_local_storage(cfg.storage)
    longest = longest_hard_limit(list(cfg.jobs), limits)
    visibility = context.settings().visibility_timeout
    # Only the Redis transport redelivers after visibility_timeout; RabbitMQ has consumer_timeout.
    redis_broker = context.settings().broker_url.startswith(("redis", "sentinel"))
    if redis_broker and visibility <= longest:
        raise StartupRefused(
            f"BACKUPY_VISIBILITY_TIMEOUT is {visibility:g}s but the longest hard time limit is "
            f"{longest:g}s: a task still running would be delivered twice; raise it above that"
        )


def check_local_storage(storage: Any) -> None:
    """Local storage must be a directory this worker can write: made if missing, test-written."""
    if getattr(storage, "type", None) != "local":
        return
    path = os.path.abspath(storage.path)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".backupy-write-test-"):
            pass
    except OSError as exc:
        raise StartupRefused(
            f"local storage {path} is not writable: {exc.strerror or exc}"
        ) from None


@signals.celeryd_init.connect
def refuse_bad_settings(sender: Any = None, instance: Any = None, **kwargs: Any) -> None:
    options = kwargs.get("options") or {}
    conf = kwargs.get("conf")
    pool = options.get("pool") or (conf.worker_pool if conf is not None else None)
    try:
        check_worker(pool)
    except StartupRefused as refused:
        print(f"backupy worker: refusing to start: {refused}", file=sys.stderr)
        raise SystemExit(2) from None


@signals.worker_process_init.connect
def fresh_connections_in_pool_process(**_: Any) -> None:
    """A forked pool process must not reuse its parent's Redis sockets."""
    from tasks import context
    from tasks.hooks import enable_subreaper

    context.reset_clients()
    enable_subreaper()  # a hook's setsid'd or double-forked daemons stay findable (tasks.hooks)


@signals.worker_ready.connect
def start_supervisor(sender: Any = None, **_: Any) -> None:
    """In the worker's main process, which outlives its pool processes."""
    from workers.supervisor import OrphanSupervisor

    OrphanSupervisor.start_in_background()


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def structured_logs(logger: Any = None, format: Any = None, **_: Any) -> None:
    """BACKUPY_LOG_FORMAT, run fields and secret masking on Celery's handlers (workers.logs)."""
    from workers.logs import install_on_logger

    install_on_logger(logger, format)
