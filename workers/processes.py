"""Starting and stopping celery worker and beat processes (for `backupy demo` and the tests).

Each runs in its own session, its output in a log file; readiness is polled with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import psutil

T = TypeVar("T")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy, or raise naming what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)  # the polling interval of a deadline-bounded wait


def celery_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "workers", *args]


def worker_argv(queues: list[str], node: str, concurrency: int = 2) -> list[str]:
    return celery_argv(
        "worker", "--pool", "prefork", "-c", str(concurrency), "-Q", ",".join(queues),
        "-n", node, "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO",
    )  # fmt: skip


def kill_session(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(os.getpgid(pid), signal.SIGKILL)


class ProcessHandle:
    """A process started in its own session, its output appended to ``log_path``."""

    def __init__(self, argv: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.argv = argv
        self.env = dict(env)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ProcessHandle:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=PROJECT_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float = 30.0) -> None:
        def seen() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{' '.join(self.argv[3:5])} exited:\n{self.log()[-3000:]}")
            return text in self.log()

        wait_for(seen, timeout, f"{text!r} in {self.log_path.name}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def pool_pids(self) -> list[int]:
        try:
            return [child.pid for child in psutil.Process(self.pid).children()]
        except psutil.Error:
            return []

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (SIGTERM), then kill the whole session if it does not go."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.process is not None:
            kill_session(self.pid)
            self.process.wait(5)
