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


def test_user_controls_touch_one_run_and_record_who_and_why(app, factory):
    """Pause/resume/cancel change only the run they name, keep the reason in the audit trail
    and the log, hand the site lock to the resumed run (so a cancel frees it for the next
    start), and a resumed run gets a token the stale check can recover it by."""
    from webapp.automation.locks import site_lock_key
    a, _ = factory.account(name="Alpha", credits=100_000)
    b, _ = factory.account(name="Beta", credits=100_000)
    sa, sb = factory.site(a, keywords=6), factory.site(b, keywords=6)
    a_id, b_id, sa_id, sb_id = a.id, b.id, sa.id, sb.id
    svc = AutomationService(a_id, actor="user:alpha")
    run_id = svc.start(sa_id).id
    other = AutomationService(b_id).start(sb_id).id
    svc.pause(run_id, reason="x" * 300)  # longer than the column: cut, never an error
    run = db.session.get(AutomationRun, run_id)
    assert run.status == "paused" and run.pause_reason == "x" * 255
    assert db.session.get(AutomationRun, other).status == "running"
    svc.resume(run_id, reason="checked")
    run = db.session.get(AutomationRun, run_id)
    assert run.status == "running" and run.job_token and run.recovery_attempts == 0
    r = get_redis()
    assert r.get(site_lock_key(sa_id)) == f"run:{run_id}".encode()
    # The resumed run, its worker lost: recovered under a new token.
    _age(app, run_id)
    Queue(app.config["RQ_QUEUE"], connection=r).empty()
    r.delete(job_key(run_id))
    db.session.remove()
    assert (run_id, "recovered") in check_stale_runs()
    svc.cancel(run_id, reason="wrong keywords")
    assert db.session.get(AutomationRun, other).status == "running"
    events = [(e.action, e.actor, e.reason) for e in svc.events(db.session.get(AutomationRun, run_id))]
    assert events[0] == ("start", "user:alpha", None) and events[2] == ("resume", "user:alpha", "checked")
    assert events[1][:2] == ("pause", "user:alpha") and events[1][2].startswith("x" * 255)
    assert events[-1] == ("cancel", "user:alpha", "wrong keywords")
    log = "\n".join(svc.log_lines(run_id, 500))
    assert "Run resumed by user:alpha: checked" in log and "Run cancelled by user:alpha: wrong keywords" in log
    assert not r.exists(site_lock_key(sa_id))  # freed by the cancel
    assert svc.start(sa_id).status == "running"


def test_user_pause_without_reason_says_so(app, factory):
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, keywords=6)
    svc = AutomationService(acc.id)
    run_id = svc.start(site.id).id
    svc.pause(run_id)
    assert db.session.get(AutomationRun, run_id).pause_reason == "paused by user"


def _orphan(app, svc, site_id, attempts=0, heartbeat="old"):
    """A running run whose worker is gone: no job waiting, no exec lock, an old heartbeat."""
    run_id = svc.start(site_id).id
    r = get_redis()
    job = Job.fetch(r.get(job_key(run_id)).decode(), connection=r)
    Queue(app.config["RQ_QUEUE"], connection=r).remove(job)
    r.delete(job_key(run_id))
    run = db.session.get(AutomationRun, run_id)
    run.recovery_attempts = attempts
    run.heartbeat_at = {"old": utcnow() - timedelta(seconds=app.config["STALE_RUN_SECONDS"] + 5),
                        "fresh": utcnow(), "none": None}[heartbeat]
    db.session.commit()
    return run_id


def test_stale_check_goes_through_every_run_and_records_each_outcome_exactly(app, factory):
    """Several runs in one check, in id order: one out of attempts fails, one still queued is
    left alone, one without a heartbeat at all and one orphan are recovered, a fresh one and a
    paused one are not touched. Each outcome is pinned: status, token, times, the new job's
    token, the audit row, the log line and the hook event with its run, actor and reason."""
    from webapp.automation.locks import site_lock_key
    seen = []

    def listener(event, run, actor, reason):
        seen.append((event, run.id, actor, reason))

    acc, _ = factory.account(credits=1_000_000)
    sites = [factory.site(acc, name=f"Blog {i}", keywords=4).id for i in range(6)]
    svc = AutomationService(acc.id)
    max_attempts, stale = app.config["MAX_RECOVERY_ATTEMPTS"], app.config["STALE_RUN_SECONDS"]
    failing = _orphan(app, svc, sites[0], attempts=max_attempts)
    queued = svc.start(sites[1]).id
    _age(app, queued)
    no_beat = _orphan(app, svc, sites[2], heartbeat="none")
    orphan = _orphan(app, svc, sites[3])
    fresh = _orphan(app, svc, sites[4], heartbeat="fresh")
    paused = _orphan(app, svc, sites[5])
    svc.pause(paused)
    _age(app, paused)
    r = get_redis()
    queued_job = r.get(job_key(queued))
    tokens = {i: db.session.get(AutomationRun, i).job_token for i in (failing, queued, no_beat, orphan, fresh, paused)}
    db.session.remove()
    hooks.subscribe(listener)
    try:
        before = utcnow()
        assert check_stale_runs() == [(failing, "failed"), (no_beat, "recovered"), (orphan, "recovered")]
        after = utcnow()
    finally:
        hooks._listeners.remove(listener)

    msg = (f"Run failed: its worker stopped responding {max_attempts + 1} times in a row "
           f"(no heartbeat for {stale} s); giving up.")
    run = db.session.get(AutomationRun, failing)
    assert run.status == "failed" and run.error_message == msg
    assert before <= run.completed_at <= after and run.ended_at == run.completed_at
    assert not r.exists(site_lock_key(sites[0]))  # the site is free for the next start
    assert "\n".join(svc.log_lines(failing, 50)).endswith(msg)
    events = lambda i: [(e.action, e.actor, e.reason) for e in svc.events(db.session.get(AutomationRun, i))]
    assert events(failing)[-1] == ("fail", "system", msg)

    for i in (no_beat, orphan):
        run = db.session.get(AutomationRun, i)
        assert run.status == "running" and run.recovery_attempts == 1 and run.job_token != tokens[i]
        assert before <= run.heartbeat_at <= after  # fresh: the next check leaves it to its new job
        job = Job.fetch(r.get(job_key(i)).decode(), connection=r)
        assert job.args == (i, run.job_token) and job.get_status() == "queued"
        assert events(i)[-1] == ("recover", "system", "worker lost (no heartbeat); continued on another worker")
        assert "Worker lost (no heartbeat since" in svc.log_lines(i, 1)[-1]
    assert seen == [("run.failed", failing, "system", msg), ("run.recovered", no_beat, "system", None),
                    ("run.recovered", orphan, "system", None)]

    for i in (queued, fresh, paused):
        run = db.session.get(AutomationRun, i)
        assert run.job_token == tokens[i] and run.recovery_attempts == 0
    assert r.get(job_key(queued)) == queued_job
    assert db.session.get(AutomationRun, paused).status == "paused"
    # Recovered runs are fresh now: their queued jobs are gone again, yet a second check at
    # once leaves them alone (their heartbeat was set by the recovery).
    for i in (no_beat, orphan):
        Queue(app.config["RQ_QUEUE"], connection=r).remove(Job.fetch(r.get(job_key(i)).decode(), connection=r))
        r.delete(job_key(i))
    db.session.remove()
    assert check_stale_runs() == []
