"""Enqueueing pipeline jobs on RQ. One job = one batch of one stage (or several, within a job
slice: see tasks.py); it enqueues the next."""
import uuid

from flask import current_app
from rq import Queue

from ..logging_setup import job_meta

JOB_TIMEOUT = 3600
RESULT_TTL = 3600


def job_key(run_id):
    return f"automation:run:{int(run_id)}:job"


def queue(client):
    return Queue(current_app.config["RQ_QUEUE"], connection=client)


def enqueue_step(client, run_id, token, first=False, delay=0):
    """Queue the next batch of `run_id` for the job chain `token`."""
    func = "webapp.automation.tasks.run_automation_task" if first else "webapp.automation.tasks.resume_automation_task"
    job_id = f"automation-run-{int(run_id)}-{uuid.uuid4().hex[:12]}"
    # The run's latest job id is recorded before the job can be picked up: a job that finds
    # another id here knows it was superseded (see RunExecutor.wait_for_exec_lock).
    client.set(job_key(run_id), job_id, ex=7 * 24 * 3600)
    return queue(client).enqueue(func, run_id, token, job_id=job_id, job_timeout=JOB_TIMEOUT,
                                 result_ttl=RESULT_TTL, failure_ttl=7 * 24 * 3600,
                                 description=f"automation run {run_id}", meta=job_meta())
