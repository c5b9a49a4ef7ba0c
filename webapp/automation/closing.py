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


def outcome_note(run, last_result=None):
    """Why a run that charged credits sent no article to review (None when it did, or charged
    nothing): each stage that charged or failed, with what it created. Stored as the completed
    run's message, so its page and its log say it."""
    results = {n: (run.stage_result(n) or {}) for n in range(1, 8)}
    if last_result is not None:
        results[7] = last_result
    credits = sum(int(r.get("credits_used") or 0) for r in results.values())
    if credits <= 0 or int(results[7].get("items_processed") or 0) > 0:
        return None
    parts = []
    for n, r in results.items():
        if r.get("credits_used") or r.get("items_failed"):
            part = f"stage {n}: {r.get('items_processed', 0)} processed, {r.get('items_created', 0)} created"
            parts.append(part + (f", {r['items_failed']} failed" if r.get("items_failed") else ""))
    failed = any(r.get("items_failed") for r in results.values())
    why = ("items failed: see the failed items and retry them" if failed
           else "what it created is not an article yet (the next run takes it on)")
    return f"This run used {credits} credits and sent no article to review ({'; '.join(parts)}): {why}."


def system_event(run, action, reason):
    """The audit row of something the system did by itself (pause, resume, fail): add it in the
    transaction that makes the change."""
    db.session.add(RunEvent(account_id=run.account_id, site_id=run.site_id, run_id=run.id, action=action,
                            actor="system", reason=reason))


def close_stage_if_ended(run_id):
    """If the run has ended but its current stage still says running, close it (committed)."""
    # populate_existing: the worker's session keeps its objects across commits (not expired).
    run = db.session.execute(select(AutomationRun).where(AutomationRun.id == run_id)
                             .execution_options(populate_existing=True)).scalar_one_or_none()
    if run is None or run.status not in FINISHED_STATUSES:
        db.session.commit()
        return False
    values = closed_stage(run, run.status, run.ended_at or utcnow())
    if not values:
        db.session.commit()
        return False
    db.session.execute(update(AutomationRun).where(AutomationRun.id == run_id).values(**values))
    db.session.commit()
    return True
