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

A start that fails unexpectedly (a database error, say; not a skip, which is recorded with
its reason) releases its claim and puts the (site, slot) in a retry set that the next tick
queues again, up to START_ATTEMPTS times; then the slot is recorded as skipped, naming the
error. So a slot is never lost silently.
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
RETRY_SET = "automation:scheduler:retry"  # "site_id|slot|account_id" of starts that failed unexpectedly
CLAIM_TTL = 7 * 24 * 3600
START_ATTEMPTS = 3


def _claim_key(site_id, slot):
    return f"automation:scheduled:{int(site_id)}:{slot}"


def _take_retries(r):
    """The starts to queue again (and empty the set, atomically)."""
    pipe = r.pipeline(transaction=True)
    pipe.smembers(RETRY_SET)
    pipe.delete(RETRY_SET)
    members, _ = pipe.execute()
    out = []
    for m in members:
        try:
            site_id, slot, account_id = m.decode().split("|")
            out.append((int(account_id), int(site_id), slot))
        except ValueError:
            log.warning("scheduler: dropping a malformed retry entry %r", m)
    return out


def _queue_starts(r, by_account):
    for account_id, starts in by_account.items():
        q = dispatch.FairQueue(current_app.config["RQ_QUEUE"], account_id, connection=r)
        q.enqueue_many([Queue.prepare_data(
            "webapp.automation.scheduled.start_scheduled_run", (site_id, slot), timeout=300, result_ttl=3600,
            meta=job_meta(), job_id=f"automation-start-{int(site_id)}-a{int(account_id)}-{uuid.uuid4().hex[:12]}")
            for site_id, slot in starts])


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
        retries = _take_retries(r)
        if retries:
            by_account = {}
            for account_id, site_id, slot in retries:
                by_account.setdefault(account_id, []).append((site_id, slot))
            _queue_starts(r, by_account)
            log.info("scheduler tick: %d failed start(s) queued again", len(retries))
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
        _queue_starts(r, by_account)
        log.info("scheduler tick at %s: %d due site(s) queued", now.isoformat(), len(due))
        return due
    finally:
        lock.release()


def start_scheduled_run(site_id, slot):
    """Start one scheduled run (worker side). Skips are recorded with their reason; an
    unexpected error releases the claim for the next tick (see _start_failed)."""
    from .tasks import _app_context
    with _app_context():
        try:
            r = get_redis()
            if not r.set(_claim_key(site_id, slot), "1", nx=True, ex=CLAIM_TTL):
                return "duplicate"
            try:
                return _start_claimed(site_id, slot)
            except Exception as e:
                db.session.rollback()
                _start_failed(r, site_id, slot, e)
                raise  # RQ records the failed job too (/ops lists it)
        finally:
            db.session.remove()


def _start_failed(r, site_id, slot, error):
    """An unexpected error after the claim: release it and queue the slot again for the next
    tick; after START_ATTEMPTS, record the slot as skipped with the error instead."""
    from rq import get_current_job
    job = get_current_job()
    account_id = dispatch.account_of(job.id) if job is not None else None
    if account_id is None:
        try:
            account_id = db.session.execute(select(Site.account_id).where(Site.id == site_id)).scalar()
            db.session.commit()
        except Exception:
            db.session.rollback()
    what = f"{error.__class__.__name__}: {error}"[:300]
    try:
        attempts_key = _claim_key(site_id, slot) + ":attempts"
        attempts = r.incr(attempts_key)
        r.expire(attempts_key, CLAIM_TTL)
        if attempts < START_ATTEMPTS and account_id is not None:
            r.delete(_claim_key(site_id, slot))
            r.sadd(RETRY_SET, f"{int(site_id)}|{slot}|{int(account_id)}")
            log.error("scheduled start for site %s slot %s failed (attempt %s of %s), retried at the next tick: %s",
                      site_id, slot, attempts, START_ATTEMPTS, what)
            return
    except Exception as e:  # redis failing too: the claim expires with its TTL
        log.error("scheduled start for site %s slot %s failed (%s) and could not be queued again (%s)",
                  site_id, slot, what, e.__class__.__name__)
        return
    log.error("scheduled start for site %s slot %s failed %s times; skipped: %s", site_id, slot, START_ATTEMPTS, what)
    try:
        site = db.session.get(Site, site_id)
        if site is not None:
            db.session.add(RunEvent(account_id=site.account_id, site_id=site.id, run_id=None,
                                    action="scheduled_skip", actor="scheduler",
                                    reason=f"slot {slot}Z skipped: the start failed {START_ATTEMPTS} times ({what})"))
            db.session.commit()
    except Exception:
        db.session.rollback()
        log.exception("could not record the skip of site %s slot %s", site_id, slot)


def _start_claimed(site_id, slot):
    from .service import AutomationService
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
    try:  # the run started: the slot is done, whatever happens to this bookkeeping
        db.session.execute(update(AutomationConfig).where(AutomationConfig.site_id == site.id)
                           .values(last_run_at=utcnow()))
        db.session.commit()
    except Exception as e:
        db.session.rollback()
        log.warning("site %s: run %s started, last_run_at not written (%s)", site_id, run.id, e.__class__.__name__)
    return f"run {run.id}"


def check_scheduled_automations_task():
    from .tasks import _app_context
    with _app_context():
        try:
            return len(check_scheduled_automations())
        finally:
            db.session.remove()


