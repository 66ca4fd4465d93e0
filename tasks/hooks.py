"""The hook runner: one shell command, run under the security model of ``DESIGN.md``.

Ported in behaviour (not in text) from the reference Go runner (``shared/reference/hooks.go.txt``),
with its faults fixed:

* The environment is the worker's, minus the system's own secrets, plus the job's ``env``, plus
  the run context. (The reference replaced the environment and so lost ``PATH``.)
* The hook gets its own session and process group, and stopping it signals the whole group:
  SIGTERM, then SIGKILL after ``Limits.kill_grace``. (The reference killed only the shell, so a
  ``sleep`` holding the pipe made a 1 s timeout come back after 30 s.)
* The result comes back even when a grandchild keeps the pipes open or ignores SIGTERM: once the
  group is gone (or the shell has exited) the pipes are drained for a short while, then closed.
* When the shell exits, whatever it left running in its group is ended too: a hook never outlives
  its result.

Processes that leave the group (``setsid``, ``setpgid``, a double fork) are out of reach of a
process-group kill. Each hook therefore gets a unique ``BACKUPY_HOOK_TOKEN`` in its environment,
and once the hook's result is known (or while its group is being stopped) the runner looks for
processes that escaped: processes born since the hook's shell (a window of pids, see
:func:`_pids_born_since`) whose ``/proc/PID/environ`` holds the token. They share the group's
SIGTERM → ``Limits.kill_grace`` → SIGKILL (signalled through pidfds, so a reused pid is never
hit); any found after the grace get SIGKILL at once; the ones that are our children are reaped.
The result counts them (``escaped``) and its reason says ``"; N escaped process(es) were
stopped"``.

What this promises, exactly:

* A process a hook started that still carries the hook's environment is ended with the hook,
  whether it stayed in the group, left it, started a new session (``setsid``) or was
  double-forked into a daemon: with or without a subreaper.
* With :func:`enable_subreaper` (the worker's pool processes call it; Linux
  ``PR_SET_CHILD_SUBREAPER``) orphans are re-parented to the pool process instead of init.
  They are then also reaped (no zombies stay behind), and when this hook is the only one running
  in the process, a re-parented orphan born during the hook in another session is ended even if
  it cleared its environment (``env -i``).
* Out of reach: a process that leaves the session AND clears its environment AND is not under a
  subreaper (or runs beside another hook in the same process); one that changes its user (a
  setuid program: its environ cannot be read); more pids started during one hook than the
  kernel's ``pid_max`` (the window wraps over itself). A cgroup per hook is the remedy for
  those; this runner does not create one.

Output is read by one ``poll`` loop over both pipes (no reader threads that could hang) into
two ring buffers that keep the last ``Limits.output_bytes`` bytes each, so memory stays flat
whatever the hook prints. The same loop serves the deadline, the budget ticks and the cancel
checks.

There is no Celery in here: ``tasks.hook_task`` wraps :func:`run_hook` and maps its result to the
run record. The one Celery-shaped contract is documented on :func:`run_hook`: an asynchronous
exception (``SoftTimeLimitExceeded``) raised inside the call stops the group and carries the
partial result out as ``exc.hook_result``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Final, Literal, Protocol, cast, get_args

from config.limits import BUDGET_TICK_SECONDS, Limits, load_limits

log = logging.getLogger(__name__)

SHELL: Final = "/bin/sh"

# One read takes at most this much, straight into the stream's ring store. 64 KiB is the
# default capacity of a Linux pipe, so one read empties a full pipe.
READ_CHUNK_BYTES: Final = 64 * 1024

# Room for reads beyond the ring's capacity: the ring's last bytes slide to the front once per
# this many bytes read (see RingBuffer). 4 chunks: 256 KiB a stream, a few slides per MiB.
RING_STAGING_BYTES: Final = 4 * READ_CHUNK_BYTES

# After poll() says a pipe is readable, read it (non-blocking) until it is empty, but at most this
# many chunks (4 MiB) before the loop looks at the deadline again. Reading on while a fast hook
# keeps writing saves a poll() and a sleep/wake-up per chunk: measured, one read per poll() took
# about 1.5× the time `cat` takes for 1 GiB; reading on brought it to about 1.1×.
READS_PER_WAKE: Final = 64

# How often the wait loop wakes when nothing happens, to look at the cancel event (an Event
# cannot be selected on) and, where pidfds are missing, at whether the shell has exited.
POLL_SECONDS: Final = 0.05

# While a signalled group dies, how often to look whether it is gone.
GROUP_POLL_SECONDS: Final = 0.01

# After SIGKILL the kernel ends the group at once; this only bounds the wait for a process stuck
# in uninterruptible sleep (D state), so the result still comes back.
KILL_WAIT_SECONDS: Final = 1.0

# Once the group is gone (or was stopped), read what is left in the pipes for at most this long,
# then close our ends. A process that escaped the group (setsid) and keeps the pipes open must
# not hold the result back. KILL_WAIT_SECONDS + DRAIN_SECONDS stay inside
# Limits.hard_limit_margin - Limits.kill_grace, so Celery's hard limit never beats the cleanup.
DRAIN_SECONDS: Final = 0.2

# The variable that marks a hook's processes: a fresh random token per hook, set after the job's
# `env` and the run context so nothing can choose it. What carries it in /proc/PID/environ and
# is not in the hook's group escaped it, and is ended with the hook.
HOOK_TOKEN_ENV: Final = "BACKUPY_HOOK_TOKEN"

# prctl(2) option: orphaned descendants are re-parented to this process instead of init.
PR_SET_CHILD_SUBREAPER: Final = 36

# One read(2) of a /proc file: a process's stat line, or its environment (usually a few KiB).
PROC_READ_BYTES: Final = 64 * 1024

# How many pids past the hook's shell are probed one by one (an ENOENT open costs a few
# microseconds); a wider window (a busy host, a hook that forked a lot) lists /proc instead.
PID_PROBE_MAX: Final = 256

# A search for escaped processes stops after this long (a host with a huge process table must not
# hold the result back); the rest is logged, not searched.
ESCAPE_SCAN_SECONDS: Final = 0.5

# After the group is gone, search again this many times for processes that escaped late (forked
# during the grace); each round's finds get SIGKILL at once.
ESCAPE_SWEEP_ROUNDS: Final = 3

# The system's own secrets: never handed to a hook, whatever the hook is. The broker and result
# backend URLs would let a hook queue arbitrary work on every worker; storage keys would let it
# rewrite or delete backups; database passwords and the age identity are the crown jewels. A hook
# that needs one of these gets it from its job's `env`, where the job owner says so explicitly.
SYSTEM_SECRET_ENV_NAMES: Final = frozenset(
    {
        "BACKUPY_REDIS_URL",
        "BACKUPY_BROKER_URL",
        "BACKUPY_RESULT_BACKEND",
        "BACKUPY_AGE_IDENTITY",
        "BACKUPY_AGE_IDENTITY_FILE",
        "CELERY_BROKER_URL",
        "CELERY_RESULT_BACKEND",
        "BROKER_URL",
        "REDIS_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "PGPASSWORD",
        "PGPASSFILE",
        "MYSQL_PWD",
        "REDISCLI_AUTH",
    }
)

# Names that say "secret" by convention (matched upper-cased): anything holding one of these
# words, or ending in one of these suffixes, is dropped from the worker's environment.
SECRET_NAME_WORDS: Final = ("PASSWORD", "PASSWD", "SECRET", "CREDENTIAL")
SECRET_NAME_SUFFIXES: Final = ("_TOKEN", "_PWD")
SECRET_NAME: Final = re.compile(
    "|".join([*SECRET_NAME_WORDS, *(f"{suffix}$" for suffix in SECRET_NAME_SUFFIXES)])
)

# A URL carrying a password (`scheme://user:pass@host`, `redis://:pass@host`) in any variable's
# value: whatever the variable is called, its value is a credential.
CREDENTIAL_URL: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s/@:]*:[^\s/@]+@")

HookState = Literal["ok", "failed", "timed_out", "budget_exceeded", "interrupted", "refused"]
HOOK_STATES: Final[tuple[str, ...]] = get_args(HookState)

# Exit code for every outcome where the hook did not finish on its own (timeout, cancel, budget,
# interruption) or never ran (refused): no process exit status means -1, as in the reference.
NO_EXIT_CODE: Final = -1

# A shell reports death by signal N as 128 + N; we use the same convention in `exit_code`.
SIGNAL_EXIT_BASE: Final = 128

_EXIT_HINTS: Final = {126: "not executable", 127: "command not found"}


class Meter(Protocol):
    """The run's shared hook budget (``tasks.budget`` implements it on Redis).

    ``charge`` must be atomic across processes and hosts: concurrent hooks of one run all draw on
    it, and each may overshoot by at most one ``tick``.
    """

    tick: float

    def remaining(self) -> float:
        """Seconds of budget left (<= 0: spent)."""
        ...

    def charge(self, seconds: float) -> float:
        """Charge ``seconds`` of elapsed time; return what is left afterwards (<= 0: spent)."""
        ...


class RingBuffer:
    """Keeps the last ``capacity`` bytes written and counts the ones it dropped.

    A hook's useful output (the error) is at its end, and memory must not grow with what it
    prints: the store is mapped once (``capacity`` + RING_STAGING_BYTES) and never resized. It is
    an anonymous mmap, so only the pages written are ever touched: a hook that prints nothing
    costs no zero-filling (a bytearray of that size cost `true` 0.2 ms of its 1 ms).
    :meth:`read_from` reads a pipe straight into the store, so a byte is copied from the kernel
    once and moved again only when the store is full and its last ``capacity`` bytes slide to
    the front (one small move per RING_STAGING_BYTES read). Copying every read into a plain ring
    cost about a tenth on the 1 GiB capture (bench.hooks).
    """

    __slots__ = ("_end", "_store", "_view", "capacity", "total")

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self.total = 0
        self._store = mmap.mmap(-1, self.capacity + RING_STAGING_BYTES)
        self._view = memoryview(self._store)
        # _store[:_end] holds the last _end bytes of the stream, and _end >= min(total, capacity).
        self._end = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``, forgetting the oldest bytes beyond ``capacity``."""
        size = len(data)
        self.total += size
        if size >= self.capacity:
            self._store[: self.capacity] = memoryview(data)[size - self.capacity :]
            self._end = self.capacity
            return
        if len(self._store) - self._end < size:
            self._slide()
        self._store[self._end : self._end + size] = data
        self._end += size

    def read_from(self, fd: int) -> int:
        """One ``read(2)`` of up to READ_CHUNK_BYTES from ``fd`` into the store: bytes read.

        0 means end of file; a non-blocking ``fd`` with nothing to read raises BlockingIOError.
        """
        if len(self._store) - self._end < READ_CHUNK_BYTES:
            self._slide()
        size = os.readv(fd, (self._view[self._end : self._end + READ_CHUNK_BYTES],))
        self._end += size
        self.total += size
        return size

    def _slide(self) -> None:
        """Move the last ``capacity`` bytes to the front, freeing the rest of the store."""
        keep = min(self._end, self.capacity)
        self._store[:keep] = self._view[self._end - keep : self._end]
        self._end = keep

    @property
    def dropped(self) -> int:
        """Bytes written but no longer kept."""
        return self.total - min(self._end, self.capacity)

    def getvalue(self) -> bytes:
        """The kept bytes (the last ``capacity`` written), oldest first."""
        return bytes(self._view[max(0, self._end - self.capacity) : self._end])

    def text(self) -> str:
        """The kept bytes as text. A character cut at the front decodes to U+FFFD, harmlessly."""
        return self.getvalue().decode("utf-8", errors="replace")


@dataclass
class HookResult:
    """What one hook did. JSON-safe through :meth:`to_dict`: it travels in Celery results."""

    command: str
    state: HookState
    exit_code: int
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_dropped: int = 0
    stderr_dropped: int = 0
    duration: float = 0.0
    timed_out: bool = False
    reason: str = ""
    host: str = ""
    pgid: int | None = None
    escaped: int = 0

    @property
    def ok(self) -> bool:
        """True only when the hook ran and exited 0."""
        return self.state == "ok"

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of JSON types (str, int, float, bool, None)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HookResult:
        """The inverse of :meth:`to_dict`. Unknown keys are ignored (a newer worker's result)."""
        known = {field.name for field in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        if values.get("state") not in HOOK_STATES:
            raise ValueError(f"not a hook state: {values.get('state')!r}")
        return cls(**values)


def is_secret_env(name: str, value: str, extra_names: Iterable[str] = ()) -> bool:
    """Whether a worker variable must be kept from hooks (see SYSTEM_SECRET_ENV_NAMES).

    ``extra_names`` are the targets' ``password_env`` names; names compare case-insensitively.
    """
    return _is_secret(name.upper(), value, frozenset(extra.upper() for extra in extra_names))


def _is_secret(upper_name: str, value: str, extra_upper: frozenset[str]) -> bool:
    if upper_name in SYSTEM_SECRET_ENV_NAMES or upper_name in extra_upper:
        return True
    if SECRET_NAME.search(upper_name) is not None:
        return True
    return "://" in value and CREDENTIAL_URL.search(value) is not None


def hook_environment(
    env: Mapping[str, str] | None = None,
    context: Mapping[str, str] | None = None,
    secret_env_names: Iterable[str] = (),
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment a hook runs with: worker's minus secrets, plus job ``env``, plus context.

    Only the worker's own environment (``base``, default ``os.environ``) is filtered: the job's
    ``env`` is what the job owner chose to give the hook. The run context goes last so a job
    cannot fake ``BACKUPY_RUN_ID`` and friends.
    """
    extra = frozenset(name.upper() for name in secret_env_names)
    source = os.environ if base is None else base
    result = {
        name: value for name, value in source.items() if not _is_secret(name.upper(), value, extra)
    }
    result.update(env or {})
    result.update(context or {})
    return result


def refusal_reason(command: str, limits: Limits) -> str | None:
    """Why ``command`` must not run at all, or None. The config checks the same rules on load."""
    if not command or not command.strip():
        return "command is empty"
    if "\0" in command:
        return "command holds a NUL byte"
    try:
        size = len(command.encode("utf-8"))
    except UnicodeEncodeError:
        return "command is not valid UTF-8"
    if size > limits.command_max_bytes:
        return f"command is {size} bytes, over the {limits.command_max_bytes}-byte limit"
    return None


def resolve_timeout(timeout: float | None, limits: Limits) -> float:
    """The hook's timeout: the default when unset (or not positive), never above the cap."""
    if timeout is None or not timeout > 0:
        timeout = limits.hook_timeout_default
    return min(float(timeout), limits.hook_timeout_max)


def run_hook(
    command: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    context: Mapping[str, str] | None = None,
    meter: Meter | None = None,
    cancel: threading.Event | None = None,
    limits: Limits | None = None,
    secret_env_names: Iterable[str] = (),
    on_spawn: Callable[[int], None] | None = None,
) -> HookResult:
    """Run ``command`` with ``/bin/sh -c`` and return what happened; never raises for the hook.

    Every expected outcome is a :class:`HookResult` (states ``ok``, ``failed``, ``timed_out``,
    ``budget_exceeded``, ``interrupted`` when ``cancel`` is set, ``refused``), because a raising
    task would stop the Celery chain and with it the post-hooks that undo the pre-hooks.

    ``timeout`` (seconds; None → ``limits.hook_timeout_default``, capped at
    ``limits.hook_timeout_max``) is shortened to the ``meter``'s remaining budget; the budget is
    charged every ``meter.tick`` seconds while the hook runs, and the hook is stopped when it is
    spent. ``on_spawn(pgid)`` is called right after the spawn so the caller can record the group
    for a supervisor that reaps it should this process die. Processes that escaped the group and
    still carry the hook's ``BACKUPY_HOOK_TOKEN`` are ended with it (module docstring).

    Asynchronous exceptions: when any ``BaseException`` is raised inside this call while the hook
    runs (Celery's ``SoftTimeLimitExceeded`` from a signal handler, ``KeyboardInterrupt``,
    ``SystemExit``, a failing meter), the hook's process group is stopped (SIGTERM, grace,
    SIGKILL), a partial result with state ``interrupted`` and reason
    ``"interrupted by <ExceptionName>"`` is attached as ``exc.hook_result``, and the exception is
    re-raised unchanged. Known gap: an exception landing inside ``subprocess.Popen`` itself, after
    the fork and before it returns, leaves a group we never learned the id of.
    """
    limits = load_limits() if limits is None else limits
    refusal = refusal_reason(command, limits)
    if refusal is not None:
        return HookResult(command, "refused", NO_EXIT_CODE, reason=refusal, host=_host())
    environment = hook_environment(env, context, secret_env_names)
    environment[HOOK_TOKEN_ENV] = os.urandom(16).hex()
    run = _HookRun(
        command,
        environment,
        resolve_timeout(timeout, limits),
        limits,
        meter,
        cancel,
        on_spawn,
    )
    _count_active_hooks(1)
    try:
        return run.run()
    except BaseException as exc:
        result = run.abort(exc)
        with contextlib.suppress(AttributeError, TypeError):
            exc.hook_result = result  # type: ignore[attr-defined]
        raise
    finally:
        _count_active_hooks(-1)


# A reason to stop the hook: the final state and the human text.
_Stop = tuple[HookState, str]


class _HookRun:
    """One hook from spawn to result; holds what cleanup needs if an exception cuts in."""

    def __init__(
        self,
        command: str,
        env: dict[str, str],
        timeout: float,
        limits: Limits,
        meter: Meter | None,
        cancel: threading.Event | None,
        on_spawn: Callable[[int], None] | None,
    ) -> None:
        self.command = command
        self.env = env
        self.timeout = timeout
        self.limits = limits
        self.meter = meter
        self.cancel = cancel
        self.on_spawn = on_spawn
        self.stdout = RingBuffer(limits.output_bytes)
        self.stderr = RingBuffer(limits.output_bytes)
        self.proc: subprocess.Popen[bytes] | None = None
        self.pgid: int | None = None
        self.poller = select.poll()
        self.pipes: dict[int, Any] = {}  # fd → the Popen file object that owns it
        self.sinks: dict[int, RingBuffer] = {}  # fd → where its bytes go
        self.pidfd: int | None = None
        self.exit_seen = False
        self.leftovers_stopped = False
        self.token = env.get(HOOK_TOKEN_ENV, "").encode()
        self.escapees: dict[int, _Escapee] = {}  # pid → an escaped process being stopped
        self.escaped_stopped = 0
        self.term_sent: float | None = None
        self.started = self.last_charge = time.monotonic()
        self.finished: float | None = None

    # -- the normal path ------------------------------------------------------------------------

    def run(self) -> HookResult:
        """Spawn, wait for exit or a reason to stop, clean the group up, build the result."""
        limit, deadline_stop = self.timeout, self._timeout_stop()
        if self.meter is not None:
            remaining = self.meter.remaining()
            if remaining <= 0:
                return self._result(("budget_exceeded", "hook budget exhausted"))
            if remaining < limit:
                limit, deadline_stop = remaining, ("budget_exceeded", "hook budget exhausted")
        self.started = self.last_charge = time.monotonic()
        try:
            self.proc = self._popen()
        except (OSError, ValueError) as exc:  # no /bin/sh, fd exhaustion, NUL in the job's env
            self._finish()
            return self._result(("failed", f"could not start {SHELL}: {exc}"))
        self._watch()
        stop = self._wait(self.started + limit, deadline_stop)
        if stop is None:
            self._sweep_leftovers()
        else:
            self._stop_group()
        self._drain()
        self._finish()
        return self._result(stop)

    def abort(self, exc: BaseException) -> HookResult:
        """Stop everything after an exception cut into :meth:`run`; return the partial result."""
        try:
            if self.proc is not None:
                self._stop_group()
                self._drain()
        except BaseException:
            if self.pgid is not None:
                _signal_group(self.pgid, signal.SIGKILL)  # a second exception: no more grace
            raise
        finally:
            self._finish()
        return self._result(("interrupted", f"interrupted by {type(exc).__name__}"))

    def _timeout_stop(self) -> _Stop:
        return ("timed_out", f"timed out after {_seconds(self.timeout)}")

    def _popen(self) -> subprocess.Popen[bytes]:
        """Start the shell, the command verbatim as one argument, in its own session."""
        return subprocess.Popen(
            [SHELL, "-c", self.command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
            start_new_session=True,
            env=self.env,
        )

    def _watch(self) -> None:
        """Watch the pipes and, where possible, the pidfd; tell ``on_spawn`` the group."""
        assert self.proc is not None
        self.pgid = self.proc.pid  # session leader: its pid is the group's id
        for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            assert stream is not None
            fd = stream.fileno()
            os.set_blocking(fd, False)
            self.pipes[fd], self.sinks[fd] = stream, sink
            self.poller.register(fd, select.POLLIN)
        self.pidfd = _open_pidfd(self.proc.pid)
        if self.pidfd is not None:
            self.poller.register(self.pidfd, select.POLLIN)
        if self.on_spawn is not None:
            self.on_spawn(self.pgid)

    def _wait(self, deadline: float, deadline_stop: _Stop) -> _Stop | None:
        """Pump output until the shell exits (None) or a reason to stop it comes up.

        The checks (exit, cancel, deadline, budget tick) run only when one of them can have
        changed: at the next deadline, tick or poll instant, when the pidfd fired, or once both
        pipes are closed. In between the loop only reads: that is the hot path when a hook streams
        output, and every microsecond a pass costs shows in the capture time.
        """
        tick = self._tick()
        next_tick = self.last_charge + tick
        check_at = 0.0
        while True:
            now = time.monotonic()
            if now >= check_at or self.exit_seen or not self.pipes:
                if self._shell_exited():
                    return None
                if self.cancel is not None and self.cancel.is_set():
                    return ("interrupted", "cancelled")
                if now >= deadline:
                    return deadline_stop
                if now >= next_tick:
                    if self._charge(now) <= 0:
                        return ("budget_exceeded", "hook budget exhausted")
                    next_tick = now + tick
                check_at = min(deadline, next_tick)
                if self.cancel is not None or self.pidfd is None:
                    check_at = min(check_at, now + POLL_SECONDS)
            self._pump(check_at - now)

    def _tick(self) -> float:
        if self.meter is None:
            return float("inf")
        tick = getattr(self.meter, "tick", BUDGET_TICK_SECONDS)
        return tick if tick > 0 else BUDGET_TICK_SECONDS

    def _charge(self, now: float) -> float:
        assert self.meter is not None
        elapsed, self.last_charge = now - self.last_charge, now
        return self.meter.charge(elapsed)

    # -- output ---------------------------------------------------------------------------------

    def _pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` for output or the shell's exit, and take what is there."""
        for fd, _event in self.poller.poll(max(0.0, timeout) * 1000.0):
            if fd == self.pidfd:
                self.exit_seen = True
                self._close_pidfd()
            elif fd in self.pipes:
                self._read_available(fd)

    def _read_available(self, fd: int) -> None:
        """Move what the pipe holds into its ring buffer (see READS_PER_WAKE); close it at EOF."""
        read_from = self.sinks[fd].read_from
        for _ in range(READS_PER_WAKE):
            try:
                size = read_from(fd)
            except BlockingIOError:
                return
            if not size:
                self._close_pipe(fd)
                return

    def _drain(self) -> None:
        """Read what is left for at most DRAIN_SECONDS, then close our ends of the pipes."""
        until = time.monotonic() + DRAIN_SECONDS
        while self.pipes:
            left = until - time.monotonic()
            if left <= 0:
                break
            self._pump(left)
        for fd in list(self.pipes):
            self._close_pipe(fd)

    def _close_pipe(self, fd: int) -> None:
        with contextlib.suppress(KeyError):
            self.poller.unregister(fd)
        stream = self.pipes.pop(fd, None)
        if stream is not None:
            stream.close()

    def _close_pidfd(self) -> None:
        if self.pidfd is None:
            return
        with contextlib.suppress(KeyError):
            self.poller.unregister(self.pidfd)
        os.close(self.pidfd)
        self.pidfd = None

    # -- the process group ----------------------------------------------------------------------

    def _shell_exited(self) -> bool:
        """Whether the shell has ended, without reaping it (a zombie leader pins the pgid)."""
        assert self.proc is not None
        if self.proc.returncode is not None:
            return True
        if self.pidfd is not None and not self.exit_seen:
            return False  # the pidfd turns readable on exit: no syscall needed until then
        try:
            status = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True  # reaped behind our back; Popen reports returncode 0 then
        return status is not None

    def _reap(self) -> None:
        """Collect the shell's status once it has ended; never blocks."""
        if self.proc is not None and self.proc.returncode is None and self._shell_exited():
            self.proc.wait()

    def _sweep_leftovers(self) -> None:
        """The shell exited: end what it left running in its group (a hook ends with its result)
        and what escaped the group.

        The shell is reaped first; from then on its pid is pinned as a pgid by any member still
        alive, and when none is, ``killpg`` fails with ESRCH and nothing is signalled. The group
        is checked before the search for escapees: once it is empty, nothing in it can escape
        after the search.
        """
        self._reap()
        assert self.pgid is not None
        alive = _group_alive(self.pgid)
        self._find_escaped()
        if alive or self.escapees:
            self.leftovers_stopped = alive
            self._stop_group()

    def _stop_group(self) -> None:
        """SIGTERM to the group and the escapees; SIGKILL after the grace to what is still alive.

        Re-entrant: when an exception cuts into a stop already under way (our deadline fired,
        then Celery's soft limit), the grace runs on from the first SIGTERM instead of starting
        again, so the whole stop stays inside the hard time limit's margin. Escapees found once
        the group is gone (forked during the grace) get SIGKILL at once.
        """
        assert self.pgid is not None
        if self.term_sent is None:
            self._find_escaped()
            _signal_group(self.pgid, signal.SIGTERM)
            self._signal_escaped(signal.SIGTERM)
            self.term_sent = time.monotonic()
        grace_left = self.term_sent + self.limits.kill_grace - time.monotonic()
        if not self._wait_group_gone(grace_left):
            _signal_group(self.pgid, signal.SIGKILL)
            self._signal_escaped(signal.SIGKILL)
            if not self._wait_group_gone(KILL_WAIT_SECONDS):
                log.warning("hook process group %d survived SIGKILL (stuck in D state?)", self.pgid)
        for _ in range(ESCAPE_SWEEP_ROUNDS):
            if not self._find_escaped():
                break
            self._signal_escaped(signal.SIGKILL)
            self._wait_group_gone(KILL_WAIT_SECONDS)

    def _wait_group_gone(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for every member and escapee to end, draining the pipes.

        Draining matters: a member handling SIGTERM by printing must not block on a full pipe.
        """
        assert self.proc is not None and self.pgid is not None
        until = time.monotonic() + seconds
        while True:
            self._reap()
            if (
                self.proc.returncode is not None
                and not _group_alive(self.pgid)
                and not any(escapee.alive() for escapee in self.escapees.values())
            ):
                return True
            left = until - time.monotonic()
            if left <= 0:
                return False
            self._pump(min(GROUP_POLL_SECONDS, left))

    def _finish(self) -> None:
        """Release every descriptor, reap the shell, charge the last partial tick. Idempotent."""
        if self.finished is not None:
            return
        self.finished = time.monotonic()
        for fd in list(self.pipes):
            self._close_pipe(fd)
        self._close_pidfd()
        self._reap()
        for escapee in self.escapees.values():
            escapee.release()
        if self.meter is not None and self.proc is not None:
            try:
                self._charge(self.finished)
            except Exception:  # the result stands even when the meter is down
                log.warning("could not charge the hook budget", exc_info=True)

    # -- processes that escaped the group ---------------------------------------------------------

    def _find_escaped(self) -> list[_Escapee]:
        """Look for processes that escaped the group; hold a pidfd on each new one found.

        Candidates are the pids born since the shell. One is ours when it is not in the group
        (``killpg`` reaches those) and its environment holds the hook's token, or, under a
        subreaper with this the only hook of the process, when it is an orphan re-parented to us
        from another session. Such orphans that already exited (zombies) are reaped on the way.
        """
        if self.proc is None or not self.token:
            return []
        needle = HOOK_TOKEN_ENV.encode() + b"=" + self.token
        me = os.getpid()
        orphans_are_ours = subreaper_enabled() and _active_hooks == 1
        my_session = os.getsid(0)
        found: list[_Escapee] = []
        give_up = time.monotonic() + ESCAPE_SCAN_SECONDS
        for pid in _pids_born_since(self.proc.pid):
            if time.monotonic() > give_up:
                log.warning("gave up searching for processes that escaped hook %d", self.pgid)
                break
            if pid in self.escapees or pid == me:
                continue
            stat = _read_stat(pid)
            if stat is None or stat.pgrp == self.pgid:
                continue
            orphan = orphans_are_ours and stat.ppid == me and stat.session != my_session
            if stat.zombie:
                if orphan:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, os.WNOHANG)
                continue
            if not (orphan or _environ_holds(pid, needle)):
                continue
            escapee = _Escapee.open(pid)
            # Checked again through the pidfd's process: the pid may have been reused meanwhile.
            if escapee is None or not (orphan or _environ_holds(pid, needle)):
                if escapee is not None:
                    escapee.release()
                continue
            self.escapees[pid] = escapee
            found.append(escapee)
        self.escaped_stopped += len(found)
        return found

    def _signal_escaped(self, signum: int) -> None:
        for escapee in self.escapees.values():
            escapee.signal(signum)

    # -- the result -----------------------------------------------------------------------------

    def _result(self, stop: _Stop | None) -> HookResult:
        """Build the result: from the exit status when the hook ended itself, else from ``stop``."""
        code = None if self.proc is None else self.proc.returncode
        killed_by = -code if code is not None and code < 0 else None
        if stop is not None:
            state, reason = stop
            exit_code = NO_EXIT_CODE  # the signal that ended the shell is in `signal`
        elif killed_by is not None:
            state, exit_code = "failed", SIGNAL_EXIT_BASE + killed_by
            reason = f"killed by {_signal_name(killed_by)}"
        else:
            exit_code = code or 0
            state = "ok" if exit_code == 0 else "failed"
            reason = f"exited {exit_code}"
            if exit_code in _EXIT_HINTS:
                reason += f" ({_EXIT_HINTS[exit_code]})"
        if self.leftovers_stopped:
            reason += "; what it left running in its process group was stopped"
        if self.escaped_stopped:
            reason += f"; {self.escaped_stopped} escaped process(es) were stopped"
        stdout, stderr = self.stdout, self.stderr
        duration = 0.0 if self.proc is None else (self.finished or time.monotonic()) - self.started
        return HookResult(
            command=self.command,
            state=state,
            exit_code=exit_code,
            signal=killed_by,
            stdout=stdout.text(),
            stderr=stderr.text(),
            stdout_dropped=stdout.dropped,
            stderr_dropped=stderr.dropped,
            duration=duration,
            timed_out=state == "timed_out",
            reason=reason,
            host=_host(),
            pgid=self.pgid,
            escaped=self.escaped_stopped,
        )


# -- escaped processes ----------------------------------------------------------------------------

# Hooks running in this process right now (threads): an orphan re-parented to a subreaper can be
# attributed to a hook without its token only when there is one.
_active_hooks = 0
_active_lock = threading.Lock()
_subreaper_pid: int | None = None


def _count_active_hooks(change: int) -> None:
    global _active_hooks
    with _active_lock:
        _active_hooks += change


def enable_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux); True when it is.

    A hook's daemon, ``setsid``'d or double-forked, is then re-parented to this process instead
    of init: it stays findable, is reaped here, and an orphan that cleared its environment can
    still be attributed to the hook (module docstring). The setting is not inherited across
    ``fork``, so each worker pool process calls this itself (``worker_process_init``). Do not
    call it in a process that runs anything else: every orphan below it becomes its to reap.
    """
    global _subreaper_pid
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_CHILD_SUBREAPER): %s", os.strerror(ctypes.get_errno()))
            return False
    except (OSError, AttributeError) as exc:
        log.warning("cannot become a child subreaper: %s", exc)
        return False
    _subreaper_pid = os.getpid()
    return True


def subreaper_enabled() -> bool:
    """Whether :func:`enable_subreaper` succeeded in this very process (not a forked parent)."""
    return _subreaper_pid == os.getpid()


class _Stat:
    __slots__ = ("pgrp", "ppid", "session", "zombie")

    def __init__(self, zombie: bool, ppid: int, pgrp: int, session: int) -> None:
        self.zombie, self.ppid, self.pgrp, self.session = zombie, ppid, pgrp, session


def _read_stat(pid: int) -> _Stat | None:
    """State, parent, group and session of ``pid`` from /proc, or None when it is gone."""
    try:
        stat = _read_proc_file(f"/proc/{pid}/stat")
        state, ppid, pgrp, session = stat[stat.rfind(b")") + 2 :].split(maxsplit=4)[:4]
        return _Stat(state in (b"Z", b"X"), int(ppid), int(pgrp), int(session))
    except (OSError, ValueError):
        return None


def _environ_holds(pid: int, needle: bytes) -> bool:
    """Whether the environment ``pid`` was started with holds ``needle`` (NAME=value)."""
    try:
        environ = _read_proc_file(f"/proc/{pid}/environ")
    except OSError:  # gone, or another user's process
        return False
    return environ.startswith(needle + b"\0") or b"\0" + needle + b"\0" in environ


_last_pid_fd: int | None = None


def _last_pid() -> int | None:
    """The pid the kernel handed out last in this pid namespace, or None when unknown.

    The file stays open (one per process, close-on-exec): a ``pread`` on it costs a fraction of
    an open, read and close, and this runs after every hook.
    """
    global _last_pid_fd
    try:
        if _last_pid_fd is None:
            _last_pid_fd = os.open("/proc/sys/kernel/ns_last_pid", os.O_RDONLY | os.O_CLOEXEC)
        return int(os.pread(_last_pid_fd, 32, 0))
    except (OSError, ValueError):
        return None


def _read_proc_file(path: str) -> bytes:
    """A /proc file's bytes, through raw descriptors: this runs after every hook, and a
    buffered ``open()`` costs about three times as much."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, PROC_READ_BYTES)]
        # A short read is the whole file here (stat, environ, a sysctl): another read(2) to see
        # the end would cost as much again.
        while len(chunks[-1]) == PROC_READ_BYTES:
            chunks.append(os.read(fd, PROC_READ_BYTES))
        return b"".join(chunks)
    finally:
        os.close(fd)


def _pids_born_since(first: int) -> Iterator[int]:
    """Pids (and thread ids) handed out after ``first``: every descendant of a hook whose shell
    got ``first``.

    Linux hands pids out cyclically, so these are the pids after ``first`` up to the last one
    handed out, wrapping at ``pid_max``. A narrow window (the common case: a hook that forked
    little on a quiet host) is probed pid by pid, which costs a few microseconds a pid; a wide
    or wrapped one filters a listing of /proc; without ``ns_last_pid`` every process is a
    candidate.
    """
    last = _last_pid()
    if last is not None and first <= last <= first + PID_PROBE_MAX:
        yield from range(first + 1, last + 1)
        return
    try:
        names = os.listdir("/proc")
    except OSError:
        return
    for name in names:
        if not name.isdigit():
            continue
        pid = int(name)
        if last is None:
            yield pid
        elif last >= first:
            if first < pid <= last:
                yield pid
        elif pid > first or pid <= last:  # wrapped at pid_max
            yield pid


class _Escapee:
    """A process that escaped the hook's group, held by a pidfd where the kernel has them."""

    __slots__ = ("pid", "pidfd")

    def __init__(self, pid: int, pidfd: int | None) -> None:
        self.pid, self.pidfd = pid, pidfd

    @classmethod
    def open(cls, pid: int) -> _Escapee | None:
        """Hold ``pid``; None when it is gone (or is a thread, which pidfds do not take)."""
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is None:
            return cls(pid, None) if _read_stat(pid) is not None else None
        try:
            return cls(pid, cast(int, pidfd_open(pid)))
        except OSError:
            return None

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signum)
            else:
                os.kill(self.pid, signum)

    def alive(self) -> bool:
        """Still running (a zombie is not): a pidfd turns readable when its process exits."""
        if self.pidfd is not None:
            poller = select.poll()  # not select(): a pool process may hold fds above 1024
            poller.register(self.pidfd, select.POLLIN)
            return not poller.poll(0)
        stat = _read_stat(self.pid)
        return stat is not None and not stat.zombie

    def release(self) -> None:
        """Reap it if it is our child (under a subreaper), and close the pidfd. Idempotent."""
        with contextlib.suppress(ChildProcessError, OSError):
            if self.pidfd is not None and hasattr(os, "P_PIDFD"):
                os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOHANG)
            elif not self.alive():
                os.waitpid(self.pid, os.WNOHANG)
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _signal_group(pgid: int, signum: int) -> None:
    """Signal every member of the group; a group already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _group_alive(pgid: int) -> bool:
    """Whether any member of the group is still running (zombies do not count).

    ``killpg(pgid, 0)`` answers "no" in one syscall, the common case. Its "yes" also counts
    zombies, which a container's PID 1 may leave unreaped for a while, so /proc decides then.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    live = _proc_group_has_live_member(pgid)
    return True if live is None else live


def _proc_group_has_live_member(pgid: int) -> bool | None:
    """Scan /proc for a non-zombie process in ``pgid``; None when /proc cannot be read."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat_file:
                stat = stat_file.read()
        except OSError:
            continue  # ended while we looked
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so split after it.
        state, _ppid, pgrp = stat[stat.rfind(b")") + 2 :].split(maxsplit=3)[:3]
        if int(pgrp) == pgid and state not in (b"Z", b"X"):
            return True
    return False


def _open_pidfd(pid: int) -> int | None:
    """A descriptor that turns readable when ``pid`` exits (Linux ≥ 5.3), or None."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        return cast(int, pidfd_open(pid))
    except OSError:
        return None


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _host() -> str:
    return socket.gethostname()
