"""The notifications' RQ queue and the calls that put a job on it (now, or later with
rq-scheduler): shared by the jobs (retries, the sweep), the webhook service (a test
delivery) and the event listener, so that none of them imports the others for it."""
from datetime import timedelta

from rq import Queue
from rq_scheduler import Scheduler

from ..logging_setup import job_meta
from ..redis_conn import get_redis

NOTIFY_QUEUE = "automation-notify"
JOB_TIMEOUT = 120


def _enqueue(func, *args, delay=None):
    r = get_redis()
    meta = job_meta()  # the request (or job) behind the event: its id follows into the delivery's logs
    if delay:
        Scheduler(queue_name=NOTIFY_QUEUE, connection=r).enqueue_in(
            timedelta(seconds=delay), func, *args, timeout=JOB_TIMEOUT, job_result_ttl=600, meta=meta)
    else:
        Queue(NOTIFY_QUEUE, connection=r).enqueue(func, *args, job_timeout=JOB_TIMEOUT, result_ttl=600,
                                                  failure_ttl=7 * 24 * 3600, meta=meta)


def enqueue_dispatch(event, run_id, snapshot, reason, event_key):
    _enqueue("webapp.notify.jobs.dispatch_event", event, run_id, snapshot, reason, event_key)


def enqueue_delivery(pk, attempt, delay=None):
    _enqueue("webapp.notify.jobs.deliver_webhook", pk, attempt, delay=delay)


def enqueue_mail(pk, attempt, delay=None):
    _enqueue("webapp.notify.jobs.send_mail", pk, attempt, delay=delay)
