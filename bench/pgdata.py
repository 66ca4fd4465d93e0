"""The PostgreSQL database `bench.dump` backs up: ``backupy_bench``, about ``--size-mb`` big.

pgbench's own tables shrink ~100:1 under zstd (their rows are mostly blank ``filler``), which
would hide what compression costs. So about half of the bytes are pgbench's tables
(``pgbench -i -s N``) and the other half a table, ``bench_docs``, of generated text and random
``bytea``, all made server-side (``pgcrypto``'s ``gen_random_bytes``):

* ``title`` / ``body``: words drawn from a small English vocabulary, skewed towards the common
  ones like real prose (``power(random(), 3)``), so zstd finds the ~3-4:1 it finds in text;
* ``payload``: random bytes (incompressible; a ``bytea`` dumps as hex, which zstd halves);
* a timestamp, an account number and an amount, as real rows have.

Rows stay under PostgreSQL's TOAST threshold (~2 kB) so the table is as big on disk as its data
(no pglz compression shrinking it), and the table grows batch by batch until the database has
the requested size. The result compresses ~3:1 as a whole.

A table ``bench_meta`` records the size asked for and :data:`LAYOUT_VERSION`: a database that
has the same marker is reused as it is (reruns are fast); ``--rebuild`` builds it again.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

DATABASE = "backupy_bench"
HOST = "127.0.0.1"
PORT = 5432
USER = "postgres"
MB = 1000 * 1000
#: Bump when the generated data changes: an older database is then rebuilt.
LAYOUT_VERSION = 2
#: One pgbench scale unit is ~15 MB on disk (100,000 accounts, their index, the small tables).
PGBENCH_MB_PER_SCALE = 15.0
#: The share of the database made of pgbench's tables; the rest is ``bench_docs``.
PGBENCH_SHARE = 0.5
#: Rows inserted per statement while ``bench_docs`` grows (~30 MB each).
BATCH_ROWS = 30_000
#: A first guess of a ``bench_docs`` row on disk (index included), refined as it grows.
ROW_BYTES_GUESS = 850
#: Random bytes per row (at most 1024, pgcrypto's limit): ~35% of a row on disk.
PAYLOAD_BYTES = 384

VOCABULARY = """
the of and to in a is that for it as was with be by on not he this are or his from at which
but have an they you were her she there been one all we their has would when if so no will
more can its who some out time only other them new these may into than could any then about
over two first years after also our most made like between many where before through back
system data record account customer order payment invoice report service server backup table
value number date amount balance transfer region office team project review update request
status error message result change policy contract product price market sale total month week
year day morning evening night north south east west city street house room door window water
light power energy money bank loan credit debit rate tax cost fee profit loss share stock bond
fund plan goal task issue ticket note comment answer question reason problem solution method
process step stage phase level point line group member user admin manager director staff
employee worker client partner vendor supplier shipment delivery package address phone email
name title subject body text file folder document page section chapter paper form letter card
very well good great small large long short high low early late open closed ready pending
active inactive valid invalid final first second third last next previous current annual
monthly weekly daily quickly slowly clearly simply really already always never often sometimes
usually again still even just also however therefore because although while since until unless
whether either neither both each every several few little much less least more most own same
different important possible available necessary required optional general special common
public private local global national international internal external main major minor full
empty free busy simple complex easy hard strong weak safe secure new old young recent modern
ask call come do find get give go keep know leave let look make move need pay put run say see
seem send set show start stop take tell think try turn use want work write read add check close
confirm create delete fix handle include join limit manage note offer open pass plan prepare
provide receive reduce remove replace report require return save select ship sign store submit
support track transfer verify wait
"""


@dataclass(frozen=True)
class Database:
    """What was built (or found): its size and how it is made."""

    name: str
    size_bytes: int
    pgbench_scale: int
    pgbench_bytes: int
    docs_bytes: int
    reused: bool
    build_seconds: float


def _connection() -> list[str]:
    return ["-h", HOST, "-p", str(PORT), "-U", USER]


def psql(sql: str, database: str = "postgres", *, check: bool = True) -> str:
    """Run ``sql`` with psql (unaligned, tuples only); its output, stripped."""
    done = subprocess.run(
        [
            "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", *_connection(),
            "-d", database, "-c", sql,
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    if check and done.returncode != 0:
        raise RuntimeError(f"psql failed on {sql[:80]!r}: {done.stderr.strip()}")
    return done.stdout.strip()


def database_size(name: str = DATABASE) -> int:
    return int(psql(f"SELECT pg_database_size('{name}')"))


def create_database(name: str) -> None:
    drop_database(name)
    psql(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _marker(size_mb: int) -> str:
    return f"{size_mb}|{LAYOUT_VERSION}"


def _found_marker() -> str | None:
    exists = psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'")
    if not exists:
        return None
    found = psql(
        "SELECT size_mb || '|' || layout_version FROM bench_meta "
        "WHERE to_regclass('bench_meta') IS NOT NULL",
        DATABASE,
        check=False,
    )
    return found or None


def pgbench_scale(size_mb: int) -> int:
    return max(1, round(size_mb * PGBENCH_SHARE / PGBENCH_MB_PER_SCALE))


def ensure_database(
    size_mb: int, *, rebuild: bool = False, log: Callable[[str], None] = print
) -> Database:
    """``backupy_bench`` at about ``size_mb`` MB: reused when its marker matches, else built."""
    began = time.monotonic()
    reused = not rebuild and _found_marker() == _marker(size_mb)
    if not reused:
        _build(size_mb, log)
    scale = int(psql("SELECT pgbench_scale FROM bench_meta", DATABASE))
    pgbench_bytes = int(
        psql(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
            "WHERE c.relkind = 'r' AND c.relname LIKE 'pgbench\\_%'",
            DATABASE,
        )
    )
    docs_bytes = int(psql("SELECT pg_total_relation_size('bench_docs')", DATABASE))
    return Database(
        name=DATABASE,
        size_bytes=database_size(),
        pgbench_scale=scale,
        pgbench_bytes=pgbench_bytes,
        docs_bytes=docs_bytes,
        reused=reused,
        build_seconds=time.monotonic() - began,
    )


def _build(size_mb: int, log: Callable[[str], None]) -> None:
    scale = pgbench_scale(size_mb)
    log(f"building {DATABASE} (~{size_mb} MB): pgbench -i -s {scale}, then bench_docs")
    create_database(DATABASE)
    subprocess.run(
        ["pgbench", "-i", "-q", "-s", str(scale), *_connection(), DATABASE],
        check=True,
        capture_output=True,
    )
    psql(_SCHEMA, DATABASE)
    words = VOCABULARY.split()
    literal = ",".join(f"'{word}'" for word in words)
    psql(f"INSERT INTO bench_vocab (words) VALUES (ARRAY[{literal}])", DATABASE)
    target = size_mb * MB
    rows = 0
    size = database_size()
    while size < target * 0.99:
        docs = int(psql("SELECT pg_total_relation_size('bench_docs')", DATABASE))
        per_row = docs / rows if rows else ROW_BYTES_GUESS
        batch = max(1000, min(BATCH_ROWS, round((target - size) / per_row)))
        psql(_INSERT_BATCH.format(rows=batch, payload=PAYLOAD_BYTES), DATABASE)
        rows += batch
        size = database_size()
        if rows // BATCH_ROWS != (rows - batch) // BATCH_ROWS and rows // BATCH_ROWS % 10 == 0:
            log(f"  bench_docs: {rows} rows, database {size / MB:.0f} MB")
    # Hint bits and statistics now, so the first dump does not pay for them.
    psql("VACUUM (FREEZE, ANALYZE)", DATABASE)
    psql("CHECKPOINT")
    psql(
        "CREATE TABLE bench_meta (size_mb integer, layout_version integer, pgbench_scale integer, "
        f"built_at timestamptz DEFAULT now()); INSERT INTO bench_meta VALUES ({size_mb}, "
        f"{LAYOUT_VERSION}, {scale})",
        DATABASE,
    )


_SCHEMA = """
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE TABLE bench_vocab (words text[] NOT NULL);
ALTER TABLE bench_vocab ALTER words SET STORAGE PLAIN;
CREATE TABLE bench_docs (
    id bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL,
    account integer NOT NULL,
    amount numeric(12, 2) NOT NULL,
    title text NOT NULL,
    body text NOT NULL,
    payload bytea NOT NULL
);
"""

# ``ARRAY(SELECT … FROM generate_series(…, g))`` runs once per row (it refers to ``g``); the
# word is picked by a skewed index into the vocabulary (common words come up more often).
_WORD = "v.words[1 + floor(power(random(), 3) * cardinality(v.words))::int]"
_INSERT_BATCH = f"""
INSERT INTO bench_docs (created_at, account, amount, title, body, payload)
SELECT
    now() - random() * interval '730 days',
    (random() * 1000000)::integer,
    round((random() * 10000)::numeric, 2),
    initcap(array_to_string(ARRAY(SELECT {_WORD} FROM generate_series(1, 3 + g % 5)), ' ')),
    array_to_string(
        ARRAY(SELECT {_WORD} || CASE WHEN random() < 0.08 THEN '.' ELSE '' END
              FROM generate_series(1, 60 + g % 60)),
        ' '
    ) || '.',
    gen_random_bytes({{payload}})
FROM generate_series(1, {{rows}}) AS g, bench_vocab AS v
"""
