"""Run insights over the API: stage durations, active/paused time, the ETA, failed items and
`retry_failed` (with AI_LOCAL_FAIL_EVERY making items fail on purpose) — real DB, Redis, RQ."""
import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from webapp.ai import ItemError
from webapp.ai.local import LocalProvider
from webapp.automation import insights
from webapp.config import load_config
from webapp.extensions import db
from webapp.models import AutomationRun, Cluster, Keyword, RunEvent, RunItemFailure
from webapp.models.base import utcnow

from conftest import drain

A = "/api/v1/automation"


@pytest.fixture
def api(client, factory):
    acc, user = factory.account(credits=100_000)
    site = factory.site(acc, keywords=24)
    factory.fast_config(site)
    token = factory.token(user)

    class Api:
        site_id, account_id = site.id, acc.id
        headers = {"Authorization": f"Bearer {token}"}

        def get(self, path):
            return client.get(path, headers=self.headers)

        def post(self, path, **kw):
            return client.post(path, headers=self.headers, **kw)

    return Api()


def data(r, status=200):
    assert r.status_code == status, (r.status_code, r.get_data(as_text=True))
    assert r.json["success"] is True
    return r.json["data"]


def err(r, status, text):
    assert r.status_code == status, (r.status_code, r.get_data(as_text=True))
    assert r.json["success"] is False and text in r.json["error"], r.json["error"]


def shift_run(run_id, seconds):
    """Move a run's recorded times `seconds` into the past (as if it had started earlier)."""
    run = db.session.get(AutomationRun, run_id)
    d = timedelta(seconds=seconds)
    values = {c: getattr(run, c) - d for c in ("started_at", "paused_at", "resumed_at", "heartbeat_at")
              if getattr(run, c)}
    for n in range(1, 8):
        r = run.stage_result(n)
        if r:
            r = dict(r)
            for k in ("started_at", "finished_at"):
                if r.get(k):
                    r[k] = (insights.parse_time(r[k]) - d).isoformat() + "Z"
            values[f"stage_{n}_result"] = r
    db.session.execute(update(AutomationRun).where(AutomationRun.id == run_id).values(**values))
    for e in db.session.execute(select(RunEvent).where(RunEvent.run_id == run_id)).scalars():
        e.created_at = e.created_at - d
    db.session.commit()


def test_active_and_paused_seconds_and_stage_durations(app, api):
    run_id = data(api.post(f"{A}/run_now/?site_id={api.site_id}"), 201)["run_id"]
    drain(app, max_jobs=1)  # stage 1's first batch
    data(api.post(f"{A}/pause/?run_id={run_id}"))
    shift_run(run_id, 100)  # started 100 s ago, paused (by the user) ~100 s ago
    run = data(api.get(f"{A}/current_run/?site_id={api.site_id}"))["run"]
    assert run["status"] == "paused" and run["eta_seconds"] is None
    assert 99 <= run["paused_seconds"] <= 120 and run["active_seconds"] < 5, run
    assert run["stage_1_result"]["duration_seconds"] < 5  # the pause is not the stage's working time
    data(api.post(f"{A}/resume/?run_id={run_id}"))
    drain(app)
    d = data(api.get(f"{A}/run/?run_id={run_id}"))["run"]
    assert d["status"] == "completed"
    wall = (insights.parse_time(d["completed_at"]) - insights.parse_time(d["started_at"])).total_seconds()
    assert abs(d["active_seconds"] + d["paused_seconds"] - wall) < 0.2
    assert 99 <= d["paused_seconds"] <= 120 and d["eta_seconds"] is None
    for n in range(1, 8):
        r = d[f"stage_{n}_result"]
        assert r["duration_seconds"] is not None and 0 <= r["duration_seconds"] <= d["active_seconds"] + 0.2, (n, r)
    hist = data(api.get(f"{A}/history/?site_id={api.site_id}"))["runs"]
    assert hist[0]["run_id"] == run_id and hist[0]["paused_seconds"] == d["paused_seconds"]
    assert hist[0]["active_seconds"] == d["active_seconds"]


def test_automatic_pause_is_recorded_and_counted(app, api):
    """The worker's own pause (credits ran out) counts as paused time like a user's."""
    from webapp.models import Account
    run_id = data(api.post(f"{A}/run_now/?site_id={api.site_id}"), 201)["run_id"]
    db.session.execute(update(Account).where(Account.id == api.account_id).values(credits=0))
    db.session.commit()
    drain(app)
    run = data(api.get(f"{A}/run/?run_id={run_id}"))["run"]
    assert run["status"] == "paused" and run["pause_reason"] == "insufficient credits"
    assert [(e["action"], e["actor"]) for e in run["events"]][-1] == ("pause", "system")
    shift_run(run_id, 50)
    run = data(api.get(f"{A}/run/?run_id={run_id}"))["run"]
    assert run["paused_seconds"] >= 49


def test_eta_null_until_known_then_from_observed_rate(app, api):
    run_id = data(api.post(f"{A}/run_now/?site_id={api.site_id}"), 201)["run_id"]
    run = data(api.get(f"{A}/current_run/?site_id={api.site_id}"))["run"]
    assert run["eta_seconds"] is None and run["active_seconds"] >= 0 and run["paused_seconds"] == 0
    # Stage 1 in batches of 8, one batch per job (ai_concurrency 1, no job slice): after one
    # job, 8 of 24 keywords are done.
    app.config["JOB_SLICE_SECONDS"] = 0
    db.session.execute(update(db.metadata.tables["automation_config"]).values(stage_1_batch_size=8,
                                                                                ai_concurrency=1))
    db.session.commit()
    drain(app, max_jobs=1)
    run = data(api.get(f"{A}/current_run/?site_id={api.site_id}"))["run"]
    assert run["stage_1_result"]["items_processed"] == 8
    assert isinstance(run["eta_seconds"], int) and run["eta_seconds"] >= 0
    # As if those 8 keywords had taken 80 s: 10 s per keyword, 16 left in stage 1 alone.
    shift_run(run_id, 80)
    d = db.session.get(AutomationRun, run_id).stage_1_result
    d = {**d, "started_at": (utcnow() - timedelta(seconds=80)).isoformat() + "Z"}
    db.session.execute(update(AutomationRun).where(AutomationRun.id == run_id).values(stage_1_result=d))
    db.session.commit()
    run = data(api.get(f"{A}/current_run/?site_id={api.site_id}"))["run"]
    assert run["stage_1_result"]["duration_seconds"] >= 79
    # 16 keywords x 10 s, plus the later stages' projected items (at least as many again).
    assert 160 <= run["eta_seconds"] < 100_000, run["eta_seconds"]
    drain(app)
    assert data(api.get(f"{A}/run/?run_id={run_id}"))["run"]["eta_seconds"] is None


def test_fail_every_is_deterministic_and_configured():
    p = LocalProvider(fail_every=3)
    outcomes = []
    for _ in range(7):
        try:
            p.generate_image_prompts("t", "## a\n")
            outcomes.append("ok")
        except ItemError as e:
            outcomes.append("fail")
            assert "AI_LOCAL_FAIL_EVERY=3" in str(e)
    assert outcomes == ["ok", "ok", "fail", "ok", "ok", "fail", "ok"]
    assert load_config("/tmp", {"SECRET_KEY": "x", "AI_LOCAL_FAIL_EVERY": "4"})["AI_LOCAL_FAIL_EVERY"] == 4
    assert load_config("/tmp", {"SECRET_KEY": "x"})["AI_LOCAL_FAIL_EVERY"] is None
    for bad in ("0", "-2", "x"):
        with pytest.raises(SystemExit, match="AI_LOCAL_FAIL_EVERY"):
            load_config("/tmp", {"SECRET_KEY": "x", "AI_LOCAL_FAIL_EVERY": bad})


def failures(run_id):
    return db.session.execute(select(RunItemFailure.stage, RunItemFailure.item_id)
                              .where(RunItemFailure.run_id == run_id)).all()


def test_retry_failed_processes_exactly_the_failed_items(app, api, factory):
    app.config.update(AI_LOCAL_FAIL_EVERY=3, ITEM_MAX_ATTEMPTS=1)
    first = data(api.post(f"{A}/run_now/?site_id={api.site_id}"), 201)["run_id"]
    drain(app)
    run = data(api.get(f"{A}/run/?run_id={first}"))["run"]
    assert run["status"] == "completed" and run["failed_items_count"] > 0
    failed = failures(first)
    assert len(failed) == run["failed_items_count"]
    page = data(api.get(f"{A}/failed_items/?run_id={first}&limit=2"))
    assert page["total"] == len(failed) and len(page["items"]) == 2
    item = page["items"][0]
    assert item["attempts"] == 1 and "AI_LOCAL_FAIL_EVERY=3" in item["reason"] and item["label"] != "(deleted)"
    assert item["stage_name"] and item["item_type"]
    # New keywords arrive after the failed run: a retry must leave them alone.
    from webapp.models import Site
    from webapp.planner import import_rows
    import_rows(db.session.get(Site, api.site_id), [{"keyword": "brand new topic one"}, {"keyword": "brand new topic two"}])
    db.session.commit()
    app.config.update(AI_LOCAL_FAIL_EVERY=None)
    started = data(api.post(f"{A}/retry_failed/?run_id={first}"), 201)
    assert started["status"] == "running"
    retry_id = started["run_id"]
    err(api.post(f"{A}/retry_failed/?run_id={first}"), 400, "already active")
    drain(app)
    retry = data(api.get(f"{A}/run/?run_id={retry_id}"))["run"]
    assert retry["status"] == "completed" and retry["trigger_type"] == "retry"
    assert retry["retry_of_run_id"] == first and retry["failed_items_count"] == 0
    # Every failed item was processed by the retry run ...
    from webapp.automation.stages import STAGES
    for stage, item_id in failed:
        s = STAGES[stage]
        still = db.session.execute(s.pending(api.site_id).where(s.model.id == item_id)).scalar_one_or_none()
        assert still is None, (stage, item_id)
    assert retry["stage_3_result"]["items_processed"] > 0  # the failed cluster's new ideas were carried on
    first_stage = min(st for st, _ in failed)
    assert retry[f"stage_{first_stage}_result"]["items_processed"] == sum(1 for st, _ in failed if st == first_stage)
    # ... and nothing else: the new keywords are still waiting.
    new_left = db.session.execute(select(func.count()).select_from(Keyword).where(
        Keyword.site_id == api.site_id, Keyword.keyword.like("brand new topic%"), Keyword.cluster_id.is_(None))).scalar()
    assert new_left == 2
    err(api.post(f"{A}/retry_failed/?run_id={retry_id}"), 400, "no failed items")


def test_retry_failed_errors_and_tenancy(app, api, factory, client):
    err(api.post(f"{A}/retry_failed/"), 400, "'run_id' is required")
    err(api.post(f"{A}/retry_failed/?run_id=999999"), 404, "not found")
    run_id = data(api.post(f"{A}/run_now/?site_id={api.site_id}"), 201)["run_id"]
    err(api.post(f"{A}/retry_failed/?run_id={run_id}"), 400, "already active")
    drain(app)
    err(api.post(f"{A}/retry_failed/?run_id={run_id}"), 400, "no failed items")
    # Another account's run is a 404, even with failures.
    acc2, user2 = factory.account(name="Other", credits=100_000)
    site2 = factory.site(acc2, keywords=6)
    factory.fast_config(site2)
    acc2_id, site2_id = acc2.id, site2.id
    from webapp.automation.service import AutomationService
    other = AutomationService(acc2_id).start(site2_id).id
    drain(app)
    db.session.add(RunItemFailure(account_id=acc2_id, site_id=site2_id, run_id=other, stage=1, item_id=1,
                                  reason="x", attempts=3))
    db.session.commit()
    err(api.post(f"{A}/retry_failed/?run_id={other}"), 404, "not found")
    err(api.get(f"{A}/failed_items/?run_id={other}"), 404, "not found")
    assert db.session.execute(select(func.count()).select_from(AutomationRun)).scalar() == 2


def test_retry_of_already_processed_failures_is_refused(app, api):
    """Failed items picked up meanwhile by a normal run: nothing left to retry, no run created."""
    app.config.update(AI_LOCAL_FAIL_EVERY=3, ITEM_MAX_ATTEMPTS=1)
    first = data(api.post(f"{A}/run_now/?site_id={api.site_id}"), 201)["run_id"]
    drain(app)
    assert failures(first)
    app.config.update(AI_LOCAL_FAIL_EVERY=None)
    data(api.post(f"{A}/run_now/?site_id={api.site_id}"), 201)
    drain(app)
    err(api.post(f"{A}/retry_failed/?run_id={first}"), 400, "Nothing to retry")
    assert db.session.execute(select(func.count()).select_from(Cluster).where(Cluster.site_id == api.site_id)).scalar()


def test_timeline_draws_stages_pauses_and_events():
    """The SVG on its own: a completed, a skipped and a running stage, a pause, events."""
    from types import SimpleNamespace
    t0 = utcnow() - timedelta(seconds=100)

    def at(s):
        return (t0 + timedelta(seconds=s)).isoformat() + "Z"
    run = AutomationRun(id=7, status="running", started_at=t0, current_stage=3,
                        stage_1_result={"status": "completed", "started_at": at(0), "finished_at": at(30),
                                        "items_processed": 10, "items_failed": 0},
                        stage_2_result={"status": "skipped", "started_at": at(30), "finished_at": at(31),
                                        "items_processed": 0, "items_failed": 0},
                        stage_3_result={"status": "running", "started_at": at(31), "finished_at": None,
                                        "items_processed": 2, "items_failed": 1})
    events = [SimpleNamespace(action="start", actor="user:a@b", reason=None, created_at=t0),
              SimpleNamespace(action="pause", actor="system", reason="insufficient credits",
                              created_at=t0 + timedelta(seconds=40)),
              SimpleNamespace(action="resume", actor="user:a@b", reason=None, created_at=t0 + timedelta(seconds=60))]
    intervals = insights.pause_intervals(run, events)
    assert [(round((a - t0).total_seconds()), round((b - t0).total_seconds())) for a, b in intervals] == [(40, 60)]
    results = insights.stage_results(run, intervals)
    assert results[1]["duration_seconds"] == 30 and 48 <= results[3]["duration_seconds"] <= 51  # 69 s - 20 s paused
    svg = str(insights.timeline_svg(run, results, intervals, events, {1: "One", 2: "Two", 3: "Three"}))
    assert svg.count('class="tl-bar tl-completed"') == 1 and svg.count('class="tl-bar tl-skipped"') == 1
    assert svg.count('class="tl-bar tl-running"') == 1 and svg.count('class="tl-pause"') == 1
    assert 'class="tl-event tl-event-pause"' in svg and "insufficient credits" in svg
    assert svg.count("not started") == 4 and "style=" not in svg  # no inline style (CSP)
    assert re.search(r'<rect class="tl-pause" x="40\.\d+%"', svg)  # 1% margin + 98% x 40/100
