"""Every Redis key the system uses, in one place (DESIGN.md, "Redis keys")."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix (default ``backupy:``), so several deployments share a Redis."""

    prefix: str = "backupy:"

    def run(self, run_id: str) -> str:
        return f"{self.prefix}run:{run_id}"

    def runs(self, job_id: str) -> str:
        return f"{self.prefix}runs:{job_id}"

    def all_runs(self) -> str:
        return f"{self.prefix}runs"

    def active(self) -> str:
        """zset of unfinished runs scored by deadline: what the watchdog scans."""
        return f"{self.prefix}active"

    def budget(self, run_id: str) -> str:
        return f"{self.prefix}budget:{run_id}"

    def lock(self, job_id: str) -> str:
        return f"{self.prefix}lock:{job_id}"

    def claim(self, run_id: str, step: str) -> str:
        return f"{self.prefix}claim:{run_id}:{step}"

    def host_claims(self, host: str) -> str:
        """set of claim keys taken on one host: what that host's supervisor watches."""
        return f"{self.prefix}hostclaims:{host}"

    def stats(self, job_id: str) -> str:
        return f"{self.prefix}stats:{job_id}"

    def stats_index(self) -> str:
        """set of the job ids that have ``stats:{job}`` counters: what the exporter lists."""
        return f"{self.prefix}stats-jobs"

    def prune_lock(self, job_id: str) -> str:
        """held while a prune of the job deletes artifacts, so two prunes never interleave."""
        return f"{self.prefix}prune:{job_id}"

    def refused(self) -> str:
        """capped list of refused messages that named no known run."""
        return f"{self.prefix}refused"
