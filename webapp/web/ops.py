"""The operations page, /ops (HTML; the JSON probe stays GET /status in webapp/health.py).

Every signed-in user sees the aggregates (jobs waiting, workers alive, runs running, paused
and stale, recoveries, failed jobs, the scheduler's last tick). Owners also see the details an
operator acts on: queues with their oldest job's age, workers with heartbeat and current job,
the next due run, stale runs and recoveries, failed RQ jobs with a requeue button (owners
only, webapp/access.py). Jobs, runs and recoveries of another account appear only as counts.
"""
from flask import Blueprint, abort, flash, redirect, render_template, url_for
from flask_login import current_user, login_required
from rq.job import Job

from .. import ops
from ..access import has_role, needs
from ..redis_conn import get_redis
from ..models.base import utcnow

bp = Blueprint("ops", __name__)
DETAILS_ROLE = "owner"


def _visible(job_id, r):
    """(job id, label) for a worker's current job: another account's job is not named."""
    if not job_id:
        return None
    job = Job.fetch_many([job_id], connection=r)[0]
    if job is None:
        return {"id": job_id, "label": job_id}
    owner = ops.job_owner(job)
    if owner is not None and owner != current_user.account_id:
        return {"id": None, "label": "a job of another account"}
    return {"id": job.id, "label": job.description or job.func_name}


@bp.get("/ops")
@login_required
def page():
    r = get_redis()
    account_id = current_user.account_id
    queues = ops.queues(r)
    workers = ops.workers(r)
    summary = dict(now=utcnow(), queues=queues, workers=workers, scheduler=ops.scheduler(r),
                   runs=ops.run_counts(), recoveries_24h=ops.recoveries_since(24),
                   fair=ops.fair_queue(r, account_id),
                   failed_total=sum(q["failed"] for q in queues))
    if not has_role(current_user, DETAILS_ROLE):
        return render_template("ops.html", details=False, **summary)
    for w in workers:
        w["current_job"] = _visible(w["current_job_id"], r)
    failed = ops.failed_jobs(r)
    mine = [f for f in failed if f["owner"] in (None, account_id)]
    return render_template(
        "ops.html", details=True, stale_runs=ops.stale_runs(account_id), recoveries=ops.recoveries(account_id),
        failed=mine, failed_elsewhere=len(failed) - len(mine), **summary)


@bp.post("/ops/failed/<job_id>/requeue")
@login_required
@needs(DETAILS_ROLE)
def requeue(job_id):
    job = ops.requeue_failed(get_redis(), job_id, current_user.account_id)
    if job is None:
        abort(404)
    flash(f"Job {job_id} is back on its queue.", "success")
    return redirect(url_for("ops.page"))
