"""Results 1 and 2 of the drivers issue: each database is backed up by a real worker and the
artifact restored into a FRESH database that must hold the same data.

PostgreSQL and MariaDB are the machine's servers (databases and users made per test with
random names and dropped after); Redis is a private ``redis-server`` per test on a free port
(the shared one on 6379 is never written to). Users have passwords and the jobs name them with
``password_env``, so the password paths are the ones exercised. SQLite's round trip is covered
by ``test_run_success.py``; MongoDB's is skipped when the machine has no ``mongod``.

The helpers here (servers, users, checksums) are also used by ``test_drivers_secrets.py`` and
``test_drivers_failures.py``.
"""

from __future__ import annotations

import contextlib
import secrets as pysecrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py

from tasks.artifacts import decrypt_file
from tasks.drivers import get_driver
from tasks.drivers.tool import RestoreTarget
from tests.conftest import need_service
from tests.harness import Deployment, wait_for
from tests.integration.runs import start, wait_final

pytestmark = pytest.mark.integration

PG_HOST, PG_PORT, PG_ADMIN = "127.0.0.1", 5432, "postgres"
MY_HOST, MY_PORT, MY_ADMIN = "127.0.0.1", 3306, "root"
# Passwords with the characters each secret channel must escape (passfile ':' and '\\',
# option file '#' '"' '\\' and spaces), plus non-ASCII.
PG_PASSWORD_CHARS = "Pg:pa\\ss#w'rd é"
MY_PASSWORD_CHARS = 'My#pa"ss\\w rd:é'


def random_password(base: str) -> str:
    return f"{base}-{pysecrets.token_hex(6)}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_job(job_id: str, queue: str, target: dict[str, Any], **fields: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "id": job_id,
        "schedule": "0 3 * * *",
        "queue": queue,
        "target": target,
        "timeout": "2m",
    }
    job.update(fields)
    return job


def restore_artifact(world: Deployment, run: dict[str, Any], tmp_path: Path) -> Path:
    """The run's artifact decrypted and decompressed (checked against its SHA-256)."""
    stored = world.storage / run["artifact"]["key"]
    out = tmp_path / f"restored-{pysecrets.token_hex(4)}.raw"
    decrypt_file(stored, out, world.identity)
    return out


def run_job(world: Deployment, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    return wait_final(world, start(world, job_id), timeout=timeout)


# --------------------------------------------------------------------------- PostgreSQL


def psql(sql: str, db: str = "postgres", user: str = PG_ADMIN, port: int = PG_PORT) -> str:
    done = subprocess.run(
        ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", PG_HOST, "-p", str(port),
         "-U", user, "-d", db],
        input=sql, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(f"psql failed: {done.stderr}")
    return done.stdout.strip()


@dataclass
class PgDatabase:
    name: str
    user: str
    password: str

    def target(self, **extra: Any) -> dict[str, Any]:
        return {
            "type": "postgresql", "host": PG_HOST, "port": PG_PORT, "database": self.name,
            "user": self.user, "password_env": "BACKUP_PG_PASSWORD", **extra,
        }  # fmt: skip


def need_postgres() -> None:
    if not shutil.which("psql") or not shutil.which("pg_dump"):
        need_service("PostgreSQL", "psql/pg_dump are not on PATH")
    try:
        psql("SELECT 1")
    except (AssertionError, OSError, subprocess.SubprocessError) as exc:
        need_service("PostgreSQL", f"{PG_HOST}:{PG_PORT}: {exc}")


@contextlib.contextmanager
def pg_role_and_db(events_rows: int = 100_000, pad: int = 0) -> Iterator[PgDatabase]:
    """A role with a password owning a fresh database filled with the test data."""
    need_postgres()
    tag = pysecrets.token_hex(4)
    db = PgDatabase(f"backupy_src_{tag}", f"backupy_test_{tag}", random_password(PG_PASSWORD_CHARS))
    quoted = db.password.replace("'", "''")
    psql(f"CREATE ROLE {db.user} LOGIN PASSWORD '{quoted}'")
    created: list[str] = []
    try:
        psql(f"CREATE DATABASE {db.name} OWNER {db.user}")
        created.append(db.name)
        psql(pg_fill_sql(events_rows, pad), db=db.name, user=db.user)
        yield db
    finally:
        for name in [*created, *getattr(db, "extra_dbs", [])]:
            psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        psql(f"DROP ROLE IF EXISTS {db.user}")


def pg_fill_sql(events_rows: int, pad: int) -> str:
    return f"""
    CREATE TABLE people (id int PRIMARY KEY, name text NOT NULL, photo bytea, note text);
    INSERT INTO people
      SELECT g, 'ünïcødé ✓ 名前 ' || g,
             CASE WHEN g % 7 = 0 THEN NULL
                  ELSE decode(md5(g::text) || md5((g * 3)::text), 'hex') END,
             CASE WHEN g % 3 = 0 THEN NULL WHEN g % 3 = 1 THEN '' ELSE repeat('z', g % 50) END
      FROM generate_series(1, 2000) g;
    CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz, payload jsonb, amount numeric(14,2),
                         pad text);
    INSERT INTO events
      SELECT g, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute',
             jsonb_build_object('n', g, 's', 'é' || g), g / 7.0, repeat(md5(g::text), {pad})
      FROM generate_series(1, {events_rows}) g;
    CREATE TABLE blobs (id int PRIMARY KEY, data bytea);
    INSERT INTO blobs VALUES
      (1, (SELECT decode(string_agg(lpad(to_hex(b), 2, '0'), '' ORDER BY b), 'hex')
           FROM generate_series(0, 255) b)),
      (2, ''::bytea), (3, NULL);
    CREATE VIEW big_events AS SELECT id, amount FROM events WHERE amount > 1000;
    CREATE FUNCTION add_tax(x numeric) RETURNS numeric LANGUAGE sql IMMUTABLE AS 'SELECT x * 1.2';
    """


PG_TABLES = ("people", "events", "blobs", "big_events")


def pg_fingerprint(db: str) -> dict[str, str]:
    """Row count and an md5 over every row's text (NULL and '' differ in it), per relation."""
    result = {}
    for table in PG_TABLES:
        result[table] = psql(
            f"SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY id)), '-') "
            f"FROM {table} t",
            db=db,
        )
    result["add_tax(10)"] = psql("SELECT add_tax(10)", db=db)
    return result


# --------------------------------------------------------------------------- MariaDB


def mariadb(sql: str, db: str | None = None) -> str:
    argv = ["mariadb", "--batch", "--skip-column-names", "-h", MY_HOST, "-P", str(MY_PORT),
            "--protocol=TCP", "--default-character-set=utf8mb4", "-u", MY_ADMIN]  # fmt: skip
    if db:
        argv.append(db)
    done = subprocess.run(argv, input=sql, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise AssertionError(f"mariadb failed: {done.stderr}")
    return done.stdout.strip()


@dataclass
class MyDatabase:
    name: str
    user: str
    password: str

    def target(self, **extra: Any) -> dict[str, Any]:
        return {
            "type": "mariadb", "host": MY_HOST, "port": MY_PORT, "database": self.name,
            "user": self.user, "password_env": "BACKUP_MY_PASSWORD", **extra,
        }  # fmt: skip


def need_mariadb() -> None:
    if not (shutil.which("mariadb-dump") or shutil.which("mysqldump")):
        need_service("MariaDB", "mariadb-dump/mysqldump are not on PATH")
    try:
        mariadb("SELECT 1")
    except (AssertionError, OSError, subprocess.SubprocessError) as exc:
        need_service("MariaDB", f"{MY_HOST}:{MY_PORT}: {exc}")


def sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@contextlib.contextmanager
def my_user_and_db(events_rows: int = 100_000, pad: int = 0) -> Iterator[MyDatabase]:
    need_mariadb()
    tag = pysecrets.token_hex(4)
    db = MyDatabase(f"backupy_src_{tag}", f"backupy_t_{tag}", random_password(MY_PASSWORD_CHARS))
    mariadb(
        f"CREATE DATABASE {db.name} CHARACTER SET utf8mb4;"
        f"CREATE USER '{db.user}'@'%' IDENTIFIED BY {sql_string(db.password)};"
        f"GRANT ALL ON {db.name}.* TO '{db.user}'@'%';"
    )
    try:
        mariadb(my_fill_sql(events_rows, pad, f"'{db.user}'@'%'"), db=db.name)
        yield db
    finally:
        for name in [db.name, *getattr(db, "extra_dbs", [])]:
            mariadb(f"DROP DATABASE IF EXISTS {name}")
        mariadb(f"DROP USER IF EXISTS '{db.user}'@'%'")


def my_fill_sql(events_rows: int, pad: int, definer: str) -> str:
    """The data; views, routines and triggers defined as the backup user, so that user can
    restore them (recreating another definer's objects needs SET USER / SUPER)."""
    return f"""
    SET SESSION max_recursive_iterations = 10000000;
    CREATE TABLE people (id INT PRIMARY KEY, name VARCHAR(200) NOT NULL, photo BLOB, note TEXT)
      CHARACTER SET utf8mb4;
    INSERT INTO people
      WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 2000)
      SELECT n, CONCAT('ünïcødé ✓ 名前 😀 ', n),
             IF(n % 7 = 0, NULL, UNHEX(CONCAT(MD5(n), MD5(n * 3)))),
             CASE WHEN n % 3 = 0 THEN NULL WHEN n % 3 = 1 THEN '' ELSE REPEAT('z', n % 50) END
      FROM s;
    CREATE TABLE events (id BIGINT PRIMARY KEY, at DATETIME, amount DECIMAL(14,2), tag VARCHAR(40),
                         pad TEXT) CHARACTER SET utf8mb4;
    INSERT INTO events
      WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {events_rows})
      SELECT n, TIMESTAMPADD(MINUTE, n, '2024-01-01 00:00:00'), n / 7, CONCAT('é', n),
             REPEAT(MD5(n), {pad})
      FROM s;
    CREATE TABLE blobs (id INT PRIMARY KEY, data LONGBLOB);
    INSERT INTO blobs
      WITH RECURSIVE b(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM b WHERE n < 255)
      SELECT 1, (SELECT GROUP_CONCAT(CHAR(n USING binary) ORDER BY n SEPARATOR '') FROM b);
    INSERT INTO blobs VALUES (2, ''), (3, NULL);
    CREATE DEFINER={definer} VIEW big_events AS SELECT id, amount FROM events WHERE amount > 1000;
    CREATE DEFINER={definer} FUNCTION add_tax(x DECIMAL(14,2)) RETURNS DECIMAL(14,2)
      DETERMINISTIC RETURN x * 1.2;
    CREATE DEFINER={definer} PROCEDURE count_people(OUT c INT)
      SELECT COUNT(*) INTO c FROM people;
    CREATE DEFINER={definer} TRIGGER people_upper BEFORE INSERT ON people
      FOR EACH ROW SET NEW.note = UPPER(NEW.note);
    """


MY_ROW_EXPR = {
    "people": "CONCAT_WS('|', id, name, IFNULL(HEX(photo), '<null>'), IFNULL(note, '<null>'))",
    "events": "CONCAT_WS('|', id, at, amount, tag, pad)",
    "blobs": "CONCAT_WS('|', id, IFNULL(HEX(data), '<null>'))",
    "big_events": "CONCAT_WS('|', id, amount)",
}


def my_fingerprint(db: str) -> dict[str, str]:
    result = {}
    for table, expr in MY_ROW_EXPR.items():
        result[table] = mariadb(
            "SET SESSION group_concat_max_len = 1 << 30;"
            f"SELECT CONCAT(COUNT(*), ':', IFNULL(MD5(GROUP_CONCAT({expr} ORDER BY id)), '-')) "
            f"FROM {table}",
            db=db,
        )
    result["add_tax(10)"] = mariadb("SELECT add_tax(10)", db=db)
    result["count_people"] = mariadb("CALL count_people(@c); SELECT @c", db=db)
    result["routines"] = mariadb(
        "SELECT GROUP_CONCAT(ROUTINE_NAME ORDER BY ROUTINE_NAME) FROM information_schema.ROUTINES "
        f"WHERE ROUTINE_SCHEMA = '{db}'"
    )
    result["triggers"] = mariadb(
        f"SELECT GROUP_CONCAT(TRIGGER_NAME) FROM information_schema.TRIGGERS "
        f"WHERE TRIGGER_SCHEMA = '{db}'"
    )
    return result


# --------------------------------------------------------------------------- Redis


class PrivateRedis:
    """A ``redis-server`` of this test's own, on a free port, in its own directory."""

    def __init__(
        self, directory: Path, *, password: str | None = None, dbfilename: str = ""
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.password = password
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(directory), "--save", "", "--appendonly", "no",
                # Redis 7 waits 5 s (the default) for more replicas before a diskless sync.
                "--repl-diskless-sync-delay", "0"]  # fmt: skip
        if dbfilename:
            argv += ["--dbfilename", dbfilename]
        if password:
            argv += ["--requirepass", password]
        self.log = directory / "redis.log"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.clients: list[redis_py.Redis] = []
        wait_for(self._ready, 15, f"redis-server on port {self.port}")

    def client(self, db: int = 0) -> redis_py.Redis:
        client = redis_py.Redis(host="127.0.0.1", port=self.port, db=db, password=self.password)
        self.clients.append(client)
        return client

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited: {self.log.read_text()[-2000:]}")
        try:
            return bool(self.client().ping())
        except redis_py.BusyLoadingError:
            return False
        except redis_py.ConnectionError:
            return False

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@contextlib.contextmanager
def private_redis(password: str | None = None, dbfilename: str = "") -> Iterator[PrivateRedis]:
    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        need_service("redis-server", "redis-server/redis-cli are not on PATH")
    directory = Path(tempfile.mkdtemp(prefix="backupy-test-redis-"))
    server = None
    try:
        server = PrivateRedis(directory, password=password, dbfilename=dbfilename)
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def redis_fill(server: PrivateRedis) -> None:
    r0, r3 = server.client(0), server.client(3)
    r0.set("string", "ünïcødé ✓ 名前")
    r0.set(b"binary\x00key", bytes(range(256)))
    r0.hset("hash", mapping={"a": "1", "b": "två", "c": bytes([0, 255])})
    r0.rpush("list", "x", "y", "z", "y")
    r0.sadd("set", "a", "b", "c")
    r0.zadd("zset", {"one": 1.0, "two": 2.5, "minus": -3.25})
    r0.set("ttl:string", "expires", ex=3600)
    r0.hset("ttl:hash", "k", "v")
    r0.pexpire("ttl:hash", 7_200_000)
    pipe = r0.pipeline(transaction=False)
    for i in range(20_000):
        pipe.set(f"bulk:{i}", f"value-{i}-" + "v" * (i % 64))
    pipe.execute()
    r3.set("in-db-3", "three")


def redis_snapshot(client: redis_py.Redis) -> dict[bytes, tuple[bytes, Any, bool]]:
    """Every key: (type, value, has a TTL); pipelined, so 20 000 keys take well under a second."""
    keys = list(client.scan_iter(count=5000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
        pipe.pttl(key)
    meta = pipe.execute()
    readers = {
        b"string": pipe.get,
        b"hash": pipe.hgetall,
        b"list": lambda key: pipe.lrange(key, 0, -1),
        b"set": pipe.smembers,
        b"zset": lambda key: pipe.zrange(key, 0, -1, withscores=True),
    }
    kinds = meta[0::2]
    for key, kind in zip(keys, kinds, strict=True):
        readers.get(kind, pipe.exists)(key)
    values = pipe.execute()
    return {
        key: (kind, value, ttl > 0)
        for key, kind, ttl, value in zip(keys, kinds, meta[1::2], values, strict=True)
    }


# --------------------------------------------------------------------------- the tests


def test_postgresql_round_trip(world: Deployment, tmp_path: Path, monkeypatch: Any) -> None:
    with pg_role_and_db() as db:
        queue = world.queue()
        world.write_config([base_job("pg-app", queue, db.target())])
        world.worker([queue], BACKUP_PG_PASSWORD=db.password)
        run = run_job(world, "pg-app")
        assert run["status"] == "success", run
        artifact = run["artifact"]
        assert artifact["key"].endswith(".pgdump.zst.age")
        manifest = (world.storage / artifact["manifest"]).read_text()
        assert '"postgresql"' in manifest and "15." in manifest

        dump = restore_artifact(world, run, tmp_path)
        assert dump.read_bytes()[:5] == b"PGDMP"
        restored = f"restore_{pysecrets.token_hex(4)}"
        db.extra_dbs = [restored]  # type: ignore[attr-defined]
        psql(f"CREATE DATABASE {restored} OWNER {db.user}")
        monkeypatch.setenv("RESTORE_PG_PASSWORD", db.password)
        target = RestoreTarget(
            host=PG_HOST, port=PG_PORT, database=restored, user=db.user,
            password_env="RESTORE_PG_PASSWORD",
        )  # fmt: skip
        with open(dump, "rb") as source:
            get_driver("postgresql").restore(target, source)

        assert pg_fingerprint(restored) == pg_fingerprint(db.name)
        assert psql("SELECT count(*) FROM events", db=restored) == "100000"

        # The artifact through the standard CLIs only: age, zstd, pg_restore --list.
        age, zstd = shutil.which("age"), shutil.which("zstd")
        if not age or not zstd:
            pytest.fail("the Debian age and zstd CLIs are needed (.ci/run installs them)")
        plain = tmp_path / "cli.pgdump"
        stored = world.storage / artifact["key"]
        with open(plain, "wb") as out:
            decrypt = subprocess.Popen(
                [age, "-d", "-i", str(world.identity), str(stored)], stdout=subprocess.PIPE
            )
            subprocess.run([zstd, "-d"], stdin=decrypt.stdout, stdout=out, check=True)
            assert decrypt.wait(30) == 0
        listing = subprocess.run(
            ["pg_restore", "--list", str(plain)], capture_output=True, text=True, check=True
        ).stdout
        for name in ("TABLE public people", "TABLE public events", "VIEW public big_events",
                     "FUNCTION public add_tax"):  # fmt: skip
            assert name in listing, listing


def test_mariadb_round_trip(world: Deployment, tmp_path: Path, monkeypatch: Any) -> None:
    with my_user_and_db() as db:
        queue = world.queue()
        world.write_config([base_job("my-app", queue, db.target())])
        world.worker([queue], BACKUP_MY_PASSWORD=db.password)
        run = run_job(world, "my-app")
        assert run["status"] == "success", run
        assert run["artifact"]["key"].endswith(".sql.zst.age")

        dump = restore_artifact(world, run, tmp_path)
        head = dump.read_bytes()[:400]
        assert b"MariaDB dump" in head or b"MySQL dump" in head
        restored = f"restore_{pysecrets.token_hex(4)}"
        db.extra_dbs = [restored]  # type: ignore[attr-defined]
        mariadb(
            f"CREATE DATABASE {restored} CHARACTER SET utf8mb4;"
            f"GRANT ALL ON {restored}.* TO '{db.user}'@'%';"
        )
        monkeypatch.setenv("RESTORE_MY_PASSWORD", db.password)
        url = f"mariadb://{db.user}@{MY_HOST}:{MY_PORT}/{restored}?password_env=RESTORE_MY_PASSWORD"
        with open(dump, "rb") as source:
            get_driver("mariadb").restore(url, source)

        source_print = my_fingerprint(db.name)
        assert source_print["events"].startswith("100000:")
        assert source_print["routines"] == "add_tax,count_people"
        assert my_fingerprint(restored) == source_print


def test_redis_round_trip(world: Deployment, tmp_path: Path) -> None:
    password = random_password("Rd:pa ss#é")
    with private_redis(password=password) as source:
        redis_fill(source)
        expected = {db: redis_snapshot(source.client(db)) for db in (0, 3)}
        queue = world.queue()
        target = {"type": "redis", "host": "127.0.0.1", "port": source.port,
                  "password_env": "BACKUP_REDIS_PASSWORD"}  # fmt: skip
        world.write_config([base_job("cache", queue, target)])
        world.worker([queue], BACKUP_REDIS_PASSWORD=password)
        run = run_job(world, "cache")
        assert run["status"] == "success", run
        assert run["artifact"]["key"].endswith(".rdb.zst.age")

    dump = restore_artifact(world, run, tmp_path)
    load_dir = tmp_path / "load"
    load_dir.mkdir()
    rdb = load_dir / "restored.rdb"
    with open(dump, "rb") as stream:
        get_driver("redis").restore(str(rdb), stream)
    with open(dump, "rb") as stream, pytest.raises(Exception, match="refusing to overwrite"):
        get_driver("redis").restore(rdb, stream)

    # A fresh server loads the restored file at start: same keys, types, values and TTLs.
    server = PrivateRedis(load_dir, dbfilename="restored.rdb")
    try:
        for db in (0, 3):
            got = redis_snapshot(server.client(db))
            assert got == expected[db]
        assert len(expected[0]) == 20_000 + 8
        assert expected[0][b"ttl:string"][2] and expected[0][b"ttl:hash"][2]
        assert not expected[0][b"string"][2]
    finally:
        server.stop()


def test_mongodb_round_trip_needs_mongod() -> None:
    missing = [tool for tool in ("mongod", "mongodump", "mongorestore") if not shutil.which(tool)]
    if missing:
        pytest.skip(
            f"MongoDB round trip not run: {', '.join(missing)} not on PATH (Debian 12 ships no "
            "MongoDB server or database tools); the mongodb driver's commands are unit-tested "
            "in tests/unit/test_drivers_commands.py"
        )
    pytest.fail("mongod is available: write the MongoDB round trip against it")  # pragma: no cover
