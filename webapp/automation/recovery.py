"""The stale-run check: a `running` run whose worker stopped beating is continued by
another worker, or failed with a clear message after MAX_RECOVERY_ATTEMPTS tries without
progress. Run every minute by the scheduler and once when a worker starts."""
import logging
import uuid
from datetime import timedelta

from flask import current_app
from rq.exceptions import NoSuchJobError
from rq.job import Job
from sqlalchemy import or_, select, update

from ..extensions import db
from ..models import AutomationRun, RunEvent
from ..models.base import utcnow
from ..redis_conn import get_redis
from . import hooks, jobs
from .limits import promote_all
from .closing import end_values, system_event
from .locks import exec_lock_key

log = logging.getLogger(__name__)
WAITING = {"queued", "scheduled", "deferred"}


def _job_waiting(r, run_id):
    job_id = r.get(jobs.job_key(run_id))
    if not job_id:
        return False
    try:
        status = Job.fetch(job_id.decode(), connection=r).get_status(refresh=True)
    except NoSuchJobError:
        return False
    return status is not None and str(getattr(status, "value", status)) in WAITING


def check_stale_runs(now=None):
    """Returns a list of (run_id, action) for what it did."""
    from .service import finish_side_effects, run_logger
    app = current_app
    now = now or utcnow()
    cutoff = now - timedelta(seconds=app.config["STALE_RUN_SECONDS"])
    r = get_redis()
    done = []
    stale = db.session.execute(select(AutomationRun).where(
        AutomationRun.status == "running",
        or_(AutomationRun.heartbeat_at.is_(None), AutomationRun.heartbeat_at < cutoff))
        .order_by(AutomationRun.id)).scalars().all()  # oldest first, the same order every time
    for run in stale:
        if _job_waiting(r, run.id) or r.exists(exec_lock_key(run.id)):
            continue  # queued behind other work, or a live worker holds it
        old_token = run.job_token
        if run.recovery_attempts >= app.config["MAX_RECOVERY_ATTEMPTS"]:
            msg = (f"Run failed: its worker stopped responding {run.recovery_attempts + 1} times in a row "
                   f"(no heartbeat for {app.config['STALE_RUN_SECONDS']} s); giving up.")
            res = db.session.execute(update(AutomationRun).where(
                AutomationRun.id == run.id, AutomationRun.status == "running", AutomationRun.job_token == old_token)
                .values(**end_values(run, "failed", now, error_message=msg, completed_at=now)))
            if res.rowcount:
                system_event(run, "fail", msg)
            db.session.commit()
            if res.rowcount:
                run_logger(run).log(msg)
                finish_side_effects(run)
                db.session.refresh(run)
                hooks.emit("run.failed", run, "system", msg)
                done.append((run.id, "failed"))
            continue
        token = uuid.uuid4().hex
        # Conditional on the old token: two checkers racing recover the run once.
        res = db.session.execute(update(AutomationRun).where(
            AutomationRun.id == run.id, AutomationRun.status == "running", AutomationRun.job_token == old_token)
            .values(job_token=token, heartbeat_at=now, recovery_attempts=AutomationRun.recovery_attempts + 1))
        if not res.rowcount:
            db.session.rollback()
            continue
        last = db.session.execute(select(RunEvent.action).where(RunEvent.run_id == run.id)
                                  .order_by(RunEvent.id.desc()).limit(1)).scalar()
        if last == "interrupt":  # a clean stop (SIGTERM) whose queued job was lost with Redis
            system_event(run, "recover", "continued after a clean stop (SIGTERM)")
            message = "Run continued after a clean stop (its worker was stopped with SIGTERM)"
        else:
            # From the last heartbeat no worker held the run: not working time (insights).
            db.session.add(RunEvent(account_id=run.account_id, site_id=run.site_id, run_id=run.id,
                                    action="interrupt", actor="system", reason="worker lost (no heartbeat)",
                                    created_at=run.heartbeat_at or now))
            system_event(run, "recover", "worker lost (no heartbeat); continued on another worker")
            message = f"Worker lost (no heartbeat since {run.heartbeat_at}); run continued on another worker"
        db.session.commit()
        run_logger(run).log(message)
        jobs.enqueue_step(r, run.id, token, account_id=run.account_id)
        hooks.emit("run.recovered", run, "system")
        done.append((run.id, "recovered"))
    return done


def check_stale_runs_task():
    from .tasks import _app_context
    with _app_context():
        try:
            done = check_stale_runs()
            # Safety net of account limits: a queued run whose promotion was missed (its
            # account's last run ended in a worker killed a moment later) starts now.
            done += [(run_id, "dequeued") for run_id in promote_all()]
            return done
        finally:
            db.session.remove()
