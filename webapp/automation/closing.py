"""Run records that close: the column values for a run that ends, and the audit row for a
change the system made by itself.

- Every run that ends (completed, failed, cancelled) gets `ended_at`.
- The stage it was in, if still "running", gets the run's terminal status (`cancelled` or
  `failed`) and `finished_at`.
- `pause_reason` is cleared when the run resumes or ends.
- Automatic pauses, resumes and failures are RunEvents with actor "system" and their reason,
  added in the same transaction as the change (`system_event`).

The worker saves its stage result after each item, so a cancel can race with the item in
flight; the worker therefore calls `close_stage_if_ended` when its job ends, which closes the
stage again if that last save reopened it.
"""
from sqlalchemy import select, update

from ..extensions import db
from ..models import AutomationRun, RunEvent
from ..models.automation import FINISHED_STATUSES
from ..models.base import iso, utcnow

STAGE_STATUS = {"cancelled": "cancelled", "failed": "failed"}


def closed_stage(run, status, now):
    """{stage_N_result: closed copy} when the run's current stage is still open, else {}."""
    n = run.current_stage
    res = run.stage_result(n) if n else None
    if not res or res.get("status") != "running" or status not in STAGE_STATUS:
        return {}
    res = dict(res, status=STAGE_STATUS[status], finished_at=iso(now))
    return {f"stage_{n}_result": res}


def end_values(run, status, now=None, **extra):
    """Column values for `run` ending with `status` (completed, failed, cancelled)."""
    assert status in FINISHED_STATUSES, status
    now = now or utcnow()
    values = {"status": status, "ended_at": now, "pause_reason": None, "job_token": None, **extra}
    values.update(closed_stage(run, status, now))
    return values


def system_event(run, action, reason):
    """The audit row of something the system did by itself (pause, resume, fail): add it in the
    transaction that makes the change."""
    db.session.add(RunEvent(account_id=run.account_id, site_id=run.site_id, run_id=run.id, action=action,
                            actor="system", reason=reason))


def close_stage_if_ended(run_id):
    """If the run has ended but its current stage still says running, close it (committed)."""
    run = db.session.execute(select(AutomationRun).where(AutomationRun.id == run_id)).scalar_one_or_none()
    if run is None or run.status not in FINISHED_STATUSES:
        return False
    db.session.refresh(run)
    values = closed_stage(run, run.status, run.ended_at or utcnow())
    if not values:
        db.session.commit()
        return False
    db.session.execute(update(AutomationRun).where(AutomationRun.id == run_id).values(**values))
    db.session.commit()
    return True
