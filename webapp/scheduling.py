"""Periodic jobs, declared as data with stable ids and reconciled when the scheduler starts
(restarting it, or running two, never registers a job twice; rq-scheduler's own lock makes
only one of them enqueue)."""
import logging
import time
from datetime import datetime, timezone

import redis
from redis import Redis
from rq_scheduler import Scheduler

log = logging.getLogger(__name__)
CONTROL_QUEUE = "automation-control"


def periodic_jobs():
    # How often the stale-run check runs (STALE_CHECK_INTERVAL, webapp/config.py): with the
    # heartbeat's STALE_RUN_SECONDS it bounds how long a killed worker's run waits.
    from flask import current_app, has_app_context
    stale_every = current_app.config["STALE_CHECK_INTERVAL"] if has_app_context() else 10
    return [
        {"id": "periodic-check_scheduled_automations",
         "func": "webapp.automation.scheduled.check_scheduled_automations_task", "interval": 60},
        {"id": "periodic-check_stale_runs", "func": "webapp.automation.recovery.check_stale_runs_task",
         "interval": stale_every},
        # Notification jobs lost with Redis (or a killed worker) are queued again.
        {"id": "periodic-notify_sweep", "func": "webapp.notify.jobs.sweep_task", "interval": 300},
        # RETENTION_DAYS: logs and images of runs ended longer ago leave the store (no-op unset).
        {"id": "periodic-prune_run_files", "func": "webapp.automation.retention_job.prune_task", "interval": 3600},
        # Budget alerts whose dispatch job was lost (or Redis was down when they committed).
        {"id": "periodic-budget_alert_sweep", "func": "webapp.notify.budget_alerts.sweep_task", "interval": 300},
    ]




def reconcile(scheduler, periodic=None):
    """Make the scheduled periodic jobs exactly `periodic`: add the missing, drop the unknown
    `periodic-*` ones and any whose definition changed. Returns the ids (re)registered."""
    wanted = {p["id"]: p for p in (periodic or periodic_jobs())}
    have = {}
    for job in scheduler.get_jobs():
        if not job.id.startswith("periodic-"):
            continue
        spec = wanted.get(job.id)
        if spec is None or job.func_name != spec["func"] or job.meta.get("interval") != spec["interval"]:
            scheduler.cancel(job)
        else:
            have[job.id] = job
    added = []
    for pid, spec in wanted.items():
        if pid in have:
            continue
        scheduler.schedule(
            scheduled_time=datetime.now(timezone.utc), func=spec["func"], interval=spec["interval"],
            repeat=None, id=pid, queue_name=CONTROL_QUEUE,
            # A result that expires before the next run makes rq-scheduler drop the job:
            # keep results far longer than the interval.
            result_ttl=spec["interval"] * 10, ttl=spec["interval"] * 10, timeout=300,
        )
        added.append(pid)
    return added


class ReconcilingScheduler(Scheduler):
    """Re-checks the periodic jobs on every pass: if Redis lost them (a restart without
    persistence), they are back within one scheduler interval."""

    def enqueue_jobs(self):
        added = reconcile(self)
        if added:
            log.info("periodic jobs (re)registered: %s", added)
        return super().enqueue_jobs()


def make_scheduler(app, interval=5):
    conn = Redis.from_url(app.config["REDIS_URL"])
    return ReconcilingScheduler(queue_name=CONTROL_QUEUE, connection=conn, interval=interval)


def run_scheduler(app):
    """Runs until SIGTERM/SIGINT; survives Redis restarts by reconnecting."""
    while True:
        try:
            scheduler = make_scheduler(app)
            log.info("periodic jobs registered: %s", reconcile(scheduler) or "none new")
            scheduler.run()
            return
        except (redis.ConnectionError, redis.TimeoutError) as e:
            log.warning("lost Redis (%s); reconnecting in 1 s", e.__class__.__name__)
            time.sleep(1)
