"""Account limits that queue: how many runs one account may have active at once, and why a
run is waiting.

A start beyond the account's limit (`max_active_runs`, else ACCOUNT_MAX_ACTIVE_RUNS) is not
refused: the run is created `queued`, holding its site and its credits like an active run,
and no job is queued for it. When one of the account's runs ends, the oldest queued runs
take the free slots (`promote`, called on every run end and by the periodic stale check as a
safety net). Active = running or paused: a paused run keeps its slot (it holds credits and
its site, and resumes at once). Decisions are made under the account lock (billing.py), so
two starts, or a start and an ending run, never overshoot the limit.

The engine does not know this module: it only ever sees running runs.
"""
import logging
import uuid

from flask import current_app
from sqlalchemy import and_, func, or_, select, update

from ..extensions import db
from ..models import Account, AutomationRun, RunEvent
from ..models.base import utcnow
from ..redis_conn import get_redis
from . import billing, dispatch, jobs
from .locks import site_lock, site_lock_ttl
from .logger import AutomationLogger

log = logging.getLogger(__name__)
SLOT_STATUSES = ("running", "paused")


def max_active_runs(account):
    """The account's limit (None = no limit)."""
    return account.max_active_runs or current_app.config.get("ACCOUNT_MAX_ACTIVE_RUNS")


def max_keywords_per_site(account):
    return account.max_keywords_per_site or current_app.config.get("MAX_KEYWORDS_PER_SITE")


def effective(account):
    """The limits that apply to `account`, its own or the environment's defaults."""
    return {"max_active_runs": max_active_runs(account), "max_keywords_per_site": max_keywords_per_site(account),
            "weight": account.weight or 1.0}


def _count(account_id, statuses):
    return db.session.execute(select(func.count(AutomationRun.id)).where(
        AutomationRun.account_id == account_id, AutomationRun.status.in_(statuses))).scalar()


def limit_reason(active, limit):
    return f"account limit: {active} of {limit} runs active"


def must_queue(account):
    """Why a new run of `account` must wait, or None. Call under billing.lock_account: runs
    already queued go first (a new start never overtakes them)."""
    limit = max_active_runs(account)
    if limit is None:
        return None
    active = _count(account.id, SLOT_STATUSES)
    if active >= limit or _count(account.id, ("queued",)):
        return limit_reason(active, limit)
    return None


def promote(account_id, actor="system"):
    """Start the account's oldest queued runs while it has free slots. Returns their ids."""
    account = db.session.get(Account, account_id)
    if account is None:
        return []
    db.session.commit()
    billing.lock_account(account_id)
    limit = max_active_runs(account)
    active = _count(account_id, SLOT_STATUSES)
    free = None if limit is None else max(0, limit - active)
    q = (select(AutomationRun).where(AutomationRun.account_id == account_id, AutomationRun.status == "queued")
         .order_by(AutomationRun.queued_at, AutomationRun.id))
    waiting = db.session.execute(q if free is None else q.limit(free)).scalars().all() if free != 0 else []
    started = []
    now = utcnow()
    for run in waiting:
        token = uuid.uuid4().hex
        res = db.session.execute(update(AutomationRun).where(
            AutomationRun.id == run.id, AutomationRun.status == "queued").values(
            status="running", started_at=now, heartbeat_at=now, job_token=token),
            execution_options={"synchronize_session": False})
        if res.rowcount:
            db.session.add(RunEvent(account_id=run.account_id, site_id=run.site_id, run_id=run.id,
                                    action="dequeue", actor=actor, reason="a slot of the account's limit is free"))
            started.append((run, token))
    db.session.commit()
    r = get_redis()
    for run, token in started:
        db.session.refresh(run)
        waited = int((now - run.queued_at).total_seconds()) if run.queued_at else 0
        AutomationLogger(current_app.config["LOG_DIR"], run, r).log(f"Run left the queue after {waited} s: a slot of the account's limit is free")
        site_lock(r, run.site_id, site_lock_ttl(), run_id=run.id).force()
        jobs.enqueue_step(r, run.id, token, first=True, account_id=run.account_id, weight=account.weight)
    return [run.id for run, _ in started]


def on_run_event(event, run, actor, reason):
    """A run ended: its slot goes to the account's next queued run."""
    if event in ("run.completed", "run.failed", "run.cancelled"):
        promote(run.account_id)


def promote_all():
    """Safety net (periodic): accounts with queued runs get their free slots, whatever event
    was missed (a worker killed between a run's end and its promotion)."""
    ids = db.session.execute(select(AutomationRun.account_id).where(AutomationRun.status == "queued")
                             .distinct()).scalars().all()
    db.session.commit()
    out = []
    for account_id in ids:
        out += promote(account_id)
    return out


def queue_info(run, account=None):
    """(queue_position, queued_reason) of a run: its place among its account's queued runs and
    the limit it waits for; for a running run whose job waits for a free worker, its place in
    fair dispatch ("waiting for a worker: N runs of other accounts ahead": the jobs a worker
    takes before it, one per active run of another account); (None, None) otherwise."""
    if run.status == "queued":
        account = account or db.session.get(Account, run.account_id)
        ahead = db.session.execute(select(func.count(AutomationRun.id)).where(
            AutomationRun.account_id == run.account_id, AutomationRun.status == "queued",
            or_(AutomationRun.queued_at < run.queued_at,
                and_(AutomationRun.queued_at == run.queued_at, AutomationRun.id < run.id)))).scalar()
        limit = max_active_runs(account)
        reason = limit_reason(_count(run.account_id, SLOT_STATUSES), limit) if limit else "waiting for a slot"
        return ahead + 1, reason
    if run.status != "running":
        return None, None
    try:
        r = get_redis()
        job_id = jobs.latest_job_id(r, run.id)
        if not job_id or dispatch.account_of(job_id) is None:
            return None, None
        waiting, ahead = dispatch.position(r, current_app.config["RQ_QUEUE"], run.account_id, job_id)
    except Exception:  # redis down: nothing to say about the queue
        return None, None
    if not waiting:
        return None, None
    return ahead + 1, f"waiting for a worker: {ahead} run{'s' if ahead != 1 else ''} of other accounts ahead"
