"""Guards the mutation run found undefended: the stale check leaves a run alone while its
next job is queued or a worker holds its exec lock (recovering it then would start a second
job chain), and recovers it when neither is true; an automatic pause touches its own run
only, leaves a cancelled run cancelled, and is audited and announced like a user's."""
from datetime import timedelta

from rq import Queue
from rq.job import Job
from sqlalchemy import select

from webapp.automation import hooks
from webapp.automation.jobs import job_key
from webapp.automation.locks import TTLLock, exec_lock_key
from webapp.automation.recovery import check_stale_runs
from webapp.automation.service import AutomationService
from webapp.extensions import db
from webapp.models import Account, AutomationRun, RunEvent
from webapp.models.base import utcnow
from webapp.redis_conn import get_redis

from conftest import drain


def _age(app, run_id):
    run = db.session.get(AutomationRun, run_id)
    run.heartbeat_at = utcnow() - timedelta(seconds=app.config["STALE_RUN_SECONDS"] + 5)
    db.session.commit()
    return run.job_token


def test_stale_check_leaves_a_queued_or_locked_run_alone_and_recovers_an_orphan(app, factory):
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, keywords=6)
    acc_id, site_id = acc.id, site.id
    run_id = AutomationService(acc_id).start(site_id).id
    r = get_redis()
    q = Queue(app.config["RQ_QUEUE"], connection=r)
    token = _age(app, run_id)
    # Its first job is still queued (workers busy): nothing to do.
    assert Job.fetch(r.get(job_key(run_id)).decode(), connection=r).get_status() == "queued"
    assert check_stale_runs() == [] and db.session.get(AutomationRun, run_id).job_token == token
    # The job is gone from the queue, but a worker holds the run's exec lock (a slow item).
    q.empty()
    r.delete(job_key(run_id))
    lock = TTLLock(r, exec_lock_key(run_id), 30)
    assert lock.acquire()
    assert check_stale_runs() == []
    # A job id is recorded but the job itself is no longer queued (it ran, or Redis lost it).
    lock.release()
    r.set(job_key(run_id), "automation-run-gone")
    db.session.remove()
    assert check_stale_runs() == [(run_id, "recovered")]
    run = db.session.get(AutomationRun, run_id)
    assert run.job_token != token and q.count == 1 and run.recovery_attempts == 1
    # A job that was queued and has finished (not waiting any more) does not hold the run either.
    _age(app, run_id)
    job = Job.fetch(r.get(job_key(run_id)).decode(), connection=r)
    q.remove(job)
    job.set_status("finished")
    db.session.remove()
    assert check_stale_runs() == [(run_id, "recovered")]


def test_automatic_pause_touches_its_own_run_only_and_is_audited(app, factory):
    """Account A runs out of credits mid-run; account B's run, going at the same time, goes
    on to completion; A's pause is recorded as the system's, with its reason, and announced."""
    seen = []

    def listener(event, run, actor, reason):
        seen.append((event, run.id, actor, reason))

    hooks.subscribe(listener)
    try:
        _pause_scoped(app, factory, seen)
    finally:
        hooks._listeners.remove(listener)


def _pause_scoped(app, factory, seen):
    a, _ = factory.account(name="Alpha", credits=100_000)
    b, _ = factory.account(name="Beta", credits=100_000)
    sa, sb = factory.site(a, keywords=12), factory.site(b, keywords=12)
    factory.fast_config(sa)
    factory.fast_config(sb)
    a_id, b_id = a.id, b.id
    run_a = AutomationService(a_id).start(sa.id).id
    run_b = AutomationService(b_id).start(sb.id).id
    account = db.session.get(Account, a_id)
    account.credits = 5
    db.session.commit()
    drain(app)
    ra, rb = db.session.get(AutomationRun, run_a), db.session.get(AutomationRun, run_b)
    assert (ra.status, ra.pause_reason) == ("paused", "insufficient credits") and ra.paused_at is not None
    assert rb.status == "completed"
    events = db.session.execute(select(RunEvent.run_id, RunEvent.action, RunEvent.actor, RunEvent.reason)
                                .where(RunEvent.action == "pause")).all()
    assert events == [(run_a, "pause", "system", "insufficient credits")]
    assert ("run.paused", run_a, "system", "insufficient credits") in seen
    assert not any(e[0] == "run.paused" and e[1] == run_b for e in seen)
    log = "\n".join(AutomationService(a_id).log_lines(run_a, 500))
    assert "Paused: insufficient credits" in log


def test_automatic_pause_never_overrides_a_cancel(app, factory):
    """A cancel that lands while the worker is deciding to pause (credits ran out) wins."""
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, keywords=6)
    factory.fast_config(site)
    acc_id, site_id = acc.id, site.id
    svc = AutomationService(acc_id)
    run_id = svc.start(site_id).id
    account = db.session.get(Account, acc_id)
    account.credits = 0
    db.session.commit()
    from webapp.automation.tasks import RunExecutor
    ex = RunExecutor(run_id, db.session.get(AutomationRun, run_id).job_token)
    ex.run = db.session.get(AutomationRun, run_id)
    from webapp.automation.service import run_logger
    ex.logger = run_logger(ex.run)
    svc.cancel(run_id)
    ex._pause("insufficient credits", "Paused: insufficient credits (test).")
    run = db.session.get(AutomationRun, run_id)
    db.session.refresh(run)
    assert run.status == "cancelled" and run.pause_reason is None
    assert [e.action for e in svc.events(run)] == ["start", "cancel"]
