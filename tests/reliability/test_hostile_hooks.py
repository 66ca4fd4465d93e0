"""Result 5 of the reliability issue: hostile hooks end in a recorded result, leaving nothing.

Each hook runs through ``run_hook`` in a SUBPROCESS (the subreaper, when a case enables it,
would otherwise make the pytest process the reaper of every orphan on the machine), and then,
for the setsid daemon and the 50 children ignoring SIGTERM, through a real prefork worker.
Every hook's processes carry a unique marker (``sleep 300.<random>``); afterwards none may be
alive (zombies aside: the container's PID 1 reaps lazily), checked by polling with a deadline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from config.limits import Limits
from tests.harness import Deployment, sqlite_job, wait_for
from tests.integration.processes import processes_with, unique_sleep
from tests.integration.runs import start, wait_final

REPO_ROOT = Path(__file__).resolve().parents[2]
GRACE = Limits().kill_grace
# Scheduling noise allowance on a busy 2-core machine (an interpreter start included).
SLACK = 2.0
GIB = 1024**3
OUTPUT = Limits().output_bytes

# Runs one hook and reports the result, its peak memory and what is left below this process.
CHILD = r"""
import json, resource, sys, time
import psutil
from config.limits import Limits
from tasks.hooks import enable_subreaper, run_hook
command, timeout, subreaper = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
if subreaper and not enable_subreaper():
    raise SystemExit("could not become a child subreaper")
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.monotonic()
result = run_hook(command, timeout=timeout, limits=Limits())
elapsed = time.monotonic() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
left = []
for child in psutil.Process().children(recursive=True):
    try:
        left.append([child.pid, child.status(), " ".join(child.cmdline())])
    except psutil.Error:
        pass
print(json.dumps({"result": result.to_dict(), "elapsed": elapsed, "baseline_kib": baseline,
                  "peak_kib": peak, "left": left}))
"""

_markers: list[str] = []


def marker() -> str:
    """A ``sleep 300.<random>`` command no other process on the machine runs; cleaned up."""
    command = unique_sleep(300)
    _markers.append(command)
    return command


def alive_with(text: str) -> list[psutil.Process]:
    found = []
    for process in processes_with(text):
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            continue
    return found


def assert_none_alive(text: str, timeout: float = 5.0) -> None:
    wait_for(lambda: not alive_with(text), timeout, f"no process running {text!r}")


@pytest.fixture(autouse=True)
def _kill_markers() -> Iterator[None]:
    yield
    while _markers:
        for process in alive_with(_markers.pop()):
            try:
                process.kill()
            except psutil.Error:
                continue


def run_in_child(command: str, timeout: float, subreaper: bool = True) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, command, str(timeout), "1" if subreaper else "0"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout + 60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def wait_file(path: Path) -> str:
    """Shell code blocking until ``path`` exists: the hook exits only once its daemon is set."""
    return f"until [ -e '{path}' ]; do sleep 0.01; done"


# -- through the runner ------------------------------------------------------------------------


def test_fifty_children_ignoring_sigterm_are_killed_after_the_grace() -> None:
    sleep = marker()
    report = run_in_child(f"for i in $(seq 50); do (trap '' TERM; {sleep}) & done; wait", timeout=1)
    result = report["result"]
    assert (result["state"], result["exit_code"], result["timed_out"]) == ("timed_out", -1, True)
    assert 1 + GRACE - 0.1 <= report["elapsed"] < 1 + GRACE + SLACK
    assert report["left"] == []
    assert_none_alive(sleep)


def test_closed_stdout_and_stderr_still_end_at_the_timeout() -> None:
    sleep = marker()
    report = run_in_child(f"echo before; exec >&- 2>&-; {sleep}", timeout=1)
    result = report["result"]
    assert (result["state"], result["exit_code"]) == ("timed_out", -1)
    assert result["stdout"] == "before\n"
    assert 1 <= report["elapsed"] < 1 + GRACE + SLACK
    assert report["left"] == []
    assert_none_alive(sleep)


def test_one_gib_without_a_newline_keeps_the_last_8_kib_in_flat_memory() -> None:
    report = run_in_child(f"head -c {GIB} /dev/zero; printf END", timeout=120)
    result = report["result"]
    assert result["state"] == "ok", result["reason"]
    assert len(result["stdout"]) == OUTPUT
    assert result["stdout"].endswith("\0END")
    assert result["stdout_dropped"] == GIB + 3 - OUTPUT
    grown_mib = (report["peak_kib"] - report["baseline_kib"]) / 1024
    assert grown_mib < 16, f"peak RSS grew by {grown_mib:.1f} MiB for 1 GiB of output"


@pytest.mark.parametrize("subreaper", [True, False], ids=["subreaper", "no-subreaper"])
@pytest.mark.parametrize("variant", ["setsid", "double-fork"])
def test_a_setsid_daemon_keeping_the_environment_is_ended(
    tmp_path: Path, variant: str, subreaper: bool
) -> None:
    sleep, ready = marker(), tmp_path / "daemon-ready"
    if variant == "setsid":
        daemon = f"setsid sh -c 'touch {ready}; {sleep}' </dev/null >/dev/null 2>&1 &"
    else:  # the classic daemon: fork, setsid, fork again, the middle one exits
        daemon = f"(setsid sh -c '{sleep} & touch {ready}' </dev/null >/dev/null 2>&1 &);"
    report = run_in_child(f"{daemon} {wait_file(ready)}; echo started", timeout=30)
    result = report["result"]
    assert (result["state"], result["exit_code"], result["stdout"]) == ("ok", 0, "started\n")
    assert result["escaped"] >= 1
    assert f"; {result['escaped']} escaped process(es) were stopped" in result["reason"]
    assert report["elapsed"] < GRACE + SLACK
    # Under the subreaper the daemon was this process's child: reaped, not left as a zombie.
    assert report["left"] == []
    assert_none_alive(sleep)


def test_under_the_subreaper_an_orphan_that_cleared_its_environment_is_ended(
    tmp_path: Path,
) -> None:
    sleep, ready = marker(), tmp_path / "daemon-ready"
    daemon = f"setsid env -i /bin/sh -c '/usr/bin/touch {ready}; exec /usr/bin/{sleep}' &"
    report = run_in_child(f"{daemon} {wait_file(ready)}; echo started", timeout=30)
    result = report["result"]
    assert result["state"] == "ok" and result["escaped"] >= 1, result
    assert report["left"] == []
    assert_none_alive(sleep)


def test_without_a_subreaper_a_session_leaver_that_cleared_its_environment_is_out_of_reach(
    tmp_path: Path,
) -> None:
    """The documented limit (tasks/hooks.py): no session, no token, no subreaper: not found."""
    sleep, ready = marker(), tmp_path / "daemon-ready"
    daemon = f"setsid env -i /bin/sh -c '/usr/bin/touch {ready}; exec /usr/bin/{sleep}' &"
    report = run_in_child(f"{daemon} {wait_file(ready)}; echo started", timeout=30, subreaper=False)
    assert report["result"]["state"] == "ok"
    assert report["result"]["escaped"] == 0
    assert alive_with(sleep), "expected out of reach; if this now passes, update the docstring"


def test_a_shell_exiting_before_its_grandchildren_takes_them_along() -> None:
    sleep = marker()
    report = run_in_child(f"({sleep} &) ; exit 0", timeout=30)
    result = report["result"]
    assert (result["state"], result["exit_code"]) == ("ok", 0)
    assert report["elapsed"] < GRACE + SLACK
    assert report["left"] == []
    assert_none_alive(sleep)


# -- through a real worker ---------------------------------------------------------------------


def test_hostile_hooks_through_a_real_worker_leave_nothing_behind(
    world: Deployment, source_db: Path, tmp_path: Path
) -> None:
    daemon_sleep, cleared_sleep, children_sleep = marker(), marker(), marker()
    ready, cleared_ready = tmp_path / "daemon-ready", tmp_path / "cleared-ready"
    queue = world.queue()
    world.write_config(
        [
            sqlite_job(
                "app-db",
                source_db,
                queue,
                hook_order="sequential",
                pre_hooks=[
                    {
                        "command": f"setsid sh -c 'touch {ready}; {daemon_sleep}' "
                        f"</dev/null >/dev/null 2>&1 & {wait_file(ready)}; echo started"
                    },
                    {
                        # Reachable only because the pool process is a subreaper.
                        "command": f"setsid env -i /bin/sh -c '/usr/bin/touch {cleared_ready}; "
                        f"exec /usr/bin/{cleared_sleep}' & {wait_file(cleared_ready)}"
                    },
                    {
                        "command": "for i in $(seq 50); do (trap '' TERM; "
                        f"{children_sleep}) & done; wait",
                        "timeout": "1s",
                        "on_error": "continue",
                    },
                ],
            )
        ]
    )
    world.worker([queue])
    run = wait_final(world, start(world, "app-db"), timeout=60)

    daemon, cleared, children = (run["steps"][f"pre.{i}"] for i in range(3))
    assert daemon["state"] == "ok", daemon
    assert daemon["escaped"] >= 1 and "escaped process(es) were stopped" in daemon["reason"]
    assert cleared["state"] == "ok" and cleared["escaped"] >= 1, cleared
    assert (children["state"], children["exit_code"]) == ("timed_out", -1), children
    assert run["steps"]["dump"]["state"] == "ok"  # on_error: continue
    for sleep in (daemon_sleep, cleared_sleep, children_sleep):
        assert_none_alive(sleep)
