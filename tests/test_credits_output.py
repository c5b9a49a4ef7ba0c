"""Every credit buys output (#25): keywords that join a topic whose ideas exist are written
about; a run that charges credits without creating articles says why."""
import json
import time

from sqlalchemy import func, select

from webapp.automation.service import AutomationService
from webapp.extensions import db
from webapp.models import AITaskLog, Cluster, Content, ContentIdea, Keyword
from webapp.planner import import_rows

from conftest import fresh_run, start_worker, stop_process, wait_for

FIRST = ["trail running shoes", "trail running for beginners", "best trail running gear",
         "trail running hydration", "garden soil mix", "garden soil ph"]


def _count(model, site_id, *where):
    n = db.session.execute(select(func.count()).select_from(model).where(model.site_id == site_id, *where)).scalar()
    db.session.remove()
    return n


def _ended(run_id):
    run = fresh_run(run_id)
    return run if run.status in ("completed", "failed", "cancelled", "paused") else None


def test_keywords_joining_an_existing_topic_become_articles(app, app_env, factory):
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc)
    site_id = site.id
    factory.fast_config(site)
    import_rows(site, [{"keyword": k} for k in FIRST])
    svc = AutomationService(acc.id)
    w = start_worker(app_env)
    try:
        first = svc.start(site_id).id
        assert wait_for(lambda: _ended(first), timeout=120, message="first run").status == "completed"
        trail = db.session.execute(select(Cluster).where(Cluster.site_id == site_id,
                                                         Cluster.name.ilike("%trail%"))).scalar_one()
        trail_id, ideas_before = trail.id, _count(ContentIdea, site_id)
        articles_before = _count(Content, site_id)
        assert trail.ideas_generated

        site = db.session.get(type(site), site_id)
        import_rows(site, [{"keyword": f"trail running tip {i}"} for i in range(1, 41)])
        est = svc.estimate(site_id)
        # 40 keywords clustered (40) + ideas for them + 20 articles with prompts and images.
        assert est["estimated_credits"] > 40 + 20 * 5, est
        second = svc.start(site_id).id
        run = wait_for(lambda: _ended(second), timeout=240, message="second run")
        assert run.status == "completed", run.error_message
    finally:
        stop_process(w)
    joined = _count(Keyword, site_id, Keyword.cluster_id == trail_id)
    assert joined == 4 + 40, "the new keywords joined the existing topic"
    assert _count(Keyword, site_id, Keyword.ideas_generated.is_(False)) == 0
    assert run.stage_1_result["credits_used"] == 40
    assert run.stage_2_result["items_processed"] == 1 and run.stage_2_result["items_created"] == 20
    assert _count(ContentIdea, site_id) == ideas_before + 20
    assert _count(Content, site_id) == articles_before + 20
    assert run.stage_4_result["items_created"] == 20
    titles = db.session.execute(select(ContentIdea.title).where(ContentIdea.cluster_id == trail_id)).scalars().all()
    assert len(titles) == len(set(titles))
    # charged = AI log rows; every article is in review
    assert run.total_credits_used == db.session.execute(select(func.sum(AITaskLog.credits)).where(
        AITaskLog.run_id == second)).scalar()
    assert _count(Content, site_id, Content.status == "review") == articles_before + 20


def test_overview_and_estimate_count_a_cluster_pending_for_new_keywords(app, factory):
    from conftest import drain
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc)
    site_id, site_model = site.id, type(site)
    factory.fast_config(site)
    import_rows(site, [{"keyword": k} for k in FIRST])
    svc = AutomationService(acc.id)
    svc.start(site_id)
    drain(app)
    site = db.session.get(site_model, site_id)
    before = svc.estimate(site_id)["estimated_credits"]
    assert before == 0
    cluster = db.session.execute(select(Cluster).where(Cluster.site_id == site_id,
                                                       Cluster.name.ilike("%trail%"))).scalar_one()
    # A keyword already in the cluster but never written about (as before this fix).
    import_rows(site, [{"keyword": "trail running tip 1"}, {"keyword": "trail running tip 2"}])
    kws = db.session.execute(select(Keyword).where(Keyword.site_id == site_id, Keyword.cluster_id.is_(None))).scalars().all()
    for k in kws:
        k.cluster_id = cluster.id
    db.session.commit()
    cluster = db.session.get(Cluster, cluster.id)
    cluster.ideas_generated = False
    db.session.commit()
    overview = {row["number"]: row["pending"] for row in svc.pipeline_overview(site_id, fresh=True)}
    assert overview[2] == 1 and overview[1] == 0
    _, p = svc.pending_counts(site_id)
    assert p["ideas_from_clusters"] == 1  # ideas for the 2 uncovered keywords, not for all 6
    est = svc.estimate(site_id)["estimated_credits"]
    assert est == 2 + 5 + 1 + 3 * 2  # one cluster's ideas, one article, its prompts, 3 images


# -- answers the provider billed are kept: pause, cancel, automatic pause with calls in flight ------

import pytest  # noqa: E402

from bench.ai_stub import StubState, serve  # noqa: E402
from webapp.automation.locks import exec_lock_key  # noqa: E402
from webapp.models import AutomationConfig, CreditTransaction  # noqa: E402
from webapp.redis_conn import get_redis  # noqa: E402


@pytest.fixture
def stub(app):
    state = StubState()
    server, url = serve(state)
    app.config.update(AI_PROVIDER="openai", OPENAI_BASE_URL=url, OPENAI_API_KEY="sk-test")
    yield state
    server.shutdown()


def _env(app):
    return {"AI_PROVIDER": "openai", "OPENAI_BASE_URL": app.config["OPENAI_BASE_URL"], "OPENAI_API_KEY": "sk-test"}


def _site_with_topics(factory, topics=16, per_topic=2, concurrency=8):
    acc, _ = factory.account(credits=1_000_000)
    site = factory.site(acc)
    import_rows(site, [{"keyword": f"note {i} {t}"} for t in [f"w{j}" for j in range(topics)] for i in range(per_topic)])
    factory.fast_config(site, ai_concurrency=concurrency, stage_2_batch_size=50, stage_4_batch_size=50)
    return acc.id, site.id


def _idle(app, run_id):
    from rq import Queue
    from rq.registry import StartedJobRegistry
    q = Queue(app.config["RQ_QUEUE"], connection=get_redis())
    wait_for(lambda: not get_redis().exists(exec_lock_key(run_id)) and q.count == 0
             and StartedJobRegistry(queue=q).count == 0, timeout=60, message="the run's job ended")


def _books(site_id, run_ids):
    logs = db.session.execute(select(func.count()).select_from(AITaskLog).where(AITaskLog.site_id == site_id)).scalar()
    debits = db.session.execute(select(func.count()).select_from(CreditTransaction).where(
        CreditTransaction.run_id.in_(run_ids), CreditTransaction.amount < 0)).scalar()
    db.session.remove()
    return logs, debits


def _answers(stub):
    with stub.lock:
        return len(stub.ok_times)


def _logs(site_id, function):
    n = db.session.execute(select(func.count()).select_from(AITaskLog).where(
        AITaskLog.site_id == site_id, AITaskLog.function == function)).scalar()
    db.session.remove()
    return n


@pytest.mark.parametrize("action", ["pause", "cancel"])
def test_pause_or_cancel_with_calls_in_flight_keeps_every_billed_answer(app, app_env, factory, stub, action):
    acc_id, site_id = _site_with_topics(factory)
    svc = AutomationService(acc_id, actor="user:t")
    run_id = svc.start(site_id).id
    w = start_worker(app_env, extra_env=_env(app))
    try:
        wait_for(lambda: _logs(site_id, "generate_content") >= 2, timeout=120, interval=0.05, message="stage 4")
        stub.latency = 1.0  # the calls now in flight answer after the pause / cancel
        wait_for(lambda: stub.in_flight >= 4, timeout=30, interval=0.02, message="calls in flight")
        getattr(svc, action)(run_id, reason="test")
        at = time.monotonic()
        in_flight = stub.in_flight
        _idle(app, run_id)
    finally:
        stop_process(w)
    assert in_flight >= 4
    assert max(t for t, _ in stub.starts) < at + 1.0, "a call was sent after the " + action
    logs, debits = _books(site_id, [run_id])
    assert _answers(stub) == logs == debits  # every answer the provider gave is charged once
    # and its output exists: one article per generate_content charge
    assert _count(Content, site_id) == _logs(site_id, "generate_content")
    run = fresh_run(run_id)
    assert run.status == ("paused" if action == "pause" else "cancelled")
    assert run.stage_4_result["items_processed"] == _count(Content, site_id)
    if action == "cancel":
        assert run.stage_result(run.current_stage)["status"] == "cancelled", [run.current_stage, run.stage_5_result, run.stage_6_result, run.ended_at]
    assert run.total_credits_used == db.session.execute(select(func.sum(AITaskLog.credits)).where(
        AITaskLog.run_id == run_id)).scalar()


def test_sigterm_with_calls_in_flight_keeps_every_billed_answer(app, app_env, factory, stub):
    """A worker stopped with SIGTERM while calls are on the wire: it sends nothing more, its
    answers are committed and charged before it lets go, and the next worker goes on without
    asking any of them again."""
    import signal
    acc_id, site_id = _site_with_topics(factory)
    run_id = AutomationService(acc_id, actor="user:t").start(site_id).id
    w = start_worker(app_env, extra_env=_env(app))
    try:
        wait_for(lambda: _logs(site_id, "generate_content") >= 2, timeout=120, interval=0.05, message="stage 4")
        latency = stub.latency
        stub.latency = 1.0
        wait_for(lambda: stub.in_flight >= 4, timeout=30, interval=0.02, message="calls in flight")
        w.send_signal(signal.SIGTERM)
        at = time.monotonic()
        w.wait(timeout=60)
        assert max(t for t, _ in stub.starts) < at + 1.0, "a call was sent after SIGTERM"
        logs, debits = _books(site_id, [run_id])
        assert _answers(stub) == logs == debits > 0
        assert _count(Content, site_id) == _logs(site_id, "generate_content")
        assert fresh_run(run_id).status == "running"  # handed back, not lost
        stub.latency = latency
        w = start_worker(app_env, extra_env=_env(app))
        wait_for(lambda: fresh_run(run_id).status == "completed", timeout=180, message="completed on the next worker")
    finally:
        stop_process(w)
    logs, debits = _books(site_id, [run_id])
    assert _answers(stub) == logs == debits
    assert fresh_run(run_id).total_credits_used == db.session.execute(select(func.sum(AITaskLog.credits)).where(
        AITaskLog.run_id == run_id)).scalar()


def test_automatic_pause_keeps_the_answers_behind_the_failing_call(app, app_env, factory, stub):
    """A burst of 5xx for one cluster's call pauses the run; the answers of the calls in flight
    with it are committed and charged, not thrown away and asked again after the resume."""
    acc_id, site_id = _site_with_topics(factory, topics=12, per_topic=2)
    failing = []

    def fail(path, body):
        if not path.endswith("/chat/completions") or "ideas" not in body["messages"][0]["content"]:
            return False
        cluster = json.loads(body["messages"][1]["content"])["cluster"]
        if not failing:
            failing.append(cluster)
        return cluster == failing[0]
    stub.latency = 0.3
    stub.fail_5xx = fail
    svc = AutomationService(acc_id, actor="user:t")
    run_id = svc.start(site_id).id
    w = start_worker(app_env, extra_env=_env(app))
    try:
        wait_for(lambda: fresh_run(run_id).status == "paused", timeout=120, message="automatic pause")
        _idle(app, run_id)
        run = fresh_run(run_id)
        assert run.pause_reason == "AI provider unavailable"
        assert stub.failed_5xx >= 3
        kept = _logs(site_id, "generate_ideas")
        assert kept >= 1, "answers that arrived with the failing call were kept"
        logs, debits = _books(site_id, [run_id])
        assert _answers(stub) == logs == debits
        # Resume with the provider healthy: nothing already answered is asked again.
        stub.fail_5xx = None
        answered = _answers(stub)
        ideas_calls_before = sum(1 for _, p in stub.starts)
        svc.resume(run_id)
        wait_for(lambda: fresh_run(run_id).status == "completed", timeout=180, message="completed")
    finally:
        stop_process(w)
    assert _logs(site_id, "generate_ideas") == 12  # one per cluster, each asked once successfully
    logs, debits = _books(site_id, [run_id])
    assert _answers(stub) == logs == debits > answered
    assert ideas_calls_before


def test_a_run_that_charges_but_makes_no_article_says_why(app, factory, monkeypatch):
    from conftest import drain
    from webapp.ai.base import ItemError
    from webapp.ai.local import LocalProvider

    def broken(*a, **k):
        raise ItemError("the model refused")
    monkeypatch.setattr(LocalProvider, "generate_content", broken)
    app.config["ITEM_MAX_ATTEMPTS"] = 1
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc)
    site_id = site.id
    factory.fast_config(site)
    import_rows(site, [{"keyword": k} for k in FIRST])
    run_id = AutomationService(acc.id).start(site_id).id
    drain(app)
    run = fresh_run(run_id)
    assert run.status == "completed" and run.total_credits_used > 0
    assert "sent no article to review" in run.error_message and "failed" in run.error_message
    from webapp.automation.logger import run_log_path
    log = run_log_path(app.config["LOG_DIR"], run.account_id, run.site_id, run.id).read_text()
    assert "sent no article to review" in log


# -- a provider that limits requests in flight is used near its limit, not flooded ----------------

def test_in_flight_limited_provider_is_not_flooded(app, app_env, factory, stub):
    """4 requests in flight allowed, 429 + Retry-After beyond, the run at ai_concurrency 16:
    the worker's window learns the limit (few refusals), and each wait is a line in the log."""
    stub.latency, stub.max_in_flight, stub.retry_after = 0.2, 4, 0.5
    acc_id, site_id = _site_with_topics(factory, topics=20, per_topic=2, concurrency=16)
    run_id = AutomationService(acc_id).start(site_id).id
    w = start_worker(app_env, extra_env=_env(app))
    try:
        run = wait_for(lambda: _ended(run_id), timeout=240, message="run ended")
    finally:
        stop_process(w)
    assert run.status == "completed", run.error_message
    assert stub.peak_in_flight <= 4 and stub.limited >= 1
    assert stub.limited / stub.requests <= 0.25, (stub.limited, stub.requests)
    from webapp.automation.logger import run_log_path
    log = run_log_path(app.config["LOG_DIR"], run.account_id, run.site_id, run.id).read_text()
    waits = [ln for ln in log.splitlines() if "provider rate limit: waiting 0.5 s (429)" in ln]
    assert len(waits) == stub.limited  # one line per wait
    logs, debits = _books(site_id, [run_id])
    assert _answers(stub) == logs == debits


def test_adaptive_window_shrinks_on_refusal_and_grows_on_answers():
    import threading
    from webapp.ai.ratelimit import AdaptiveWindow
    w, stop = AdaptiveWindow(16), threading.Event()
    sent = [w.acquire(stop) for _ in range(16)]
    assert w.in_flight == 16
    for n in sent[4:]:   # the provider took 4, refused the rest
        w.release("refused", n)
    assert w.limit == 4
    for n in sent[:4]:
        w.release("ok", n)
    # Just below the refused level it grows slowly: 4 x 4 answers before trying 5.
    for _ in range(11):
        w.release("ok", w.acquire(stop))
    assert w.limit == 4
    w.release("ok", w.acquire(stop))
    assert w.limit == 5
    w.release("refused", 5)
    assert w.limit == 4
    stop.set()
    w.limit = 0
    import pytest as _p
    from webapp.ai.ratelimit import Interrupted
    with _p.raises(Interrupted):
        w.acquire(stop)


# -- reject and regenerate ---------------------------------------------------------------------

def test_reject_and_rewrite_comes_back_as_version_2(app, client, factory, auth):
    from conftest import drain
    from webapp.models import Task
    acc, user = factory.account(credits=100_000)
    token = factory.token(user)
    site = factory.site(acc)
    site_id = site.id
    factory.fast_config(site)
    import_rows(site, [{"keyword": k} for k in FIRST[:2]])
    svc = AutomationService(acc.id)
    svc.start(site_id)
    drain(app)
    content = db.session.execute(select(Content).where(Content.site_id == site_id, Content.status == "review")
                                 .order_by(Content.id)).scalars().first()
    cid, body1, task_id = content.id, content.body, content.task_id
    articles = _count(Content, site_id)
    h = {"Authorization": f"Bearer {token}"}
    # bad input: named field, nothing changed
    r = client.post(f"/api/v1/writer/content/{cid}/reject/", json={"note": "x", "regenerate": "yes"}, headers=h)
    assert r.status_code == 400 and "regenerate" in r.get_json()["errors"]
    r = client.post(f"/api/v1/writer/content/{cid}/approve/", json={"regenerate": True}, headers=h)
    assert r.status_code == 400 and "regenerate" in r.get_json()["errors"]
    assert db.session.get(Task, task_id).status == "completed"
    before = svc.estimate(site_id)["estimated_credits"]
    r = client.post(f"/api/v1/writer/content/{cid}/reject/",
                    json={"note": "Add a section on safety", "regenerate": True}, headers=h)
    assert r.status_code == 200, r.get_json()
    out = r.get_json()["data"]["content"]
    assert out["status"] == "rejected" and out["version"] == 1 and out["previous_versions"] == []
    db.session.remove()
    assert db.session.get(Task, task_id).status == "queued"
    overview = {row["number"]: row["pending"] for row in svc.pipeline_overview(site_id, fresh=True)}
    assert overview[4] == 1
    assert svc.estimate(site_id)["estimated_credits"] >= before + 5  # counted as an article
    run_id = svc.start(site_id).id
    drain(app)
    run = fresh_run(run_id)
    assert run.status == "completed"
    assert run.stage_4_result["items_processed"] == 1
    assert db.session.execute(select(func.count()).select_from(AITaskLog).where(
        AITaskLog.run_id == run_id, AITaskLog.function == "generate_content")).scalar() == 1
    c = db.session.get(Content, cid)
    assert c.status == "review" and c.version == 2 and c.body != body1 and "Add a section on safety" in c.body
    assert c.previous_versions[0]["version"] == 1 and c.previous_versions[0]["body"] == body1
    assert c.previous_versions[0]["review_note"] == "Add a section on safety"
    assert _count(Content, site_id) == articles  # rewritten in place, no second article
    r = client.get(f"/api/v1/writer/content/{cid}/", headers=h)
    if r.status_code == 200:
        d = r.get_json()
        d = d["data"].get("content", d["data"])
        assert d["version"] == 2 and d["previous_versions"][0]["review_note"] == "Add a section on safety"


def test_review_page_reject_and_rewrite_button(app, client, factory, auth):
    from conftest import csrf_from, drain
    from webapp.models import Task
    acc, user = factory.account(credits=100_000)
    site = factory.site(acc)
    site_id = site.id
    factory.fast_config(site)
    import_rows(site, [{"keyword": k} for k in FIRST[:2]])
    AutomationService(acc.id).start(site_id)
    drain(app)
    auth.login()
    page = client.get(f"/sites/{site_id}/review").get_data(as_text=True)
    assert "Reject and rewrite" in page and ">Reject<" in page
    cid = db.session.execute(select(Content.id).where(Content.site_id == site_id)).scalars().first()
    r = client.post(f"/sites/{site_id}/review", data={"csrf_token": csrf_from(page), "act": f"rewrite:{cid}",
                                                      f"note_{cid}": ""})
    assert r.status_code == 400 and "required to reject" in r.get_data(as_text=True)
    r = client.post(f"/sites/{site_id}/review", data={"csrf_token": csrf_from(page), "act": f"rewrite:{cid}",
                                                      f"note_{cid}": "Shorter intro"})
    assert r.status_code == 302
    db.session.remove()
    c = db.session.get(Content, cid)
    assert c.status == "rejected" and c.review_note == "Shorter intro"
    assert db.session.get(Task, c.task_id).status == "queued"


# -- runs that do only what is needed ----------------------------------------------------------

def test_empty_stages_take_no_between_stage_delay(app, client, factory):
    """A rewrite run has work at stages 4 and 7 only: no delay at any of the empty stages
    (the log says each delay taken; there is none), nor after the last stage with work."""
    from conftest import drain
    from webapp.automation.logger import run_log_path
    from webapp.writer.review import ReviewService
    acc, user = factory.account(credits=100_000)
    acc_id, email = acc.id, user.email
    site = factory.site(acc)
    site_id = site.id
    factory.fast_config(site, between_stage_delay=1)
    import_rows(site, [{"keyword": k} for k in FIRST[:2]])
    svc = AutomationService(acc_id)
    first = svc.start(site_id).id
    drain(app)
    cid = db.session.execute(select(Content.id).where(Content.site_id == site_id)).scalars().first()
    ReviewService(acc_id, email).decide(cid, "reject", "more depth", regenerate=True)
    factory.fast_config(db.session.get(type(site), site_id), between_stage_delay=30)
    run_id = svc.start(site_id).id
    drain(app)
    run = fresh_run(run_id)
    assert run.status == "completed"
    assert [run.stage_result(n)["status"] for n in range(1, 8)] == \
        ["skipped", "skipped", "skipped", "completed", "skipped", "skipped", "completed"]
    log = run_log_path(app.config["LOG_DIR"], run.account_id, run.site_id, run.id).read_text()
    assert "Between-stage delay" not in log
    # The first run had work at every stage: it waited between each two (and logged it).
    log1 = run_log_path(app.config["LOG_DIR"], run.account_id, run.site_id, first).read_text()
    assert log1.count("Between-stage delay: 1 s") == 6


def test_retry_count_shows_what_is_still_failed(app, client, factory, auth, monkeypatch):
    from conftest import drain
    from webapp.ai.base import ItemError
    from webapp.ai.local import LocalProvider
    from webapp.models import RunItemFailure
    original = LocalProvider.generate_content
    monkeypatch.setattr(LocalProvider, "generate_content", lambda *a, **k: (_ for _ in ()).throw(ItemError("no")))
    app.config["ITEM_MAX_ATTEMPTS"] = 1
    acc, user = factory.account(credits=100_000)
    site = factory.site(acc)
    site_id = site.id
    factory.fast_config(site)
    import_rows(site, [{"keyword": k} for k in FIRST])
    svc = AutomationService(acc.id)
    run_id = svc.start(site_id).id
    drain(app)
    failed = db.session.execute(select(func.count()).select_from(RunItemFailure).where(
        RunItemFailure.run_id == run_id)).scalar()
    assert failed >= 2
    source = fresh_run(run_id)
    assert svc.still_failed_count(source) == failed
    # Fix one task by hand-off: a retry in which only the first item succeeds.
    calls = []

    def once(self, *a, **k):
        calls.append(1)
        if len(calls) == 1:
            return original(self, *a, **k)
        raise ItemError("still no")
    monkeypatch.setattr(LocalProvider, "generate_content", once)
    retry = svc.retry_failed(run_id).id
    drain(app)
    assert fresh_run(retry).status == "completed"
    source = fresh_run(run_id)
    assert svc.still_failed_count(source) == failed - 1
    auth.login()
    page = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert f"Retry {failed - 1} failed item" in page and "1 of them processed since" in page


def test_eta_known_from_the_first_second_and_across_stage_boundaries():
    from types import SimpleNamespace
    from webapp.automation import insights
    run = SimpleNamespace(status="running", current_stage=1)
    projected = {1: 10, 2: 2, 3: 5, 4: 5, 5: 5, 6: 15, 7: 5}
    # First second: nothing done yet, the site's earlier runs know the stages' pace.
    first = {1: {"items_total": 10, "items_processed": 0, "items_failed": 0, "duration_seconds": 0.5}}
    history = {1: 1.0, 2: 2.0, 4: 3.0}
    eta = insights.eta_seconds(run, first, projected, history, None)
    assert eta is not None and eta >= 10 * 1.0 + 2 * 2.0 + 5 * 3.0
    # A stage never seen before (stage 3 here, no history for it): still an ETA, from the pace so far.
    run.current_stage = 3
    results = {1: {"items_total": 10, "items_processed": 10, "items_failed": 0, "duration_seconds": 10.0},
               2: {"items_total": 2, "items_processed": 2, "items_failed": 0, "duration_seconds": 4.0},
               3: {"items_total": 5, "items_processed": 0, "items_failed": 0, "duration_seconds": 0.1}}
    assert insights.eta_seconds(run, results, projected, {}, None) is not None
    # Nothing known at all: unknown.
    assert insights.eta_seconds(SimpleNamespace(status="running", current_stage=1), first, projected, {}, None) is None


def test_a_clean_stop_is_an_interruption_not_working_time(app, app_env, factory):
    """SIGTERM the worker mid-run, keep the app stopped a while, start a worker again: the run
    records a clean stop (not "worker lost"), and its working time leaves out the gap."""
    import os
    import signal
    from webapp.automation.logger import run_log_path
    from webapp.models import RunEvent
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, keywords=30)
    site_id = site.id
    factory.fast_config(site, stage_4_batch_size=2, ai_concurrency=2)
    svc = AutomationService(acc.id)
    run_id = svc.start(site_id).id
    env = {"AI_LOCAL_LATENCY_MS": "150"}
    w = start_worker(app_env, extra_env=env)
    try:
        wait_for(lambda: _logs(site_id, "generate_content") >= 2, timeout=120, interval=0.05, message="stage 4")
        os.killpg(w.pid, signal.SIGTERM)
        w.wait(30)
    finally:
        stop_process(w)
    run = fresh_run(run_id)
    assert run.status == "running"
    actions = db.session.execute(select(RunEvent.action).where(RunEvent.run_id == run_id)
                                 .order_by(RunEvent.id)).scalars().all()
    assert actions[-1] == "interrupt"
    time.sleep(3)  # the app stays stopped
    gap = svc.run_dict(fresh_run(run_id))
    assert gap["interrupted_seconds"] >= 2.5
    w = start_worker(app_env, extra_env=env)
    try:
        run = wait_for(lambda: _ended(run_id), timeout=180, message="run ended")
    finally:
        stop_process(w)
    assert run.status == "completed"
    d = svc.run_dict(run)
    wall = (run.ended_at - run.started_at).total_seconds()
    assert d["interrupted_seconds"] >= 2.5
    assert abs(d["active_seconds"] + d["paused_seconds"] + d["interrupted_seconds"] - wall) < 0.5
    log = run_log_path(app.config["LOG_DIR"], run.account_id, run.site_id, run.id).read_text()
    assert "Worker stopped (SIGTERM)" in log and "Worker lost" not in log
    actions = db.session.execute(select(RunEvent.action).where(RunEvent.run_id == run_id)
                                 .order_by(RunEvent.id)).scalars().all()
    assert "interrupt" in actions and ("continue" in actions or "recover" in actions)
