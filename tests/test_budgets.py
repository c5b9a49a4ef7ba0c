"""Monthly budgets: the account API, enforcement at start (races included), the pause of a run
that reaches a budget and its resume after a raise (a real worker process), threshold
alerts (a real webhook receiver), roles and scoping."""
import json
import threading

from sqlalchemy import func, select

from webapp.automation.service import AutomationService
from webapp.errors import BadRequest
from webapp.extensions import db
from webapp.models import (ACCOUNT_SCOPE, Account, AutomationRun, BudgetAlert, CreditTransaction, MonthlySpend,
                           RunEvent, Site, WebhookDelivery)

from conftest import drain, fresh_run, start_worker, stop_process, wait_for
from test_logs_and_providers import stub_ai  # noqa: F401 (fixture)
from test_notify import Receiver, add_hook, verify


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def notify_burst():
    """Run the queued notification jobs here (a real RQ SimpleWorker): whichever process
    serves the notify queue in this version (a pipeline worker, or `worker.py --notify`)."""
    from flask import g
    from rq import Queue, SimpleWorker
    from webapp.notify.jobs import NOTIFY_QUEUE
    from webapp.redis_conn import get_redis
    r = get_redis()
    SimpleWorker([Queue(NOTIFY_QUEUE, connection=r)], connection=r).work(
        burst=True, with_scheduler=False, logging_level="WARNING")
    db.session.remove()
    g.pop("_login_user", None)


def events_of(rec, event):
    notify_burst()
    return [c for c in rec.calls if json.loads(c["body"])["event"] == event]


def ledger_debits(account_id, site_id=None):
    q = select(func.coalesce(func.sum(-CreditTransaction.amount), 0)).where(
        CreditTransaction.account_id == account_id, CreditTransaction.amount < 0)
    if site_id is not None:
        q = q.join(AutomationRun, AutomationRun.id == CreditTransaction.run_id).where(AutomationRun.site_id == site_id)
    return db.session.execute(q).scalar()


def counter(account_id, site_id=ACCOUNT_SCOPE):
    return db.session.execute(select(func.coalesce(func.sum(MonthlySpend.credits), 0)).where(
        MonthlySpend.account_id == account_id, MonthlySpend.site_id == site_id)).scalar()


def test_account_api_reads_and_sets_the_budget_owner_only(app, client, factory):
    acc, owner = factory.account(credits=5000)
    operator = factory.user(acc, "op@example.com", "operator")
    viewer = factory.user(acc, "view@example.com", "viewer")
    tokens = {u: factory.token(u) for u in (owner, operator, viewer)}
    data = client.get("/api/v1/account/", headers=bearer(tokens[viewer])).get_json()["data"]
    assert data["name"] == "Acme" and data["balance"] == 5000 and data["held"] == 0 and data["available"] == 5000
    assert data["monthly_budget"] is None and data["spent_this_month"] == 0 and data["budget_left"] is None
    assert data["limits"]["effective_max_keywords_per_site"] == app.config["MAX_KEYWORDS_PER_SITE"]
    assert data["limits"]["max_active_runs"] is None and data["limits"]["weight"] == 1.0
    for user in (operator, viewer):
        r = client.patch("/api/v1/account/", json={"monthly_budget": 10}, headers=bearer(tokens[user]))
        assert r.status_code == 403, r.get_json()
    for bad in (-1, "ten", 1.5, True, 2**31):
        r = client.patch("/api/v1/account/", json={"monthly_budget": bad}, headers=bearer(tokens[owner]))
        assert r.status_code == 400 and "monthly_budget" in r.get_json()["errors"], (bad, r.get_json())
    r = client.patch("/api/v1/account/", json={"monthly_budget": 1000, "credits": 9}, headers=bearer(tokens[owner]))
    assert r.status_code == 400 and set(r.get_json()["errors"]) == {"credits"}
    assert db.session.get(Account, acc.id).monthly_budget is None  # nothing half-applied
    r = client.patch("/api/v1/account/", json={"monthly_budget": 1000}, headers=bearer(tokens[owner]))
    assert r.status_code == 200 and r.get_json()["data"]["monthly_budget"] == 1000
    assert r.get_json()["data"]["budget_left"] == 1000
    r = client.patch("/api/v1/account/", json={"monthly_budget": None}, headers=bearer(tokens[owner]))
    assert r.get_json()["data"]["monthly_budget"] is None
    # The site's budget through PATCH /sites/<id>/; operators may not, other accounts' sites are 404.
    site = factory.site(acc)
    r = client.patch(f"/api/v1/sites/{site.id}/", json={"monthly_budget": 300}, headers=bearer(tokens[operator]))
    assert r.status_code == 403
    r = client.patch(f"/api/v1/sites/{site.id}/", json={"monthly_budget": "x"}, headers=bearer(tokens[owner]))
    assert r.status_code == 400 and "monthly_budget" in r.get_json()["errors"]
    r = client.patch(f"/api/v1/sites/{site.id}/", json={"monthly_budget": 300}, headers=bearer(tokens[owner]))
    assert r.status_code == 200 and r.get_json()["data"]["site"]["monthly_budget"] == 300
    other, other_owner = factory.account(name="Other", credits=10)
    r = client.patch(f"/api/v1/sites/{site.id}/", json={"monthly_budget": 1}, headers=bearer(factory.token(other_owner)))
    assert r.status_code == 404
    assert db.session.get(Site, site.id).monthly_budget == 300


def test_account_page_form_and_site_edit_page(app, client, factory, auth):
    acc, owner = factory.account(credits=500)
    site = factory.site(acc)
    auth.login()
    page = client.get("/account")
    assert page.status_code == 200 and b"Monthly budget" in page.data
    r = client.post("/account", data={"csrf_token": auth.csrf(), "monthly_budget": "-5"})
    assert r.status_code == 400 and b'id="budget-error"' in r.data
    r = client.post("/account", data={"csrf_token": auth.csrf(), "monthly_budget": "250"})
    assert r.status_code == 302 and db.session.get(Account, acc.id).monthly_budget == 250
    r = client.post(f"/sites/{site.id}/edit", data={"csrf_token": auth.csrf(), "name": "Blog", "timezone": "UTC",
                                                   "monthly_budget": "40"})
    assert r.status_code == 302
    db.session.expire_all()
    assert db.session.get(Site, site.id).monthly_budget == 40
    viewer = factory.user(acc, "v@example.com", "viewer")
    auth.logout()
    auth.login(viewer.email)
    assert client.get("/account").status_code == 200
    assert client.post("/account", data={"csrf_token": auth.csrf(), "monthly_budget": "1"}).status_code == 403
    assert db.session.get(Account, acc.id).monthly_budget == 250


def test_start_that_does_not_fit_a_budget_is_refused_naming_it(app, client, factory):
    acc, owner = factory.account(credits=100_000)
    site = factory.site(acc, keywords=12)
    token = factory.token(owner)
    est = client.get(f"/api/v1/automation/estimate/?site_id={site.id}", headers=bearer(token)).get_json()["data"]
    required = est["required_credits"]
    assert sum(s["credits"] for s in est["stages"]) == est["estimated_credits"] and est["budgets"] == []
    assert [s["stage"] for s in est["stages"]] == list(range(1, 8)) and est["stages"][0]["items"] == 12
    client.patch("/api/v1/account/", json={"monthly_budget": required - 1}, headers=bearer(token))
    r = client.post(f"/api/v1/automation/run_now/?site_id={site.id}", headers=bearer(token))
    body = r.get_json()
    assert r.status_code == 400 and "account's monthly budget" in body["error"]
    assert f"{required - 1:,} left" in body["error"] and f"requires {required:,}" in body["error"]
    est = client.get(f"/api/v1/automation/estimate/?site_id={site.id}", headers=bearer(token)).get_json()["data"]
    assert est["within_budgets"] is False and est["budgets"][0]["left"] == required - 1
    # The site's budget applies too, and is named.
    client.patch("/api/v1/account/", json={"monthly_budget": None}, headers=bearer(token))
    client.patch(f"/api/v1/sites/{site.id}/", json={"monthly_budget": 5}, headers=bearer(token))
    r = client.post(f"/api/v1/automation/run_now/?site_id={site.id}", headers=bearer(token))
    assert r.status_code == 400 and "site 'Blog'" in r.get_json()["error"] and "5 left" in r.get_json()["error"]
    assert db.session.execute(select(func.count(AutomationRun.id))).scalar() == 0
    # The site page shows the breakdown and what is left, and why Run now is blocked.
    from conftest import AuthActions
    AuthActions(client).login()
    html = client.get(f"/sites/{site.id}/automation").get_data(as_text=True)
    assert 'id="estimate-stages"' in html and 'id="estimate-budgets"' in html and "monthly budget" in html
    # Raised: it starts.
    client.patch(f"/api/v1/sites/{site.id}/", json={"monthly_budget": required}, headers=bearer(token))
    r = client.post(f"/api/v1/automation/run_now/?site_id={site.id}", headers=bearer(token))
    assert r.status_code == 201, r.get_json()


def test_scheduled_start_over_budget_is_skipped_with_the_reason(app, factory):
    from webapp.automation.scheduled import start_scheduled_run
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, keywords=6)
    acc_row = db.session.get(Account, acc.id)
    acc_row.monthly_budget = 1
    db.session.commit()
    assert start_scheduled_run(site.id, "2026-12-01T02:00:00") == "skipped"
    skip = db.session.execute(select(RunEvent).where(RunEvent.action == "scheduled_skip")).scalar_one()
    assert "monthly budget" in skip.reason and "1 left" in skip.reason


def test_two_racing_starts_near_the_cap_start_one_run(app, factory):
    acc, _ = factory.account(credits=1_000_000)
    site_ids = [factory.site(acc, name=f"Site {i}", keywords=12).id for i in range(2)]
    acc_id = acc.id
    need = AutomationService(acc_id).estimate(site_ids[0])["required_credits"]
    db.session.get(Account, acc_id).monthly_budget = need + need // 2  # room for one run, not two
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
    assert "monthly budget" in refused[0] and f"held by active runs {need:,}" in refused[0]


def test_run_reaching_a_budget_pauses_and_resumes_after_the_raise(app, app_env, client, factory):
    app.config["WEBHOOK_ALLOW_PRIVATE"] = True
    acc, owner = factory.account(credits=100_000)
    site = factory.site(acc, keywords=12)
    factory.fast_config(site)
    sid, acc_id = site.id, acc.id
    token = factory.token(owner)
    rec = Receiver()
    try:
        hook = add_hook(client, token, sid, rec.url, ["run.paused", "budget.threshold"])
        run_id = client.post(f"/api/v1/automation/run_now/?site_id={sid}", headers=bearer(token)).get_json()["data"]["run_id"]
        # Lowered below the run's needs once it started: it goes on until the budget is used up.
        # (12 keywords: clustering costs 12, two clusters' ideas 2 each, then 5 per article.)
        r = client.patch(f"/api/v1/sites/{sid}/", json={"monthly_budget": 20}, headers=bearer(token))
        assert r.status_code == 200
        worker = start_worker(app_env, extra_env={"WEBHOOK_ALLOW_PRIVATE": "1"})
        try:
            run = wait_for(lambda: (lambda r: r if r.status == "paused" else None)(fresh_run(run_id)), timeout=90,
                           message="the budget pause")
            assert "budget" in run.pause_reason and run.pause_reason.startswith("site")
            # The answers that arrived are kept and charged (the provider billed them): the
            # budget goes over by at most the calls in flight (an article is 5, at most 4).
            assert 20 < run.total_credits_used <= 20 + 5 * 4
            paused_used = run.total_credits_used
            db.session.expire_all()
            assert counter(acc_id, sid) == ledger_debits(acc_id, sid) == run.total_credits_used
            assert counter(acc_id) == ledger_debits(acc_id)
            ev = db.session.execute(select(RunEvent).where(RunEvent.run_id == run_id, RunEvent.action == "pause")).scalar_one()
            assert ev.actor == "system" and "budget" in ev.reason
            paused = wait_for(lambda: events_of(rec, "run.paused"), timeout=60, message="the run.paused webhook")
            assert "budget" in json.loads(paused[0]["body"])["run"]["pause_reason"]
            # Still over: resume is refused, naming the budget.
            r = client.post(f"/api/v1/automation/resume/?run_id={run_id}", headers=bearer(token))
            assert r.status_code == 400 and "budget" in r.get_json()["error"]
            # Raised (or removed): the run resumes by itself and completes.
            r = client.patch(f"/api/v1/sites/{sid}/", json={"monthly_budget": None}, headers=bearer(token))
            assert r.status_code == 200
            assert fresh_run(run_id).status in ("running", "completed")
            done = wait_for(lambda: (lambda r: r if r.status == "completed" else None)(fresh_run(run_id)), timeout=120,
                            message="the resumed run to complete")
            assert done.total_credits_used > 20
            wait_for(lambda: len(events_of(rec, "budget.threshold")) >= 2, timeout=60, message="the threshold webhooks")
        finally:
            stop_process(worker)
        events = sorted((verify(c, hook["secret"]) for c in rec.calls
                         if json.loads(c["body"])["event"] == "budget.threshold"), key=lambda d: d["threshold"])
        assert [(e["threshold"], e["scope"], e["budget"], e["site_id"]) for e in events] == [
            (80, "site", 20, sid), (100, "site", 20, sid)]
        assert 16 <= events[0]["spent"] <= 20 and 20 <= events[1]["spent"] <= paused_used
        db.session.expire_all()
        assert counter(acc_id, sid) == ledger_debits(acc_id, sid) and counter(acc_id) == ledger_debits(acc_id)
    finally:
        rec.close()


def test_threshold_alerts_go_out_once_per_threshold_and_month(app, client, factory):
    app.config["WEBHOOK_ALLOW_PRIVATE"] = True
    acc, owner = factory.account(credits=100_000)
    site = factory.site(acc, keywords=12)
    factory.fast_config(site)
    sid = site.id
    token = factory.token(owner)
    rec = Receiver()
    try:
        hook = add_hook(client, token, sid, rec.url, ["budget.threshold"])
        run_id = client.post(f"/api/v1/automation/run_now/?site_id={sid}", headers=bearer(token)).get_json()["data"]["run_id"]
        drain(app)
        used = fresh_run(run_id).total_credits_used
        assert fresh_run(run_id).status == "completed" and used > 10
        # A budget set below what was spent: both thresholds are reached at once, announced once.
        for value in (used, used - 1, used // 2):
            r = client.patch("/api/v1/account/", json={"monthly_budget": value}, headers=bearer(token))
            assert r.status_code == 200
        drain(app)
        wait_for(lambda: len(rec.calls) >= 2, timeout=30, message="two deliveries")
        drain(app)
        bodies = sorted((verify(c, hook["secret"]) for c in rec.calls), key=lambda d: d["threshold"])
        assert [(b["threshold"], b["scope"], b["budget"], b["spent"]) for b in bodies] == [
            (80, "account", used, used), (100, "account", used, used)]
        assert db.session.execute(select(func.count(BudgetAlert.id))).scalar() == 2
        assert db.session.execute(select(func.count(WebhookDelivery.id))).scalar() == 2
        # The dispatch job run again (a retried job) creates nothing more.
        from webapp.notify.budget_alerts import dispatch_alert
        for alert_id in db.session.execute(select(BudgetAlert.id)).scalars().all():
            dispatch_alert(alert_id)
        assert db.session.execute(select(func.count(WebhookDelivery.id))).scalar() == 2
        # Webhooks can subscribe to the event; unknown events are still refused.
        r = client.post(f"/api/v1/sites/{sid}/webhooks/", json={"url": rec.url, "events": ["budget.nope"]},
                        headers=bearer(token))
        assert r.status_code == 400 and "events" in r.get_json()["errors"]
    finally:
        rec.close()


def test_owner_opted_in_gets_the_budget_mail(app, client, factory):
    from webapp.models import MailDelivery
    from webapp.notify.mail import set_preferences
    app.config.update(SMTP_URL="smtp://127.0.0.1:1", MAIL_FROM="noreply@example.com")
    acc, owner = factory.account(credits=100_000)
    operator = factory.user(acc, "op@example.com", "operator")
    site = factory.site(acc, keywords=6)
    factory.fast_config(site)
    set_preferences(owner, ["budget.threshold"])
    set_preferences(operator, ["budget.threshold"])
    owner_email = owner.email
    token = factory.token(owner)
    AutomationService(acc.id).start(site.id)
    drain(app)
    client.patch("/api/v1/account/", json={"monthly_budget": 1}, headers=bearer(token))
    from webapp.notify.budget_alerts import _dispatch
    for alert_id in db.session.execute(select(BudgetAlert.id)).scalars().all():
        _dispatch(alert_id)
    mails = db.session.execute(select(MailDelivery)).scalars().all()
    assert {m.to_addr for m in mails} == {owner_email} and len(mails) == 2
    assert any("100 %" in m.subject for m in mails) and all("budget" in m.subject for m in mails)


def _ai_rows(run_id):
    from webapp.models import AITaskLog
    n = db.session.execute(select(func.count()).select_from(AITaskLog).where(AITaskLog.run_id == run_id)).scalar()
    debits = db.session.execute(select(func.count()).select_from(CreditTransaction).where(
        CreditTransaction.run_id == run_id, CreditTransaction.amount < 0)).scalar()
    return n, debits


def _budget_run(app, factory, stub, budget=20):
    acc, owner = factory.account(credits=100_000)
    site = factory.site(acc, keywords=12)
    factory.fast_config(site)
    run_id = AutomationService(acc.id, actor="user:t").start(site.id).id
    s = db.session.get(Site, site.id)
    s.monthly_budget = budget  # lowered below the run's needs once it started
    db.session.commit()
    return acc.id, site.id, run_id


def test_an_answer_charged_past_the_budget_is_kept_not_asked_again(app, factory, stub_ai):
    """Kills: the charge refused by a monthly budget rolling back an answer the provider
    already billed (asked again on resume: paid twice). Every answer of the stub is one AI
    log row and one ledger debit, at the pause and after the resume."""
    from webapp.account import set_budget
    acc_id, sid, run_id = _budget_run(app, factory, stub_ai)
    drain(app)
    run = fresh_run(run_id)
    assert run.status == "paused" and run.pause_reason.startswith("site"), run.pause_reason
    assert len(stub_ai.calls) == _ai_rows(run_id)[0] == _ai_rows(run_id)[1], \
        f"stub answers {len(stub_ai.calls)}, AI log rows / debits {_ai_rows(run_id)}"
    assert fresh_run(run_id).total_credits_used > 20  # over by the calls in flight, no more
    set_budget(acc_id, sid, None, "user:t")
    drain(app)
    assert fresh_run(run_id).status == "completed"
    assert len(stub_ai.calls) == _ai_rows(run_id)[0] == _ai_rows(run_id)[1]
    db.session.expire_all()
    assert counter(acc_id, sid) == ledger_debits(acc_id, sid) == fresh_run(run_id).total_credits_used


def test_a_budget_raised_before_the_pause_commits_still_resumes_the_run(app, factory, stub_ai):
    """Kills: the owner's raise landing between the charge that reached the budget and the
    pause's commit (the raise finds the run still running and resumes nothing; the run then
    sits paused with room in its budget). The raise is made from the 100 % alert's listener,
    which runs once the item that reached the budget committed, before the pause."""
    from webapp.account import set_budget
    from webapp.automation import spend
    acc_id, sid, run_id = _budget_run(app, factory, stub_ai)
    raised = []

    def raise_budget(alert_ids):
        if raised:
            return

        def owner():
            with app.app_context():
                hundred = db.session.execute(select(func.count()).select_from(BudgetAlert).where(
                    BudgetAlert.id.in_(alert_ids), BudgetAlert.threshold == 100)).scalar()
                if hundred and fresh_run(run_id).status == "running":
                    set_budget(acc_id, sid, None, "user:t")
                    raised.append(True)
                db.session.remove()
        t = threading.Thread(target=owner)
        t.start()
        t.join(30)

    spend.on_alert(raise_budget)
    try:
        drain(app)
    finally:
        spend._listeners.remove(raise_budget)
    assert raised, "the budget was never raised while the run was running"
    run = fresh_run(run_id)
    assert run.status in ("running", "completed"), (run.status, run.pause_reason)
    drain(app)
    assert fresh_run(run_id).status == "completed"
    assert len(stub_ai.calls) == _ai_rows(run_id)[0] == _ai_rows(run_id)[1]
