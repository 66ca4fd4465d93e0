"""The hook runner against real processes.

Every test that starts a hook checks afterwards that no member of the hook's process group is
alive (zombies aside: the container's PID 1 reaps orphans lazily), looked up independently of
the runner's own check (psutil + os.getpgid). Waiting is done by polling with a deadline, never
by sleeping as synchronisation.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

import tasks.hooks as hooks_module
from config.limits import Limits
from tasks.hooks import (
    HOOK_STATES,
    HookResult,
    RingBuffer,
    hook_environment,
    is_secret_env,
    resolve_timeout,
    run_hook,
)

# The defaults, independent of any operator override in the test machine's environment.
LIMITS = Limits()
GRACE = LIMITS.kill_grace
OUTPUT = LIMITS.output_bytes

# Scheduling noise allowance for "returns within" bounds on a busy 2-core machine.
SLACK = 1.0

REPO_ROOT = Path(__file__).resolve().parents[2]

# Every group a test started, so a failing test cannot leave `sleep 300` behind.
_spawned: list[int] = []


def live_members(pgid: int) -> list[int]:
    """Pids of the group's members that are still running (zombies do not count)."""
    found = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def assert_group_gone(result: HookResult) -> None:
    assert result.pgid is not None
    assert live_members(result.pgid) == [], f"group {result.pgid} outlived its result"


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until true (True), or give up after ``timeout`` seconds (False).

    Used from helper threads, which must not raise: the test's own asserts tell what went wrong.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def shell_wait_for(path: Path) -> str:
    """Shell code that blocks until ``path`` exists: a hook synchronises through a file."""
    return f"until [ -e '{path}' ]; do sleep 0.01; done"


def run(command: str, **kwargs: object) -> tuple[HookResult, float]:
    """run_hook with the default limits, recording the group; returns (result, elapsed)."""
    kwargs.setdefault("limits", LIMITS)
    kwargs.setdefault("timeout", 10.0)
    user_on_spawn = kwargs.pop("on_spawn", None)

    def on_spawn(pgid: int) -> None:
        _spawned.append(pgid)
        if callable(user_on_spawn):
            user_on_spawn(pgid)

    started = time.monotonic()
    result = run_hook(command, on_spawn=on_spawn, **kwargs)  # type: ignore[arg-type]
    return result, time.monotonic() - started


@pytest.fixture(autouse=True)
def _kill_leftovers() -> Iterator[None]:
    yield
    while _spawned:
        pgid = _spawned.pop()
        if live_members(pgid):
            os.killpg(pgid, signal.SIGKILL)


class FakeMeter:
    """An in-memory budget meter; ``rate`` > 1 simulates other hooks of the run drawing on it."""

    def __init__(self, remaining: float, tick: float = 0.1, rate: float = 1.0) -> None:
        self.tick = tick
        self.rate = rate
        self.left = remaining
        self.charges: list[float] = []
        self._lock = threading.Lock()

    def remaining(self) -> float:
        with self._lock:
            return self.left

    def charge(self, seconds: float) -> float:
        with self._lock:
            self.charges.append(seconds)
            self.left -= seconds * self.rate
            return self.left


# -- exit statuses ----------------------------------------------------------------------------


def test_exit_zero_captures_both_streams() -> None:
    result, _ = run("echo hello; echo oops >&2")
    assert (result.state, result.exit_code, result.signal) == ("ok", 0, None)
    assert result.ok and not result.timed_out
    assert (result.stdout, result.stderr) == ("hello\n", "oops\n")
    assert (result.stdout_dropped, result.stderr_dropped) == (0, 0)
    assert result.reason == "exited 0"
    assert result.host == socket.gethostname()
    assert result.duration > 0
    assert_group_gone(result)


def test_non_zero_exit_is_failed_with_its_code() -> None:
    result, _ = run("echo partial; exit 3")
    assert (result.state, result.exit_code, result.signal) == ("failed", 3, None)
    assert not result.ok
    assert result.stdout == "partial\n"
    assert result.reason == "exited 3"


def test_command_not_found_is_127() -> None:
    result, _ = run("no-such-command-backupy-test")
    assert (result.state, result.exit_code) == ("failed", 127)
    assert "not found" in result.stderr
    assert "command not found" in result.reason


def test_death_by_signal_is_recorded() -> None:
    result, _ = run("kill -9 $$")
    assert (result.state, result.signal, result.exit_code) == ("failed", 9, 128 + 9)
    assert result.reason == "killed by SIGKILL"
    assert_group_gone(result)


def test_stdin_is_dev_null() -> None:
    result, elapsed = run("cat; echo after-cat", timeout=5)
    assert result.state == "ok" and result.stdout == "after-cat\n"
    assert elapsed < 5


def test_command_is_passed_verbatim() -> None:
    # No formatting, expansion or templating by our code: the shell sees exactly this string.
    command = "printf '%s|' {job} $((1+1)) '$HOME' \"{0}\""
    result, _ = run(command)
    assert result.stdout == "{job}|2|$HOME|{0}|"


# -- stopping the group -----------------------------------------------------------------------


def test_timeout_stops_the_group() -> None:
    result, elapsed = run("sleep 30", timeout=1)
    assert (result.state, result.exit_code, result.timed_out) == ("timed_out", -1, True)
    assert result.reason.startswith("timed out after 1s")
    assert 0.9 <= elapsed < 1 + GRACE + SLACK
    assert_group_gone(result)


def test_background_grandchild_holding_the_pipe_does_not_hold_the_result() -> None:
    result, elapsed = run("sleep 300 & echo started", timeout=10)
    assert (result.state, result.exit_code, result.stdout) == ("ok", 0, "started\n")
    assert elapsed < 1 + GRACE
    assert "left running" in result.reason
    assert_group_gone(result)


def test_grandchild_detached_from_the_pipes_is_ended_too() -> None:
    result, elapsed = run("sleep 300 >/dev/null 2>&1 </dev/null & echo started", timeout=10)
    assert (result.state, result.stdout) == ("ok", "started\n")
    assert elapsed < 1 + GRACE
    assert_group_gone(result)


def test_process_escaping_the_group_does_not_hold_the_result(tmp_path: Path) -> None:
    # setsid leaves the group, so it cannot be signalled with it; it keeps the pipes open, and
    # the runner must still come back (after a short drain), not wait for it. The shell exits
    # only once the escape is done (a file says so), else the sweep could catch it in the group.
    marker = tmp_path / "escaped"
    marker_seconds = f"299.{os.getpid()}"
    try:
        result, elapsed = run(
            f"setsid sh -c 'touch {marker}; exec sleep {marker_seconds}' & "
            f"{shell_wait_for(marker)}; echo started",
            timeout=10,
        )
        assert (result.state, result.stdout) == ("ok", "started\n")
        assert elapsed < 1 + SLACK
        assert_group_gone(result)
    finally:
        for proc in psutil.process_iter(["cmdline"]):
            if proc.info["cmdline"] == ["sleep", marker_seconds]:
                proc.kill()


def test_without_pidfd_the_polling_fallback_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hooks_module, "_open_pidfd", lambda pid: None)
    result, _ = run("echo plain; exit 5")
    assert (result.state, result.exit_code, result.stdout) == ("failed", 5, "plain\n")
    result, elapsed = run("sleep 300 & echo started", timeout=10)
    assert (result.state, result.stdout) == ("ok", "started\n")
    assert elapsed < 1 + GRACE
    assert_group_gone(result)
    result, elapsed = run("sleep 30", timeout=0.5)
    assert result.state == "timed_out" and elapsed < 0.5 + SLACK
    assert_group_gone(result)


@pytest.mark.parametrize(
    ("command", "shell_signal"),
    [
        ('trap "" TERM; sleep 300', signal.SIGKILL),
        ("sh -c 'trap \"\" TERM; sleep 300' & wait", signal.SIGTERM),
    ],
    ids=["shell-ignores-term", "grandchild-ignores-term"],
)
def test_sigterm_ignored_means_sigkill_after_the_grace(command: str, shell_signal: int) -> None:
    result, elapsed = run(command, timeout=1)
    assert (result.state, result.exit_code, result.timed_out) == ("timed_out", -1, True)
    assert result.signal == shell_signal
    assert 1 + GRACE - 0.1 <= elapsed < 1 + GRACE + SLACK
    assert_group_gone(result)


def test_leftover_ignoring_term_after_a_normal_exit_is_killed(tmp_path: Path) -> None:
    # The shell waits (through a file, not a sleep) until the leftover ignores SIGTERM.
    marker = tmp_path / "trapped"
    result, elapsed = run(
        f"sh -c 'trap \"\" TERM; touch {marker}; exec sleep 300' & {shell_wait_for(marker)}; "
        "echo started",
        timeout=30,
    )
    assert (result.state, result.exit_code, result.stdout) == ("ok", 0, "started\n")
    assert GRACE - 0.1 <= elapsed < GRACE + SLACK
    assert_group_gone(result)


def test_cancel_from_another_thread_stops_hook_and_grandchildren(tmp_path: Path) -> None:
    marker = tmp_path / "ready"
    cancel = threading.Event()

    def cancel_when_ready() -> None:
        if wait_until(marker.exists):
            cancel.set()

    canceller = threading.Thread(target=cancel_when_ready, daemon=True)
    canceller.start()
    result, elapsed = run(f"sleep 300 & sleep 300 & touch '{marker}'; wait", cancel=cancel)
    canceller.join()
    assert (result.state, result.exit_code, result.reason) == ("interrupted", -1, "cancelled")
    assert not result.timed_out
    assert elapsed < 5
    assert_group_gone(result)


class FakeSoftTimeLimit(Exception):
    """Stands in for Celery's SoftTimeLimitExceeded, raised from a signal handler."""


@contextlib.contextmanager
def soft_limit_when(marker: Path) -> Iterator[None]:
    """Raise FakeSoftTimeLimit in the main thread, from a SIGUSR1 handler, once ``marker`` exists.

    This is how Celery delivers its soft time limit: a signal whose handler raises. The helper
    thread is joined before the handler is restored, so no stray SIGUSR1 meets the default
    action (which would end the test process).
    """
    main_ident = threading.main_thread().ident
    assert threading.current_thread() is threading.main_thread() and main_ident is not None
    finished = threading.Event()

    def raise_soft_limit(signum: int, frame: object) -> None:
        raise FakeSoftTimeLimit()

    def fire_when_ready() -> None:
        if wait_until(lambda: marker.exists() or finished.is_set()) and not finished.is_set():
            signal.pthread_kill(main_ident, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, raise_soft_limit)
    firer = threading.Thread(target=fire_when_ready, daemon=True)
    firer.start()
    try:
        yield
    finally:
        finished.set()
        firer.join()
        signal.signal(signal.SIGUSR1, previous)


def test_async_exception_stops_group_and_carries_partial_result(tmp_path: Path) -> None:
    marker = tmp_path / "ready"
    with soft_limit_when(marker), pytest.raises(FakeSoftTimeLimit) as caught:
        run(f"echo before; sleep 300 & touch '{marker}'; wait", timeout=60)
    result = caught.value.hook_result  # type: ignore[attr-defined]
    assert isinstance(result, HookResult)
    assert (result.state, result.exit_code) == ("interrupted", -1)
    assert result.reason == "interrupted by FakeSoftTimeLimit"
    assert result.stdout == "before\n"
    assert_group_gone(result)


def test_async_exception_during_a_stop_keeps_the_first_grace(tmp_path: Path) -> None:
    # Our deadline fires first (SIGTERM, which the shell traps and survives), then the soft
    # limit's exception lands late in the grace (the trap takes 1.2 s to write its file):
    # SIGKILL must still come one grace after the first SIGTERM (at 1 + GRACE), not one grace
    # after the exception (at 1 + 1.2 + GRACE), which the hard time limit would beat.
    marker = tmp_path / "got-term"
    started = time.monotonic()
    with soft_limit_when(marker), pytest.raises(FakeSoftTimeLimit) as caught:
        run(f"trap 'sleep 1.2; touch {marker}' TERM; while :; do sleep 0.05; done", timeout=1)
    elapsed = time.monotonic() - started
    result = caught.value.hook_result  # type: ignore[attr-defined]
    assert result.state == "interrupted" and result.signal == signal.SIGKILL
    assert 1 + GRACE - 0.1 <= elapsed < 1 + GRACE + 0.5
    assert_group_gone(result)


# -- budget -----------------------------------------------------------------------------------


def test_budget_shorter_than_timeout_ends_as_budget_exceeded() -> None:
    meter = FakeMeter(remaining=1.0)
    result, elapsed = run("sleep 5", timeout=10, meter=meter)
    assert (result.state, result.exit_code) == ("budget_exceeded", -1)
    assert result.reason.startswith("hook budget exhausted")
    assert not result.timed_out
    assert 0.9 <= elapsed < 1 + SLACK
    assert len(meter.charges) >= 5  # charged in ticks while it ran, not once at the end
    assert sum(meter.charges) == pytest.approx(result.duration, abs=0.05)
    assert_group_gone(result)


def test_a_tick_finding_the_budget_spent_stops_the_hook() -> None:
    # Other hooks of the run draw on the same budget: it runs out long before this one's share.
    meter = FakeMeter(remaining=5.0, rate=10.0)
    result, elapsed = run("sleep 30", timeout=10, meter=meter)
    assert result.state == "budget_exceeded"
    assert elapsed < 0.5 + SLACK
    assert meter.left <= 0
    assert_group_gone(result)


def test_timeout_shorter_than_budget_is_a_timeout() -> None:
    meter = FakeMeter(remaining=60.0)
    result, _ = run("sleep 5", timeout=0.5, meter=meter)
    assert (result.state, result.timed_out) == ("timed_out", True)
    assert sum(meter.charges) == pytest.approx(result.duration, abs=0.05)


def test_spent_budget_refuses_to_start(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    spawned: list[int] = []
    meter = FakeMeter(remaining=0.0)
    result, _ = run(f"touch '{marker}'", meter=meter, on_spawn=spawned.append)
    assert (result.state, result.exit_code, result.pgid) == ("budget_exceeded", -1, None)
    assert not marker.exists()
    assert spawned == [] and meter.charges == []


# -- output -----------------------------------------------------------------------------------

FLOOD_STDOUT = 200 * 1024 * 1024
FLOOD_STDERR = 1024 * 1024
OUT_MARK = "LAST-LINE-OF-STDOUT\n"
ERR_MARK = "LAST-LINE-OF-STDERR\n"
FLOOD_SCRIPT = f"""
import json, resource
from config.limits import Limits
from tasks.hooks import run_hook
command = (
    "head -c {FLOOD_STDOUT} /dev/zero | tr '\\\\0' a; printf '{OUT_MARK.strip()}\\\\n'; "
    "head -c {FLOOD_STDERR} /dev/zero | tr '\\\\0' b >&2; printf '{ERR_MARK.strip()}\\\\n' >&2"
)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = run_hook(command, timeout=60, limits=Limits())
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"before_kib": before, "after_kib": after, "result": result.to_dict()}}))
"""


def test_flood_keeps_exact_tails_and_flat_memory() -> None:
    # A fresh interpreter, so ru_maxrss (a high-water mark) measures this run and nothing else.
    done = subprocess.run(
        [sys.executable, "-c", FLOOD_SCRIPT],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(done.stdout)
    result = HookResult.from_dict(report["result"])
    assert result.state == "ok", result.reason
    assert result.stdout == "a" * (OUTPUT - len(OUT_MARK)) + OUT_MARK
    assert result.stderr == "b" * (OUTPUT - len(ERR_MARK)) + ERR_MARK
    assert result.stdout_dropped == FLOOD_STDOUT + len(OUT_MARK) - OUTPUT
    assert result.stderr_dropped == FLOOD_STDERR + len(ERR_MARK) - OUTPUT
    growth_mib = (report["after_kib"] - report["before_kib"]) / 1024
    assert growth_mib < 20, f"runner grew {growth_mib:.1f} MiB while 200 MB passed through"
    assert_group_gone(result)


def test_bytes_that_are_not_utf8_decode_with_replacement() -> None:
    result, _ = run(r"printf '\377\376ok'")
    assert result.state == "ok"
    assert result.stdout == "\ufffd\ufffdok"


def test_character_cut_at_the_buffer_boundary_is_harmless() -> None:
    # "é" is two bytes; 8191 more bytes after it leave only its second byte in the 8 KiB tail.
    result, _ = run(rf"printf '\303\251'; head -c {OUTPUT - 1} /dev/zero | tr '\0' y")
    assert result.stdout == "\ufffd" + "y" * (OUTPUT - 1)
    assert result.stdout_dropped == 1


def test_ring_buffer_keeps_the_last_bytes_across_write_sizes() -> None:
    ring = RingBuffer(10)
    written = b""
    for chunk in (b"abc", b"", b"defgh", b"ijklmnopq", b"r", b"0123456789ABCDEF", b"xy"):
        ring.write(chunk)
        written += chunk
        assert ring.getvalue() == written[-10:]
        assert ring.dropped == len(written) - len(ring.getvalue())
    assert RingBuffer(0).dropped == 0


# -- environment ------------------------------------------------------------------------------


def parse_env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_environment_keeps_worker_adds_job_and_context_drops_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BACKUPY_TEST_WORKER_VAR", "kept")
    secrets = {
        "PGPASSWORD": "pg-secret",
        "BACKUPY_REDIS_URL": "redis://:broker-secret@127.0.0.1:6379/0",
        "DB_PASSWORD": "db-secret",
        "GITHUB_TOKEN": "gh-secret",
        "SOME_ENDPOINT": "https://user:url-secret@example.com/path",
        "TARGET_PW_ENV": "target-secret",  # named by a target's password_env
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    result, _ = run(
        "env",
        env={"JOB_VAR": "from-job", "BACKUPY_JOB": "forged"},
        context={"BACKUPY_JOB": "app-db", "BACKUPY_RUN_ID": "run-1", "BACKUPY_PHASE": "pre"},
        secret_env_names=["TARGET_PW_ENV"],
        limits=Limits(output_bytes=1024 * 1024),
    )
    assert result.state == "ok" and result.stdout_dropped == 0
    seen = parse_env(result.stdout)
    assert seen["PATH"] == os.environ["PATH"]
    assert seen["BACKUPY_TEST_WORKER_VAR"] == "kept"
    assert seen["JOB_VAR"] == "from-job"
    assert (seen["BACKUPY_JOB"], seen["BACKUPY_RUN_ID"]) == ("app-db", "run-1")
    assert seen["BACKUPY_PHASE"] == "pre"
    assert not set(secrets) & set(seen)
    assert not any(value in result.stdout for value in secrets.values())


@pytest.mark.parametrize(
    ("name", "value", "secret"),
    [
        ("AWS_SECRET_ACCESS_KEY", "x", True),
        ("celery_broker_url", "redis://localhost", True),
        ("MyApp_Password", "x", True),
        ("SLACK_TOKEN", "x", True),
        ("MONGO", "mongodb://admin:pw@db:27017/x", True),
        ("CUSTOM_PW", "x", True),  # via extra names
        ("HOME", "/root", False),
        ("TOKENIZER", "x", False),
        ("DOCS_URL", "https://example.com/a@b", False),
        ("SSH_TARGET", "ssh://backup@host", False),
    ],
)
def test_secret_rules(name: str, value: str, secret: bool) -> None:
    assert is_secret_env(name, value, extra_names=["custom_pw"]) is secret


def test_job_env_is_not_filtered_and_context_wins() -> None:
    merged = hook_environment(
        env={"PGPASSWORD": "the-job-chose-this", "K": "job"},
        context={"K": "context"},
        base={"PATH": "/bin", "PGPASSWORD": "worker"},
    )
    assert merged == {"PATH": "/bin", "PGPASSWORD": "the-job-chose-this", "K": "context"}


# -- refusal, spawn callback, result ----------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("", "command is empty"),
        ("   \n", "command is empty"),
        ("echo a\0b", "command holds a NUL byte"),
        ("x" * (LIMITS.command_max_bytes + 1), "over the 4096-byte limit"),
        ("é" * (LIMITS.command_max_bytes // 2 + 1), "over the 4096-byte limit"),  # bytes count
    ],
    ids=["empty", "blank", "nul", "too-long", "too-many-utf8-bytes"],
)
def test_refused_commands_do_not_run(command: str, reason: str) -> None:
    spawned: list[int] = []
    result, _ = run(command, on_spawn=spawned.append)
    assert (result.state, result.exit_code, result.pgid) == ("refused", -1, None)
    assert reason in result.reason
    assert spawned == []


def test_command_at_the_byte_limit_runs() -> None:
    command = ": " + "x" * (LIMITS.command_max_bytes - 2)
    assert len(command.encode()) == LIMITS.command_max_bytes
    result, _ = run(command)
    assert result.state == "ok"


def test_on_spawn_gets_the_group_of_a_session_leader() -> None:
    seen: list[tuple[int, int, int]] = []

    def on_spawn(pgid: int) -> None:
        seen.append((pgid, os.getpgid(pgid), os.getsid(pgid)))

    result, _ = run("sleep 0.2", on_spawn=on_spawn)
    assert seen == [(result.pgid, result.pgid, result.pgid)]
    assert result.pgid != os.getpgid(0)


def test_result_round_trips_through_json() -> None:
    result, _ = run("echo out; echo err >&2; exit 4")
    again = HookResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result
    assert result.to_dict()["state"] in HOOK_STATES
    with pytest.raises(ValueError):
        HookResult.from_dict({**result.to_dict(), "state": "exploded"})


def test_timeout_defaults_and_cap() -> None:
    assert resolve_timeout(None, LIMITS) == LIMITS.hook_timeout_default
    assert resolve_timeout(0, LIMITS) == LIMITS.hook_timeout_default
    assert resolve_timeout(10**6, LIMITS) == LIMITS.hook_timeout_max
    assert resolve_timeout(1.5, LIMITS) == 1.5
