"""What the README promises, each tested the way it could break: two schedulers at once and
periodic jobs back after Redis loses its data, /healthz with the database down, the
scheduler tick across both DST transitions, many workers debiting one low balance at once,
the add-credits and revoke-token commands, and a session cookie asking for another
account's run on a websocket."""
import os
import signal
from datetime import datetime, timedelta

import pytest
import websocket
from sqlalchemy import func, select

from webapp.automation.scheduled import check_scheduled_automations
from webapp.automation.service import AutomationService
from webapp.extensions import db
from webapp.models import (Account, AITaskLog, ApiToken, AutomationConfig, AutomationRun, CreditTransaction,
                           RunEvent)
from webapp.redis_conn import get_redis

from conftest import start_worker, wait_for


def _stop(*procs):
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except Exception:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


# -- two schedulers, then Redis loses everything ------------------------------------------------

@pytest.mark.processes
def test_two_schedulers_at_once_register_once_start_once_and_reregister_after_redis_loss(app, app_env, factory):
    from rq_scheduler import Scheduler
    from webapp.scheduling import CONTROL_QUEUE, periodic_jobs
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, keywords=6)
    factory.fast_config(site)
    site_id, acc_id = site.id, acc.id
    AutomationService(acc_id).update_config(site_id, {"is_enabled": True, "frequency": "daily",
                                                      "scheduled_time": "03:00"})
    cfg = db.session.execute(select(AutomationConfig).where(AutomationConfig.site_id == site_id)).scalar_one()
    cfg.next_run_at = datetime.utcnow() - timedelta(minutes=1)
    db.session.commit()
    r = get_redis()
    sched = Scheduler(queue_name=CONTROL_QUEUE, connection=r)
    wanted = sorted(j["id"] for j in periodic_jobs())

    def registered():
        # rq-scheduler's sorted set of scheduled job ids: a job registered twice shows twice
        # only under two ids, so the ids must be exactly the wanted ones.
        return sorted(j.id for j in sched.get_jobs())

    def site_runs():
        n = db.session.execute(select(func.count()).select_from(AutomationRun).where(
            AutomationRun.site_id == site_id)).scalar()
        db.session.remove()
        return n

    def next_run():
        v = db.session.execute(select(AutomationConfig.next_run_at).where(AutomationConfig.site_id == site_id)).scalar()
        db.session.remove()
        return v

    schedulers = [start_worker(app_env, "--scheduler") for _ in range(2)]  # both at once
    worker = start_worker(app_env)
    try:
        wait_for(lambda: registered() == wanted, timeout=60, message="periodic jobs registered")
        wait_for(lambda: site_runs() >= 1 and next_run() > datetime.utcnow(), timeout=90,
                 message="the due site started and its slot advanced")
        # The tick that was due ran once: the slot moved on and the start job is gone from the
        # queue, so a second start could only come from a second tick for the same slot.
        from webapp.automation.dispatch import waiting_jobs
        wait_for(lambda: not waiting_jobs(r, app.config["RQ_QUEUE"]) and site_runs() >= 1, timeout=60,
                 message="start jobs drained")
        assert site_runs() == 1
        skips = db.session.execute(select(func.count()).select_from(RunEvent).where(
            RunEvent.site_id == site_id, RunEvent.action == "scheduled_skip")).scalar()
        assert skips == 0  # not even a refused second start
        assert registered() == wanted
        # Redis restarted without persistence: every key is gone, the schedulers put the
        # periodic jobs back (each once) while they keep running.
        r.flushdb()
        assert registered() == []
        wait_for(lambda: registered() == wanted, timeout=60, message="periodic jobs re-registered")
        for p in schedulers + [worker]:
            assert p.poll() is None, "a process died when Redis lost its data"
    finally:
        _stop(*schedulers, worker)


# -- /healthz with the database down ----------------------------------------------------------------

def test_healthz_503_when_database_unreachable(app_env, monkeypatch):
    from webapp import create_app
    for k, v in app_env.items():
        monkeypatch.setenv(k, v)
    # Nothing listens on port 1: the database is down, Redis is up.
    down = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": "postgresql://postgres@127.0.0.1:1/test",
                       "SQLALCHEMY_ENGINE_OPTIONS": {"connect_args": {"connect_timeout": 2}}})
    with down.app_context():
        r = down.test_client().get("/healthz")
        assert r.status_code == 503
        assert r.json["status"] == "unavailable" and r.json["redis"] == "ok"
        assert r.json["database"].startswith("error: ")
        db.session.remove()
        db.engine.dispose()


# -- the DST transitions through the scheduler tick ------------------------------------------------

@pytest.mark.parametrize("zone,first,last", [
    ("Europe/Berlin", datetime(2026, 3, 27), datetime(2026, 3, 31)),     # 02:00 -> 03:00 on Mar 29
    ("Europe/Berlin", datetime(2026, 10, 23), datetime(2026, 10, 27)),   # 03:00 -> 02:00 on Oct 25
    ("America/New_York", datetime(2026, 3, 6), datetime(2026, 3, 10)),   # 02:00 -> 03:00 on Mar 8
])
def test_scheduler_tick_across_dst_runs_each_local_day_once(app, factory, zone, first, last):
    """A daily 02:30 schedule ticked every 5 minutes (frozen clock) through the transition:
    exactly one start per local day, at 02:30 local where that time exists."""
    from zoneinfo import ZoneInfo
    from rq import Queue
    from webapp.automation import schedule
    acc, _ = factory.account()
    site = factory.site(acc, keywords=3, timezone=zone)
    site_id = site.id
    AutomationService(acc.id).update_config(site_id, {"is_enabled": True, "frequency": "daily",
                                                      "scheduled_time": "02:30"})
    cfg = db.session.execute(select(AutomationConfig).where(AutomationConfig.site_id == site_id)).scalar_one()
    cfg.next_run_at = schedule.next_slot(first, "daily", cfg.scheduled_time, zone, None)
    db.session.commit()
    slots, now = [], first
    while now < last:
        slots += [datetime.fromisoformat(slot) for sid, slot in check_scheduled_automations(now=now) if sid == site_id]
        now += timedelta(minutes=5)
    from webapp.automation.dispatch import waiting_jobs
    assert len(waiting_jobs(get_redis(), app.config["RQ_QUEUE"])) == len(slots)  # RQ's list + ready lists
    tz = ZoneInfo(zone)
    local = [s.replace(tzinfo=ZoneInfo("UTC")).astimezone(tz) for s in slots]
    days = [d.date() for d in local]
    assert days == sorted(set(days)), local  # one start per local day, in order
    assert len(days) == (last - first).days, local
    for d in local:
        exists = datetime(d.year, d.month, d.day, 2, 30, tzinfo=tz)
        # 02:30 that exists round-trips through UTC; a skipped 02:30 runs in the hour after.
        if exists.astimezone(ZoneInfo("UTC")).astimezone(tz).hour == 2:
            assert (d.hour, d.minute) == (2, 30), local
        else:
            assert d.hour == 3, local


# -- many workers, one low balance ---------------------------------------------------------------------

@pytest.mark.processes
def test_many_workers_debit_one_low_balance_exactly(app, app_env, factory):
    """Three workers run three sites of one account whose balance runs out: every debit is
    matched by a ledger row and an AI call, the balance never goes below zero, and every run
    pauses for credits."""
    acc, _ = factory.account(credits=1_000_000)
    acc_id = acc.id
    sites = [factory.site(acc, name=f"Site {i}", keywords=20) for i in range(3)]
    for s in sites:
        factory.fast_config(s)
    site_ids = [s.id for s in sites]
    run_ids = [AutomationService(acc_id).start(s).id for s in site_ids]
    low = 60  # a few dozen calls' worth, far less than the three runs need
    account = db.session.get(Account, acc_id)
    before = account.credits
    account.credits = low
    db.session.commit()
    ledger_before = db.session.execute(select(func.sum(CreditTransaction.amount)).where(
        CreditTransaction.account_id == acc_id)).scalar()
    workers = [start_worker(app_env, extra_env={"AI_LOCAL_LATENCY_MS": "5"}) for _ in range(3)]
    try:
        wait_for(lambda: all(db.session.get(AutomationRun, r).status == "paused" for r in run_ids)
                 and not db.session.remove(), timeout=120, message="every run paused for credits")
    finally:
        _stop(*workers)
    db.session.remove()
    runs = [db.session.get(AutomationRun, r) for r in run_ids]
    assert {r.pause_reason for r in runs} == {"insufficient credits"}
    balance = db.session.get(Account, acc_id).credits
    spent = db.session.execute(select(func.coalesce(func.sum(AITaskLog.credits), 0)).where(
        AITaskLog.account_id == acc_id)).scalar()
    ledger = db.session.execute(select(func.sum(CreditTransaction.amount)).where(
        CreditTransaction.account_id == acc_id)).scalar()
    assert 0 <= balance < low and spent == low - balance
    assert ledger - ledger_before == -spent and before == ledger_before
    assert sum(r.total_credits_used for r in runs) == spent
    calls = db.session.execute(select(func.count()).select_from(AITaskLog).where(AITaskLog.account_id == acc_id)).scalar()
    linked = db.session.execute(select(func.count()).select_from(CreditTransaction).where(
        CreditTransaction.account_id == acc_id, CreditTransaction.ai_task_log_id.is_not(None))).scalar()
    assert calls == linked > 0


# -- add-credits and revoke-token ----------------------------------------------------------------------

def test_add_credits_and_revoke_token_commands(runner, client, factory):
    acc, user = factory.account(credits=100)
    token = factory.token(user)
    tok_id = db.session.execute(select(ApiToken.id)).scalar_one()
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/sites/", headers=headers).status_code == 200

    res = runner.invoke(args=["add-credits", "Acme", "250"])
    assert res.exit_code == 0 and "350" in res.output, res.output
    db.session.expire_all()
    assert db.session.get(Account, acc.id).credits == 350
    row = db.session.execute(select(CreditTransaction).where(CreditTransaction.account_id == acc.id)
                             .order_by(CreditTransaction.id.desc())).scalars().first()
    assert (row.amount, row.balance_after) == (250, 350)
    for args, text in ((["add-credits", "Nope", "5"], "unknown account"), (["add-credits", "Acme", "0"], "AMOUNT"),
                       (["add-credits", "Acme", "x"], "AMOUNT"), (["revoke-token", "999"], "unknown token id"),
                       (["revoke-token", "abc"], "TOKEN_ID")):
        res = runner.invoke(args=args)
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: ") and text in lines[0], res.output
    db.session.expire_all()
    assert db.session.get(Account, acc.id).credits == 350  # the refused top-ups changed nothing

    res = runner.invoke(args=["revoke-token", str(tok_id)])
    assert res.exit_code == 0, res.output
    r = client.get("/api/v1/sites/", headers=headers)
    assert r.status_code == 401 and r.json["success"] is False


# -- a session cookie asking for another account's run ----------------------------------------------

@pytest.mark.parametrize("path", ["logs", "processing"])
def test_session_cookie_websocket_for_another_accounts_run_is_4404(live_server, factory, path):
    import re
    import requests
    acc, _ = factory.account(credits=100_000)
    mine = AutomationService(acc.id).start(factory.site(acc, keywords=5).id).id
    other, _ = factory.account(name="Other", credits=100_000)
    theirs = AutomationService(other.id).start(factory.site(other, keywords=5).id).id
    s = requests.Session()
    page = s.get(f"{live_server}/login")
    csrf = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page.text).group(1)
    s.post(f"{live_server}/login", data={"email": "acme@example.com", "password": "password123", "csrf_token": csrf})
    cookie = "; ".join(f"{c.name}={c.value}" for c in s.cookies)
    host = live_server.removeprefix("http://")
    origin = {"origin": live_server}
    # The same cookie opens the account's own run (so a 4404 below is about ownership).
    ws = websocket.create_connection(f"ws://{host}/ws/runs/{mine}/{path}", cookie=cookie, **origin)
    ws.settimeout(10)
    opcode, _ = ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_TEXT
    ws.close()
    for run_id in (theirs, 10**9):
        ws = websocket.create_connection(f"ws://{host}/ws/runs/{run_id}/{path}", cookie=cookie, **origin)
        ws.settimeout(10)
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(data[:2], "big") == 4404, run_id
        try:
            ws.close()
        except Exception:
            pass
