"""MySQL and MariaDB: ``mariadb-dump`` (or ``mysqldump``), restored with the ``mariadb`` client.

One driver serves ``type: mysql`` and ``type: mariadb``: the tools are the same program under
two names. ``mariadb-dump``/``mariadb`` are used when on PATH, else ``mysqldump``/``mysql``
(override with ``BACKUPY_MARIADB_DUMP_PATH`` / ``BACKUPY_MYSQLDUMP_PATH`` and
``BACKUPY_MARIADB_PATH`` / ``BACKUPY_MYSQL_PATH``).

The dump is ``--single-transaction`` (a consistent InnoDB snapshot without locking writers),
with routines, triggers and events, binary columns as hex (``--hex-blob``: the SQL text stays
valid whatever the bytes) and rows streamed (``--quick``: no table is buffered in memory). The
database is named without ``--databases``, so the dump has no ``CREATE DATABASE``/``USE`` and
can be restored into a database of any name.

The password travels in an option file, mode 0600 in a private directory, passed with
``--defaults-extra-file=`` as the FIRST argument (the tools ignore it anywhere else), and
removed when the tool exits: never argv. The file is made even without a password so the
argv keeps one shape. ``--protocol=TCP`` makes ``host``/``port`` mean what they say
(``localhost`` would otherwise silently mean the local socket); a job may override it in
``options``.

Restore loads the SQL into an EXISTING database (create it first) through the client with
``--binary-mode``. DDL commits implicitly in MySQL, so a failed restore can leave a partly
loaded database: restore into a new, empty one.
"""

from __future__ import annotations

from typing import Any, BinaryIO

from config.tool_options import MYSQL_REFUSED
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

PACKAGE = "mariadb-client or mysql-client"
DUMP_TOOLS = ("mariadb-dump", "mysqldump")
CLIENT_TOOLS = ("mariadb", "mysql")
DUMP_FLAGS = (
    "--single-transaction",
    "--routines",
    "--triggers",
    "--events",
    "--hex-blob",
    "--quick",
)
CONNECT_TIMEOUT_SECONDS = 10
QUERY_TIMEOUT_SECONDS = 60.0
#: Options that would send the dump elsewhere than stdout, or put a password in argv.
REFUSED_DUMP_OPTIONS = MYSQL_REFUSED


class MySQLDriver(ToolDriver):
    """Driver for ``target.type == "mysql"``: host, port, database, user, password, options."""

    name = "mysql"
    extension = "sql"

    def check(self, target: Any) -> None:
        self._query(target, "SELECT 1")

    def server_version(self, target: Any) -> str:
        return self._query(target, "SELECT VERSION()") or "unknown"

    def dump(self, target: Any, out: BinaryIO, *, progress: ProgressFn | None = None) -> DumpInfo:
        executable = find_tool(DUMP_TOOLS, PACKAGE)
        version = self.server_version(target)
        password = secrets.read_password(target)
        with secrets.mysql_defaults_file(password) as defaults:
            argv = dump_argv(executable, target, defaults)
            result = self._runner.run(
                argv, env=clean_env(), secrets=[password], out=out, progress=progress
            )
        return DumpInfo(
            raw_bytes=result.stdout_bytes,
            server_version=version,
            tool=_basename(executable),
            tool_version=tool_version(executable),
        )

    def restore(self, target_or_path: Any, source: BinaryIO) -> None:
        """Load the SQL from ``source`` into the existing database (see the module)."""
        target = restore_target(target_or_path, parse_restore_url)
        executable = find_tool(CLIENT_TOOLS, PACKAGE)
        password = secrets.read_password(target)
        with secrets.mysql_defaults_file(password) as defaults:
            argv = restore_argv(executable, target, defaults)
            self._runner.run(argv, env=clean_env(), secrets=[password], source=source)

    def _query(self, target: Any, sql: str) -> str:
        executable = find_tool(CLIENT_TOOLS, PACKAGE)
        password = secrets.read_password(target)
        with secrets.mysql_defaults_file(password) as defaults:
            argv = query_argv(executable, target, defaults, sql)
            result = self._runner.run(
                argv, env=clean_env(), secrets=[password], timeout=QUERY_TIMEOUT_SECONDS
            )
        return result.captured.decode("utf-8", errors="replace").strip()


class MariaDBDriver(MySQLDriver):
    """The same driver under ``target.type == "mariadb"`` (the manifest names it so)."""

    name = "mariadb"


# --------------------------------------------------------------------------- argv


def connection_args(target: Any) -> list[str]:
    host = _required(target, "host")
    args = [f"--host={host}", f"--port={getattr(target, 'port', None) or 3306}", "--protocol=TCP"]
    user = getattr(target, "user", None)
    if user:
        args.append(f"--user={user}")
    return args


def dump_argv(executable: str, target: Any, defaults_file: Any) -> list[str]:
    options = job_options(target)
    why = "the dump goes to stdout, and a password never into argv"
    refuse_options(_basename(executable), options, REFUSED_DUMP_OPTIONS, why)
    return [
        executable,
        f"--defaults-extra-file={defaults_file}",  # must be first: ignored anywhere else
        *DUMP_FLAGS,
        *connection_args(target),
        *options,
        "--",
        _required(target, "database"),
    ]


def restore_argv(executable: str, target: Any, defaults_file: Any) -> list[str]:
    return [
        executable,
        f"--defaults-extra-file={defaults_file}",
        "--binary-mode",
        "--batch",
        *connection_args(target),
        *restore_options(target),
        "--",
        _required(target, "database"),
    ]


def query_argv(executable: str, target: Any, defaults_file: Any, sql: str) -> list[str]:
    return [
        executable,
        f"--defaults-extra-file={defaults_file}",
        "--batch",
        "--skip-column-names",
        f"--connect-timeout={CONNECT_TIMEOUT_SECONDS}",
        *connection_args(target),
        f"--execute={sql}",
        "--",
        _required(target, "database"),
    ]


def parse_restore_url(url: str) -> RestoreTarget:
    """``mysql://user@host:port/db`` or ``mariadb://…`` (``?password_env=NAME``) → a target."""
    return parse_server_url(
        url,
        schemes=("mysql", "mariadb"),
        default_port=3306,
        kind="MySQL/MariaDB",
        password_hint="use ?password_env=NAME or ?password_file=PATH",
        database_required=True,
    )


def _basename(executable: str) -> str:
    return executable.rsplit("/", 1)[-1]


def _required(target: Any, field: str) -> str:
    value = getattr(target, field, None)
    if not value:
        raise DriverError(f"a MySQL/MariaDB target needs a {field}")
    return str(value)
