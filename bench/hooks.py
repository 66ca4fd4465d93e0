"""`python -m bench.hooks`: what the hook runner costs, beside what the shell alone costs.

1. Capture time of 1 GiB of hook output (``head -c 1073741824 /dev/zero``) through ``run_hook``,
   beside the same bytes piped by the shell into ``cat > /dev/null``: target ratio ≤ 1.2.
2. The runner's peak RSS while doing it, measured in a fresh interpreter (``ru_maxrss``), beside
   the RSS of an interpreter that just imported ``tasks.hooks``: target ≤ 64 MB. The ring
   buffers keep 8 KiB a stream, so the peak must not depend on how much the hook prints.
3. Per-hook overhead: ``run_hook("true")`` beside ``subprocess.run(["/bin/sh", "-c", "true"])``,
   median over 200 runs: target ratio ≤ 1.5 (our own bar: the runner adds two pipes, a pidfd,
   the environment filter and a group check to a bare spawn).

Ours and the reference alternate run by run, so a noisy neighbour hits both alike. ``--bytes``
shrinks the capture for a quick run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import Figure, median, print_table
from config.limits import Limits
from tasks.hooks import run_hook

GIB = 1024 * 1024 * 1024
MIB = 1024 * 1024
CAPTURE_RATIO_TARGET = 1.2
PEAK_RSS_TARGET_MB = 64.0
SPAWN_RATIO_TARGET = 1.5
REPO_ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter so that ru_maxrss (a high-water mark) belongs to this capture only.
# Prints the RSS after the import (the baseline), the peak after the capture, and the result.
CAPTURE_CHILD = """
import json, resource, sys, time
from config.limits import Limits
from tasks.hooks import run_hook
scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
started = time.perf_counter()
result = run_hook(sys.argv[1], timeout=Limits().hook_timeout_max, limits=Limits())
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
print(json.dumps({"baseline": baseline, "peak": peak, "seconds": seconds,
                  "result": result.to_dict()}))
"""


def capture_command(size: int) -> str:
    return f"head -c {size} /dev/zero"


def measure_capture(size: int) -> dict[str, Any]:
    """One capture through run_hook in a fresh interpreter; checks the runner saw every byte."""
    done = subprocess.run(
        [sys.executable, "-c", CAPTURE_CHILD, capture_command(size)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    report: dict[str, Any] = json.loads(done.stdout)
    result = report["result"]
    kept = len(result["stdout"])
    if result["state"] != "ok" or result["stdout_dropped"] + kept != size:
        raise SystemExit(f"the capture went wrong: {result['state']}, {result['reason']}")
    return report


def measure_shell_pipe(size: int) -> float:
    """The reference: the shell moves the same bytes through a pipe into cat."""
    started = time.perf_counter()
    subprocess.run(["/bin/sh", "-c", f"{capture_command(size)} | cat > /dev/null"], check=True)
    return time.perf_counter() - started


def time_run_hook(limits: Limits) -> float:
    started = time.perf_counter()
    result = run_hook("true", limits=limits)
    elapsed = time.perf_counter() - started
    if not result.ok:
        raise SystemExit(f"run_hook('true') failed: {result.reason}")
    return elapsed


def time_subprocess_run() -> float:
    started = time.perf_counter()
    subprocess.run(["/bin/sh", "-c", "true"], check=True)
    return time.perf_counter() - started


def capture_figures(size: int, runs: int) -> list[Figure]:
    ours: list[float] = []
    shell: list[float] = []
    reports: list[dict[str, Any]] = []
    for _ in range(runs):
        reports.append(measure_capture(size))
        ours.append(reports[-1]["seconds"])
        shell.append(measure_shell_pipe(size))
    ratio = median(ours) / median(shell)
    peak_mb = max(report["peak"] for report in reports) / MIB
    baseline_mb = median([report["baseline"] for report in reports]) / MIB
    label = f"{size / GIB:g} GiB" if size >= GIB else f"{size / MIB:g} MiB"
    return [
        Figure(
            f"capture {label}: run_hook vs sh | cat (s)",
            median(ours),
            median(shell),
            "s",
            f"ratio <= {CAPTURE_RATIO_TARGET:g}",
            ratio <= CAPTURE_RATIO_TARGET,
        ),
        Figure(
            f"peak RSS, capture {label} vs import (MB)",
            peak_mb,
            baseline_mb,
            "MB",
            f"peak <= {PEAK_RSS_TARGET_MB:g} MB",
            peak_mb <= PEAK_RSS_TARGET_MB,
        ),
    ]


def spawn_figure(spawns: int) -> Figure:
    limits = Limits()
    time_run_hook(limits)  # warm the imports and the page cache
    time_subprocess_run()
    ours: list[float] = []
    reference: list[float] = []
    for _ in range(spawns):
        ours.append(time_run_hook(limits))
        reference.append(time_subprocess_run())
    ratio = median(ours) / median(reference)
    return Figure(
        f"per `true` hook vs subprocess.run, n={spawns} (ms)",
        median(ours) * 1000,
        median(reference) * 1000,
        "ms",
        f"ratio <= {SPAWN_RATIO_TARGET:g}",
        ratio <= SPAWN_RATIO_TARGET,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bytes", type=int, default=GIB, help="hook output to capture")
    parser.add_argument("--runs", type=int, default=5, help="captures (median / max taken)")
    parser.add_argument("--spawns", type=int, default=200, help="`true` hooks for the overhead")
    args = parser.parse_args()
    figures = [*capture_figures(args.bytes, args.runs), spawn_figure(args.spawns)]
    print_table("bench.hooks: the hook runner beside the shell", figures)


if __name__ == "__main__":
    main()
