"""`python -m bench.dump`: a PostgreSQL backup and restore through our stream, beside the shell.

On ``backupy_bench`` (about ``--size-mb`` MB, see :mod:`bench.pgdata`; reused when it exists):

1. Backup wall time: ``dump_to_storage`` (local storage in a temporary folder, zstd level 3,
   one age recipient) beside ``pg_dump -Fc -Z0 | zstd -3 | age -r KEY > FILE``: ratio ≤ 1.10.
2. Peak RSS of the Python process running the backup (the worker process; pg_dump is another
   process), in a fresh interpreter (``ru_maxrss``), beside its RSS after the imports:
   ≤ 150 MB.
3. Restore wall time: ``restore_run`` (verify the SHA-256, decrypt, decompress, the postgresql
   driver's ``pg_restore --single-transaction`` into a fresh empty database) beside
   ``age -d -i KEY FILE | zstd -d | pg_restore -d fresh_db``: ratio ≤ 1.10; and the restoring
   process's peak RSS: ≤ 150 MB.

Each figure is measured ``--runs`` times, ours and the shell's interleaved (the order flips every
round, so a noisy neighbour or a warming cache hits both alike); times are medians, peak RSS the
highest seen. Our backups and restores run in child interpreters (``--child``) so that their
``ru_maxrss`` is theirs alone; their time is taken inside the child, around the call (a worker
has its imports done). The restore databases are dropped after each run, the temporary folder
(key, artifacts) at the end; ``backupy_bench`` itself is kept for the next run.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import pgdata
from bench.common import Figure, median, print_table
from config.jobs import Config, parse_config
from config.limits import Limits
from tasks.dump_task import dump_to_storage
from tasks.keys import generate_identity
from tasks.restore import restore_run
from tasks.runs import new_run_id

MB = 1000 * 1000
MIB = 1024 * 1024
JOB_ID = "bench-pg"
TIME_RATIO_TARGET = 1.10
PEAK_RSS_TARGET_MB = 150.0
ZSTD_LEVEL = 3
RESTORE_OURS = "backupy_bench_restore_ours"
RESTORE_SHELL = "backupy_bench_restore_shell"
REPO_ROOT = Path(__file__).resolve().parents[1]
#: Tables whose row counts must match the source after every restore.
CHECKED_TABLES = ("pgbench_accounts", "bench_docs")


def build_config(work: Path, recipient: str, database: str = pgdata.DATABASE) -> Config:
    document = {
        "storage": {"type": "local", "path": str(work / "backups")},
        "encryption": {"recipients": [recipient]},
        "jobs": [
            {
                "id": JOB_ID,
                "schedule": "0 3 * * *",
                "target": {
                    "type": "postgresql",
                    "host": pgdata.HOST,
                    "port": pgdata.PORT,
                    "user": pgdata.USER,
                    "database": database,
                },
                "compression": {"type": "zstd", "level": ZSTD_LEVEL},
            }
        ],
    }
    return parse_config(document, limits=Limits(), source="bench.dump")


def max_rss() -> int:
    """This process's peak RSS so far, in bytes (ru_maxrss: KiB on Linux, bytes on macOS)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# ---------------------------------------------------------------------------------------------
# The child interpreters: one backup or one restore each, reporting time and peak RSS as JSON


class _OneRun:
    """Stands in for the run store: the one run the restore asks for."""

    def __init__(self, run_id: str, run: dict[str, Any]) -> None:
        self._run_id = run_id
        self._run = run

    def get(self, run_id: str) -> dict[str, Any] | None:
        return self._run if run_id == self._run_id else None


def child(kind: str, spec: dict[str, Any]) -> None:
    work = Path(spec["work"])
    cfg = build_config(work, spec["recipient"])
    baseline = max_rss()
    if kind == "dump":
        run_id = new_run_id()
        began = time.perf_counter()
        result = dump_to_storage(cfg, cfg.job(JOB_ID), run_id, time.time())
        seconds = time.perf_counter() - began
        if result["state"] != "ok":
            raise SystemExit(f"our backup failed: {result['reason']}")
        report = {"run_id": run_id, "artifact": result["artifact"]}
    else:
        run = {"job": JOB_ID, "status": "success", "artifact": spec["artifact"]}
        store = _OneRun(spec["run_id"], run)
        began = time.perf_counter()
        restored = restore_run(
            spec["run_id"],
            spec["to"],
            store=store,  # type: ignore[arg-type]
            config=cfg,
            identity_path=work / "key.txt",
        )
        seconds = time.perf_counter() - began
        report = {"raw_bytes": restored.raw_bytes, "stored_bytes": restored.stored_bytes}
    print(json.dumps({"seconds": seconds, "baseline": baseline, "peak": max_rss(), **report}))


def run_child(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.dump", "--child", kind, json.dumps(spec)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"our {kind} failed (exit {done.returncode}): {done.stderr.strip()}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


# ---------------------------------------------------------------------------------------------
# The shell's pipelines (the references)


def _conn() -> str:
    return f"-h {pgdata.HOST} -p {pgdata.PORT} -U {pgdata.USER}"


def shell(command: str) -> float:
    began = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True)
    return time.perf_counter() - began


def shell_dump(recipient: str, out: Path) -> float:
    return shell(
        f"pg_dump -Fc -Z0 {_conn()} -d {pgdata.DATABASE} | zstd -{ZSTD_LEVEL} -q "
        f"| age -r {recipient} > {shlex.quote(str(out))}"
    )


def shell_restore(key: Path, artifact: Path, database: str) -> float:
    return shell(
        f"age -d -i {shlex.quote(str(key))} {shlex.quote(str(artifact))} | zstd -d -q "
        f"| pg_restore {_conn()} -d {database}"
    )


def row_counts(database: str) -> dict[str, int]:
    return {
        table: int(pgdata.psql(f"SELECT count(*) FROM {table}", database))
        for table in CHECKED_TABLES
    }


# ---------------------------------------------------------------------------------------------
# The measurements


@dataclass
class Series:
    """Ours and the shell's, run by run."""

    ours: list[float]
    shell: list[float]
    peaks: list[int]
    baselines: list[int]

    def time_figure(self, name: str) -> Figure:
        ours, reference = median(self.ours), median(self.shell)
        return Figure(
            f"{name} (s)",
            ours,
            reference,
            "s",
            f"ratio <= {TIME_RATIO_TARGET:.2f}",
            ours / reference <= TIME_RATIO_TARGET,
        )

    def rss_figure(self, name: str) -> Figure:
        peak = max(self.peaks) / MIB
        return Figure(
            f"{name}: peak RSS vs after imports (MB)",
            peak,
            median([float(b) for b in self.baselines]) / MIB,
            "MB",
            f"peak <= {PEAK_RSS_TARGET_MB:g} MB",
            peak <= PEAK_RSS_TARGET_MB,
        )


class Bench:
    def __init__(self, work: Path, runs: int) -> None:
        self.work = work
        self.runs = runs
        self.key = work / "key.txt"
        self.recipient = generate_identity(self.key)
        self.backups = work / "backups"
        self.shell_artifact = work / "shell.pgdump.zst.age"
        self.spec: dict[str, Any] = {"work": str(work), "recipient": self.recipient}
        self.last_dump: dict[str, Any] = {}
        self.shell_stored = 0
        self.expected = row_counts(pgdata.DATABASE)

    def _ours_dump(self) -> tuple[float, dict[str, Any]]:
        shutil.rmtree(self.backups, ignore_errors=True)  # keep only the latest artifact
        report = run_child("dump", self.spec)
        self.last_dump = report
        return report["seconds"], report

    def dumps(self) -> Series:
        series = Series([], [], [], [])
        for index in range(self.runs):
            for ours_turn in (True, False) if index % 2 == 0 else (False, True):
                if ours_turn:
                    seconds, report = self._ours_dump()
                    series.ours.append(seconds)
                    series.peaks.append(report["peak"])
                    series.baselines.append(report["baseline"])
                    peak = report["peak"] / MIB
                    print(f"  dump {index + 1}: ours {seconds:7.2f} s, peak RSS {peak:.0f} MB")
                else:
                    series.shell.append(shell_dump(self.recipient, self.shell_artifact))
                    self.shell_stored = self.shell_artifact.stat().st_size
                    print(f"  dump {index + 1}: shell {series.shell[-1]:6.2f} s")
        return series

    def _ours_restore(self) -> dict[str, Any]:
        pgdata.create_database(RESTORE_OURS)
        try:
            spec = {
                **self.spec,
                "run_id": self.last_dump["run_id"],
                "artifact": self.last_dump["artifact"],
                "to": f"postgresql://{pgdata.USER}@{pgdata.HOST}:{pgdata.PORT}/{RESTORE_OURS}",
            }
            report = run_child("restore", spec)
            self._check(RESTORE_OURS)
        finally:
            pgdata.drop_database(RESTORE_OURS)
        return report

    def _shell_restore(self) -> float:
        pgdata.create_database(RESTORE_SHELL)
        try:
            seconds = shell_restore(self.key, self.shell_artifact, RESTORE_SHELL)
            self._check(RESTORE_SHELL)
        finally:
            pgdata.drop_database(RESTORE_SHELL)
        return seconds

    def _check(self, database: str) -> None:
        found = row_counts(database)
        if found != self.expected:
            raise SystemExit(f"restore into {database} is wrong: {found} != {self.expected}")

    def restores(self) -> Series:
        series = Series([], [], [], [])
        for index in range(self.runs):
            for ours_turn in (True, False) if index % 2 == 0 else (False, True):
                if ours_turn:
                    report = self._ours_restore()
                    series.ours.append(report["seconds"])
                    series.peaks.append(report["peak"])
                    series.baselines.append(report["baseline"])
                    seconds, peak = report["seconds"], report["peak"] / MIB
                    print(f"  restore {index + 1}: ours {seconds:7.2f} s, peak RSS {peak:.0f} MB")
                else:
                    series.shell.append(self._shell_restore())
                    print(f"  restore {index + 1}: shell {series.shell[-1]:6.2f} s")
        return series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1000, help="database size (MB)")
    parser.add_argument("--rebuild", action="store_true", help="build the database again")
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement")
    parser.add_argument("--child", choices=("dump", "restore"), help=argparse.SUPPRESS)
    parser.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, json.loads(args.spec))
        return
    db = pgdata.ensure_database(args.size_mb, rebuild=args.rebuild)
    how = "reused" if db.reused else f"built in {db.build_seconds:.0f} s"
    print(
        f"database {db.name}: {db.size_bytes / MB:.0f} MB ({how}; pgbench -s "
        f"{db.pgbench_scale}: {db.pgbench_bytes / MB:.0f} MB, bench_docs: "
        f"{db.docs_bytes / MB:.0f} MB)"
    )
    with tempfile.TemporaryDirectory(prefix="backupy-bench-dump-") as tmp:
        bench = Bench(Path(tmp), max(1, args.runs))
        try:
            # Warm the page cache and the server's buffers for both sides alike.
            shell(f"pg_dump -Fc -Z0 {_conn()} -d {db.name} > /dev/null")
            dumps = bench.dumps()
            restores = bench.restores()
        finally:
            pgdata.drop_database(RESTORE_OURS)
            pgdata.drop_database(RESTORE_SHELL)
    artifact = bench.last_dump["artifact"]
    raw, stored = artifact["raw_bytes"], artifact["stored_bytes"]
    figures = [
        dumps.time_figure("backup: ours vs pg_dump|zstd|age"),
        dumps.rss_figure("backup"),
        restores.time_figure("restore: ours vs age|zstd|pg_restore"),
        restores.rss_figure("restore"),
    ]
    title = (
        f"bench.dump: PostgreSQL {db.size_bytes / MB:.0f} MB, zstd -{ZSTD_LEVEL}, one age "
        f"recipient; times: medians of {bench.runs}, interleaved; RSS: the highest"
    )
    print_table(title, figures)
    print(
        f"\ndatabase {db.size_bytes / MB:.0f} MB; dump {raw / MB:.0f} MB raw, artifact "
        f"{stored / MB:.0f} MB: compression ratio {raw / stored:.2f}:1 (the shell's artifact: "
        f"{bench.shell_stored / MB:.0f} MB)"
    )


if __name__ == "__main__":
    main()
