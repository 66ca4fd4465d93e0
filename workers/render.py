"""How a run looks on a terminal: one rendering for `backupy show`, `run --wait` and the demo."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

STATE_STYLES = {
    "ok": "green",
    "success": "green",
    "failed": "red",
    "timed_out": "red",
    "budget_exceeded": "red",
    "interrupted": "red",
    "refused": "red",
    "lost": "red",
    "skipped": "yellow",
    "running": "cyan",
    "queued": "cyan",
    "pending": "dim",
}
# How much of a hook's kept output `show` prints per stream; --json has all of it.
TAIL_CHARS = 400


def when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(float(timestamp), UTC).strftime("%Y-%m-%d %H:%M:%S")


def human_bytes(count: float | int | None) -> str:
    if count is None or count == "":
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def styled(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


def step_order(run: dict[str, Any]) -> list[str]:
    planned = list(run.get("steps_planned") or [])
    extra = sorted(name for name in run.get("steps", {}) if name not in planned)
    return planned + extra


def step_detail(name: str, result: dict[str, Any], run: dict[str, Any]) -> str:
    lines = [str(result.get("reason") or "")]
    if name == "dump" and result.get("artifact"):
        artifact = result["artifact"]
        lines.append(f"{artifact['key']}  {human_bytes(artifact['stored_bytes'])}")
        lines.append(f"sha256 {artifact['sha256']}")
    for stream in ("stdout", "stderr"):
        text = (result.get(stream) or "").strip()
        if text:
            dropped = result.get(f"{stream}_dropped") or 0
            cut = f" (+{dropped} bytes dropped)" if dropped else ""
            lines.append(f"{stream}{cut}: {text[-TAIL_CHARS:]}")
    return "\n".join(line for line in lines if line)


def steps_table(run: dict[str, Any]) -> Table:
    table = Table(show_header=True, header_style="bold", expand=False)
    for column in ("step", "state", "exit", "duration", "host", "detail"):
        table.add_column(column, overflow="fold")
    steps, progress = run.get("steps", {}), run.get("progress", {})
    for name in step_order(run):
        result = steps.get(name)
        if result is None:
            state = "running" if name == "dump" and name in progress else "pending"
            detail = f"{human_bytes(progress[name])} dumped" if name in progress else ""
            table.add_row(name, styled(state), "", "", "", detail)
            continue
        exit_code = result.get("exit_code")
        duration = result.get("duration")
        table.add_row(
            name,
            styled(result.get("state", "?")),
            "" if exit_code is None else str(exit_code),
            "" if duration is None else f"{float(duration):.2f}s",
            str(result.get("host", "")),
            step_detail(name, result, run),
        )
    return table


def run_header(run: dict[str, Any]) -> Text:
    status = run.get("status", "?")
    text = Text()
    text.append(f"run {run['run_id']}  job {run['job']}  ")
    text.append(status, style=STATE_STYLES.get(status, ""))
    if run.get("reason"):
        text.append(f"  {run['reason']}")
    started = run.get("started_at") or run.get("created_at")
    finished = run.get("finished_at")
    elapsed = (finished or time.time()) - started if started else None
    text.append(f"\ncreated {when(run.get('created_at'))}  trigger {run.get('trigger', '-')}")
    if elapsed is not None:
        text.append(f"  duration {elapsed:.2f}s")
    budget = run.get("budget")
    if budget:
        text.append(
            f"\nhook budget: {budget['spent']:.2f}s spent of {budget['total']:.2f}s"
            + ("  (exhausted)" if budget.get("exhausted") else "")
        )
    artifact = run.get("artifact")
    if artifact:
        text.append(
            f"\nartifact {artifact['key']}  {human_bytes(artifact['stored_bytes'])}"
            f"  sha256 {artifact['sha256']}"
        )
    return text


def render_run(run: dict[str, Any]) -> Group:
    return Group(run_header(run), steps_table(run))


def runs_table(runs: list[dict[str, Any]]) -> Table:
    table = Table(show_header=True, header_style="bold")
    for column in ("run", "job", "status", "trigger", "created", "duration", "size", "reason"):
        table.add_column(column, overflow="fold")
    for run in runs:
        started = run.get("started_at") or run.get("created_at")
        finished = run.get("finished_at")
        duration = f"{finished - started:.1f}s" if started and finished else "-"
        artifact = run.get("artifact") or {}
        table.add_row(
            run["run_id"],
            run["job"],
            styled(run.get("status", "?")),
            str(run.get("trigger", "-")),
            when(run.get("created_at")),
            duration,
            human_bytes(artifact.get("stored_bytes")),
            str(run.get("reason", "")),
        )
    return table
