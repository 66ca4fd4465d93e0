"""Running a database's own dump or restore tool (``pg_dump``, ``mariadb-dump``, ...).

What every tool-based driver shares:

* **Finding the tool**: ``BACKUPY_<TOOL>_PATH`` (``BACKUPY_PG_DUMP_PATH``,
  ``BACKUPY_MARIADB_DUMP_PATH``, ``BACKUPY_REDIS_CLI_PATH``, ``BACKUPY_MONGODUMP_PATH``...: the
  tool's name upper-cased, ``-`` as ``_``) names the executable when set, else ``PATH`` is
  searched. A missing tool is a :class:`DriverError` naming it and the package that has it.
* **A clean environment**: the child gets ``PATH``, ``HOME``, the locale and ``TMPDIR``, the
  variables the driver passes on purpose (a passfile, ``REDISCLI_AUTH``...), and nothing else
  from the worker: none of the worker's secrets (broker URL, storage keys, other jobs'
  passwords) reaches a tool.
* **Streaming**: stdout goes to ``out`` in 1 MiB reads, calling ``progress(total)`` after each;
  stdin (restores) is fed from a thread. stderr is drained concurrently and only its last
  8 KiB is kept, so memory stays flat whatever the tool prints.
* **Its own process group**: on :meth:`ToolRunner.cancel`, on a timeout, or when writing to
  ``out`` fails, the whole group is killed, and whatever the tool left in its group is killed
  when it exits, so no tool outlives its dump.
* **Errors that say which tool failed and why**: a non-zero exit becomes a DriverError with the
  tool's name, the exit code or signal, the bytes it had written, and the tail of its stderr,
  with every secret replaced by ``***`` (a tool may echo a connection string).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import stat
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import quote

from config.tool_options import matching_flag
from tasks.drivers.base import DriverError, ProgressFn

#: Read size from the tool's stdout, and the progress granularity.
CHUNK_SIZE = 1 << 20
#: Bytes moved per splice() between the tool's stdout and a pipe, and that pipe's size.
SPLICE_CHUNK = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
#: How much of the tool's stderr is kept (the end: that is where the reason is).
STDERR_TAIL_BYTES = 8 * 1024
#: How much of that tail goes into an error message.
MESSAGE_TAIL_CHARS = 1500
#: Between SIGTERM and SIGKILL on cancel.
KILL_GRACE_SECONDS = 2.0
#: Bound on output captured in memory when there is no ``out`` (``psql -c``, ``--version``).
CAPTURE_LIMIT_BYTES = 64 * 1024
#: Variables of the worker's environment every tool gets.
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ", "TMPDIR")
SCRUBBED = "***"


# --------------------------------------------------------------------------- finding a tool


def override_variable(tool: str) -> str:
    """``pg_dump`` → ``BACKUPY_PG_DUMP_PATH``: the variable that names the tool's executable."""
    return "BACKUPY_" + tool.upper().replace("-", "_").replace(".", "_") + "_PATH"


def find_tool(names: str | Sequence[str], package: str) -> str:
    """The executable of the first tool in ``names`` that is configured or on PATH.

    An override variable that is set wins, and must name an executable file: a typo there is
    an error, not a silent fall back to another binary.
    """
    candidates = [names] if isinstance(names, str) else list(names)
    for name in candidates:
        variable = override_variable(name)
        configured = os.environ.get(variable)
        if configured:
            if not _is_executable(configured):
                raise DriverError(
                    f"{name} not found: {variable}={configured} is not an executable file"
                )
            return configured
    search_path = os.environ.get("PATH", os.defpath)
    for name in candidates:
        found = _which(name, search_path)
        if found:
            return found
    shown = " or ".join(candidates)
    raise DriverError(f"{shown} not found on PATH (install {package})")


def _which(name: str, search_path: str) -> str | None:
    for directory in search_path.split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if _is_executable(candidate):
            return candidate
    return None


def _is_executable(path: str) -> bool:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) and os.access(path, os.X_OK)


def tool_name(executable: str) -> str:
    return os.path.basename(executable)


# --------------------------------------------------------------------------- environment


def clean_env(
    extra: Mapping[str, str] | None = None,
    *,
    passthrough: Iterable[str] = (),
    exclude: Iterable[str] = (),
) -> dict[str, str]:
    """The child's environment: :data:`BASE_ENV`, variables starting with a ``passthrough``
    prefix (``PGSSL``...) except ``exclude``, then ``extra``."""
    prefixes = tuple(passthrough)
    excluded = set(exclude)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in excluded and (key in BASE_ENV or (prefixes and key.startswith(prefixes)))
    }
    env.setdefault("PATH", os.defpath)
    env.update(extra or {})
    return env


# --------------------------------------------------------------------------- scrubbing


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret (and its URL-encoded form) replaced by ``***``."""
    forms: set[str] = set()
    for secret in secrets:
        if secret:
            forms.update({secret, quote(secret, safe=""), quote(secret, safe="@:/")})
    for form in sorted(forms, key=len, reverse=True):  # longest first: no partial leftovers
        text = text.replace(form, SCRUBBED)
    return text


def summarize(tail: bytes, truncated: bool, secrets: Iterable[str | None]) -> str:
    """The reason a tool gave, from its stderr tail: scrubbed, one line, the end kept.

    When the tail was cut, its first (partial) line is dropped: a secret cut in half there
    could not be recognised to be scrubbed.
    """
    text = tail.decode("utf-8", errors="replace")
    if truncated:
        # One endless line is kept: only its last MESSAGE_TAIL_CHARS are shown, far from the cut.
        text = text.partition("\n")[2].strip() or text
    text = scrub(text, secrets)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    joined = " | ".join(lines)
    if len(joined) > MESSAGE_TAIL_CHARS:
        joined = "..." + joined[-MESSAGE_TAIL_CHARS:]
    return joined


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class ToolResult:
    """A tool that exited 0: the bytes it wrote to stdout, and what it said."""

    stdout_bytes: int
    captured: bytes
    stderr: str


class _Tail:
    """The last ``limit`` bytes of a stream, drained in a thread."""

    def __init__(self, limit: int = STDERR_TAIL_BYTES) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    def drain(self, stream: BinaryIO) -> None:
        with contextlib.suppress(OSError, ValueError):
            while chunk := stream.read1(65536):  # type: ignore[attr-defined]
                self.data += chunk
                if len(self.data) > self.limit:
                    del self.data[: len(self.data) - self.limit]
                    self.truncated = True


def _pipe_fd(out: BinaryIO | None) -> int | None:
    """``out``'s descriptor when it is a pipe: the tool's output can then be spliced into it."""
    if out is None or not hasattr(os, "splice"):
        return None
    try:
        fd = out.fileno()
        return fd if stat.S_ISFIFO(os.fstat(fd).st_mode) else None
    except (AttributeError, OSError, ValueError):
        return None


def _splice_all(source: int, sink: int, out: BinaryIO, progress: ProgressFn | None) -> int:
    """Move the tool's output into the ``out`` pipe inside the kernel (``splice``): the bytes are
    never copied through this process, which matters at a gigabyte a dump. ``out.write(b"")``
    after each move lets a wrapper refuse to go on (the step was stopped)."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(source, F_SETPIPE_SZ, SPLICE_CHUNK)
    out.flush()
    total = 0
    while moved := os.splice(source, sink, SPLICE_CHUNK):
        total += moved
        out.write(b"")
        if progress is not None:
            progress(total)
    return total


class ToolRunner:
    """Runs one tool process at a time for a driver; :meth:`cancel` kills it from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._cancelled = False
        self._timed_out = False

    def cancel(self) -> None:
        """Stop the running tool (SIGTERM to its group, SIGKILL after a grace); idempotent.

        Also refuses any later :meth:`run` on this runner: a cancelled dump stays cancelled.
        """
        with self._lock:
            self._cancelled = True
            process = self._process
        if process is not None and process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            timer = threading.Timer(KILL_GRACE_SECONDS, _signal_group, (process.pid,))
            timer.daemon = True
            timer.start()

    def _expire(self, process: subprocess.Popen[bytes]) -> None:
        self._timed_out = True
        _signal_group(process.pid, signal.SIGKILL)

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        secrets: Iterable[str | None] = (),
        out: BinaryIO | None = None,
        source: BinaryIO | None = None,
        progress: ProgressFn | None = None,
        timeout: float | None = None,
    ) -> ToolResult:
        """Run ``argv``; stdout to ``out`` (or captured, bounded), stdin from ``source``.

        Returns when the tool exited 0; raises :class:`DriverError` otherwise (see the module).
        An exception from ``out.write`` (the reader went away, the step was stopped) kills the
        tool and propagates unchanged.
        """
        name = tool_name(argv[0])
        secret_list = [s for s in secrets if s]
        self._timed_out = False
        with self._lock:
            if self._cancelled:
                raise DriverError(f"{name} was not started: the dump was cancelled")
            try:
                process = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.PIPE if source is not None else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=dict(env),
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise DriverError(f"{name} cannot be started: {exc.strerror}") from None
            self._process = process
        assert process.stdout is not None and process.stderr is not None
        tail = _Tail()
        threads = [threading.Thread(target=tail.drain, args=(process.stderr,), daemon=True)]
        feed_error: list[BaseException] = []
        if source is not None:
            threads.append(
                threading.Thread(target=_feed, args=(source, process, feed_error), daemon=True)
            )
        timer = None
        if timeout is not None:
            timer = threading.Timer(timeout, self._expire, (process,))
            timer.daemon = True
            timer.start()
        for thread in threads:
            thread.start()
        total = 0
        captured = bytearray()
        try:
            out_pipe = _pipe_fd(out)
            if out_pipe is not None:
                assert out is not None
                total = _splice_all(process.stdout.fileno(), out_pipe, out, progress)
            while out_pipe is None and (chunk := process.stdout.read(CHUNK_SIZE)):
                total += len(chunk)
                if out is not None:
                    out.write(chunk)
                    if progress is not None:
                        progress(total)
                elif len(captured) < CAPTURE_LIMIT_BYTES:
                    captured += chunk[: CAPTURE_LIMIT_BYTES - len(captured)]
            if out is not None:
                out.flush()
        except BaseException:
            _signal_group(process.pid, signal.SIGKILL)
            raise
        finally:
            returncode = process.wait()
            if timer is not None:
                timer.cancel()
            _signal_group(process.pid, signal.SIGKILL)  # whatever it left in its group
            for thread in threads:
                thread.join(5.0)
            process.stdout.close()
            process.stderr.close()
            with self._lock:
                self._process = None
        if feed_error and returncode == 0:
            raise DriverError(f"{name} input failed: {feed_error[0]}") from None
        if returncode != 0 or self._cancelled:
            raise self._failure(name, returncode, total, tail, secret_list, timeout, feed_error)
        stderr_text = summarize(bytes(tail.data), tail.truncated, secret_list)
        return ToolResult(stdout_bytes=total, captured=bytes(captured), stderr=stderr_text)

    def _failure(
        self,
        name: str,
        returncode: int,
        total: int,
        tail: _Tail,
        secrets: list[str],
        timeout: float | None,
        feed_error: list[BaseException],
    ) -> DriverError:
        reason = summarize(bytes(tail.data), tail.truncated, secrets)
        if self._cancelled:
            message = f"{name} was cancelled after {total} bytes"
        elif self._timed_out:
            message = f"{name} did not finish within {timeout:g}s and was killed"
        elif returncode < 0:
            number = -returncode
            message = f"{name} was killed by signal {number} ({_signal_name(number)})"
            message += f" after {total} bytes"
        else:
            message = f"{name} failed with exit code {returncode}"
        if reason:
            message += f": {reason}"
        elif feed_error:
            message += f" (its input failed: {scrub(str(feed_error[0]), secrets)})"
        elif not self._cancelled:
            message += " (it printed no error)"
        return DriverError(message)


def _feed(source: BinaryIO, process: subprocess.Popen[bytes], errors: list[BaseException]) -> None:
    """Copy ``source`` into the tool's stdin, then close it. A tool that exits early (its own
    error, reported from its exit status) shows up here as a broken pipe: not an error."""
    assert process.stdin is not None
    try:
        while chunk := source.read(CHUNK_SIZE):
            process.stdin.write(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    except BaseException as exc:  # the source failed (a corrupt artifact...): stop the tool
        errors.append(exc)
        _signal_group(process.pid, signal.SIGKILL)
    finally:
        with contextlib.suppress(OSError):
            process.stdin.close()


def _signal_group(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def tool_version(executable: str, args: Sequence[str] = ("--version",)) -> str:
    """The tool's own version line (for the manifest), or ``unknown``; never raises."""
    try:
        done = subprocess.run(
            [executable, *args],
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    text = (done.stdout or done.stderr).decode("utf-8", errors="replace").strip()
    return text.splitlines()[0].strip() if text else "unknown"


# --------------------------------------------------------------------------- job options


def job_options(target: object) -> list[str]:
    """The target's extra tool options (``options``), as strings."""
    options: Sequence[str] = getattr(target, "options", None) or ()
    return [str(option) for option in options]


def refuse_options(tool: str, options: Sequence[str], refused: Sequence[str], why: str) -> None:
    """A :class:`DriverError` for the first option in ``refused``, named by its flag only (a
    value glued to a short flag, ``-psecret``, may be a password)."""
    for option in options:
        flag = matching_flag(option, refused)
        if flag is not None:
            raise DriverError(f"{tool} option {flag} is not allowed in a job's options: {why}")


# --------------------------------------------------------------------------- restore targets


@dataclass(frozen=True)
class RestoreTarget:
    """Where to restore to, when it is not a job's target: the same fields a target has.

    ``options`` are extra arguments for the restore tool (``--no-owner``...).
    """

    host: str
    port: int
    database: str | None = None
    user: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    options: tuple[str, ...] = ()


def restore_options(target: object) -> list[str]:
    """A :class:`RestoreTarget`'s options; a job's target carries dump options, not these."""
    return list(target.options) if isinstance(target, RestoreTarget) else []


def parse_server_url(
    url: str,
    *,
    schemes: Sequence[str],
    default_port: int,
    kind: str,
    password_hint: str,
    database_required: bool = False,
) -> RestoreTarget:
    """``scheme://user@host:port/database[?password_env=NAME|password_file=PATH]``.

    A password in the URL is refused (it would sit in a shell history and in argv): the
    message never repeats the URL. ``password_hint`` says where to put it instead.
    """
    from urllib.parse import parse_qs, unquote, urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
        password = parts.password
    except ValueError:
        expected = f"{schemes[0]}://user@host:port/db"
        raise DriverError(f"not a valid {kind} URL (expected {expected})") from None
    if parts.scheme not in schemes:
        wanted = " or ".join(f"{scheme}://" for scheme in schemes)
        raise DriverError(f"a {kind} restore URL starts with {wanted}")
    if password is not None:
        raise DriverError(
            f"the {kind} restore URL holds a password; refused (it would be visible in argv "
            f"and shell history): {password_hint}"
        )
    if not parts.hostname:
        raise DriverError(f"the {kind} restore URL names no host")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"password_env", "password_file"})
    if unknown:
        raise DriverError(
            f"unknown parameter(s) in the {kind} restore URL: {', '.join(unknown)} "
            "(known: password_env, password_file)"
        )
    fields: dict[str, str | None] = {}
    for name in ("password_env", "password_file"):
        values = query.get(name)
        if values and (len(values) > 1 or not values[0]):
            raise DriverError(f"{name} must be given once, with a value")
        fields[name] = values[0] if values else None
    database = unquote(parts.path.lstrip("/")) or None
    user = unquote(parts.username) if parts.username else None
    for label, value in (("database", database), ("user", user), ("host", parts.hostname)):
        if value is not None and (value.startswith("-") or "\x00" in value):
            raise DriverError(f"the {kind} restore URL's {label} is not a plain name")
    if database_required and not database:
        raise DriverError(f"the {kind} restore URL names no database (…/DATABASE)")
    return RestoreTarget(
        host=parts.hostname,
        port=port or default_port,
        database=database,
        user=user,
        password_env=fields["password_env"],
        password_file=fields["password_file"],
    )


class ToolDriver:
    """What every driver built on an external tool shares: one runner, and a way to stop it.

    The dump step calls ``cancel()`` when it is interrupted (soft time limit) so that a tool
    blocked on the database does not keep the step, and its pipe, alive.
    """

    def __init__(self) -> None:
        self._runner = ToolRunner()

    def cancel(self) -> None:
        self._runner.cancel()


def restore_target(target_or_url: Any, parse: Callable[[str], Any]) -> Any:
    """A restore target as given, or parsed from a URL by the driver's ``parse_restore_url``."""
    return parse(target_or_url) if isinstance(target_or_url, str) else target_or_url
