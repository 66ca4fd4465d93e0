"""Finding a test's hook processes by a unique marker in their command line."""

from __future__ import annotations

import uuid

import psutil


def unique_sleep(seconds: int) -> str:
    """``sleep 60.000123456``: a duration no other process on the machine has in its argv."""
    return f"sleep {seconds}.{uuid.uuid4().int % 10**9:09d}"


def processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(process.info["cmdline"] or []):
                found.append(process)
        except psutil.Error:
            continue
    return found
