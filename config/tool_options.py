"""Dump-tool options a job may not pass: they would send the dump elsewhere than the artifact
stream, change its format, or put a password in argv.

Kept in config/ so that the config loader refuses them with the job's name and field (exit 2
from `backupy validate`), and the drivers refuse them again just before they run a tool.
"""

from __future__ import annotations

from collections.abc import Sequence

# pg_dump: the dump is always custom format, uncompressed (zstd does that), on stdout.
POSTGRESQL_REFUSED = ("-f", "--file", "-F", "--format", "-Z", "--compress", "-W", "--password")
# mysqldump / mariadb-dump: output on stdout; a password only through the defaults file.
MYSQL_REFUSED = ("-r", "--result-file", "-T", "--tab", "-p", "--password")
# mongodump: one archive on stdout; a password only through the 0600 --config file.
MONGODB_REFUSED = ("-o", "--out", "--archive", "-p", "--password", "--config")


def matching_flag(option: str, flags: Sequence[str]) -> str | None:
    """Which of ``flags`` ``option`` is (``--file``, ``--file=x``, ``-f``, ``-fx``), or None."""
    for flag in flags:
        if flag.startswith("--"):
            if option == flag or option.startswith(flag + "="):
                return flag
        elif option.startswith(flag) and not option.startswith("--"):
            return flag
    return None
