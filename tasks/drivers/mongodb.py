"""MongoDB: ``mongodump --archive`` to stdout, restored with ``mongorestore --archive``.

The archive format is one stream of every collection (and its indexes' definitions), which is
what the artifact stream wants; ``mongodump``'s own ``--gzip`` is left off, zstd compresses.

The password goes in a ``--config`` YAML file (``password: ...``), mode 0600 in a private
directory, removed when the tool exits; never argv (``--password``/``-p`` in a job's options are
refused by the config and here). The target is either ``uri`` (without a password: the config
refuses one) or host/port/database/user.

``check()`` finds ``mongodump`` and opens a TCP connection to the server: the database tools
have no "ping" of their own and a shell (``mongosh``) cannot take a password other than on a
prompt or in argv. ``server_version()`` answers ``unknown`` for the same reason; the archive's
header records the server's version itself.

Restore loads the archive into the server through ``mongorestore``; to load into a database of
another name, set ``source_database`` on the restore target (``--nsFrom SRC.* --nsTo DST.*``).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from config.tool_options import MONGODB_REFUSED
from tasks.drivers import secrets
from tasks.drivers.base import DriverError, DumpInfo, ProgressFn
from tasks.drivers.tool import (
    ToolDriver,
    clean_env,
    find_tool,
    job_options,
    parse_server_url,
    refuse_options,
    tool_version,
)

PACKAGE = "mongodb-database-tools"
CONNECT_TIMEOUT_SECONDS = 10.0
#: Options that would send the dump elsewhere than stdout, or put a password in argv.
REFUSED_DUMP_OPTIONS = MONGODB_REFUSED


@dataclass(frozen=True)
class MongoRestoreTarget:
    """Where a restore goes: ``uri`` or host/port, plus the database mapping and options."""

    uri: str | None = None
    host: str | None = None
    port: int = 27017
    database: str | None = None
    user: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    source_database: str | None = None
    options: tuple[str, ...] = ()


class MongoDriver(ToolDriver):
    """Driver for ``target.type == "mongodb"``."""

    name = "mongodb"
    extension = "archive"

    def check(self, target: Any) -> None:
        find_tool("mongodump", PACKAGE)
        host, port = _address(target)
        if host is None:
            return  # mongodb+srv or several hosts: DNS / the driver decides, not a TCP probe
        try:
            with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_SECONDS):
                pass
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise DriverError(f"mongodb {host}:{port} is not reachable: {reason}") from None

    def server_version(self, target: Any) -> str:
        return "unknown"

    def dump(self, target: Any, out: BinaryIO, *, progress: ProgressFn | None = None) -> DumpInfo:
        executable = find_tool("mongodump", PACKAGE)
        password = secrets.read_password(target)
        with secrets.mongo_config(password) as config:
            argv = dump_argv(executable, target, config, has_password=password is not None)
            result = self._runner.run(
                argv, env=clean_env(), secrets=[password], out=out, progress=progress
            )
        return DumpInfo(
            raw_bytes=result.stdout_bytes,
            server_version="unknown",
            tool="mongodump",
            tool_version=tool_version(executable),
        )

    def restore(self, target_or_path: Any, source: BinaryIO) -> None:
        target = parse_restore_url(target_or_path) if isinstance(target_or_path, str) else None
        target = target or target_or_path
        executable = find_tool("mongorestore", PACKAGE)
        password = secrets.read_password(target)
        with secrets.mongo_config(password) as config:
            argv = restore_argv(executable, target, config, has_password=password is not None)
            self._runner.run(argv, env=clean_env(), secrets=[password], source=source)


# --------------------------------------------------------------------------- argv


def connection_args(target: Any, config: Any, *, has_password: bool) -> list[str]:
    args: list[str] = []
    if config is not None:
        args.append(f"--config={config}")
    uri = getattr(target, "uri", None)
    user = getattr(target, "user", None)
    if uri:
        args.append(f"--uri={uri}")
    else:
        host = getattr(target, "host", None)
        if not host:
            raise DriverError("a MongoDB target needs a uri or a host")
        args += [f"--host={host}", f"--port={getattr(target, 'port', None) or 27017}"]
    if user:
        args.append(f"--username={user}")
    elif has_password and not (uri and urlsplit(uri).username):
        raise DriverError("a MongoDB password needs a user (set user, or put it in the uri)")
    return args


def dump_argv(executable: str, target: Any, config: Any, *, has_password: bool) -> list[str]:
    options = job_options(target)
    why = "the dump is one archive on stdout, and a password never goes into argv"
    refuse_options("mongodump", options, REFUSED_DUMP_OPTIONS, why)
    argv = [executable, "--archive", *connection_args(target, config, has_password=has_password)]
    database = getattr(target, "database", None)
    if database:
        argv.append(f"--db={database}")
    return [*argv, *options]


def restore_argv(executable: str, target: Any, config: Any, *, has_password: bool) -> list[str]:
    argv = [executable, "--archive", *connection_args(target, config, has_password=has_password)]
    source_db = getattr(target, "source_database", None)
    database = getattr(target, "database", None)
    if source_db and database and source_db != database:
        argv += [f"--nsFrom={source_db}.*", f"--nsTo={database}.*"]
    elif database:
        argv.append(f"--nsInclude={database}.*")
    options: Sequence[str] = getattr(target, "options", None) or ()
    return [*argv, *(str(option) for option in options)]


def parse_restore_url(url: str) -> MongoRestoreTarget:
    """``mongodb://user@host:port/db[?password_env=NAME]`` → a restore target.

    A URL with several hosts or ``mongodb+srv://`` is kept whole as ``uri`` (without our
    ``password_*`` parameters); a password in it is refused either way.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        raise DriverError("not a valid MongoDB URL (expected mongodb://user@host/db)") from None
    if parts.scheme not in ("mongodb", "mongodb+srv"):
        raise DriverError("a MongoDB restore URL starts with mongodb:// or mongodb+srv://")
    if password is not None:
        raise DriverError(
            "the MongoDB restore URL holds a password; refused (it would be visible in argv "
            "and shell history): use ?password_env=NAME or ?password_file=PATH"
        )
    ours = {"password_env", "password_file"}
    query = parse_qsl(parts.query, keep_blank_values=True)
    theirs = [(key, value) for key, value in query if key not in ours]
    if parts.scheme == "mongodb" and "," not in parts.netloc and not theirs:
        plain = parse_server_url(
            url,
            schemes=("mongodb",),
            default_port=27017,
            kind="MongoDB",
            password_hint="use ?password_env=NAME or ?password_file=PATH",
        )
        return MongoRestoreTarget(
            host=plain.host,
            port=plain.port,
            database=plain.database,
            user=plain.user,
            password_env=plain.password_env,
            password_file=plain.password_file,
        )
    mine = {key: value for key, value in query if key in ours}
    uri = urlunsplit(parts._replace(query=urlencode(theirs)))
    database = unquote(parts.path.lstrip("/")) or None
    return MongoRestoreTarget(uri=uri, database=database, **mine)


def _address(target: Any) -> tuple[str | None, int]:
    uri = getattr(target, "uri", None)
    if uri:
        parts = urlsplit(uri)
        if parts.scheme != "mongodb" or "," in parts.netloc:
            return None, 0
        return parts.hostname, parts.port or 27017
    return getattr(target, "host", None), getattr(target, "port", None) or 27017
