"""Enqueueing pipeline jobs on RQ. One job = one batch of one stage (or several, within a job
slice: see tasks.py); it enqueues the next. A run's jobs go through fair dispatch
(dispatch.py): they wait in their account's ready list until a worker is free and it is
their account's turn."""
import uuid

from flask import current_app
from rq import Queue

from ..logging_setup import job_meta
from . import dispatch

JOB_TIMEOUT = 3600
RESULT_TTL = 3600


def job_key(run_id):
    return f"{dispatch.RUN_JOB_PREFIX}{int(run_id)}{dispatch.RUN_JOB_SUFFIX}"


def queue(client):
    return Queue(current_app.config["RQ_QUEUE"], connection=client)


def enqueue_step(client, run_id, token, first=False, delay=0, account_id=None, weight=None):
    """Queue the next batch of `run_id` for the job chain `token` (through fair dispatch when
    the run's account is given; straight onto RQ's list otherwise). `delay` seconds: the job
    is ready for a worker only then (fair dispatch's delayed jobs; ignored without an account,
    which only tests use)."""
    func = "webapp.automation.tasks.run_automation_task" if first else "webapp.automation.tasks.resume_automation_task"
    suffix = uuid.uuid4().hex[:12]
    if account_id is None:
        job_id = f"automation-run-{int(run_id)}-{suffix}"
        q = queue(client)
    else:
        job_id = dispatch.job_id(run_id, account_id, suffix)
        q = dispatch.FairQueue(current_app.config["RQ_QUEUE"], account_id, weight, delay=delay, connection=client)
    # The run's latest job id is recorded before the job can be picked up: a job that finds
    # another id here knows it was superseded (see RunExecutor.wait_for_exec_lock).
    client.set(job_key(run_id), job_id, ex=7 * 24 * 3600)
    return q.enqueue(func, run_id, token, job_id=job_id, job_timeout=JOB_TIMEOUT,
                     result_ttl=RESULT_TTL, failure_ttl=7 * 24 * 3600,
                     description=f"automation run {run_id}", meta=job_meta())


def latest_job_id(client, run_id):
    raw = client.get(job_key(run_id))
    return raw.decode() if raw else None


def withdraw(client, run_id, account_id):
    """A cancelled run: forget its latest job (so nothing counts it as waiting) and take that
    job out of its account's ready list if no worker was handed it yet."""
    job_id = latest_job_id(client, run_id)
    client.delete(job_key(run_id))
    if job_id and account_id is not None and dispatch.withdraw(client, account_id, job_id):
        from rq.exceptions import NoSuchJobError
        from rq.job import Job
        try:
            Job.fetch(job_id, connection=client).delete()
        except NoSuchJobError:
            pass
