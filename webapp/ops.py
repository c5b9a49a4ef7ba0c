"""Operational state read from Redis (RQ queues, workers, failed jobs, the scheduler) and the
database (active and stale runs, recoveries): one reader for the status page
(webapp/web/ops.py) and the scrape-time gauges of /metrics (webapp/metrics.py).

Jobs belong to an account when they work on its run or site (`job_owner`); the page shows
another account's job only as a count, never its details.
"""
import time
from datetime import datetime, timedelta, timezone

from flask import current_app
from rq import Queue, Worker
from rq.job import Job
from rq.registry import FailedJobRegistry
from sqlalchemy import func, select

from .extensions import db
from .models import AutomationConfig, AutomationRun, MailDelivery, RunEvent, Site, WebhookDelivery
from .models.base import utcnow
from .automation import dispatch

LAST_TICK_KEY = "automation:scheduler:last_tick"
TICK_JOB_ID = "periodic-check_scheduled_automations"
RQ_SCHEDULED_JOBS = "rq:scheduler:scheduled_jobs"  # rq-scheduler's sorted set (job id -> due time)
ORPHAN = -1
_RUN_TASKS = ("webapp.automation.tasks.run_automation_task", "webapp.automation.tasks.resume_automation_task")
_SITE_TASKS = ("webapp.automation.scheduled.start_scheduled_run",)
_RUN_EVENT_TASKS = ("webapp.notify.jobs.dispatch_event",)  # (event, run_id, ...)
_DELIVERY_TASKS = {"webapp.notify.jobs.deliver_webhook": WebhookDelivery, "webapp.notify.jobs.send_mail": MailDelivery}


def queue_names():
    from .notify.queue import NOTIFY_QUEUE
    from .scheduling import CONTROL_QUEUE
    return [CONTROL_QUEUE, NOTIFY_QUEUE, current_app.config["RQ_QUEUE"]]


def fair_queue(r, account_id):
    """The pipeline's queue by account (fair dispatch, account limits): this account's jobs
    waiting for a worker and runs waiting for a slot; other accounts as totals only."""
    try:
        backlog = dispatch.backlog(r)
    except Exception:
        backlog = {}
    queued = dict(db.session.execute(select(AutomationRun.account_id, func.count(AutomationRun.id)).where(
        AutomationRun.status == "queued").group_by(AutomationRun.account_id)).all())
    others = [a for a in set(backlog) | set(queued) if a != account_id]
    return {"mine": {"jobs": backlog.get(account_id, 0), "queued_runs": queued.get(account_id, 0)},
            "others": {"accounts": len(others), "jobs": sum(backlog.get(a, 0) for a in others),
                       "queued_runs": sum(queued.get(a, 0) for a in others)}}


def record_tick(r):
    """The scheduled-runs tick ran (called by it): for the page and the no-tick alert."""
    try:
        r.set(LAST_TICK_KEY, repr(time.time()))
    except Exception:  # a probe must never break the tick
        pass


def _ts(value):
    if value is None:
        return None
    return datetime.fromtimestamp(float(value), timezone.utc).replace(tzinfo=None)


def _naive(dt):
    return dt.astimezone(timezone.utc).replace(tzinfo=None) if dt and dt.tzinfo else dt


def queues(r):
    """[{name, depth, oldest_age (seconds, None when empty), failed}] for the app's queues."""
    out = []
    now = utcnow()
    for name in queue_names():
        q = Queue(name, connection=r)
        depth = q.count
        oldest_age = None
        if depth:
            # RQ appends at the tail and workers pop the head: the head waited longest. A job
            # that vanished meanwhile (dequeued) just leaves the age unknown for this read.
            ids = q.get_job_ids(0, 1)
            job = Job.fetch_many(ids, connection=r)[0] if ids else None
            if job is not None and job.enqueued_at:
                oldest_age = max(0.0, (now - _naive(job.enqueued_at)).total_seconds())
        out.append({"name": name, "depth": depth, "oldest_age": oldest_age,
                    "failed": FailedJobRegistry(name, connection=r).count})
    return out


def workers(r):
    out = []
    for w in Worker.all(connection=r):
        out.append({"name": w.name, "hostname": w.hostname, "pid": w.pid, "state": str(w.get_state()),
                    "last_heartbeat": _naive(w.last_heartbeat), "current_job_id": w.get_current_job_id(),
                    "queues": w.queue_names()})
    return sorted(out, key=lambda w: w["name"])


def scheduler(r):
    last = r.get(LAST_TICK_KEY)
    next_tick = r.zscore(RQ_SCHEDULED_JOBS, TICK_JOB_ID)
    next_due = db.session.execute(select(func.min(AutomationConfig.next_run_at))
                                  .where(AutomationConfig.is_enabled.is_(True))).scalar()
    return {"last_tick": _ts(last.decode()) if last else None, "next_tick": _ts(next_tick),
            "next_due_run": next_due}


def run_counts():
    """Active runs by status and stale running runs (no heartbeat for STALE_RUN_SECONDS)."""
    counts = dict(db.session.execute(select(AutomationRun.status, func.count()).where(
        AutomationRun.status.in_(("running", "paused"))).group_by(AutomationRun.status)).all())
    stale = db.session.execute(select(func.count()).select_from(AutomationRun).where(*_stale_filter())).scalar()
    return {"running": counts.get("running", 0), "paused": counts.get("paused", 0), "stale": stale}


def _stale_filter():
    cutoff = utcnow() - timedelta(seconds=current_app.config["STALE_RUN_SECONDS"])
    return (AutomationRun.status == "running", AutomationRun.heartbeat_at < cutoff)


def stale_runs(account_id, limit=50):
    return db.session.execute(select(AutomationRun).where(*_stale_filter(), AutomationRun.account_id == account_id)
                              .order_by(AutomationRun.heartbeat_at).limit(limit)).scalars().all()


def recoveries(account_id, limit=20):
    return db.session.execute(select(RunEvent).where(RunEvent.action == "recover", RunEvent.account_id == account_id)
                              .order_by(RunEvent.id.desc()).limit(limit)).scalars().all()


def recoveries_since(hours=24):
    since = utcnow() - timedelta(hours=hours)
    return db.session.execute(select(func.count()).select_from(RunEvent).where(
        RunEvent.action == "recover", RunEvent.created_at >= since)).scalar()


def job_owner(job):
    """The account a job works for; None for a system job (periodic checks); ORPHAN for a
    tenant's job whose run/site/delivery is gone (shown to nobody: it may still name a tenant)."""
    try:
        if job.func_name in _RUN_TASKS and job.args:
            owner = _account_of(AutomationRun, job.args[0])
        elif job.func_name in _SITE_TASKS and job.args:
            owner = _account_of(Site, job.args[0])
        elif job.func_name in _RUN_EVENT_TASKS and len(job.args) > 1:
            owner = _account_of(AutomationRun, job.args[1])
        elif job.func_name in _DELIVERY_TASKS and job.args:
            owner = _account_of(_DELIVERY_TASKS[job.func_name], job.args[0])
        else:
            return None
    except (TypeError, ValueError):
        return ORPHAN
    return ORPHAN if owner is None else owner


def _account_of(model, pk):
    return db.session.execute(select(model.account_id).where(model.id == int(pk))).scalar()


def failed_jobs(r, limit=50):
    """[{job, queue, owner, error}] newest first, over the app's queues."""
    out = []
    for name in queue_names():
        reg = FailedJobRegistry(name, connection=r)
        ids = reg.get_job_ids(0, limit - 1, desc=True)
        for job in Job.fetch_many(ids, connection=r):
            if job is None:
                continue
            result = job.latest_result()
            error = (result.exc_string or "").strip().splitlines()[-1:] if result is not None else []
            out.append({"job": job, "queue": name, "owner": job_owner(job), "error": error[0] if error else "",
                        "ended_at": _naive(job.ended_at)})
    out.sort(key=lambda j: j["ended_at"] or datetime.min, reverse=True)
    return out[:limit]


def requeue_failed(r, job_id, account_id):
    """Put a failed job back on its queue; only the caller's own or a system job. Returns the
    job, or None when there is no such failed job the caller may see (a 404 for the view)."""
    for name in queue_names():
        reg = FailedJobRegistry(name, connection=r)
        if job_id in reg.get_job_ids():
            job = Job.fetch(job_id, connection=r)
            owner = job_owner(job)
            if owner is not None and owner != account_id:
                return None
            reg.requeue(job_id)
            return job
    return None
