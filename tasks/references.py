"""What a task message may carry: references into the worker's own config, nothing else.

Anyone who can write to the broker could otherwise make every worker run a shell command of
their choosing. A step message is exactly ``run_id, job_id, phase, index, digest`` as keyword
arguments; anything more, less or of another shape is refused before any lookup, and the refusal
names the offending field names but never echoes their values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tasks.runs import is_run_id

REFERENCE_FIELDS = ("run_id", "job_id", "phase", "index", "digest")
JOB_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
DIGEST_PATTERN = re.compile(r"^[0-9a-f]{64}$")
PHASES = ("pre", "dump", "post", "finalize")


class Refused(Exception):
    """A message this worker will not act on; the reason is safe to record and log."""


@dataclass(frozen=True)
class StepRef:
    run_id: str
    job_id: str
    phase: str
    index: int
    digest: str

    @property
    def step(self) -> str:
        """The step's name in the run record: ``pre.0``, ``dump``, ``post.1``, ``finalize``."""
        return f"{self.phase}.{self.index}" if self.phase in ("pre", "post") else self.phase

    def as_kwargs(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in REFERENCE_FIELDS}


def parse_reference(
    args: tuple[Any, ...], kwargs: Mapping[str, Any], phases: tuple[str, ...]
) -> StepRef:
    """Validate a message's arguments into a StepRef, or raise Refused saying why."""
    if args:
        raise Refused(f"message carries {len(args)} positional argument(s); steps take none")
    extra = sorted(set(kwargs) - set(REFERENCE_FIELDS))
    if extra:
        raise Refused(f"message carries fields a step does not take: {', '.join(extra)}")
    missing = [name for name in REFERENCE_FIELDS if name not in kwargs]
    if missing:
        raise Refused(f"message lacks {', '.join(missing)}")
    run_id, job_id = kwargs["run_id"], kwargs["job_id"]
    phase, index, digest = kwargs["phase"], kwargs["index"], kwargs["digest"]
    if not is_run_id(run_id):
        raise Refused("run_id is not a run id")
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
        raise Refused("job_id is not a job id")
    if phase not in phases:
        raise Refused(f"phase must be one of {', '.join(phases)} for this task")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 1000:
        raise Refused("index is not a hook index")
    if not isinstance(digest, str) or not DIGEST_PATTERN.fullmatch(digest):
        raise Refused("digest is not a config digest")
    return StepRef(run_id, job_id, phase, index, digest)
