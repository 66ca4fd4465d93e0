"""Redis: ``redis-cli --rdb -``, the server's RDB snapshot over the replication protocol.

The server forks, writes a point-in-time snapshot and streams it to ``redis-cli`` as it would
to a replica; ``redis-cli`` writes it to stdout (``-``, supported since Redis 7.0: checked on
redis-cli 7.0.15). No disk shared with the server is needed, and the snapshot holds every
logical database (the target's ``db`` does not narrow it: an RDB has no such notion).

The password reaches ``redis-cli`` as ``REDISCLI_AUTH`` in its own environment (readable only
by its user and root, unlike argv); ``user`` goes in ``--user`` for an ACL user.

Timing: a server with ``repl-diskless-sync yes`` (the default since Redis 7) waits
``repl-diskless-sync-delay`` (default 5 s) for other replicas before it starts the transfer, so
even a tiny dump takes that long; the server's setting, not ours.

Restore writes the RDB to a NEW file for a server to load (``redis-server --dir D
--dbfilename F``), never over an existing one: the bytes go to a temporary beside it, must
start with the RDB magic and, when ``redis-check-rdb`` is on PATH, pass it, and are then linked
into place. Loading into a running server is a server operation (stop it, put the file in its
``dir``, start it), deliberately not done from here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from tasks.drivers import secrets
from tasks.drivers.base import DriverError, DumpInfo, ProgressFn, new_file_writer
from tasks.drivers.tool import (
    CHUNK_SIZE,
    ToolDriver,
    clean_env,
    find_tool,
    tool_version,
)
from tasks.storage import StorageError

PACKAGE = "redis-tools"
RDB_MAGIC = b"REDIS"
QUERY_TIMEOUT_SECONDS = 30.0
CHECK_TIMEOUT_SECONDS = 300.0


class RedisDriver(ToolDriver):
    """Driver for ``target.type == "redis"``: host, port, user, password (``db`` is moot)."""

    name = "redis"
    extension = "rdb"

    def check(self, target: Any) -> None:
        reply = self._query(target, ["PING"])
        if reply != "PONG":
            raise DriverError(f"redis {_address(target)} did not answer PING: {reply[:200]}")

    def server_version(self, target: Any) -> str:
        reply = self._query(target, ["INFO", "server"])
        for line in reply.splitlines():
            if line.startswith("redis_version:"):
                return line.partition(":")[2].strip()
        raise DriverError(f"redis {_address(target)} did not report its version: {reply[:200]}")

    def dump(self, target: Any, out: BinaryIO, *, progress: ProgressFn | None = None) -> DumpInfo:
        executable = find_tool("redis-cli", PACKAGE)
        version = self.server_version(target)
        password = secrets.read_password(target)
        env = clean_env(secrets.redis_auth_env(password))
        argv = dump_argv(executable, target)
        result = self._runner.run(argv, env=env, secrets=[password], out=out, progress=progress)
        return DumpInfo(
            raw_bytes=result.stdout_bytes,
            server_version=version,
            tool="redis-cli",
            tool_version=tool_version(executable),
        )

    def restore(self, target_or_path: Any, source: BinaryIO) -> None:
        """Write the RDB from ``source`` to a NEW file (see the module); never overwrites."""
        path = _restore_path(target_or_path)
        with new_file_writer(path, "file") as writer:
            first = True
            while chunk := source.read(CHUNK_SIZE):
                if first and not chunk.startswith(RDB_MAGIC):
                    raise DriverError(f"cannot restore {path}: the data is not a Redis RDB file")
                first = False
                writer.write(chunk)
            if first:
                raise DriverError(f"cannot restore {path}: the dump is empty")
            writer.sync()
            self._verify(writer.temp_path, path)
            try:
                writer.commit(overwrite=False)
            except StorageError as exc:
                raise DriverError(str(exc)) from None
            except OSError as exc:
                raise DriverError(f"cannot restore to {path}: {exc.strerror}") from None

    def _verify(self, candidate: Path, final: Path) -> None:
        """``redis-check-rdb`` on the temporary, when the host has it."""
        try:
            checker = find_tool("redis-check-rdb", "redis-server")
        except DriverError:
            return
        try:
            self._runner.run(
                [checker, str(candidate)], env=clean_env(), timeout=CHECK_TIMEOUT_SECONDS
            )
        except DriverError as exc:
            raise DriverError(f"cannot restore {final}: the RDB does not check: {exc}") from None

    def _query(self, target: Any, command: list[str]) -> str:
        executable = find_tool("redis-cli", PACKAGE)
        password = secrets.read_password(target)
        env = clean_env(secrets.redis_auth_env(password))
        argv = [*connection_args(executable, target), *command]
        result = self._runner.run(argv, env=env, secrets=[password], timeout=QUERY_TIMEOUT_SECONDS)
        reply = result.captured.decode("utf-8", errors="replace").strip()
        # redis-cli exits 0 after an error reply (NOAUTH...) and says why on stderr: add it.
        if not reply or reply.startswith(("NOAUTH", "WRONGPASS", "ERR", "NOPERM")):
            why = f"{reply} ({result.stderr})" if result.stderr else reply
            raise DriverError(f"redis-cli could not query {_address(target)}: {why or 'no reply'}")
        return reply


def connection_args(executable: str, target: Any) -> list[str]:
    host = getattr(target, "host", None)
    if not host:
        raise DriverError("a Redis target needs a host")
    argv = [executable, "-h", str(host), "-p", str(getattr(target, "port", None) or 6379)]
    user = getattr(target, "user", None)
    if user:
        argv += ["--user", str(user)]
    return argv


def dump_argv(executable: str, target: Any) -> list[str]:
    return [*connection_args(executable, target), "--rdb", "-"]


def parse_restore_url(url: str) -> Path:
    """Where a Redis restore goes: ``file:///path/dump.rdb`` or a plain path."""
    if "://" not in url:
        return Path(url).expanduser()
    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise DriverError(
            "a Redis restore goes to a new RDB file: give a path or file:///path/dump.rdb "
            "(a server loads it at start: redis-server --dir DIR --dbfilename FILE)"
        )
    return Path(unquote(parts.path))


def _restore_path(target_or_path: Any) -> Path:
    raw = getattr(target_or_path, "path", target_or_path)
    if isinstance(raw, str):
        return parse_restore_url(raw)
    if isinstance(raw, os.PathLike):
        return Path(raw).expanduser()
    raise DriverError("a Redis restore needs the path of a new RDB file")


def _address(target: Any) -> str:
    return f"{getattr(target, 'host', '?')}:{getattr(target, 'port', None) or 6379}"
