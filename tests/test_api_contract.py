"""Issue 13's contract rules over the real API: run records that close, history pages and
filters, Idempotency-Key retries, and errors naming every field at fault."""
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from webapp.extensions import db
from webapp.models import Account, AutomationConfig, AutomationRun, RunEvent

from conftest import drain

A = "/api/v1/automation"


@pytest.fixture
def api(client, factory):
    acc, user = factory.account(credits=100_000)
    site = factory.site(acc, keywords=12)
    factory.fast_config(site, stage_1_batch_size=2)
    token = factory.token(user)

    class Api:
        site_id, account_id = site.id, acc.id
        headers = {"Authorization": f"Bearer {token}"}

        def call(self, method, path, headers=None, **kw):
            return getattr(client, method)(path, headers={**self.headers, **(headers or {})}, **kw)

        def get(self, path, **kw):
            return self.call("get", path, **kw)

        def post(self, path, **kw):
            return self.call("post", path, **kw)

        def put(self, path, **kw):
            return self.call("put", path, **kw)

    return Api()


def data(r, status=200):
    assert r.status_code == status, (r.status_code, r.get_data(as_text=True))
    return r.json["data"]


def fields(r, status=400):
    assert r.status_code == status, (r.status_code, r.get_data(as_text=True))
    body = r.json
    assert body["success"] is False and isinstance(body["error"], str)
    for name in body["errors"]:  # the message names every field it lists
        assert f"'{name}'" in body["error"] or name == "body", body
    return body["errors"]


def run_row(run_id):
    db.session.expire_all()
    return db.session.get(AutomationRun, run_id)


# -- run records close ------------------------------------------------------------------------
def test_cancel_mid_stage_closes_the_run_and_its_stage(app, api):
    app.config["JOB_SLICE_SECONDS"] = 0  # one batch per job, so one job leaves stage 1 mid-way
    run_id = data(api.post(f"{A}/run_now/?site_id={api.site_id}"), 201)["run_id"]
    drain(app, max_jobs=1)  # stage 1 started, one batch of two keywords done
    assert run_row(run_id).stage_1_result["status"] == "running"
    data(api.post(f"{A}/pause/?run_id={run_id}", json={"reason": "lunch"}))
    assert run_row(run_id).pause_reason == "lunch"
    data(api.post(f"{A}/resume/?run_id={run_id}"))
    assert run_row(run_id).pause_reason is None  # cleared on resume
    data(api.post(f"{A}/pause/?run_id={run_id}"))
    assert run_row(run_id).pause_reason == "paused by user"
    data(api.post(f"{A}/cancel/?run_id={run_id}", json={"reason": "wrong site"}))
    drain(app)  # the queued job finds the run cancelled and leaves it alone
    run = data(api.get(f"{A}/run/?run_id={run_id}"))["run"]
    assert run["status"] == "cancelled" and run["pause_reason"] is None
    assert run["ended_at"] and run["ended_at"] == run["cancelled_at"]
    stage = run["stage_1_result"]
    assert stage["status"] == "cancelled" and stage["finished_at"] == run["ended_at"]
    assert 0 < stage["items_processed"] < stage["items_total"]
    assert run["stage_2_result"] is None
    assert [e["action"] for e in run["events"]] == ["start", "pause", "resume", "pause", "cancel"]
    hist = data(api.get(f"{A}/history/?site_id={api.site_id}"))["runs"]
    assert hist[0]["run_id"] == run_id and hist[0]["ended_at"] == run["ended_at"]


def test_completed_run_has_ended_at(app, api):
    run_id = data(api.post(f"{A}/run_now/?site_id={api.site_id}"), 201)["run_id"]
    drain(app)
    run = data(api.get(f"{A}/run/?run_id={run_id}"))["run"]
    assert run["status"] == "completed" and run["ended_at"] == run["completed_at"] is not None
    assert all(run[f"stage_{n}_result"]["status"] in ("completed", "skipped") for n in range(1, 8))


def test_automatic_pause_is_a_system_event_committed_with_it(app, api):
    run_id = data(api.post(f"{A}/run_now/?site_id={api.site_id}"), 201)["run_id"]
    db.session.execute(update(Account).where(Account.id == api.account_id).values(credits=0))
    db.session.commit()
    drain(app)
    run = run_row(run_id)
    assert run.status == "paused" and run.pause_reason == "insufficient credits"
    events = db.session.execute(select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id)).scalars().all()
    pause = events[-1]
    assert (pause.action, pause.actor, pause.reason) == ("pause", "system", "insufficient credits")
    # same transaction: the event is not older than the pause it records
    assert abs((pause.created_at - run.paused_at).total_seconds()) < 5
    db.session.execute(update(Account).where(Account.id == api.account_id).values(credits=100_000))
    db.session.commit()
    data(api.post(f"{A}/resume/?run_id={run_id}"))
    assert run_row(run_id).pause_reason is None and run_row(run_id).error_message is None


def test_failed_run_closes_its_stage(app, api):
    from webapp.automation import jobs
    from webapp.automation.recovery import check_stale_runs
    from webapp.redis_conn import get_redis
    run_id = data(api.post(f"{A}/run_now/?site_id={api.site_id}"), 201)["run_id"]
    drain(app, max_jobs=1)
    get_redis().delete(jobs.job_key(run_id))  # its worker is gone and nothing is queued
    past = run_row(run_id).heartbeat_at - timedelta(hours=1)
    db.session.execute(update(AutomationRun).where(AutomationRun.id == run_id).values(
        heartbeat_at=past, recovery_attempts=app.config["MAX_RECOVERY_ATTEMPTS"]))
    db.session.commit()
    assert (run_id, "failed") in check_stale_runs()
    run = data(api.get(f"{A}/run/?run_id={run_id}"))["run"]
    assert run["status"] == "failed" and run["ended_at"]
    assert run["stage_1_result"]["status"] == "failed" and run["stage_1_result"]["finished_at"] == run["ended_at"]
    assert run["events"][-1]["action"] == "fail" and run["events"][-1]["actor"] == "system"


# -- history -------------------------------------------------------------------------------------
def test_history_pages_and_filters(app, api):
    from webapp.automation.service import AutomationService
    svc = AutomationService(api.account_id, actor="test")
    made = []
    for trigger in ("manual", "api", "api", "scheduled", "api"):
        run = svc.start(api.site_id, trigger_type=trigger)
        svc.cancel(run.id)
        made.append((run.id, trigger))
    url = f"{A}/history/?site_id={api.site_id}"
    first = data(api.get(url))
    assert first["total"] == 5 and first["limit"] == 20 and first["page"] == 1
    assert [r["run_id"] for r in first["runs"]] == [i for i, _ in reversed(made)]
    page2 = data(api.get(url + "&limit=2&page=2"))
    assert [r["run_id"] for r in page2["runs"]] == [made[2][0], made[1][0]] and page2["total"] == 5
    assert data(api.get(url + "&limit=2&page=9"))["runs"] == []
    only_api = data(api.get(url + "&trigger_type=api"))
    assert only_api["total"] == 3 and {r["trigger_type"] for r in only_api["runs"]} == {"api"}
    assert data(api.get(url + "&status=completed"))["total"] == 0
    assert data(api.get(url + "&status=cancelled&trigger_type=manual"))["total"] == 1
    errors = fields(api.get(url + "&limit=0&page=x&status=done"))
    assert set(errors) == {"limit", "page", "status"}
    assert set(fields(api.get(url + "&limit=101"))) == {"limit"}


# -- idempotent retries ------------------------------------------------------------------------
def test_idempotency_key_replays_the_first_answer(app, api):
    key = {"Idempotency-Key": "start-7f3a"}
    first = api.post(f"{A}/run_now/?site_id={api.site_id}", headers=key, json={"reason": "nightly"})
    run_id = data(first, 201)["run_id"]
    again = api.post(f"{A}/run_now/?site_id={api.site_id}", headers=key, json={"reason": "nightly"})
    assert again.status_code == 201 and again.json == first.json
    assert again.headers["Idempotent-Replayed"] == "true"
    # without the key the retry cannot tell: another run is active
    assert api.post(f"{A}/run_now/?site_id={api.site_id}").status_code == 400
    # the same key for a different request is refused, not replayed
    other = api.post(f"{A}/run_now/?site_id={api.site_id}", headers=key, json={"reason": "other"})
    assert fields(other, 409) == {"Idempotency-Key": "already used for a different request"}
    assert db.session.execute(select(AutomationRun.id).where(AutomationRun.site_id == api.site_id)).scalars().all() == [run_id]

    pause_key = {"Idempotency-Key": "pause-1"}
    p1 = api.post(f"{A}/pause/?run_id={run_id}", headers=pause_key)
    p2 = api.post(f"{A}/pause/?run_id={run_id}", headers=pause_key)
    assert p1.status_code == p2.status_code == 200 and p1.json == p2.json
    assert api.post(f"{A}/pause/?run_id={run_id}").status_code == 400  # a fresh pause: already paused
    pauses = db.session.execute(select(RunEvent).where(RunEvent.run_id == run_id, RunEvent.action == "pause")).all()
    assert len(pauses) == 1
    # an error answer is replayed too (the first resume of a paused run succeeds; keyed cancel twice)
    c1 = api.post(f"{A}/cancel/?run_id={run_id}", headers={"Idempotency-Key": "c"})
    c2 = api.post(f"{A}/cancel/?run_id={run_id}", headers={"Idempotency-Key": "c"})
    assert c1.json == c2.json and c1.json["data"]["status"] == "cancelled"
    bad = api.post(f"{A}/resume/?run_id={run_id}", headers={"Idempotency-Key": "x" * 256})
    assert set(fields(bad)) == {"Idempotency-Key"}


# -- errors name every field ------------------------------------------------------------------
def test_every_bad_field_is_named_and_nothing_changes(api):
    url = f"{A}/update_config/?site_id={api.site_id}"
    before = data(api.get(f"{A}/config/?site_id={api.site_id}"))
    errors = fields(api.put(url, json={"frequency": "hourly", "stage_1_batch_size": 0, "colour": 1,
                                       "is_enabled": None, "within_stage_delay": 9999}))
    assert set(errors) == {"frequency", "stage_1_batch_size", "colour", "is_enabled", "within_stage_delay"}
    assert errors["colour"] == "is not a known field"
    assert data(api.get(f"{A}/config/?site_id={api.site_id}")) == before
    assert set(fields(api.put(f"{A}/update_config/?site_id=abc", json={"frequency": "x"}))) == {"site_id"}
    errors = fields(api.post("/api/v1/sites/", json={"timezone": {}, "domain": 5}))
    assert set(errors) == {"name", "timezone", "domain"} and errors["name"] == "is required"


def test_update_config_checks_the_merged_result_but_blames_what_was_sent(api):
    url = f"{A}/update_config/?site_id={api.site_id}"
    data(api.put(url, json={"frequency": "monthly", "scheduled_day": 31}))
    errors = fields(api.put(url, json={"frequency": "weekly"}))
    assert list(errors) == ["frequency"] and "scheduled_day" in errors["frequency"]
    assert list(fields(api.put(url, json={"frequency": "weekly", "scheduled_day": 31}))) == ["scheduled_day"]
    cfg = data(api.put(url, json={"frequency": "weekly", "scheduled_day": 2}))
    assert (cfg["frequency"], cfg["scheduled_day"]) == ("weekly", 2)
    assert db.session.execute(select(AutomationConfig.scheduled_day).where(
        AutomationConfig.site_id == api.site_id)).scalar() == 2
