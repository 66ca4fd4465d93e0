"""Database drivers without databases: argv, secrets, restore URLs, tool errors, scrubbing.

The drivers run fake tools here (a shell script named ``pg_dump``, ``mariadb-dump``... selected
with the ``BACKUPY_<TOOL>_PATH`` overrides) that record their argv, environment and the secret
file they were handed, so what a real tool would see is checked without the real tool.
"""

from __future__ import annotations

import io
import os
import stat
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import yaml

from tasks.drivers import get_driver, known_driver_types, secrets
from tasks.drivers import mongodb as mongo_mod
from tasks.drivers import mysql as mysql_mod
from tasks.drivers import postgresql as pg_mod
from tasks.drivers import redisdb as redis_mod
from tasks.drivers.base import DriverError
from tasks.drivers.tool import (
    RestoreTarget,
    ToolRunner,
    clean_env,
    find_tool,
    override_variable,
    scrub,
    summarize,
)

PASSWORD = "S3cr:et#pa\"ss wo\\rd'é"
TOOLS = (
    "pg_dump", "pg_restore", "psql", "mariadb-dump", "mariadb", "redis-cli",
    "mongodump", "mongorestore",
)  # fmt: skip

# A fake tool: records argv (one per line), env, and the secret file it was given; answers
# version queries; writes some dump bytes.
FAKE_TOOL = textwrap.dedent(
    """\
    #!/bin/sh
    case "$*" in *--version*) echo "$(basename "$0") fake 1.0"; exit 0;; esac
    rec="@RECORDS@/$(basename "$0")"
    : > "$rec.argv"
    for a in "$@"; do printf '%s\\n' "$a" >> "$rec.argv"; done
    env > "$rec.env"
    for a in "$@"; do
      case "$a" in
        --defaults-extra-file=*|--config=*)
          f="${a#*=}"; cp "$f" "$rec.secret"
          stat -c %a "$f" > "$rec.mode"; echo "$f" > "$rec.path";;
      esac
    done
    if [ -n "$PGPASSFILE" ]; then
      cp "$PGPASSFILE" "$rec.secret"; stat -c %a "$PGPASSFILE" > "$rec.mode"
      echo "$PGPASSFILE" > "$rec.path"
    fi
    case "$*" in
      *"SHOW server_version"*) echo "15.99 (fake)"; exit 0;;
      *"VERSION()"*) echo "10.99-MariaDB-fake"; exit 0;;
      *"INFO server"*) printf 'redis_version:7.99.0\\r\\n'; exit 0;;
      *PING*) echo PONG; exit 0;;
      *"SELECT 1"*) echo 1; exit 0;;
    esac
    if [ -e "@RECORDS@/FAIL" ]; then echo "fatal: $(cat "@RECORDS@/FAIL")" >&2; exit 3; fi
    cat > "$rec.stdin" 2>/dev/null < /dev/stdin
    printf 'REDIS0010-fake-dump-bytes'
    """
)


@pytest.fixture
def fake_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every tool overridden by the fake; returns the directory its records go to."""
    bin_dir, records = tmp_path / "bin", tmp_path / "records"
    bin_dir.mkdir()
    records.mkdir()
    for tool in TOOLS:
        path = bin_dir / tool
        path.write_text(FAKE_TOOL.replace("@RECORDS@", str(records)))
        path.chmod(0o755)
        monkeypatch.setenv(override_variable(tool), str(path))
    monkeypatch.setenv("BACKUP_DB_PASSWORD", PASSWORD)
    return records


def record(records: Path, tool: str, what: str) -> str:
    return (records / f"{tool}.{what}").read_text()


def argv_of(records: Path, tool: str) -> list[str]:
    return record(records, tool, "argv").splitlines()


def pg_target(**fields: object) -> SimpleNamespace:
    base = dict(
        type="postgresql", host="db.internal", port=5433, database="app", user="backup",
        password_env="BACKUP_DB_PASSWORD", password_file=None, options=[],
    )  # fmt: skip
    base.update(fields)
    return SimpleNamespace(**base)


def mysql_target(**fields: object) -> SimpleNamespace:
    return pg_target(type="mariadb", port=3307, **fields)


def redis_target(**fields: object) -> SimpleNamespace:
    base = dict(
        type="redis", host="cache.internal", port=6380, db=0, user=None,
        password_env="BACKUP_DB_PASSWORD", password_file=None,
    )  # fmt: skip
    base.update(fields)
    return SimpleNamespace(**base)


def mongo_target(**fields: object) -> SimpleNamespace:
    base = dict(
        type="mongodb", uri=None, host="mongo.internal", port=27018, database="app",
        user="backup", password_env="BACKUP_DB_PASSWORD", password_file=None, options=[],
    )  # fmt: skip
    base.update(fields)
    return SimpleNamespace(**base)


def assert_no_private_dirs_left(before: set[str]) -> None:
    import tempfile

    now = {p.name for p in Path(tempfile.gettempdir()).glob("backupy-*")}
    assert now - before == set(), now - before


def private_dirs() -> set[str]:
    import tempfile

    return {p.name for p in Path(tempfile.gettempdir()).glob("backupy-*")}


# --------------------------------------------------------------------------- registry


def test_every_database_has_a_driver() -> None:
    assert {"postgresql", "mysql", "mariadb", "redis", "mongodb", "sqlite"} <= set(
        known_driver_types()
    )
    expected = {
        "postgresql": ("postgresql", "pgdump"),
        "mysql": ("mysql", "sql"),
        "mariadb": ("mariadb", "sql"),
        "redis": ("redis", "rdb"),
        "mongodb": ("mongodb", "archive"),
    }
    for type_name, (name, extension) in expected.items():
        driver = get_driver(type_name)
        assert (driver.name, driver.extension) == (name, extension)
        assert callable(driver.cancel)


# --------------------------------------------------------------------------- argv


def test_pg_dump_argv() -> None:
    argv = pg_mod.dump_argv("/usr/bin/pg_dump", pg_target(options=["--exclude-table=logs"]))
    assert argv == [
        "/usr/bin/pg_dump", "--format=custom", "--compress=0", "--no-password",
        "--host", "db.internal", "--port", "5433", "--username", "backup",
        "--exclude-table=logs", "--dbname=app",
    ]  # fmt: skip


def test_pg_database_name_that_looks_like_a_connection_string_stays_a_name() -> None:
    assert pg_mod.dbname_arg("app") == "--dbname=app"
    assert pg_mod.dbname_arg("host=evil") == "--dbname=dbname='host=evil'"
    assert pg_mod.dbname_arg("a'b=c") == "--dbname=dbname='a\\'b=c'"


@pytest.mark.parametrize("option", ["--file=/tmp/x", "-f", "-Fp", "--format=plain", "-Z9"])
def test_pg_dump_options_that_break_the_stream_are_refused(option: str) -> None:
    with pytest.raises(DriverError, match="not allowed in a job's options"):
        pg_mod.dump_argv("pg_dump", pg_target(options=[option]))


def test_pg_restore_argv_uses_restore_options_not_the_jobs_dump_options() -> None:
    job_target = pg_target(options=["--exclude-table=logs"])
    argv = pg_mod.restore_argv("pg_restore", job_target)
    assert "--exclude-table=logs" not in argv
    assert argv[:4] == ["pg_restore", "--no-password", "--exit-on-error", "--single-transaction"]
    restore = RestoreTarget(host="h", port=5432, database="r", options=("--no-owner",))
    assert pg_mod.restore_argv("pg_restore", restore)[-2:] == ["--no-owner", "--dbname=r"]


def test_mysql_dump_argv_defaults_file_first() -> None:
    target = mysql_target(options=["--skip-lock-tables"])
    argv = mysql_mod.dump_argv("/usr/bin/mariadb-dump", target, "/tmp/x/client.cnf")
    assert argv[1] == "--defaults-extra-file=/tmp/x/client.cnf"
    for flag in mysql_mod.DUMP_FLAGS:
        assert flag in argv
    assert argv[-5:] == ["--protocol=TCP", "--user=backup", "--skip-lock-tables", "--", "app"]
    assert "--host=db.internal" in argv and "--port=3307" in argv
    assert "--databases" not in argv  # no CREATE DATABASE/USE: restorable under any name


@pytest.mark.parametrize("option", ["-psecret", "--password=x", "--result-file=/x", "-r/x"])
def test_mysql_dump_options_refused(option: str) -> None:
    with pytest.raises(DriverError, match="not allowed") as caught:
        mysql_mod.dump_argv("mariadb-dump", mysql_target(options=[option]), "/f")
    assert "secret" not in str(caught.value)


def test_redis_dump_argv() -> None:
    assert redis_mod.dump_argv("redis-cli", redis_target()) == [
        "redis-cli", "-h", "cache.internal", "-p", "6380", "--rdb", "-",
    ]  # fmt: skip
    with_user = redis_mod.dump_argv("redis-cli", redis_target(user="backup"))
    assert with_user[5:] == ["--user", "backup", "--rdb", "-"]


def test_mongo_dump_argv_host_and_uri() -> None:
    argv = mongo_mod.dump_argv(
        "mongodump", mongo_target(options=["--readPreference=secondary"]), "/p/c.yaml",
        has_password=True,
    )  # fmt: skip
    assert argv == [
        "mongodump", "--archive", "--config=/p/c.yaml", "--host=mongo.internal",
        "--port=27018", "--username=backup", "--db=app", "--readPreference=secondary",
    ]  # fmt: skip
    uri = mongo_target(uri="mongodb://backup@m1,m2/app?replicaSet=rs0", host=None, user=None)
    argv = mongo_mod.dump_argv("mongodump", uri, "/p/c.yaml", has_password=True)
    assert "--uri=mongodb://backup@m1,m2/app?replicaSet=rs0" in argv
    with pytest.raises(DriverError, match="needs a user"):
        mongo_mod.dump_argv("mongodump", mongo_target(user=None), "/c", has_password=True)
    with pytest.raises(DriverError, match="not allowed"):
        mongo_mod.dump_argv(
            "mongodump", mongo_target(options=["--out=/x"]), None, has_password=False
        )


def test_mongo_restore_argv_maps_the_database() -> None:
    target = mongo_mod.MongoRestoreTarget(host="h", database="copy", source_database="app")
    argv = mongo_mod.restore_argv("mongorestore", target, None, has_password=False)
    assert argv == [
        "mongorestore", "--archive", "--host=h", "--port=27017",
        "--nsFrom=app.*", "--nsTo=copy.*",
    ]  # fmt: skip


# --------------------------------------------------------------------------- drivers, fake tools


def test_pg_dump_hands_the_password_in_a_private_passfile(fake_tools: Path) -> None:
    before = private_dirs()
    out = io.BytesIO()
    info = get_driver("postgresql").dump(pg_target(options=["--no-comments"]), out)
    assert out.getvalue() == b"REDIS0010-fake-dump-bytes"
    assert info.raw_bytes == len(out.getvalue())
    assert info.server_version == "15.99 (fake)"
    assert info.tool_version == "pg_dump fake 1.0"
    argv = argv_of(fake_tools, "pg_dump")
    assert "--no-comments" in argv and argv[-1] == "--dbname=app"
    assert all(PASSWORD not in arg for arg in argv)
    escaped = PASSWORD.replace("\\", "\\\\").replace(":", "\\:")
    assert record(fake_tools, "pg_dump", "secret") == f"*:*:*:*:{escaped}\n"
    assert record(fake_tools, "pg_dump", "mode").strip() == "600"
    env = record(fake_tools, "pg_dump", "env")
    assert PASSWORD not in env and "BACKUP_DB_PASSWORD" not in env
    assert "PGCONNECT_TIMEOUT=10" in env
    assert not Path(record(fake_tools, "pg_dump", "path").strip()).exists()
    assert_no_private_dirs_left(before)


def test_pg_tools_get_no_worker_secrets(fake_tools: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "worker-level")
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    monkeypatch.setenv("BACKUPY_BROKER_URL", "redis://:broker-secret@h/0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    get_driver("postgresql").check(pg_target())
    env = record(fake_tools, "psql", "env")
    assert "PGSSLMODE=verify-full" in env
    for secret in ("worker-level", "broker-secret", "aws-secret"):
        assert secret not in env


def test_mysql_dump_hands_the_password_in_a_defaults_file(fake_tools: Path) -> None:
    before = private_dirs()
    out = io.BytesIO()
    info = get_driver("mariadb").dump(mysql_target(), out)
    assert info.server_version == "10.99-MariaDB-fake" and info.tool == "mariadb-dump"
    argv = argv_of(fake_tools, "mariadb-dump")
    assert argv[0].startswith("--defaults-extra-file=")
    assert all(PASSWORD not in arg for arg in argv)
    secret = record(fake_tools, "mariadb-dump", "secret")
    assert secret.startswith("[client]\npassword=")
    assert secrets.mysql_option_file(PASSWORD) == secret
    assert record(fake_tools, "mariadb-dump", "mode").strip() == "600"
    assert PASSWORD not in record(fake_tools, "mariadb-dump", "env")
    assert not Path(record(fake_tools, "mariadb-dump", "path").strip()).exists()
    assert_no_private_dirs_left(before)


def test_mysql_driver_falls_back_to_mysqldump(
    fake_tools: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(override_variable("mariadb-dump"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv(override_variable("mysqldump"), str(tmp_path / "bin" / "mariadb-dump"))
    info = get_driver("mysql").dump(mysql_target(), io.BytesIO())
    assert info.tool == "mariadb-dump"  # the fake, reached through BACKUPY_MYSQLDUMP_PATH


def test_redis_dump_hands_the_password_in_the_childs_env(fake_tools: Path) -> None:
    out = io.BytesIO()
    info = get_driver("redis").dump(redis_target(user="backup"), out)
    assert info.server_version == "7.99.0"
    argv = argv_of(fake_tools, "redis-cli")
    assert argv[-2:] == ["--rdb", "-"] and all(PASSWORD not in arg for arg in argv)
    assert f"REDISCLI_AUTH={PASSWORD}" in record(fake_tools, "redis-cli", "env")


def test_mongo_dump_hands_the_password_in_a_config_file(fake_tools: Path) -> None:
    before = private_dirs()
    get_driver("mongodb").dump(mongo_target(), io.BytesIO())
    argv = argv_of(fake_tools, "mongodump")
    assert all(PASSWORD not in arg for arg in argv)
    assert yaml.safe_load(record(fake_tools, "mongodump", "secret")) == {"password": PASSWORD}
    assert record(fake_tools, "mongodump", "mode").strip() == "600"
    assert_no_private_dirs_left(before)


def test_secret_files_are_removed_when_the_tool_fails(fake_tools: Path) -> None:
    (fake_tools / "FAIL").write_text("boom")
    before = private_dirs()
    for type_name, target in (("mariadb", mysql_target()), ("postgresql", pg_target())):
        with pytest.raises(DriverError, match="failed with exit code 3: fatal: boom"):
            get_driver(type_name).dump(target, io.BytesIO())
    assert not Path(record(fake_tools, "pg_dump", "path").strip()).exists()
    assert not Path(record(fake_tools, "mariadb-dump", "path").strip()).exists()
    assert_no_private_dirs_left(before)


def test_restore_feeds_the_dump_on_stdin(fake_tools: Path) -> None:
    restore = RestoreTarget(host="h", port=5432, database="copy", user="u")
    get_driver("postgresql").restore(restore, io.BytesIO(b"PGDMP-bytes"))
    assert record(fake_tools, "pg_restore", "stdin") == "PGDMP-bytes"
    assert argv_of(fake_tools, "pg_restore")[-1] == "--dbname=copy"
    get_driver("mariadb").restore("mariadb://u@h:3306/copy", io.BytesIO(b"SELECT 1;"))
    assert argv_of(fake_tools, "mariadb")[-2:] == ["--", "copy"]


# --------------------------------------------------------------------------- secrets


def test_password_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PW", "from-env ")
    assert secrets.read_password(SimpleNamespace(password_env="PW")) == "from-env "
    path = tmp_path / "pw"
    path.write_text("from-file  \n")
    assert secrets.read_password(SimpleNamespace(password_file=str(path))) == "from-file  "
    path.write_text("crlf\r\n")
    assert secrets.read_password(SimpleNamespace(password_file=str(path))) == "crlf"
    assert secrets.read_password(SimpleNamespace()) is None


def test_password_errors_name_the_source_never_the_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOPE_PW", raising=False)
    with pytest.raises(DriverError, match="password_env NOPE_PW is not set"):
        secrets.read_password(SimpleNamespace(password_env="NOPE_PW"))
    with pytest.raises(DriverError, match="no such file"):
        secrets.read_password(SimpleNamespace(password_file=str(tmp_path / "missing")))
    path = tmp_path / "two-lines"
    path.write_text("line-one\nline-two\n")
    with pytest.raises(DriverError, match="line break") as caught:
        secrets.read_password(SimpleNamespace(password_file=str(path)))
    assert "line-one" not in str(caught.value)


def test_secret_files_are_0600_in_a_0700_dir_and_removed_even_on_error() -> None:
    seen: list[Path] = []
    with pytest.raises(RuntimeError), secrets.mysql_defaults_file("pw") as path:
        seen.append(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        raise RuntimeError("tool blew up")
    assert not seen[0].exists() and not seen[0].parent.exists()
    with secrets.pg_password_env("pw") as env:
        passfile = Path(env["PGPASSFILE"])
        assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    assert not passfile.exists()
    with secrets.pg_password_env(None) as env:
        assert env == {}


def test_secret_formats_escape_what_the_tools_would_misread() -> None:
    assert secrets.pgpass_line("a:b\\c") == "*:*:*:*:a\\:b\\\\c\n"
    assert secrets.mysql_option_file('a"b\\c#d') == '[client]\npassword="a\\"b\\\\c#d"\n'
    for password in (PASSWORD, "🔑 key", "plain"):
        assert yaml.safe_load(secrets.mongo_config_file(password)) == {"password": password}


# --------------------------------------------------------------------------- restore URLs


def test_restore_urls() -> None:
    target = pg_mod.parse_restore_url("postgresql://backup@db:5433/restore%20me?password_env=PW")
    assert (target.host, target.port, target.database, target.user) == (
        "db", 5433, "restore me", "backup",
    )  # fmt: skip
    assert target.password_env == "PW"
    assert pg_mod.parse_restore_url("postgres://db/app").port == 5432
    my = mysql_mod.parse_restore_url("mariadb://root@127.0.0.1/copy")
    assert (my.port, my.database, my.user) == (3306, "copy", "root")
    assert redis_mod.parse_restore_url("file:///var/lib/r/dump.rdb") == Path("/var/lib/r/dump.rdb")
    assert redis_mod.parse_restore_url("/tmp/x.rdb") == Path("/tmp/x.rdb")
    mongo = mongo_mod.parse_restore_url("mongodb://u@m:27019/app?password_file=/pw")
    assert (mongo.host, mongo.port, mongo.database, mongo.password_file) == (
        "m", 27019, "app", "/pw",
    )  # fmt: skip
    srv = mongo_mod.parse_restore_url("mongodb+srv://u@cluster/app?retryWrites=true&password_env=P")
    assert srv.uri == "mongodb+srv://u@cluster/app?retryWrites=true" and srv.password_env == "P"


@pytest.mark.parametrize(
    ("parse", "url"),
    [
        (pg_mod.parse_restore_url, "postgresql://backup:hunter2@db/app"),
        (mysql_mod.parse_restore_url, "mysql://root:hunter2@db/app"),
        (mongo_mod.parse_restore_url, "mongodb://u:hunter2@m1,m2/app"),
    ],
)
def test_restore_url_with_a_password_is_refused(parse: object, url: str) -> None:
    with pytest.raises(DriverError, match="holds a password") as caught:
        parse(url)  # type: ignore[operator]
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    "url", ["mysql://db/app", "postgresql://db", "postgresql://db/app?sslmode=require", "http://x/"]
)
def test_bad_restore_urls_say_why(url: str) -> None:
    with pytest.raises(DriverError):
        pg_mod.parse_restore_url(url)


# --------------------------------------------------------------------------- finding tools


def test_missing_tool_names_it_and_its_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    for tool in TOOLS:
        monkeypatch.delenv(override_variable(tool), raising=False)
    with pytest.raises(
        DriverError, match=r"^pg_dump not found on PATH \(install postgresql-client\)$"
    ):
        get_driver("postgresql").dump(pg_target(password_env=None), io.BytesIO())
    with pytest.raises(DriverError, match=r"^mongodump not found on PATH"):
        get_driver("mongodb").check(mongo_target())
    with pytest.raises(DriverError, match="mariadb-dump or mysqldump not found on PATH"):
        find_tool(mysql_mod.DUMP_TOOLS, mysql_mod.PACKAGE)


def test_tool_override_must_be_executable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUPY_PG_DUMP_PATH", "/nonexistent/pg_dump")
    with pytest.raises(DriverError, match="BACKUPY_PG_DUMP_PATH=/nonexistent/pg_dump is not an"):
        find_tool("pg_dump", "postgresql-client")
    assert override_variable("mariadb-dump") == "BACKUPY_MARIADB_DUMP_PATH"


# --------------------------------------------------------------------------- running, errors


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_a_secret_in_the_tools_stderr_is_scrubbed(tmp_path: Path) -> None:
    tool = script(
        tmp_path, "pg_dump", 'echo "auth failed for password $1 (url x:$2@h)" >&2; exit 1\n'
    )
    encoded = "p%40ss%2Fw%3Ard"  # "p@ss/w:rd" as it would be in a URL
    with pytest.raises(DriverError) as caught:
        ToolRunner().run([tool, "p@ss/w:rd", encoded], env=clean_env(), secrets=["p@ss/w:rd"])
    message = str(caught.value)
    assert message.startswith("pg_dump failed with exit code 1: auth failed for password ***")
    assert "p@ss" not in message and encoded not in message


def test_scrub_and_summarize() -> None:
    assert scrub("a pw b pw", ["pw", None, ""]) == "a *** b ***"
    tail = b"rd-secret-end\nline two\n\nreal reason\n"
    assert summarize(tail, True, ["pw"]) == "line two | real reason"
    assert summarize(tail, False, []) == "rd-secret-end | line two | real reason"


def test_a_tool_killed_mid_output_names_the_signal_and_the_bytes(tmp_path: Path) -> None:
    tool = script(tmp_path, "pg_dump", "printf 'PGDMP12345'; kill -9 $$\n")
    out = io.BytesIO()
    with pytest.raises(
        DriverError, match=r"^pg_dump was killed by signal 9 \(SIGKILL\) after 10 bytes"
    ):
        ToolRunner().run([tool], env=clean_env(), out=out)
    assert out.getvalue() == b"PGDMP12345"


def test_stderr_is_kept_bounded(tmp_path: Path) -> None:
    tool = script(
        tmp_path, "noisy", "head -c 3000000 /dev/zero | tr '\\0' 'x' >&2; echo END >&2; exit 2\n"
    )
    with pytest.raises(DriverError) as caught:
        ToolRunner().run([tool], env=clean_env())
    assert str(caught.value).endswith("END") and len(str(caught.value)) < 2000


def test_cancel_kills_the_tools_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    tool = script(tmp_path, "pg_dump", f"sleep 60 & echo $! > {pids}; printf 'start'; wait\n")
    runner = ToolRunner()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            runner.run([tool], env=clean_env(), out=io.BytesIO())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 10
    while not (pids.exists() and pids.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    sleeper = int(pids.read_text())
    runner.cancel()
    thread.join(10)
    assert not thread.is_alive()
    assert errors and "pg_dump was cancelled after" in str(errors[0])
    deadline = time.monotonic() + 5
    while psutil.pid_exists(sleeper) and time.monotonic() < deadline:
        if psutil.Process(sleeper).status() == psutil.STATUS_ZOMBIE:
            break
        time.sleep(0.02)
    assert not psutil.pid_exists(sleeper) or psutil.Process(sleeper).status() == "zombie"
    with pytest.raises(DriverError, match="cancelled"):
        runner.run([tool], env=clean_env())


def test_a_failing_writer_kills_the_tool(tmp_path: Path) -> None:
    tool = script(tmp_path, "pg_dump", "exec cat /dev/zero\n")

    class Full:
        def write(self, data: bytes) -> int:
            raise OSError(28, "No space left on device")

        def flush(self) -> None:
            pass

    started = time.monotonic()
    with pytest.raises(OSError, match="No space"):
        ToolRunner().run([tool], env=clean_env(), out=Full())  # type: ignore[arg-type]
    assert time.monotonic() - started < 10


def test_a_query_that_hangs_times_out(tmp_path: Path) -> None:
    tool = script(tmp_path, "psql", "exec sleep 30\n")
    started = time.monotonic()
    with pytest.raises(DriverError, match=r"psql did not finish within 0\.5s"):
        ToolRunner().run([tool], env=clean_env(), timeout=0.5)
    assert time.monotonic() - started < 10


def test_redis_restore_writes_a_new_file_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "BACKUPY_REDIS_CHECK_RDB_PATH", script(tmp_path, "redis-check-rdb", "exit 0\n")
    )
    driver = get_driver("redis")
    dest = tmp_path / "restored.rdb"
    driver.restore(str(dest), io.BytesIO(b"REDIS0010rest"))
    assert dest.read_bytes() == b"REDIS0010rest"
    with pytest.raises(DriverError, match="refusing to overwrite"):
        driver.restore(dest, io.BytesIO(b"REDIS0010other"))
    with pytest.raises(DriverError, match="not a Redis RDB"):
        driver.restore(tmp_path / "bad.rdb", io.BytesIO(b"PGDMP"))
    assert sorted(p.name for p in tmp_path.iterdir() if ".rdb" in p.name) == ["restored.rdb"]
    assert os.path.exists(dest)
