"""The pages' one snapshot and its live refresh (/live/...), with a real database, Redis and
RQ jobs: every number on a page comes from the run row, a stage that has not counted its
items shows "starting" (never 100 % of 0/0), unchanged pages answer 204, the run page follows
its run to the end, the log pages backwards through the API."""
import json
import re

import pytest
from sqlalchemy import select

from conftest import csrf_from, drain
from webapp.automation.logger import AutomationLogger
from webapp.automation.service import AutomationService
from webapp.automation.state import build_state, publish_state
from webapp.extensions import db
from webapp.models import AutomationRun
from webapp.redis_conn import get_redis


@pytest.fixture
def logged_in(app, factory, auth):
    acc, user = factory.account(credits=100_000)
    site = factory.site(acc, keywords=6)
    factory.fast_config(site)
    auth.login()
    return {"account_id": acc.id, "site_id": site.id, "csrf": auth.csrf(), "user": user}


def live(client, url, version=""):
    r = client.get(f"{url}?v={version}")
    assert r.status_code in (200, 204), r.status_code
    return r.get_json() if r.status_code == 200 else None


def test_site_refresh_is_one_snapshot_and_204_when_unchanged(app, client, logged_in):
    sid = logged_in["site_id"]
    page = client.get(f"/sites/{sid}/automation").get_data(as_text=True)
    version = re.search(r'data-live-version="([0-9a-f]+)"', page).group(1)
    assert client.get(f"/live/sites/{sid}?v={version}").status_code == 204  # nothing changed
    # A run started elsewhere (the API / another tab) shows up in the next refresh.
    run = AutomationService(logged_in["account_id"], actor="api:x").start(sid)
    body = live(client, f"/live/sites/{sid}", version)
    assert set(body["regions"]) == {"run-panel", "estimate-panel", "overview-panel", "history-panel", "log-meta",
                                    "credit-balance"}
    panel = body["regions"]["run-panel"]
    assert f'data-run-id="{run.id}" data-run-status="running"' in panel and f'id="pause-{run.id}"' in panel
    assert f'data-log-run="{run.id}"' in body["regions"]["log-meta"]
    # Stage 1 has not counted its items yet: "starting", no 100 % anywhere.
    assert "starting" in panel and 'aria-valuenow="100' not in panel
    assert live(client, f"/live/sites/{sid}", body["version"]) is None
    # The run ends (worker): the next refresh has the final state, fresh counts and balance.
    drain(app)
    end = live(client, f"/live/sites/{sid}", body["version"])
    assert "No run is active." in end["regions"]["run-panel"]
    assert f'data-run-id="{run.id}" data-run-status="completed"' in end["regions"]["history-panel"]
    reload = client.get(f"/sites/{sid}/automation").get_data(as_text=True)
    for region in ("overview-panel", "estimate-panel", "credit-balance"):
        assert _strip(end["regions"][region]) in _strip(reload), region
    assert re.search(r'data-live-version="([0-9a-f]+)"', reload).group(1) == end["version"]


def _strip(html):
    return re.sub(r"\s+", " ", html).strip()


def test_processing_numbers_come_from_the_stage_row(app, client, logged_in):
    """The live state may lag or lead the row; the page and the API show the row's numbers and
    only take item names from the state of the same stage."""
    sid = logged_in["site_id"]
    svc = AutomationService(logged_in["account_id"])
    run = svc.start(sid)
    drain(app, max_jobs=1)  # stage 1 counted and partly processed
    run = db.session.get(AutomationRun, run.id)
    db.session.refresh(run)
    res = run.stage_result(run.current_stage)
    # A stale message claiming another stage at 100 % of 0/0 (the old stage-start message).
    publish_state(get_redis(), run.id, build_state(run.current_stage + 1, "Next", 0, 0, ["ghost"], [], 0))
    state = svc.current_processing(sid, run.id)
    assert state["stage_number"] == run.current_stage and "ghost" not in state["currently_processing"]
    if res and res.get("items_total"):
        assert state["processed_items"] == res["items_processed"] and state["total_items"] == res["items_total"]
        assert state["status"] == "processing"
    else:
        assert state["status"] == "starting" and state["percentage"] == 0.0
    body = live(client, f"/live/sites/{sid}")
    assert "ghost" not in body["regions"]["run-panel"]
    assert build_state(3, "x", 0, 0, [], [], 0)["percentage"] == 0.0  # never 100 % of 0/0
    assert build_state(3, "x", 0, 0, [], [], 0)["status"] == "starting"


def test_run_page_follows_its_run_and_flash_carries_the_state(app, client, logged_in):
    sid, csrf = logged_in["site_id"], logged_in["csrf"]
    client.post(f"/sites/{sid}/automation/run", data={"csrf_token": csrf})
    run_id = db.session.execute(select(AutomationRun.id)).scalar_one()
    page = client.get(f"/runs/{run_id}").get_data(as_text=True)
    # The flash about the run says which state it was about (the page drops it later).
    assert f'data-run-id="{run_id}" data-run-status="running"' in page
    version = re.search(r'data-live-version="([0-9a-f]+)"', page).group(1)
    assert 'role="progressbar"' in page or "starting" in page
    AutomationService(logged_in["account_id"], actor="api:x").cancel(run_id, reason="enough")
    body = live(client, f"/live/runs/{run_id}", version)
    head = body["regions"]["run-head"]
    assert "badge-cancelled" in head and ">Pause</button>" not in head and ">Cancel</button>" not in head
    assert "cancel" in body["regions"]["run-summary"] and "enough" in body["regions"]["run-summary"]
    assert 'aria-live="polite"' in head
    # Another account's run: 404, like every other page.
    other, _ = logged_in_other(app)
    assert client.get(f"/live/runs/{other}").status_code == 404


def logged_in_other(app):
    from conftest import Factory
    f = Factory(app)
    acc, user = f.account(name="Other", credits=100_000)
    site = f.site(acc, keywords=3)
    run = AutomationService(acc.id).start(site.id)
    return run.id, user


def test_log_pages_backwards_and_forwards(app, client, logged_in):
    sid = logged_in["site_id"]
    run = AutomationService(logged_in["account_id"]).start(sid)
    run = db.session.get(AutomationRun, run.id)
    logger = AutomationLogger(app.config["LOG_DIR"], run)
    for i in range(2, 1060):
        logger.log(f"line {i}" + (" FAILED after 3 attempts" if i == 1000 else ""), stage=4)
    page = client.get(f"/runs/{run.id}").get_data(as_text=True)
    # 1,059 lines, the last 500 shown: the page says the first 559 are hidden and how to load them.
    assert "Lines 1–559 of 1059 are hidden." in page and f"/runs/{run.id}?before=560" in page
    assert 'class="ln ln-error" data-n="1000"' in page  # error lines stand out
    api = f"/api/v1/automation/logs/?run_id={run.id}"
    d = client.get(f"{api}&lines=500&before=560").get_json()["data"]
    assert d["first_line"] == 60 and len(d["lines"]) == 500 and d["lines"][-1].endswith("line 559")
    d = client.get(f"{api}&lines=500&before=60").get_json()["data"]
    assert d["first_line"] == 1 and len(d["lines"]) == 59 and "Run started" in d["lines"][0]
    d = client.get(f"{api}&after=1057").get_json()["data"]
    assert d["first_line"] == 1058 and [ln.split("] ")[1] for ln in d["lines"]] == ["line 1058", "line 1059"]
    assert d["total_lines"] == 1059
    assert client.get(f"{api}&after=1&before=5").status_code == 400
    # Without JavaScript the link pages backwards.
    older = client.get(f"/runs/{run.id}?before=560").get_data(as_text=True)
    assert 'data-n="60"' in older and 'data-n="560"' not in older and "back to the latest lines" in older


def test_dashboard_refresh(app, client, logged_in):
    page = client.get("/").get_data(as_text=True)
    version = re.search(r'data-live-version="([0-9a-f]+)"', page).group(1)
    assert client.get(f"/live/dashboard?v={version}").status_code == 204
    run = AutomationService(logged_in["account_id"]).start(logged_in["site_id"])
    body = live(client, "/live/dashboard", version)
    assert f'data-run-id="{run.id}" data-run-status="running"' in body["regions"]["dashboard-rows"]
    assert json.dumps(body)  # plain JSON
