"""Scheduled runs. One tick (every minute, from rq-scheduler):

1. one indexed query for enabled configs with next_run_at <= now;
2. every due config moves to its next *future* slot (so a scheduler that was down for
   days catches up with one run, never a backlog), in one executemany;
3. one `start_scheduled_run` job per due site is queued for the workers (one Redis
   pipeline), which start it through AutomationService with the same lock and credit
   checks as run_now, or record why it was skipped.

Overlapping ticks are excluded by a Redis lock with a TTL; a (site, slot) pair is started
at most once through a Redis claim key, and the per-site lock plus the DB unique index
make a second active run impossible anyway.
"""
import logging
import uuid
from flask import current_app
from rq import Queue
from sqlalchemy import bindparam, select, update

from .. import metrics
from ..errors import AppError
from ..extensions import db
from ..logging_setup import job_meta
from ..models import AutomationConfig, RunEvent, Site
from ..models.base import utcnow
from ..redis_conn import get_redis
from . import dispatch, schedule
from .locks import TTLLock

log = logging.getLogger(__name__)
TICK_LOCK = "automation:scheduler:tick"
CLAIM_TTL = 7 * 24 * 3600


def check_scheduled_automations(now=None):
    """Returns the list of (site_id, slot) queued for a start."""
    now = now or utcnow()
    r = get_redis()
    lock = TTLLock(r, TICK_LOCK, 55)
    if not lock.acquire():
        log.info("another scheduler tick is running; skipping")
        return []
    metrics.scheduler_ticked(r)
    try:
        rows = db.session.execute(
            select(AutomationConfig.id, AutomationConfig.site_id, AutomationConfig.next_run_at,
                   AutomationConfig.frequency, AutomationConfig.scheduled_time, AutomationConfig.scheduled_day,
                   Site.timezone, Site.account_id)
            .join(Site, Site.id == AutomationConfig.site_id)
            .where(AutomationConfig.is_enabled.is_(True), AutomationConfig.next_run_at <= now)
        ).all()
        if not rows:
            return []
        params = [{"cid": row.id, "old": row.next_run_at,
                   "new": schedule.next_slot(now, row.frequency, row.scheduled_time, row.timezone, row.scheduled_day)}
                  for row in rows]
        # Conditional on the old value: a config edited meanwhile keeps its new schedule.
        stmt = (update(AutomationConfig.__table__)
                .where(AutomationConfig.__table__.c.id == bindparam("cid"),
                       AutomationConfig.__table__.c.next_run_at == bindparam("old"))
                .values(next_run_at=bindparam("new")))
        db.session.execute(stmt, params)
        db.session.commit()
        due = [(row.site_id, row.next_run_at.isoformat()) for row in rows]
        # The starts go through fair dispatch, per account: at 02:00, when every site's default
        # slot is due, the largest account's hundreds of starts do not all go before the others'.
        by_account = {}
        for row in rows:
            by_account.setdefault(row.account_id, []).append((row.site_id, row.next_run_at.isoformat()))
        for account_id, starts in by_account.items():
            q = dispatch.FairQueue(current_app.config["RQ_QUEUE"], account_id, connection=r)
            q.enqueue_many([Queue.prepare_data(
                "webapp.automation.scheduled.start_scheduled_run", (site_id, slot), timeout=300, result_ttl=3600,
                meta=job_meta(), job_id=f"automation-start-{int(site_id)}-a{int(account_id)}-{uuid.uuid4().hex[:12]}")
                for site_id, slot in starts])
        log.info("scheduler tick at %s: %d due site(s) queued", now.isoformat(), len(due))
        return due
    finally:
        lock.release()


def start_scheduled_run(site_id, slot):
    """Start one scheduled run (worker side). Skips are recorded with their reason."""
    from .service import AutomationService
    from .tasks import _app_context
    with _app_context():
        try:
            r = get_redis()
            if not r.set(f"automation:scheduled:{int(site_id)}:{slot}", "1", nx=True, ex=CLAIM_TTL):
                return "duplicate"
            site = db.session.get(Site, site_id)
            if site is None:
                return "site gone"
            svc = AutomationService(site.account_id, actor="scheduler")
            try:
                run = svc.start(site.id, trigger_type="scheduled", reason=f"scheduled slot {slot}Z")
            except AppError as e:
                db.session.rollback()
                db.session.add(RunEvent(account_id=site.account_id, site_id=site.id, run_id=None,
                                        action="scheduled_skip", actor="scheduler",
                                        reason=f"slot {slot}Z skipped: {e.message}"))
                db.session.commit()
                log.info("scheduled run for site %s skipped: %s", site_id, e.message)
                return "skipped"
            db.session.execute(update(AutomationConfig).where(AutomationConfig.site_id == site.id)
                               .values(last_run_at=utcnow()))
            db.session.commit()
            return f"run {run.id}"
        finally:
            db.session.remove()


def check_scheduled_automations_task():
    from .tasks import _app_context
    with _app_context():
        try:
            return len(check_scheduled_automations())
        finally:
            db.session.remove()


