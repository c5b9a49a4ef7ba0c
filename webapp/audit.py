"""The account audit log: every state change by a person or the system, with actor, time,
site and details, written in the same transaction as the change.

Call `record(...)` before the change's commit. Run lifecycle changes need no call: every
RunEvent row (start, pause, resume, cancel, recover, fail, automatic pauses, scheduled skips)
is mirrored into the log by a flush hook, in the same flush as the event itself.
"""
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from .extensions import db
from .models import AuditEntry, RunEvent

PAGE_LIMIT_MAX = 200


def record(account_id, actor, action, site_id=None, run_id=None, **details):
    entry = AuditEntry(account_id=account_id, actor=actor or "system", action=action, site_id=site_id,
                       run_id=run_id, details={k: v for k, v in details.items() if v is not None})
    db.session.add(entry)
    return entry


def _mirror_run_events(session, _ctx, _instances):
    for obj in list(session.new):
        if isinstance(obj, RunEvent) and not getattr(obj, "_audited", False):
            obj._audited = True
            session.add(AuditEntry(account_id=obj.account_id, site_id=obj.site_id, run_id=obj.run_id,
                                   actor=obj.actor or "system", action=f"run.{obj.action}",
                                   details={"reason": obj.reason} if obj.reason else {}))


def query(account_id, site_id=None, actor=None, action=None, page=1, limit=50):
    q = select(AuditEntry).where(AuditEntry.account_id == account_id)
    if site_id is not None:
        q = q.where(AuditEntry.site_id == site_id)
    if actor:
        q = q.where(AuditEntry.actor.contains(actor))
    if action:
        q = q.where(AuditEntry.action == action) if "." in action else q.where(AuditEntry.action.startswith(action))
    total = db.session.execute(select(db.func.count()).select_from(q.subquery())).scalar()
    rows = [] if (page - 1) * limit >= total else db.session.execute(  # past the end: no deep OFFSET
        q.order_by(AuditEntry.id.desc()).offset((page - 1) * limit).limit(limit)).scalars().all()
    return rows, total


def init_app(app):
    if not event.contains(Session, "before_flush", _mirror_run_events):
        event.listen(Session, "before_flush", _mirror_run_events)
