"""Starting a run from outside a worker (CLI, demo, tests): one message naming the job.

The run id is made here so the caller can follow the run at once; the worker that takes the
message does the rest (lock, record, canvas), exactly as for a beat trigger.
"""

from __future__ import annotations

from celery import Celery

from config.jobs import Config
from tasks.runs import new_run_id


def trigger_run(app: Celery, config: Config, job_id: str, trigger: str = "cli") -> str:
    job = config.job(job_id)
    run_id = new_run_id()
    app.send_task(
        "backupy.start_run",
        kwargs={
            "job_id": job.id,
            "run_id": run_id,
            "trigger": trigger,
            "digest": config.job_digest(job.id),
        },
        queue=job.queue,
    )
    return run_id
