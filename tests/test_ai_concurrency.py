"""AI at production speed (#12): concurrent AI calls within a stage, shared provider rate
limits, credit holds, the heartbeat on its own clock — real Redis, real DB, real RQ workers
(in-process SimpleWorker via `drain`, or `worker.py` subprocesses), a stub OpenAI-compatible
server on 127.0.0.1 (bench/ai_stub.py)."""
import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from rq import Worker
from sqlalchemy import func, select

from bench.ai_stub import StubState, serve
from webapp.automation.locks import exec_lock_key
from webapp.automation.service import AutomationService
from webapp.errors import BadRequest
from webapp.extensions import db
from webapp.models import (AITaskLog, Account, AutomationConfig, Cluster, Content, ContentIdea,
                           CreditTransaction, Image, Keyword, RunEvent, Task)
from webapp.models.base import utcnow
from webapp.redis_conn import get_redis

from conftest import drain, start_worker, wait_for


from conftest import fresh_run as _run, stop_process as _stop  # noqa: E402


def set_config(site_id, **values):
    cfg = db.session.execute(select(AutomationConfig).where(AutomationConfig.site_id == site_id)).scalar_one()
    for k, v in values.items():
        setattr(cfg, k, v)
    db.session.commit()


def twins(factory, n_keywords=40, credits=1_000_000, **cfg):
    out = []
    for name in ("Alpha", "Beta"):
        acc, _ = factory.account(name=name, credits=credits)
        site = factory.site(acc, keywords=n_keywords)
        factory.fast_config(site, **cfg)
        out.append((acc.id, site.id))
    return out


def no_duplicates(site_id):
    """No idea tasked twice, no task written twice, no item charged twice for one function."""
    for model, col in ((Task, Task.idea_id), (Content, Content.task_id), (Image, Image.id)):
        assert db.session.execute(select(col).where(model.site_id == site_id).group_by(col)
                                  .having(func.count() > 1)).all() == [], model
    assert db.session.execute(select(AITaskLog.function, AITaskLog.item_id).where(AITaskLog.site_id == site_id)
                              .group_by(AITaskLog.function, AITaskLog.item_id).having(func.count() > 1)).all() == []


def fingerprint(app, site_id):
    """Everything a run produced on a site, independent of row ids."""
    kw = db.session.execute(select(Cluster.name, Keyword.keyword).join(Keyword, Keyword.cluster_id == Cluster.id)
                            .where(Cluster.site_id == site_id)).all()
    clusters = sorted((name, tuple(sorted(k for n, k in kw if n == name))) for name in {n for n, _ in kw})
    ideas = sorted(db.session.execute(select(Cluster.name, ContentIdea.title, ContentIdea.outline, ContentIdea.status)
                                      .join(Cluster, ContentIdea.cluster_id == Cluster.id)
                                      .where(ContentIdea.site_id == site_id)).all())
    contents = sorted(db.session.execute(select(Content.title, Content.body, Content.status, Content.word_count)
                                         .where(Content.site_id == site_id)).all())
    images = []
    for title, pos, prompt, status, path in db.session.execute(
            select(Content.title, Image.position, Image.prompt, Image.status, Image.file_path)
            .join(Content, Image.content_id == Content.id).where(Image.site_id == site_id)):
        data = (Path(app.config["MEDIA_DIR"]) / path).read_bytes() if path else b""
        images.append((title, pos, prompt, status, hashlib.sha256(data).hexdigest()))
    tasks = db.session.execute(select(func.count()).select_from(Task).where(Task.site_id == site_id)).scalar()
    return {"clusters": clusters, "ideas": ideas, "contents": contents, "images": sorted(images), "tasks": tasks}


def charges(run_id):
    return sorted(db.session.execute(select(AITaskLog.stage, AITaskLog.function, AITaskLog.credits, AITaskLog.tokens)
                                     .where(AITaskLog.run_id == run_id)).all())


def assert_books_balance(run_id, account_id, balance_before):
    """ledger = AITaskLog sum = run total = balance change; one ledger row per AI log row."""
    run = _run(run_id)
    used = db.session.execute(select(func.coalesce(func.sum(AITaskLog.credits), 0))
                              .where(AITaskLog.run_id == run_id)).scalar()
    ledger = db.session.execute(select(func.coalesce(func.sum(CreditTransaction.amount), 0))
                                .where(CreditTransaction.run_id == run_id)).scalar()
    logs = db.session.execute(select(func.count()).select_from(AITaskLog).where(AITaskLog.run_id == run_id)).scalar()
    rows = db.session.execute(select(func.count()).select_from(CreditTransaction)
                              .where(CreditTransaction.run_id == run_id)).scalar()
    assert used == -ledger == run.total_credits_used and logs == rows
    assert balance_before - db.session.get(Account, account_id).credits == used
    return used


class PeakCalls:
    """Counts the local provider's calls in flight at once (wraps its latency wait)."""

    def __init__(self, monkeypatch):
        from webapp.ai.local import LocalProvider
        self.lock, self.now, self.peak, self.calls = threading.Lock(), 0, 0, 0
        original = LocalProvider._wait

        def counted(provider):
            with self.lock:
                self.now += 1
                self.calls += 1
                self.peak = max(self.peak, self.now)
            try:
                return original(provider)
            finally:
                with self.lock:
                    self.now -= 1
        monkeypatch.setattr(LocalProvider, "_wait", counted)


@pytest.fixture
def stub(app):
    state = StubState()
    server, url = serve(state)
    app.config.update(AI_PROVIDER="openai", OPENAI_BASE_URL=url, OPENAI_API_KEY="sk-test")
    yield state
    server.shutdown()


# -- same outputs and credits at concurrency 1 and 16 --------------------------------------------

def test_concurrency_16_gives_exactly_the_outputs_and_credits_of_1(app, factory, monkeypatch):
    """Small stage-1 batches share terms, so at 16 later batches' calls are in flight before
    earlier batches' clusters exist: their results must still equal the serial run's."""
    (a_acc, a_site), (b_acc, b_site) = twins(factory, n_keywords=30, stage_1_batch_size=3, stage_2_batch_size=2,
                                             stage_4_batch_size=2, stage_6_batch_size=4)
    set_config(a_site, ai_concurrency=1)
    set_config(b_site, ai_concurrency=16)
    app.config["AI_LOCAL_LATENCY_MS"] = 15
    balances = {a: db.session.get(Account, a).credits for a in (a_acc, b_acc)}
    peaks = {}
    for acc, site in ((a_acc, a_site), (b_acc, b_site)):
        peak = PeakCalls(monkeypatch)
        run_id = AutomationService(acc).start(site).id
        drain(app)
        assert _run(run_id).status == "completed", _run(run_id).error_message
        peaks[site] = (peak.peak, run_id)
    (serial_peak, serial_run), (par_peak, par_run) = peaks[a_site], peaks[b_site]
    assert serial_peak == 1 and par_peak >= 8, (serial_peak, par_peak)
    assert fingerprint(app, a_site) == fingerprint(app, b_site)
    assert charges(serial_run) == charges(par_run)
    assert assert_books_balance(serial_run, a_acc, balances[a_acc]) == assert_books_balance(par_run, b_acc, balances[b_acc])
    for run_id in (serial_run, par_run):
        r1 = _run(run_id).stage_1_result
        assert r1["items_processed"] == 30 and r1["items_failed"] == 0
    no_duplicates(b_site)


# -- pause and cancel under concurrency, on a real worker -----------------------------------------

def _wait_idle(run_id):
    """The run's job ended (it released the run's exec lock) and nothing is queued."""
    from rq import Queue
    from rq.registry import StartedJobRegistry
    q = Queue(current_app_queue(), connection=get_redis())
    wait_for(lambda: not get_redis().exists(exec_lock_key(run_id)) and q.count == 0
             and StartedJobRegistry(queue=q).count == 0, timeout=60, message="the run's job ended")


def current_app_queue():
    from flask import current_app
    return current_app.config["RQ_QUEUE"]


def _contents(site_id):
    return db.session.execute(select(func.count()).select_from(Content).where(Content.site_id == site_id)).scalar()


def _logs(run_id, function):
    n = db.session.execute(select(func.count()).select_from(AITaskLog).where(
        AITaskLog.run_id == run_id, AITaskLog.function == function)).scalar()
    db.session.remove()
    return n


@pytest.mark.processes
def test_pause_and_cancel_under_concurrency_charge_nothing_without_output(app, app_env, factory, stub):
    """On a real worker with 8 calls in flight (the stub records when each call arrives): no
    call starts more than a second after a pause or a cancel; the calls in flight at a pause
    or a cancel commit whole (the provider billed them: #25); an item is charged iff its
    output exists."""
    (ref_acc, ref_site), (acc_id, site_id) = twins(factory, n_keywords=24, stage_4_batch_size=50)
    set_config(site_id, ai_concurrency=8)
    ref = AutomationService(ref_acc).start(ref_site).id
    drain(app)
    balance = db.session.get(Account, acc_id).credits
    svc = AutomationService(acc_id, actor="user:t")
    run_id = svc.start(site_id).id
    env = {"AI_PROVIDER": "openai", "OPENAI_BASE_URL": app.config["OPENAI_BASE_URL"], "OPENAI_API_KEY": "sk-test"}
    # 8 calls in flight, each 1 s: the pause lands before the last calls start with ~1 s to spare
    # (0.4 s left too little on a loaded machine: every call could start before the pause).
    stub.latency = 1.0
    w = start_worker(app_env, extra_env=env)
    try:
        wait_for(lambda: _logs(run_id, "generate_content") >= 8, timeout=90, interval=0.05,
                 message="stage 4 under way")
        tasks = db.session.execute(select(func.count()).select_from(Task).where(Task.site_id == site_id)).scalar()
        svc.pause(run_id, reason="look")
        paused_at = time.monotonic()
        _wait_idle(run_id)
        assert max(t for t, _ in stub.starts) < paused_at + 1.0, "a call started after the pause"
        after = _contents(site_id)
        assert after < tasks, "the pause came too late to test anything"
        assert _logs(run_id, "generate_content") == after  # charged iff output committed
        assert _run(run_id).status == "paused" and _run(run_id).stage_4_result["items_processed"] == after
        assert_books_balance(run_id, acc_id, balance)
        # Resume, then cancel mid-stage: the answers of the calls in flight at the cancel are kept.
        stub.latency = 1.5
        svc.resume(run_id)
        wait_for(lambda: stub.in_flight >= 2, timeout=60, interval=0.02, message="resumed calls in flight")
        svc.cancel(run_id, reason="enough")
        cancelled_at = time.monotonic()
        in_flight_at_cancel = stub.in_flight
        at_cancel = _contents(site_id)
        _wait_idle(run_id)
        assert in_flight_at_cancel >= 2
        assert max(t for t, _ in stub.starts) < cancelled_at + 1.0, "a call started after the cancel"
        kept = _contents(site_id)
        assert at_cancel < kept <= tasks  # the answers that arrived were kept (none started after it)
        # Every answer the stub gave (both sites) is one AI log row: none thrown away.
        assert len(stub.ok_times) == db.session.execute(select(func.count()).select_from(AITaskLog)).scalar()
        assert _logs(run_id, "generate_content") == kept
        assert_books_balance(run_id, acc_id, balance)
        run = _run(run_id)
        assert run.status == "cancelled" and run.stage_4_result["items_processed"] == kept
    finally:
        _stop(w)
    # A new run finishes the rest; together they equal one uninterrupted run.
    stub.latency = 0
    second = svc.start(site_id).id
    drain(app)
    assert _run(second).status == "completed"
    assert fingerprint(app, site_id) == fingerprint(app, ref_site)
    assert sorted(charges(run_id) + charges(second)) == charges(ref)
    no_duplicates(site_id)


# -- SIGKILL under concurrency, then recovery with exact totals -----------------------------------

@pytest.mark.processes
def test_sigkill_under_concurrency_recovers_with_exact_totals(app, app_env, factory):
    (ref_acc, ref_site), (acc_id, site_id) = twins(factory, n_keywords=30, stage_4_batch_size=50,
                                                   stage_6_batch_size=50)
    set_config(site_id, ai_concurrency=8)
    ref = AutomationService(ref_acc).start(ref_site).id
    drain(app)
    balance = db.session.get(Account, acc_id).credits
    env = {"STALE_RUN_SECONDS": "2", "AI_LOCAL_LATENCY_MS": "300"}
    run_id = AutomationService(acc_id).start(site_id).id
    w1 = start_worker(app_env, extra_env=env)
    try:
        wait_for(lambda: _logs(run_id, "generate_content") >= 10, timeout=90, interval=0.02,
                 message="stage 4 under way")
        os.killpg(w1.pid, signal.SIGKILL)  # 8 calls in flight
        w1.wait(5)
        killed = _run(run_id)
        assert killed.status == "running" and killed.current_stage == 4
        # The exec lock (TTL = STALE_RUN_SECONDS) and the heartbeat expire; then the new
        # worker's start-up stale check continues the run.
        wait_for(lambda: not get_redis().exists(exec_lock_key(run_id)), timeout=10, message="exec lock expired")
        wait_for(lambda: (utcnow() - _run(run_id).heartbeat_at).total_seconds() > 2, timeout=10,
                 message="the dead worker's heartbeat older than STALE_RUN_SECONDS")
        w2 = start_worker(app_env, extra_env=env)
        try:
            wait_for(lambda: _run(run_id).status == "completed", timeout=120, message="run completed")
        finally:
            _stop(w2)
    finally:
        _stop(w1)
    assert fingerprint(app, site_id) == fingerprint(app, ref_site)
    assert charges(run_id) == charges(ref)
    assert_books_balance(run_id, acc_id, balance)
    no_duplicates(site_id)
    events = [e.action for e in db.session.execute(select(RunEvent).where(RunEvent.run_id == run_id)).scalars()]
    # Continued by the killed worker's queued next batch (it waits for the dead job's exec lock
    # to expire) or by one stale-run recovery, whichever the kill's timing left: never twice.
    assert events.count("recover") <= 1


# -- provider rate limits -------------------------------------------------------------------------

def test_429_with_retry_after_completes_without_pausing_or_spending_attempts(app, factory, stub):
    """One attempt per item: if a 429 counted as one, items would fail."""
    acc, _ = factory.account(credits=1_000_000)
    site = factory.site(acc, keywords=8)
    factory.fast_config(site, ai_concurrency=4)
    acc_id, site_id = acc.id, site.id
    app.config["ITEM_MAX_ATTEMPTS"] = 1
    stub.refuse_first, stub.retry_after = 12, 0.1
    stub.max_in_flight = 2  # and more than 2 at once are refused too
    t0 = time.monotonic()
    run_id = AutomationService(acc_id).start(site_id).id
    drain(app)
    run = _run(run_id)
    assert run.status == "completed" and run.pause_reason is None, run.error_message
    assert all((run.stage_result(n) or {}).get("items_failed", 0) == 0 for n in range(1, 8))
    assert stub.limited >= 12
    # Each refusal asked for 0.1 s, and every call waited it out.
    assert time.monotonic() - t0 > 0.1
    assert stub.peak_in_flight <= 2
    assert not db.session.execute(select(RunEvent).where(RunEvent.run_id == run_id,
                                                         RunEvent.action == "pause")).first()


def test_provider_refusing_longer_than_pause_after_pauses_with_reason(app, factory, stub):
    acc, _ = factory.account(credits=1_000_000)
    site = factory.site(acc, keywords=4)
    factory.fast_config(site)
    acc_id, site_id = acc.id, site.id
    app.config["AI_RATE_LIMIT_PAUSE_AFTER"] = 1
    stub.always_429, stub.retry_after = True, 0.2
    run_id = AutomationService(acc_id).start(site_id).id
    drain(app)
    run = _run(run_id)
    assert run.status == "paused" and run.pause_reason == "AI provider rate limit", run.error_message
    assert "429" in run.error_message and run.total_credits_used == 0
    stub.always_429 = False
    AutomationService(acc_id).resume(run_id)
    drain(app)
    assert _run(run_id).status == "completed"


def test_max_rpm_is_shared_across_workers(app):
    """Two limiters (as in two worker processes) on one Redis share one pace and one block."""
    from webapp.ai.ratelimit import SharedLimiter
    r = get_redis()
    a, b = SharedLimiter(r, rpm=1200, scope="t"), SharedLimiter(r, rpm=1200, scope="t")  # one per 50 ms
    stamps = []

    def take(limiter, n):
        for _ in range(n):
            while (d := limiter.delay()) > 0:
                time.sleep(d)
            stamps.append(time.monotonic())

    threads = [threading.Thread(target=take, args=(lim, 10)) for lim in (a, b, a, b)]
    t0 = time.monotonic()
    [t.start() for t in threads]
    [t.join() for t in threads]
    elapsed = time.monotonic() - t0
    # 40 requests at 20/s (a late caller may catch up one slot: at most two back to back).
    assert len(stamps) == 40 and elapsed >= 37 * 0.05, elapsed
    # A 429's Retry-After seen by one worker holds back the other.
    other = SharedLimiter(r, rpm=None, scope="u")
    SharedLimiter(r, rpm=None, scope="u").block(0.5)
    assert 0.3 < other.delay() <= 0.5


# -- credit holds ---------------------------------------------------------------------------------

def test_two_racing_starts_on_one_accounts_credits_start_one_run(app, factory):
    acc, _ = factory.account(credits=0)
    sites = [factory.site(acc, name=f"Site {i}", keywords=12) for i in range(2)]
    acc_id, site_ids = acc.id, [s.id for s in sites]
    svc = AutomationService(acc_id)
    need = svc.estimate(site_ids[0])["required_credits"]
    assert need == svc.estimate(site_ids[1])["required_credits"]
    from webapp.automation.billing import top_up
    top_up(db.session.get(Account, acc_id), need + need // 2)  # enough for one run, not two
    db.session.commit()
    barrier, results = threading.Barrier(2), []

    def start(site_id):
        with app.app_context():
            barrier.wait()
            try:
                results.append(AutomationService(acc_id).start(site_id).id)
            except BadRequest as e:
                results.append(e.message)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=start, args=(s,)) for s in site_ids]
    [t.start() for t in threads]
    [t.join() for t in threads]
    started = [r for r in results if isinstance(r, int)]
    refused = [r for r in results if isinstance(r, str)]
    assert len(started) == 1 and len(refused) == 1, results
    assert refused[0].startswith("Insufficient credits") and f"held by active runs {need}" in refused[0]
    est = svc.estimate(site_ids[0])
    assert est["current_balance"] == need + need // 2 and est["held"] == need
    assert est["available"] == need // 2 and est["sufficient"] is False
    # The hold shrinks as the run is charged and is gone when it ends.
    run_id = started[0]
    drain(app, max_jobs=1)
    used = _run(run_id).total_credits_used
    assert used > 0 and svc.estimate(site_ids[0])["held"] == need - used
    svc.cancel(run_id)
    est = svc.estimate(site_ids[0])
    assert est["held"] == 0 and est["available"] == est["current_balance"] == need + need // 2 - used


# -- config ---------------------------------------------------------------------------------------

def test_ai_concurrency_config_validated_and_saved(app, factory, client):
    acc, user = factory.account()
    site = factory.site(acc)
    token = factory.token(user)
    h = {"Authorization": f"Bearer {token}"}
    url = f"/api/v1/automation/update_config/?site_id={site.id}"
    assert client.get(f"/api/v1/automation/config/?site_id={site.id}", headers=h).get_json()["data"]["ai_concurrency"] == 4
    for bad in (0, 33, "8", 2.5, None):
        r = client.put(url, json={"ai_concurrency": bad, "stage_1_batch_size": 7}, headers=h)
        body = r.get_json()
        assert r.status_code == 400 and "ai_concurrency" in body["error"], body
    assert client.get(f"/api/v1/automation/config/?site_id={site.id}", headers=h).get_json()["data"]["stage_1_batch_size"] != 7
    r = client.put(url, json={"ai_concurrency": 32}, headers=h)
    assert r.status_code == 200 and r.get_json()["data"]["ai_concurrency"] == 32


# -- heartbeat on its own clock; recovery at default settings ---------------------------------------

@pytest.mark.processes
def test_long_ai_call_keeps_the_run_alive(app, app_env, factory):
    """One AI call (4 s) longer than STALE_RUN_SECONDS (1 s): the heartbeat goes on during it."""
    from webapp.automation.recovery import check_stale_runs
    from webapp.models.base import utcnow
    acc, _ = factory.account(credits=1_000_000)
    site = factory.site(acc, keywords=6)
    factory.fast_config(site, ai_concurrency=1)
    acc_id = acc.id
    run_id = AutomationService(acc_id).start(site.id).id
    w = start_worker(app_env, extra_env={"STALE_RUN_SECONDS": "1", "AI_LOCAL_LATENCY_MS": "4000"})
    try:
        wait_for(lambda: _run(run_id).stage_1_result is not None, timeout=30, message="stage 1 call in flight")
        time.sleep(2.5)  # well past the stale threshold, still inside the first call
        app.config["STALE_RUN_SECONDS"] = 1
        assert _logs(run_id, "auto_cluster") == 0
        assert (utcnow() - _run(run_id).heartbeat_at).total_seconds() < 1
        assert check_stale_runs() == []
        AutomationService(acc_id).cancel(run_id)
    finally:
        _stop(w)


def _calls(run_id):
    db.session.remove()
    return db.session.execute(select(func.count()).select_from(AITaskLog).where(AITaskLog.run_id == run_id)).scalar()


@pytest.mark.processes
def test_sigkilled_workers_run_continues_within_60s_at_default_settings(app, app_env, factory):
    acc, _ = factory.account(credits=1_000_000)
    site = factory.site(acc, keywords=20)
    factory.fast_config(site, ai_concurrency=2)
    acc_id = acc.id
    run_id = AutomationService(acc_id).start(site.id).id
    # Default STALE_RUN_SECONDS and STALE_CHECK_INTERVAL (the fixture's 90 s is removed).
    env = {"STALE_RUN_SECONDS": "", "AI_LOCAL_LATENCY_MS": "1000"}
    doomed = start_worker(app_env, extra_env=env)
    others = []
    try:
        wait_for(lambda: _run(run_id).stage_1_result is not None and get_redis().exists(exec_lock_key(run_id)),
                 timeout=30, message="a call in flight")
        others = [start_worker(app_env, extra_env=env), start_worker(app_env, "--scheduler", extra_env=env)]
        # The new worker's start-up check has run (it registers with RQ after it): the run was alive then.
        wait_for(lambda: len(Worker.all(connection=get_redis())) >= 2, timeout=60, message="the second worker up")
        os.killpg(doomed.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        doomed.wait(5)
        # The call in flight died with the worker; the run continues on the other worker (through
        # its queued next batch once the dead job's lock expires, or a stale-run recovery): the
        # proof is a new AI call charged after the kill.
        calls_at_kill = _calls(run_id)
        wait_for(lambda: _calls(run_id) > calls_at_kill, timeout=60, interval=0.5, message="progress after the kill")
        took = time.monotonic() - killed_at
        assert took < 60, took
    finally:
        for p in [doomed, *others]:
            _stop(p)


def test_ai_concurrency_in_the_config_form(client, auth, factory):
    acc, _ = factory.account()
    site = factory.site(acc)
    sid = site.id
    auth.login()
    page = client.get(f"/sites/{sid}/automation").get_data(as_text=True)
    assert 'name="ai_concurrency"' in page and 'value="4"' in page
    form = {"csrf_token": auth.csrf(), "frequency": "daily", "scheduled_time": "02:00",
            **{f"stage_{n}_batch_size": "5" for n in range(1, 7)}, "within_stage_delay": "0",
            "between_stage_delay": "0", "ai_concurrency": "40"}
    r = client.post(f"/sites/{sid}/automation/config", data=form)
    html = r.get_data(as_text=True)
    assert r.status_code == 400 and 'id="err-ai_concurrency"' in html and "must be &lt;= 32" in html
    r = client.post(f"/sites/{sid}/automation/config", data={**form, "ai_concurrency": "12"})
    assert r.status_code == 302
    cfg = db.session.execute(select(AutomationConfig).where(AutomationConfig.site_id == sid)).scalar_one()
    assert cfg.ai_concurrency == 12
