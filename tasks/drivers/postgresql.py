"""PostgreSQL: ``pg_dump --format=custom --compress=0``, restored with ``pg_restore``.

The custom format is what ``pg_restore`` reads (selective and reordered restores, ``--list``);
``--compress=0`` because the artifact stream compresses with zstd, which is faster and smaller
than pg_dump's gzip, and compressing twice only costs CPU.

The password reaches ``pg_dump``/``psql``/``pg_restore`` through a passfile (``PGPASSFILE``)
of mode 0600 in a private directory, removed when the tool exits; never argv. Every tool runs
with ``--no-password``, so a missing or wrong password fails at once instead of waiting for a
prompt. ``PGCONNECT_TIMEOUT`` defaults to 10 s. From the worker's environment the tools get only
the ``PG*`` settings (``PGSSLMODE``, ``PGPASSFILE``...), never ``PGPASSWORD`` nor the variables
naming a server (the target names it).

Restore (``restore(target, source)``) loads a dump into an EXISTING database (create it first:
``createdb restore_app``), in one transaction (``--single-transaction --exit-on-error``): a
failed restore leaves the database as it was. Owners and privileges are restored as dumped
(pg_restore's default), which needs the roles to exist and a restoring role allowed to set
them; to restore as a plain role, pass ``options=("--no-owner", "--no-privileges")`` on the
restore target. :func:`parse_restore_url` turns ``postgresql://user@host:port/db`` into such a
target; a password in the URL is refused.
"""

from __future__ import annotations

from typing import Any, BinaryIO

from config.tool_options import POSTGRESQL_REFUSED
from tasks.drivers import secrets
from tasks.drivers.base import DriverError, DumpInfo, ProgressFn
from tasks.drivers.tool import (
    RestoreTarget,
    ToolDriver,
    clean_env,
    find_tool,
    job_options,
    parse_server_url,
    refuse_options,
    restore_options,
    restore_target,
    tool_version,
)

PACKAGE = "postgresql-client"
CONNECT_TIMEOUT_SECONDS = "10"
#: psql queries (check, version) are small: they never need long.
QUERY_TIMEOUT_SECONDS = 60.0
#: Variables naming a server or holding a password: the target decides those, not the worker.
EXCLUDED_ENV = ("PGPASSWORD", "PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE")
#: pg_dump options that would break the stream (a file instead of stdout, another format, a
#: prompt): refused, whatever the job says.
REFUSED_DUMP_OPTIONS = POSTGRESQL_REFUSED


class PostgresDriver(ToolDriver):
    """Driver for ``target.type == "postgresql"``: host, port, database, user, password, options."""

    name = "postgresql"
    extension = "pgdump"

    def check(self, target: Any) -> None:
        self._psql(target, "SELECT 1")

    def server_version(self, target: Any) -> str:
        return self._psql(target, "SHOW server_version") or "unknown"

    def dump(self, target: Any, out: BinaryIO, *, progress: ProgressFn | None = None) -> DumpInfo:
        executable = find_tool("pg_dump", PACKAGE)
        argv = dump_argv(executable, target)
        version = self.server_version(target)
        password = secrets.read_password(target)
        with secrets.pg_password_env(password) as extra:
            result = self._runner.run(
                argv, env=tool_env(extra), secrets=[password], out=out, progress=progress
            )
        return DumpInfo(
            raw_bytes=result.stdout_bytes,
            server_version=version,
            tool="pg_dump",
            tool_version=tool_version(executable),
        )

    def restore(self, target_or_path: Any, source: BinaryIO) -> None:
        """Load a custom-format dump from ``source`` into the existing database (see module)."""
        target = restore_target(target_or_path, parse_restore_url)
        executable = find_tool("pg_restore", PACKAGE)
        argv = restore_argv(executable, target)
        password = secrets.read_password(target)
        with secrets.pg_password_env(password) as extra:
            self._runner.run(argv, env=tool_env(extra), secrets=[password], source=source)

    def _psql(self, target: Any, sql: str) -> str:
        executable = find_tool("psql", PACKAGE)
        argv = psql_argv(executable, target, sql)
        password = secrets.read_password(target)
        with secrets.pg_password_env(password) as extra:
            result = self._runner.run(
                argv, env=tool_env(extra), secrets=[password], timeout=QUERY_TIMEOUT_SECONDS
            )
        return result.captured.decode("utf-8", errors="replace").strip()


# --------------------------------------------------------------------------- argv, env


def tool_env(extra: dict[str, str]) -> dict[str, str]:
    env = clean_env(extra, passthrough=("PG",), exclude=EXCLUDED_ENV)
    env.setdefault("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT_SECONDS)
    env.setdefault("PGAPPNAME", "backupy")
    return env


def connection_args(target: Any) -> list[str]:
    """``--host``/``--port``/``--username``: names only, never a password."""
    host = _required(target, "host")
    args = ["--host", host, "--port", str(getattr(target, "port", None) or 5432)]
    user = getattr(target, "user", None)
    if user:
        args += ["--username", user]
    return args


def dbname_arg(database: str) -> str:
    """``--dbname=NAME``. A name with ``=`` or a URI prefix would be read by libpq as a
    connection string, so such a name goes in one, quoted: it stays a database name."""
    if "=" in database or database.startswith(("postgresql://", "postgres://")):
        quoted = database.replace("\\", "\\\\").replace("'", "\\'")
        return f"--dbname=dbname='{quoted}'"
    return f"--dbname={database}"


def dump_argv(executable: str, target: Any) -> list[str]:
    options = job_options(target)
    why = "the dump is always custom format, uncompressed, on stdout"
    refuse_options("pg_dump", options, REFUSED_DUMP_OPTIONS, why)
    return [
        executable,
        "--format=custom",
        "--compress=0",
        "--no-password",
        *connection_args(target),
        *options,
        dbname_arg(_required(target, "database")),
    ]


def restore_argv(executable: str, target: Any) -> list[str]:
    return [
        executable,
        "--no-password",
        "--exit-on-error",
        "--single-transaction",
        *connection_args(target),
        *restore_options(target),
        dbname_arg(_required(target, "database")),
    ]


def psql_argv(executable: str, target: Any, sql: str) -> list[str]:
    return [
        executable,
        "--no-psqlrc",
        "--no-password",
        "--no-align",
        "--tuples-only",
        "--quiet",
        "--set=ON_ERROR_STOP=1",
        *connection_args(target),
        dbname_arg(_required(target, "database")),
        "--command",
        sql,
    ]


def parse_restore_url(url: str) -> RestoreTarget:
    """``postgresql://user@host:port/db[?password_env=NAME]`` → a restore target."""
    return parse_server_url(
        url,
        schemes=("postgresql", "postgres"),
        default_port=5432,
        kind="PostgreSQL",
        password_hint="use ?password_env=NAME or ?password_file=PATH, or a PGPASSFILE",
        database_required=True,
    )


def _required(target: Any, field: str) -> str:
    value = getattr(target, field, None)
    if not value:
        raise DriverError(f"a PostgreSQL target needs a {field}")
    return str(value)
