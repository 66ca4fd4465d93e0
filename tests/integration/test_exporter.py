"""Result 1 of the exporter issue: after real runs (success, failed pre-hook, pre-hook exit 75),
`backupy exporter` serves metrics that pass `promtool check metrics`, match the run store, and
survive a restart of the exporter; plus the collector in-process on scripted runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from tasks.outcome import EX_TEMPFAIL
from tasks.runs import RunStore, new_run_id
from tasks.stats import HOOK_FAILURE_STATES, record_finished_run
from tests.conftest import need_service
from tests.harness import Deployment, ProcessHandle, sqlite_job
from tests.integration.runs import start, wait_final
from workers.exporter import BackupyCollector, make_registry, run_until, serve

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# `backupy exporter`, reached without workers/cli.py (which registers it: see workers/cli_ops.py)
EXPORTER = [sys.executable, "-c", "from workers.cli_ops import exporter; exporter()"]


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def backupy_only(found: Samples) -> Samples:
    return {key: v for key, v in found.items() if key[0].startswith("backupy_")}


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        need_service("promtool", "not on PATH (Debian package `prometheus`; .ci/run installs it)")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60
    )
    problems = (checked.stdout + checked.stderr).decode()
    assert checked.returncode == 0 and not problems.strip(), problems


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def start_exporter(world: Deployment, name: str) -> tuple[ProcessHandle, str]:
    argv = [*EXPORTER, "--port", "0", "--addr", "127.0.0.1"]
    handle = ProcessHandle(argv, world.env(), world.tmp / f"exporter-{name}.log").start()
    world.processes.append(handle)
    handle.wait_log("serving http://", timeout=30)
    port = re.search(r"serving http://127\.0\.0\.1:(\d+)/metrics", handle.log())
    assert port, handle.log()
    return handle, f"http://127.0.0.1:{port.group(1)}/metrics"


def stop_exporter(handle: ProcessHandle) -> None:
    handle.stop(timeout=10)
    assert handle.process is not None and handle.process.returncode == 0, handle.log()
    assert "backupy exporter: stopped" in handle.log()


def test_exporter_after_real_runs_matches_the_run_store_and_survives_restart(
    world: Deployment, source_db: Path
) -> None:
    queue = world.queue()
    world.write_config(
        [
            sqlite_job(
                "ok",
                source_db,
                queue,
                pre_hooks=[{"command": "true"}],
                post_hooks=[{"command": "true"}],
            ),
            sqlite_job("pre-fails", source_db, queue, pre_hooks=[{"command": "exit 3"}]),
            sqlite_job("tempfail", source_db, queue, pre_hooks=[{"command": "exit 75"}]),
        ]
    )
    world.worker([queue])
    run_ids = {job: start(world, job) for job in ("ok", "pre-fails", "tempfail")}
    runs = {job: wait_final(world, run_id) for job, run_id in run_ids.items()}
    assert {job: run["status"] for job, run in runs.items()} == {
        "ok": "success",
        "pre-fails": "failed",
        "tempfail": "skipped",
    }

    exporter, url = start_exporter(world, "first")
    text = scrape(url)
    promtool_check(text)
    found = samples(text)

    for job, run in runs.items():
        for status in ("success", "failed", "skipped", "lost"):
            expected = 1.0 if run["status"] == status else 0.0
            assert value(found, "backupy_runs_total", job=job, status=status) == expected
        assert value(found, "backupy_runs_in_progress", job=job) == 0
        assert value(found, "backupy_hook_budget_exhausted_total", job=job) == 0
        duration = value(found, "backupy_last_run_duration_seconds", job=job)
        assert duration is not None and 0 <= duration < 60
        # hook failures: counted from the run record's steps, per phase and state
        for phase in ("pre", "post"):
            for state in HOOK_FAILURE_STATES:
                expected = sum(
                    1
                    for name, step in run["steps"].items()
                    if name.startswith(f"{phase}.")
                    and step["state"] == state
                    and step.get("exit_code") != EX_TEMPFAIL  # "nothing to do", not a failure
                )
                got = value(
                    found, "backupy_hook_failures_total", job=job, phase=phase, reason=state
                )
                assert got == expected, (job, phase, state)
    assert value(
        found, "backupy_hook_failures_total", job="pre-fails", phase="pre", reason="failed"
    )
    ok = runs["ok"]
    size = value(found, "backupy_last_backup_size_bytes", job="ok")
    assert (
        size
        == ok["artifact"]["stored_bytes"]
        == (world.storage / ok["artifact"]["key"]).stat().st_size
    )
    last_success = value(found, "backupy_last_success_timestamp_seconds", job="ok")
    assert ok["finished_at"] <= last_success <= ok["finished_at"] + 30
    for job in ("pre-fails", "tempfail"):
        assert value(found, "backupy_last_success_timestamp_seconds", job=job) == 0
        assert value(found, "backupy_last_backup_size_bytes", job=job) is None
    version = metadata.version("backupy-workers")
    assert value(found, "backupy_build_info", version=version) == 1
    assert ("process_cpu_seconds_total", ()) in found  # prometheus_client's standard collectors
    assert any(name == "python_info" for name, _ in found)

    # a second exporter process reports the same numbers: they live in Redis
    stop_exporter(exporter)
    second, url2 = start_exporter(world, "second")
    again = samples(scrape(url2))
    assert backupy_only(again) == backupy_only(found)

    # a run in progress shows up at the next scrape, with no restart
    store = RunStore(redis.Redis.from_url(world.redis_url), world.prefix)
    queued = new_run_id()
    store.create(queued, "ok", {"status": "queued", "deadline": time.time() + 600})
    assert value(samples(scrape(url2)), "backupy_runs_in_progress", job="ok") == 1
    store.finish(queued, "lost", "test")
    assert value(samples(scrape(url2)), "backupy_runs_in_progress", job="ok") == 0
    stop_exporter(second)


# --- in-process ----------------------------------------------------------------------------


def scripted_run(
    store: RunStore,
    job: str,
    status: str,
    *,
    steps: dict[str, dict[str, Any]] | None = None,
    artifact: dict[str, Any] | None = None,
    budget_exhausted: bool = False,
) -> str:
    """A run through the real code paths: create, finish, count (what finalize does)."""
    run_id = new_run_id()
    now = time.time()
    store.create(run_id, job, {"status": "running", "started_at": now - 2, "deadline": now + 60})
    for name, result in (steps or {}).items():
        store.record_step(run_id, name, result)
    assert store.finish(run_id, status, "scripted", {"artifact": artifact})
    record = store.get(run_id)
    assert record is not None
    record_finished_run(
        store.client, store.keys.prefix, job, status, record, budget_exhausted=budget_exhausted
    )
    return run_id


def test_collector_in_process_on_scripted_runs(real_redis: redis.Redis, key_prefix: str) -> None:
    store = RunStore(real_redis, key_prefix)
    scripted_run(store, "a", "success", artifact={"key": "a/x", "stored_bytes": 1234})
    scripted_run(store, "a", "success", artifact={"key": "a/y", "stored_bytes": 999})
    scripted_run(
        store,
        "a",
        "failed",
        steps={"pre.0": {"state": "timed_out"}, "post.0": {"state": "budget_exceeded"}},
        budget_exhausted=True,
    )
    scripted_run(store, "gone", "lost")  # a job no longer in the config keeps its history
    running = new_run_id()
    store.create(running, "a", {"status": "running", "deadline": time.time() + 60})

    registry = make_registry(BackupyCollector(real_redis, key_prefix, ["a", "never-ran"]))
    text = generate_latest(registry).decode()
    promtool_check(text)
    found = samples(text)

    assert value(found, "backupy_runs_total", job="a", status="success") == 2
    assert value(found, "backupy_runs_total", job="a", status="failed") == 1
    assert value(found, "backupy_runs_total", job="gone", status="lost") == 1
    assert value(found, "backupy_runs_total", job="never-ran", status="success") == 0
    assert value(found, "backupy_last_backup_size_bytes", job="a") == 999
    assert (
        value(found, "backupy_hook_failures_total", job="a", phase="pre", reason="timed_out") == 1
    )
    assert (
        value(found, "backupy_hook_failures_total", job="a", phase="post", reason="budget_exceeded")
        == 1
    )
    assert value(found, "backupy_hook_failures_total", job="a", phase="pre", reason="failed") == 0
    assert value(found, "backupy_hook_budget_exhausted_total", job="a") == 1
    assert value(found, "backupy_runs_in_progress", job="a") == 1
    assert value(found, "backupy_runs_in_progress", job="never-ran") == 0
    assert value(found, "backupy_last_success_timestamp_seconds", job="never-ran") == 0
    assert value(found, "backupy_last_run_duration_seconds", job="never-ran") is None


@contextmanager
def http_server(registry: Any) -> Iterator[str]:
    server = serve(registry, "127.0.0.1", 0)
    stop = threading.Event()
    thread = threading.Thread(target=run_until, args=(server, stop), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive()


def test_unreachable_redis_answers_503_in_one_line(
    real_redis: redis.Redis, key_prefix: str
) -> None:
    scripted_run(RunStore(real_redis, key_prefix), "a", "success")
    with http_server(make_registry(BackupyCollector(real_redis, key_prefix, ["a"]))) as url:
        assert value(samples(scrape(url)), "backupy_runs_total", job="a", status="success") == 1

    # nothing listens on port 1; no retries, so the scrape fails at once
    dead = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    with http_server(make_registry(BackupyCollector(dead, key_prefix, ["a"]))) as url:
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(url, timeout=10)
        assert failed.value.code == 503
        body = failed.value.read().decode()
        assert (
            body.startswith("backupy exporter: cannot read the run store") and body.count("\n") == 1
        )


def test_exporter_cli_bad_input_exits_2(world: Deployment, tmp_path: Path) -> None:
    world.write_config([sqlite_job("a", tmp_path / "a.db", world.queue())])
    unreachable = subprocess.run(
        [*EXPORTER, "--port", "0"],
        env=world.env(BACKUPY_REDIS_URL="redis://127.0.0.1:1/0"),
        capture_output=True,
        timeout=60,
    )
    assert unreachable.returncode == 2
    assert unreachable.stderr.decode().startswith("backupy: cannot reach Redis")
    bad_config = subprocess.run(
        [*EXPORTER, "--port", "0", "-c", str(tmp_path / "missing.yaml")],
        env=world.env(),
        capture_output=True,
        timeout=60,
    )
    assert bad_config.returncode == 2 and b"Traceback" not in bad_config.stderr
    bad_port = subprocess.run([*EXPORTER, "--port", "70000"], env=world.env(), capture_output=True)
    assert bad_port.returncode == 2
