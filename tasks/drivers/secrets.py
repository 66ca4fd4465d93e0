"""Database passwords: read them from where the config points, hand them to a tool safely.

The config holds no password, only where to find one (``password_env``: a variable of the
worker's environment; ``password_file``: a file, one trailing newline stripped). A password
reaches a dump tool only through a channel other users of the host cannot read, never argv
(``/proc/PID/cmdline`` is world-readable):

* PostgreSQL: a passfile (``PGPASSFILE``), mode 0600 in a private 0700 directory;
* MySQL / MariaDB: ``--defaults-extra-file=`` a 0600 option file with ``[client] password=``;
* Redis: ``REDISCLI_AUTH`` in the child's environment (``/proc/PID/environ`` is readable only
  by the same user and root);
* MongoDB: ``--config=`` a 0600 YAML file with ``password:``.

Every file is made by :func:`private_dir` and removed with it, also on error. Errors name the
variable or the file, never the value.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.drivers.base import DriverError

#: A password file is a few bytes; a large file is a mistake (a key file, a dump...).
PASSWORD_FILE_MAX_BYTES = 64 * 1024


def read_password(target: Any) -> str | None:
    """The target's password, or None when it names no source (the tool's own defaults then).

    ``password_env`` must be set and non-empty in this process's environment; ``password_file``
    must be readable UTF-8 and is stripped of one trailing newline (``\\n`` or ``\\r\\n``) only,
    so a password may end in spaces.
    """
    env_name = getattr(target, "password_env", None)
    file_name = getattr(target, "password_file", None)
    if env_name and file_name:
        raise DriverError("password_env and password_file are mutually exclusive: set one")
    if env_name:
        value = os.environ.get(env_name)
        if value is None:
            raise DriverError(f"password_env {env_name} is not set in the worker's environment")
        if not value:
            raise DriverError(f"password_env {env_name} is empty in the worker's environment")
        return _checked(value, f"password_env {env_name}")
    if file_name:
        return _checked(_read_file(Path(file_name).expanduser()), f"password_file {file_name}")
    return None


def _read_file(path: Path) -> str:
    try:
        with open(path, "rb") as stream:
            data = stream.read(PASSWORD_FILE_MAX_BYTES + 1)
    except FileNotFoundError:
        raise DriverError(f"password_file {path}: no such file") from None
    except IsADirectoryError:
        raise DriverError(f"password_file {path}: is a directory") from None
    except OSError as exc:
        raise DriverError(f"password_file {path}: cannot read: {exc.strerror}") from None
    if len(data) > PASSWORD_FILE_MAX_BYTES:
        raise DriverError(f"password_file {path}: larger than {PASSWORD_FILE_MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DriverError(f"password_file {path}: not UTF-8 text") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise DriverError(f"password_file {path}: is empty")
    return text


def _checked(password: str, source: str) -> str:
    """Refuse what no tool's password channel can carry (and never say what it was)."""
    if "\x00" in password:
        raise DriverError(f"{source}: the password contains a NUL byte")
    if "\n" in password or "\r" in password:
        raise DriverError(f"{source}: the password contains a line break")
    return password


@contextlib.contextmanager
def private_dir(prefix: str = "backupy-secret-") -> Iterator[Path]:
    """A 0700 temporary directory, removed with everything in it on exit (also on error)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))  # mkdtemp: mode 0700, unpredictable name
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_secret_file(directory: Path, name: str, content: str) -> Path:
    """Create ``directory/name`` with mode 0600 (never following or reusing an existing file)."""
    path = directory / name
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        stream.write(content)
    return path


# --------------------------------------------------------------------------- per-tool formats


def pgpass_line(password: str) -> str:
    """A libpq passfile line matching any host, port, database and user.

    The file is private to one tool run against one server as one user, so wildcards cannot
    hand the password to another server; they avoid a mismatch between how the config names
    the host and how libpq compares it (``localhost`` vs a socket path). ``:`` and ``\\`` are
    escaped with a backslash, as libpq's passfile format requires.
    """
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"*:*:*:*:{escaped}\n"


def mysql_option_file(password: str) -> str:
    """A MySQL/MariaDB option file with the client password.

    The value is double-quoted, so ``#`` (a comment otherwise), ``'``, leading and trailing
    spaces survive; inside the quotes ``\\`` and ``"`` are escaped with a backslash, which
    both MySQL's and MariaDB's option-file parsers undo.
    """
    escaped = password.replace("\\", "\\\\").replace('"', '\\"')
    return f'[client]\npassword="{escaped}"\n'


def mongo_config_file(password: str) -> str:
    """A ``mongodump --config`` YAML file. A JSON string is a valid YAML double-quoted scalar."""
    return f"password: {json.dumps(password, ensure_ascii=False)}\n"


@contextlib.contextmanager
def pg_password_env(password: str | None) -> Iterator[dict[str, str]]:
    """``{"PGPASSFILE": path}`` for the child (empty without a password); removed on exit."""
    if password is None:
        yield {}
        return
    with private_dir("backupy-pg-") as directory:
        path = write_secret_file(directory, "pgpass", pgpass_line(password))
        yield {"PGPASSFILE": str(path)}


@contextlib.contextmanager
def mysql_defaults_file(password: str | None) -> Iterator[Path]:
    """A 0600 option file for ``--defaults-extra-file=``; removed on exit.

    Made even without a password (then it holds only ``[client]``), so the argv has the same
    shape either way and ``--defaults-extra-file`` is always the first argument.
    """
    content = "[client]\n" if password is None else mysql_option_file(password)
    with private_dir("backupy-mysql-") as directory:
        yield write_secret_file(directory, "client.cnf", content)


@contextlib.contextmanager
def mongo_config(password: str | None) -> Iterator[Path | None]:
    """A 0600 ``--config`` YAML file holding the password (None without one); removed on exit."""
    if password is None:
        yield None
        return
    with private_dir("backupy-mongo-") as directory:
        yield write_secret_file(directory, "config.yaml", mongo_config_file(password))


def redis_auth_env(password: str | None) -> dict[str, str]:
    """``{"REDISCLI_AUTH": password}`` for the child's environment (empty without one)."""
    return {} if password is None else {"REDISCLI_AUTH": password}
