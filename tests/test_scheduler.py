"""Scheduled runs: the tick with a frozen clock, skips with reasons, catch-up, a real
rq-scheduler process, and 1,000 due sites in one tick."""
import os
import signal
from datetime import datetime, timedelta

import pytest
from sqlalchemy import event, func, select

from webapp.automation.scheduled import check_scheduled_automations
from webapp.automation.service import AutomationService
from webapp.extensions import db
from webapp.models import AutomationConfig, AutomationRun, RunEvent

from conftest import drain, start_worker, wait_for


def enable(site_id, account_id, **fields):
    svc = AutomationService(account_id, actor="user:test")
    svc.update_config(site_id, {"is_enabled": True, "frequency": "daily", "scheduled_time": "03:00", **fields})
    return db.session.execute(select(AutomationConfig).where(AutomationConfig.site_id == site_id)).scalar_one()


def set_next(site_id, when):
    cfg = db.session.execute(select(AutomationConfig).where(AutomationConfig.site_id == site_id)).scalar_one()
    cfg.next_run_at = when
    db.session.commit()


def runs(site_id):
    return db.session.execute(select(AutomationRun).where(AutomationRun.site_id == site_id)).scalars().all()


def test_enable_sets_next_run_and_disable_clears(app, factory):
    acc, _ = factory.account()
    site = factory.site(acc, timezone="Europe/Berlin")
    cfg = enable(site.id, acc.id)
    assert cfg.next_run_at is not None and cfg.next_run_at > datetime.utcnow()
    d = AutomationService(acc.id).config_dict(cfg)
    assert len(d["next_runs"]) == 5 and d["next_runs"][0] == d["next_run_at"]
    AutomationService(acc.id).update_config(site.id, {"is_enabled": False})
    assert db.session.get(AutomationConfig, cfg.id).next_run_at is None


def test_tick_starts_due_sites_only_and_advances(app, factory):
    acc, _ = factory.account(credits=100_000)
    due = factory.site(acc, "Due", keywords=6)
    later = factory.site(acc, "Later", keywords=6)
    off = factory.site(acc, "Off", keywords=6)
    due_id, later_id, off_id, acc_id = due.id, later.id, off.id, acc.id
    now = datetime(2026, 6, 1, 3, 0, 30)
    enable(due_id, acc_id)
    enable(later_id, acc_id)
    set_next(due_id, datetime(2026, 6, 1, 3, 0))
    set_next(later_id, datetime(2026, 6, 2, 3, 0))
    set_next(off_id, datetime(2026, 6, 1, 3, 0))  # disabled: never due
    queued = check_scheduled_automations(now=now)
    assert [s for s, _ in queued] == [due_id]
    assert check_scheduled_automations(now=now) == []  # already advanced: a second tick starts nothing
    drain(app, max_jobs=2)
    cfg = db.session.execute(select(AutomationConfig).where(AutomationConfig.site_id == due_id)).scalar_one()
    assert cfg.next_run_at == datetime(2026, 6, 2, 3, 0) and cfg.last_run_at is not None
    (run,) = runs(due_id)
    assert run.trigger_type == "scheduled" and run.started_by == "scheduler"
    assert runs(later_id) == [] and runs(off_id) == []


def test_skips_are_recorded_with_reason_and_still_advance(app, factory):
    acc, _ = factory.account(name="Poor", credits=1)
    poor = factory.site(acc, "Poor site", keywords=6)
    rich_acc, _ = factory.account(name="Rich", credits=100_000)
    empty = factory.site(rich_acc, "Empty")
    busy = factory.site(rich_acc, "Busy", keywords=6)
    ids = {"poor": (poor.id, acc.id), "empty": (empty.id, rich_acc.id), "busy": (busy.id, rich_acc.id)}
    AutomationService(rich_acc.id).start(busy.id)  # a run already active
    now = datetime(2026, 6, 1, 3, 1)
    for site_id, account_id in ids.values():
        enable(site_id, account_id)
        set_next(site_id, datetime(2026, 6, 1, 3, 0))
    assert len(check_scheduled_automations(now=now)) == 3
    # Only the scheduled starts: run them in this process.
    from rq.job import Job
    from webapp.automation.dispatch import waiting_jobs
    from webapp.redis_conn import get_redis
    r = get_redis()
    for job in Job.fetch_many(waiting_jobs(r, app.config["RQ_QUEUE"]), connection=r):
        if job.func_name.endswith("start_scheduled_run"):
            job.perform()
    reasons = {e.site_id: e.reason for e in db.session.execute(
        select(RunEvent).where(RunEvent.action == "scheduled_skip")).scalars()}
    assert "Insufficient credits" in reasons[ids["poor"][0]]
    assert "Nothing to process" in reasons[ids["empty"][0]]
    assert "already active" in reasons[ids["busy"][0]]
    for site_id, _ in ids.values():
        cfg = db.session.execute(select(AutomationConfig).where(AutomationConfig.site_id == site_id)).scalar_one()
        assert cfg.next_run_at == datetime(2026, 6, 2, 3, 0)
    assert len(runs(ids["busy"][0])) == 1 and runs(ids["poor"][0]) == []


def test_long_gap_gives_one_catch_up_then_normal_cadence(app, factory):
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, keywords=6)
    site_id = site.id
    enable(site_id, acc.id)
    set_next(site_id, datetime(2026, 5, 20, 3, 0))  # scheduler was down for 12 days
    now = datetime(2026, 6, 1, 12, 0)
    assert len(check_scheduled_automations(now=now)) == 1
    assert check_scheduled_automations(now=now + timedelta(minutes=1)) == []
    drain(app, max_jobs=1)
    assert len(runs(site_id)) == 1
    cfg = db.session.execute(select(AutomationConfig).where(AutomationConfig.site_id == site_id)).scalar_one()
    assert cfg.next_run_at == datetime(2026, 6, 2, 3, 0)


def test_thousand_due_sites_one_tick_without_query_storm(app, factory):
    acc, _ = factory.account(credits=10_000_000)
    from webapp.models import Site
    sites = [Site(account_id=acc.id, name=f"s{i}", timezone="UTC") for i in range(1000)]
    db.session.add_all(sites)
    db.session.flush()
    when = datetime(2026, 6, 1, 3, 0)
    db.session.add_all([AutomationConfig(account_id=acc.id, site_id=s.id, is_enabled=True, next_run_at=when,
                                         scheduled_time="03:00") for s in sites])
    db.session.commit()
    statements = []
    listener = lambda *a: statements.append(a[2])  # noqa: E731
    event.listen(db.engine, "before_cursor_execute", listener)
    try:
        queued = check_scheduled_automations(now=when + timedelta(seconds=5))
    finally:
        event.remove(db.engine, "before_cursor_execute", listener)
    assert len(queued) == 1000
    assert len(statements) <= 5, statements  # one select, one executemany update (+ transaction noise)
    from rq import Queue
    from webapp.redis_conn import get_redis
    from webapp.automation.dispatch import waiting_jobs
    assert len(set(waiting_jobs(get_redis(), app.config["RQ_QUEUE"]))) == 1000  # RQ's list + ready lists
    assert db.session.execute(select(func.count()).select_from(AutomationConfig).where(
        AutomationConfig.next_run_at == datetime(2026, 6, 2, 3, 0))).scalar() == 1000


@pytest.mark.processes
def test_real_scheduler_process_registers_once_and_starts_one_run(app, app_env, factory):
    from rq_scheduler import Scheduler
    from webapp.redis_conn import get_redis
    from webapp.scheduling import CONTROL_QUEUE, periodic_jobs
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, keywords=6)
    factory.fast_config(site)
    site_id = site.id
    enable(site_id, acc.id)
    set_next(site_id, datetime.utcnow() - timedelta(minutes=1))
    sched = Scheduler(queue_name=CONTROL_QUEUE, connection=get_redis())
    for _ in range(2):  # start, stop, start again: still one registration each
        p = start_worker(app_env, "--scheduler")
        wait_for(lambda: len([j for j in sched.get_jobs() if j.id.startswith("periodic-")]) == len(periodic_jobs()),
                 timeout=30, message="periodic jobs registered")
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(20)
    ids = sorted(j.id for j in sched.get_jobs())
    assert ids == sorted(j["id"] for j in periodic_jobs())
    p = start_worker(app_env, "--scheduler")
    w = start_worker(app_env)
    try:
        wait_for(lambda: db.session.execute(select(func.count()).select_from(AutomationRun).where(
            AutomationRun.site_id == site_id)).scalar() >= 1 and not db.session.remove(), timeout=60,
            message="scheduled run started")
        # The due slot's tick has run (the slot moved on) and its start job is done: a second
        # start could only come from a second tick of the same slot, which the slot forbids.
        from rq import Queue
        wait_for(lambda: Queue(app.config["RQ_QUEUE"], connection=get_redis()).count == 0
                 and db.session.execute(select(AutomationConfig.next_run_at).where(
                     AutomationConfig.site_id == site_id)).scalar() > datetime.utcnow()
                 and not db.session.remove(), timeout=60, message="tick done")
        db.session.remove()
        assert len(runs(site_id)) == 1
        assert runs(site_id)[0].trigger_type == "scheduled"
    finally:
        for proc in (p, w):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)


def _perform_scheduled_starts(app):
    """Run the queued scheduled starts in this process; the errors they raised."""
    from rq import Queue
    from rq.job import Job
    from webapp.automation import dispatch
    from webapp.redis_conn import get_redis
    r = get_redis()
    errors = []
    for job in Job.fetch_many(dispatch.waiting_jobs(r, app.config["RQ_QUEUE"]), connection=r):
        if job and job.func_name.endswith("start_scheduled_run"):
            # Taken as a worker takes it: out of the lists, then performed once.
            dispatch.withdraw(r, dispatch.account_of(job.id), job.id)
            r.lrem(Queue(app.config["RQ_QUEUE"], connection=r).key, 0, job.id)
            try:
                job.perform()
            except Exception as e:
                errors.append(e)
    return errors


def test_a_start_failing_on_a_database_error_is_retried_at_the_next_tick(app, factory):
    """Kills: the slot's claim kept after an unexpected error (here SQLite's write lock held by
    another process past the busy timeout): no run, no skip, and no retry ever. The next
    tick queues the start again and it starts the run."""
    import sqlite3
    from sqlalchemy.exc import OperationalError
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, "Locked out", keywords=6)
    site_id, account_id = site.id, acc.id
    enable(site_id, account_id)
    set_next(site_id, datetime(2026, 6, 1, 3, 0))
    assert len(check_scheduled_automations(now=datetime(2026, 6, 1, 3, 1))) == 1
    # Another connection holds a lock on the runs longer than this process waits for it: SQLite's
    # write lock past a 200 ms busy timeout, or on PostgreSQL the runs table past a 200 ms
    # lock_timeout.
    url = db.engine.url
    pg = url.get_backend_name() == "postgresql"
    db.session.remove()
    db.engine.dispose()

    def short_wait(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute("SET lock_timeout = '200ms'" if pg else "PRAGMA busy_timeout=200")
        cur.close()
        if pg:
            dbapi_conn.commit()
    event.listen(db.engine, "connect", short_wait)
    if pg:
        import psycopg2
        holder = psycopg2.connect(url.render_as_string(hide_password=False).replace("postgresql+psycopg2", "postgresql"))
        holder.cursor().execute(f"LOCK TABLE {AutomationRun.__tablename__} IN EXCLUSIVE MODE")
    else:
        holder = sqlite3.connect(url.database, isolation_level=None, timeout=5)
        holder.execute("BEGIN IMMEDIATE")
    try:
        errors = _perform_scheduled_starts(app)
    finally:
        holder.rollback() if pg else holder.execute("ROLLBACK")
        holder.close()
        db.session.remove()
        event.remove(db.engine, "connect", short_wait)
        db.engine.dispose()
    assert len(errors) == 1 and isinstance(errors[0], OperationalError), errors
    assert runs(site_id) == []
    # The next tick (the site's next slot is tomorrow) queues the failed start again.
    check_scheduled_automations(now=datetime(2026, 6, 1, 3, 2))
    assert _perform_scheduled_starts(app) == []
    (run,) = runs(site_id)
    assert run.trigger_type == "scheduled"
    assert "scheduled slot 2026-06-01T03:00:00Z" in db.session.execute(select(RunEvent.reason).where(
        RunEvent.run_id == run.id, RunEvent.action == "start")).scalar()
