"""The JSON API of SPEC §6: each action's happy path and documented errors, and tenancy."""
import pytest
from sqlalchemy import select

from webapp.extensions import db
from webapp.models import AutomationRun

from conftest import drain

A = "/api/v1/automation"


@pytest.fixture
def api(client, factory):
    acc, user = factory.account(credits=100_000)
    site = factory.site(acc, keywords=12)
    factory.fast_config(site)
    token = factory.token(user)

    class Api:
        site_id, account_id = site.id, acc.id
        headers = {"Authorization": f"Bearer {token}"}

        def get(self, path, **kw):
            return client.get(path, headers=self.headers, **kw)

        def post(self, path, **kw):
            return client.post(path, headers=self.headers, **kw)

        def put(self, path, **kw):
            return client.put(path, headers=self.headers, **kw)

    return Api()


def err(r, status, text=None):
    assert r.status_code == status, (r.status_code, r.get_data(as_text=True))
    assert r.is_json and r.json["success"] is False and isinstance(r.json["error"], str)
    if text:
        assert text in r.json["error"], r.json["error"]


def data(r, status=200):
    assert r.status_code == status, (r.status_code, r.get_data(as_text=True))
    assert r.json["success"] is True
    return r.json["data"]


def test_config_defaults_and_slash_variants(api):
    a = data(api.get(f"{A}/config/?site_id={api.site_id}"))
    b = data(api.get(f"{A}/config?site_id={api.site_id}"))
    assert a == b
    for f in ("site_id", "is_enabled", "frequency", "scheduled_time", "stage_1_batch_size", "stage_6_batch_size",
              "within_stage_delay", "between_stage_delay", "last_run_at", "next_run_at"):
        assert f in a
    assert a["site_id"] == api.site_id and a["frequency"] == "daily" and a["is_enabled"] is False


@pytest.mark.parametrize("q,msg", [("", "'site_id' is required"), ("?site_id=abc", "'site_id' must be an integer"),
                                   ("?site_id=0", "'site_id' must be >= 1")])
def test_missing_or_malformed_site_id(api, q, msg):
    for action in ("config", "current_run", "history", "estimate", "pipeline_overview"):
        err(api.get(f"{A}/{action}/{q}"), 400, msg)


def test_update_config(api):
    body = {"is_enabled": True, "frequency": "weekly", "scheduled_time": "06:30", "stage_4_batch_size": 7,
            "within_stage_delay": 0, "site_id": 999, "last_run_at": "ignored"}
    d = data(api.put(f"{A}/update_config/?site_id={api.site_id}", json=body))
    assert d["frequency"] == "weekly" and d["stage_4_batch_size"] == 7 and d["site_id"] == api.site_id
    assert d["next_run_at"] and len(d["next_runs"]) == 5
    assert data(api.get(f"{A}/config/?site_id={api.site_id}"))["scheduled_time"] == "06:30"


@pytest.mark.parametrize("body,field", [
    ({"frequency": "hourly"}, "'frequency'"), ({"scheduled_time": "25:00"}, "'scheduled_time'"),
    ({"scheduled_time": "6:30"}, "'scheduled_time'"), ({"stage_1_batch_size": 0}, "'stage_1_batch_size'"),
    ({"stage_6_batch_size": 1001}, "'stage_6_batch_size'"), ({"within_stage_delay": -1}, "'within_stage_delay'"),
    ({"between_stage_delay": 3601}, "'between_stage_delay'"), ({"stage_2_batch_size": "5"}, "'stage_2_batch_size'"),
    ({"is_enabled": "yes"}, "'is_enabled'"), ({"colour": "red"}, "'colour' is not a known field"),
    ({"frequency": None}, "'frequency'"),
])
def test_update_config_invalid_names_field_and_changes_nothing(api, body, field):
    before = data(api.get(f"{A}/config/?site_id={api.site_id}"))
    err(api.put(f"{A}/update_config/?site_id={api.site_id}", json={"stage_3_batch_size": 9, **body}), 400, field)
    assert data(api.get(f"{A}/config/?site_id={api.site_id}")) == before  # nothing half-applied


def test_update_config_body_errors(api):
    url = f"{A}/update_config/?site_id={api.site_id}"
    err(api.put(url, data="{not json", content_type="application/json"), 400, "Malformed JSON")
    err(api.put(url, data="a=b", content_type="application/x-www-form-urlencoded"), 415, "application/json")
    err(api.put(url, json=[1, 2]), 400, "object")
    err(api.put(url, data=b'{"x": "' + b"a" * (3 * 1024 * 1024) + b'"}', content_type="application/json"), 413)


def test_wrong_method_is_405_json(api):
    err(api.post(f"{A}/config/?site_id={api.site_id}"), 405)
    err(api.get(f"{A}/run_now/?site_id={api.site_id}"), 405)
    err(api.get("/api/v1/nowhere"), 404)


def test_run_lifecycle_over_api(app, api):
    est = data(api.get(f"{A}/estimate/?site_id={api.site_id}"))
    assert est["sufficient"] is True and est["estimated_credits"] > 0 and est["current_balance"] == 100_000
    assert data(api.get(f"{A}/current_run/?site_id={api.site_id}")) == {"run": None}
    started = data(api.post(f"{A}/run_now/?site_id={api.site_id}"), 201)
    run_id = started["run_id"]
    assert started["status"] == "running"
    err(api.post(f"{A}/run_now/?site_id={api.site_id}"), 400, "already active")
    cur = data(api.get(f"{A}/current_run/?site_id={api.site_id}"))["run"]
    for f in ("run_id", "status", "trigger_type", "current_stage", "started_at", "paused_at", "resumed_at",
              "cancelled_at", "completed_at", "total_credits_used", "stage_1_result", "stage_7_result",
              "error_message"):
        assert f in cur
    assert cur["trigger_type"] == "api"
    err(api.post(f"{A}/resume/?run_id={run_id}"), 400, "cannot be resumed")
    assert data(api.post(f"{A}/pause/?run_id={run_id}", json={"reason": "lunch"})) == {"run_id": run_id, "status": "paused"}
    err(api.post(f"{A}/pause/?run_id={run_id}"), 400, "cannot be paused")
    assert data(api.get(f"{A}/current_processing/?site_id={api.site_id}&run_id={run_id}")) == {"state": None}
    assert data(api.post(f"{A}/resume/?run_id={run_id}"))["status"] == "running"
    drain(app, max_jobs=3)
    state = data(api.get(f"{A}/current_processing/?site_id={api.site_id}&run_id={run_id}"))["state"]
    assert state is not None
    for f in ("stage_number", "stage_name", "total_items", "processed_items", "percentage", "currently_processing",
              "up_next", "remaining_count"):
        assert f in state
    drain(app)
    hist = data(api.get(f"{A}/history/?site_id={api.site_id}"))["runs"]
    assert hist[0]["run_id"] == run_id and hist[0]["status"] == "completed"
    assert set(hist[0]) == {"run_id", "status", "trigger_type", "current_stage", "started_at", "completed_at",
                            "ended_at", "total_credits_used", "active_seconds", "paused_seconds", "interrupted_seconds"}
    for action in ("pause", "resume", "cancel"):
        err(api.post(f"{A}/{action}/?run_id={run_id}"), 400, "completed")
    logs = data(api.get(f"{A}/logs/?run_id={run_id}&lines=3"))
    assert logs["run_id"] == run_id and len(logs["lines"]) == 3 and "Run completed" in logs["lines"][-1]
    everything = data(api.get(f"{A}/logs/?run_id={run_id}&lines=5000"))["lines"]
    default = data(api.get(f"{A}/logs/?run_id={run_id}"))["lines"]
    assert default == everything[-100:] and everything[-3:] == logs["lines"]
    detail = data(api.get(f"{A}/run/?run_id={run_id}"))["run"]
    assert [e["action"] for e in detail["events"]] == ["start", "pause", "resume"]
    assert detail["events"][1]["reason"] == "lunch"
    overview = data(api.get(f"{A}/pipeline_overview/?site_id={api.site_id}"))["stages"]
    assert [s["number"] for s in overview] == list(range(1, 8)) and all(s["pending"] == 0 for s in overview)
    err(api.post(f"{A}/run_now/?site_id={api.site_id}"), 400, "Nothing to process")


@pytest.mark.parametrize("q,msg", [("", "'lines'"), ("&lines=0", "'lines' must be >= 1"), ("&lines=5001", "'lines' must be <= 5000"),
                                   ("&lines=x", "must be an integer")])
def test_logs_lines_validation(api, q, msg):
    if not q:
        err(api.get(f"{A}/logs/"), 400, "'run_id' is required")
        return
    err(api.get(f"{A}/logs/?run_id=1{q}"), 400, msg)


def test_unknown_run_is_404(api):
    for path in ("logs/?run_id=999", "run/?run_id=999"):
        err(api.get(f"{A}/{path}"), 404, "not found")
    for action in ("pause", "resume", "cancel"):
        err(api.post(f"{A}/{action}/?run_id=999"), 404)
    err(api.get(f"{A}/current_processing/?site_id={api.site_id}&run_id=999"), 404)


def test_insufficient_credits_message(api, factory):
    from webapp.models import Account
    acc = db.session.get(Account, api.account_id)
    acc.credits = 3
    db.session.commit()
    e = api.post(f"{A}/run_now/?site_id={api.site_id}")
    err(e, 400, "Insufficient credits")
    assert "required" in e.json["error"] and "available 3" in e.json["error"]


def test_unexpected_error_is_500_json_with_request_id(app, api, tmp_path, caplog):
    run_id = data(api.post(f"{A}/run_now/?site_id={api.site_id}"), 201)["run_id"]
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    app.config["LOG_DIR"] = str(blocker)  # reading the log now fails with an OS error
    r = api.get(f"{A}/logs/?run_id={run_id}")
    err(r, 500, "request id")
    assert "Traceback" not in r.get_data(as_text=True)
    rid = r.json["error"].split("request id ")[1].rstrip(").")
    assert any(rid in rec.getMessage() for rec in caplog.records)


def test_sites_and_keywords_routes(api):
    d = data(api.post("/api/v1/sites/", json={"name": "Shop", "domain": "shop.io", "timezone": "Europe/Berlin"}), 201)
    sid = d["site"]["id"]
    err(api.post("/api/v1/sites/", json={"name": "Shop"}), 409, "already exists")  # a conflict, not bad input
    err(api.post("/api/v1/sites/", json={"name": "X", "timezone": "Nowhere/City"}), 400, "'timezone'")
    err(api.post("/api/v1/sites/", json={"nom": "X"}), 400, "'nom'")
    assert [s["name"] for s in data(api.get("/api/v1/sites/"))["sites"]] == ["Blog", "Shop"]
    rep = data(api.post(f"/api/v1/planner/keywords/bulk?site_id={sid}", json={"keywords": [
        {"keyword": "red shoes", "volume": 10}, {"keyword": "Red  Shoes"}, {"keyword": " "},
        {"keyword": "x" * 256}, {"keyword": "blue shoes", "difficulty": 101}, {"keyword": "green shoes"}]}), 201)
    assert rep["created"] == 2 and rep["duplicates"] == 1
    assert [(e["row"], e["error"]) for e in rep["errors"]] == [
        (3, "keyword is blank"), (4, "keyword is longer than 255 characters"), (5, "difficulty must be between 0 and 100")]
    csv_body = "keyword,volume\nred shoes,1\npurple shoes,2\n"
    rep = data(api.post(f"/api/v1/planner/keywords/bulk?site_id={sid}", data=csv_body, content_type="text/csv"), 201)
    assert rep["created"] == 1 and rep["duplicates"] == 1
    import io
    rep = data(api.post(f"/api/v1/planner/keywords/bulk?site_id={sid}",
                        data={"file": (io.BytesIO(b"keyword\norange shoes\n"), "k.csv")},
                        content_type="multipart/form-data"), 201)
    assert rep["created"] == 1
    err(api.post(f"/api/v1/planner/keywords/bulk?site_id={sid}", data=b"\xff\xfe\x00bad", content_type="text/csv"), 400)
    page = data(api.get(f"/api/v1/planner/keywords?site_id={sid}&per_page=2"))
    assert page["total"] == 4 and len(page["items"]) == 2 and page["items"][0]["keyword"] == "red shoes"
    err(api.get(f"/api/v1/planner/keywords?site_id={sid}&per_page=500"), 400, "'per_page'")


def test_generated_content_lists_and_detail(app, api, client):
    data(api.post(f"{A}/run_now/?site_id={api.site_id}"), 201)
    drain(app)
    for path in ("planner/clusters", "planner/ideas", "writer/tasks", "writer/content", "writer/images"):
        assert data(api.get(f"/api/v1/{path}/?site_id={api.site_id}"))["total"] > 0, path
    cid = data(api.get(f"/api/v1/writer/content/?site_id={api.site_id}"))["items"][0]["id"]
    art = data(api.get(f"/api/v1/writer/content/{cid}"))["content"]
    assert art["body"].startswith("# ") and len(art["images"]) == 3 and art["status"] == "review"
    r = api.get(art["images"][0]["url"])
    assert r.status_code == 200 and r.data.startswith(b"\x89PNG")


def test_tenancy_matrix(app, api, client, factory):
    """Every route with the other account's site_id / run_id is a 404 like a missing id,
    and nothing of the other account appears in any list."""
    other_acc, other_user = factory.account(name="Other", credits=100_000)
    other_site = factory.site(other_acc, name="Secret", keywords=6)
    factory.fast_config(other_site)
    other_site_id = other_site.id
    from webapp.automation.service import AutomationService
    other_run = AutomationService(other_acc.id).start(other_site_id).id
    drain(app)
    other_content = db.session.execute(select(db.text("id FROM content"))).scalars().first()
    other_image = db.session.execute(select(db.text("id FROM image"))).scalars().first()
    s, r = other_site_id, other_run
    cases = [
        ("get", f"{A}/config/?site_id={s}"), ("put", f"{A}/update_config/?site_id={s}"),
        ("post", f"{A}/run_now/?site_id={s}"), ("get", f"{A}/current_run/?site_id={s}"),
        ("get", f"{A}/history/?site_id={s}"), ("get", f"{A}/logs/?run_id={r}"),
        ("get", f"{A}/estimate/?site_id={s}"), ("get", f"{A}/pipeline_overview/?site_id={s}"),
        ("get", f"{A}/current_processing/?site_id={s}&run_id={r}"),
        ("get", f"{A}/current_processing/?site_id={api.site_id}&run_id={r}"),
        ("post", f"{A}/pause/?run_id={r}"), ("post", f"{A}/resume/?run_id={r}"), ("post", f"{A}/cancel/?run_id={r}"),
        ("get", f"{A}/run/?run_id={r}"), ("post", f"/api/v1/planner/keywords/bulk?site_id={s}"),
        ("get", f"/api/v1/writer/content/{other_content}"),
    ] + [("get", f"/api/v1/{p}/?site_id={s}") for p in (
        "planner/keywords", "planner/clusters", "planner/ideas", "writer/tasks", "writer/content", "writer/images")]
    for method, url in cases:
        kw = {"json": {"keywords": [{"keyword": "x"}]} if "bulk" in url else {"is_enabled": True}} if method in ("put", "post") else {}
        if "/automation/" in url and method == "post":
            kw = {"json": {"reason": "tenancy"}}
        mine = getattr(api, method)(url, **kw)
        missing_url = url.replace(f"site_id={s}", "site_id=99999").replace(f"run_id={r}", "run_id=99999") \
            .replace(f"/{other_content}", "/99999")
        missing = getattr(api, method)(missing_url, **kw)
        assert mine.status_code == 404, (url, mine.status_code)
        assert missing.status_code == 404, url
        assert mine.json["error"].replace(str(s), "N").replace(str(r), "N").replace(str(other_content), "N") == \
            missing.json["error"].replace("99999", "N"), url
    assert api.get(f"/media/images/{other_image}.png").status_code == 404
    assert [x["id"] for x in data(api.get("/api/v1/sites/"))["sites"]] == [api.site_id]
    # The other account's run is untouched.
    assert db.session.get(AutomationRun, other_run).status == "completed"
